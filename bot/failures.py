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
    BUSY = "busy"  # 429 or no connection: surely not sent, nothing spent
    REJECTED = "rejected"  # the API refused this request
    LOST = "lost"  # get_response no longer knows the id
    TIMEOUT = "timeout"  # no answer within MAX_WAIT_SECONDS
    BLOCKED = "blocked"  # the user blocked the bot: nobody to tell
    CANCELLED = "cancelled"  # the user stopped waiting with /cancel

    @property
    def retryable(self) -> bool:
        return self not in {Failure.NO_UNITS, Failure.ACCESS_DENIED, Failure.BLOCKED,
                            Failure.CANCELLED}


def failure_text(failure: Failure) -> str:
    texts = {
        Failure.UNKNOWN_OUTCOME: _(
            "⚠️ The connection broke while your request was being sent, so it is not known "
            "whether it was accepted. Tap the button to send it again (this may use one more "
            "request)."),
        Failure.NO_UNITS: _("😔 The service has run out of capacity for now. Please try again "
                            "later."),
        Failure.BUSY: _("⚠️ The AI service is busy and your request was not sent, so nothing "
                        "was spent. Tap the button to try again."),
        Failure.REJECTED: _("⚠️ The AI service could not take this request. Tap the button to "
                            "try again."),
        Failure.LOST: _("⚠️ The AI service lost this request. Tap the button to send it "
                        "again."),
        Failure.CANCELLED: _("✖️ Cancelled."),
        Failure.TIMEOUT: _("⌛ No answer came in time. The request was already counted; tap the "
                           "button to send it again."),
    }
    return texts.get(failure, _("😔 The service is temporarily unavailable. Please try again "
                                "later."))
