"""Phrases several messages share: how long something takes, in words and plural forms."""

from __future__ import annotations

import math

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
