"""Why a job can end without an answer, and what the user is told.

Upstream error texts (Russian, with links to buy more) are never shown as they are:
each known failure maps to one translated sentence.
"""

from __future__ import annotations

from enum import StrEnum

from aiogram.utils.i18n import gettext as _


class Failure(StrEnum):
    UNKNOWN_OUTCOME = "unknown_outcome"  # create_request may or may not have counted
    NO_UNITS = "no_units"  # 403 "Недостаточно API Units …"
    ACCESS_DENIED = "access_denied"  # 403 "… только на тарифе Престиж" or a rejected key
    BUSY = "busy"  # 429: surely not sent, nothing spent
    UNREACHABLE = "unreachable"  # no connection to the API: not sent, nothing spent
    REJECTED = "rejected"  # the API refused this request
    LOST = "lost"  # get_response no longer knows the id
    TIMEOUT = "timeout"  # no answer within MAX_WAIT_SECONDS
    BLOCKED = "blocked"  # the user blocked the bot: nobody to tell
    CANCELLED = "cancelled"  # the user stopped waiting with /cancel
    INTERNAL = "internal"  # a step of ours kept failing (a bug, the database, Telegram)
    KEY_REMOVED = "key_removed"  # sent with an API key no longer configured: cannot poll

    @property
    def retryable(self) -> bool:
        return self not in {Failure.NO_UNITS, Failure.ACCESS_DENIED, Failure.BLOCKED,
                            Failure.CANCELLED}


def failure_text(failure: Failure, *, sent: bool = False, inline_bot: str | None = None) -> str:
    """What the user is told: what happened, whether the request counted, what to do.

    `sent`: create_request had returned an id, so the request counted against the quota.
    `inline_bot`: the bot's username, when the text replaces an inline message; that one
    gets no retry button (it could not work there), so the text says how to ask again.
    """
    if inline_bot is not None and (inline := inline_failure_text(failure, sent=sent)) is not None:
        return inline.format(bot=inline_bot)
    if sent and failure is Failure.INTERNAL:
        return _("⚠️ Something went wrong on our side after your request was sent, so it was "
                 "counted. Tap the button to send it again.")
    if sent and failure in {Failure.NO_UNITS, Failure.ACCESS_DENIED}:
        return {
            Failure.NO_UNITS: _("😔 The bot has run out of capacity. Your request had been "
                                "sent and was counted, but its answer cannot be fetched. "
                                "Please try again later."),
        }.get(failure, _("😔 The service is unavailable right now; the admins have been "
                         "told. Your request had been sent and was counted. Please try again "
                         "later."))
    texts = {
        Failure.UNKNOWN_OUTCOME: _(
            "⚠️ Something went wrong while your request was being sent, so I cannot tell "
            "whether it was accepted: it may have counted as one of today's requests. Tap the "
            "button to send it again."),
        Failure.BUSY: _("⚠️ The AI service is busy right now. Your request was not sent, so "
                        "nothing was counted. Tap the button to try again in a minute."),
        Failure.UNREACHABLE: _("⚠️ The AI service cannot be reached right now. Your request "
                               "was not sent, so nothing was counted. Tap the button to try "
                               "again in a few minutes."),
        Failure.REJECTED: _("⚠️ The AI service did not accept this request, so nothing was "
                            "counted. Tap the button to try again, or rephrase it."),
        Failure.LOST: _("⚠️ The AI service lost this request after it was sent, so it was "
                        "counted. Tap the button to send it again."),
        Failure.KEY_REMOVED: _("⚠️ This request was sent with an API key the bot no longer "
                               "uses, so its answer cannot be fetched. It was counted; tap "
                               "the button to send it again."),
        Failure.TIMEOUT: _("⌛ No answer came in time. The request was sent, so it was "
                           "counted; tap the button to send it again."),
        Failure.CANCELLED: _("✖️ Cancelled before it was sent, so nothing was counted."),
        Failure.INTERNAL: _("⚠️ Something went wrong on our side, so your request could not "
                            "be handled. It was not sent, so nothing was counted. Tap the "
                            "button to try again."),
        Failure.NO_UNITS: _("😔 The bot has run out of capacity for now. Your request was not "
                            "sent, so nothing was counted. Please try again later."),
    }
    return texts.get(failure, _("😔 The service is unavailable right now; the admins have been "
                                "told. Your request was not sent, so nothing was counted. "
                                "Please try again later."))


def inline_failure_text(failure: Failure, *, sent: bool = False) -> str | None:
    """The texts that offer a retry button, as said where there is none; None for the
    others, which offer none anyway."""
    if sent and failure is Failure.INTERNAL:
        return _("⚠️ Something went wrong on our side after this request was sent, so it was "
                 "counted. To send it again, ask @{bot} again.")
    texts = {
        Failure.UNKNOWN_OUTCOME: _(
            "⚠️ Something went wrong while this request was being sent, so I cannot tell "
            "whether it was accepted: it may have counted as one of today's requests. To send "
            "it again, ask @{bot} again."),
        Failure.BUSY: _("⚠️ The AI service is busy right now. This request was not sent, so "
                        "nothing was counted. Ask @{bot} again in a minute."),
        Failure.UNREACHABLE: _("⚠️ The AI service cannot be reached right now. This request "
                               "was not sent, so nothing was counted. Ask @{bot} again in a "
                               "few minutes."),
        Failure.REJECTED: _("⚠️ The AI service did not accept this request, so nothing was "
                            "counted. Ask @{bot} again, or rephrase it."),
        Failure.LOST: _("⚠️ The AI service lost this request after it was sent, so it was "
                        "counted. To send it again, ask @{bot} again."),
        Failure.KEY_REMOVED: _("⚠️ This request was sent with an API key the bot no longer "
                               "uses, so its answer cannot be fetched. It was counted; to "
                               "send it again, ask @{bot} again."),
        Failure.TIMEOUT: _("⌛ No answer came in time. The request was sent, so it was "
                           "counted; to send it again, ask @{bot} again."),
        Failure.INTERNAL: _("⚠️ Something went wrong on our side, so this request could not "
                            "be handled. It was not sent, so nothing was counted. Ask @{bot} "
                            "again."),
    }
    return texts.get(failure)
