"""Phrases several messages share: how long something takes, and what a waiting job says."""

from __future__ import annotations

import math

from aiogram.utils.i18n import gettext as _
from aiogram.utils.i18n import ngettext


def duration_text(seconds: float) -> str:
    """"45 seconds", "3 minutes", "2 hours 5 minutes": rounded up, in the current language.

    Russian takes the accusative ("1 минуту") after both "через" and "примерно ждать".
    """
    seconds = max(1, math.ceil(seconds))
    if seconds < 60:
        return ngettext("{count} second", "{count} seconds", seconds).format(count=seconds)
    hours, minutes = divmod(math.ceil(seconds / 60), 60)
    parts = [ngettext("{count} hour", "{count} hours", hours).format(count=hours)] if hours else []
    if minutes:
        parts.append(ngettext("{count} minute", "{count} minutes", minutes).format(count=minutes))
    return " ".join(parts)


def placeholder_text() -> str:
    """The first text of a placeholder: true whether the request waits or is sent at once
    (it says which at the next edit, and "working" only once it was acknowledged)."""
    return _("⏳ Got it, one moment…")


def held_text() -> str:
    """The first text of a placeholder while new requests wait for Telegram's budget."""
    return _("⏳ Got it. Many answers are being sent right now, so your request waits its "
             "turn; nothing is spent yet.")


def sending_text() -> str:
    return _("⏳ Sending your request…")


def settling_text() -> str:
    return _("⏳ The AI service did not confirm your request. Checking whether it arrived; "
             "if it did not, it is sent again by itself.")


def queue_text(ahead: int, seconds: float, *, held: bool) -> str:
    wait = duration_text(seconds)
    if held and not ahead:
        return _("⏳ The AI service asked us to slow down, so your request waits; nothing "
                 "is spent yet. About {wait}.").format(wait=wait)
    if held:
        return ngettext(
            "⏳ The AI service asked us to slow down, so your request waits in the queue; "
            "nothing is spent yet. {ahead} request ahead, about {wait}.",
            "⏳ The AI service asked us to slow down, so your request waits in the queue; "
            "nothing is spent yet. {ahead} requests ahead, about {wait}.",
            ahead).format(ahead=ahead, wait=wait)
    if not ahead:
        return _("⏳ Next in the queue, about {wait}.").format(wait=wait)
    return ngettext("⏳ In the queue: {ahead} request ahead, about {wait}.",
                    "⏳ In the queue: {ahead} requests ahead, about {wait}.",
                    ahead).format(ahead=ahead, wait=wait)


def waiting_text(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return _("⏳ Working on it… {minutes}:{seconds:02d}").format(minutes=minutes,
                                                                 seconds=seconds)
