"""Turning an answer into Telegram messages."""

from __future__ import annotations

TELEGRAM_LIMIT = 4096  # UTF-16 code units per message


def utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def split_message(text: str, limit: int = TELEGRAM_LIMIT) -> list[str]:
    """Parts under Telegram's limit that add up to the whole text.

    Cuts at the last paragraph break that fits, else the last line break, else the
    last space, else wherever the limit falls (never inside a surrogate pair).
    """
    parts: list[str] = []
    rest = text
    while utf16_length(rest) > limit:
        head = _longest_prefix(rest, limit)
        cut = next(
            (index + len(sep) for sep in ("\n\n", "\n", " ")
             if (index := head.rfind(sep)) > len(head) // 4),
            len(head),
        )
        parts.append(rest[:cut])
        rest = rest[cut:]
    if rest or not parts:
        parts.append(rest)
    return parts


def _longest_prefix(text: str, limit: int) -> str:
    """The longest prefix of `text` within `limit` UTF-16 units."""
    units = 0
    for index, char in enumerate(text):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > limit:
            return text[:index]
    return text
