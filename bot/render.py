"""Turning a Markdown answer into Telegram messages: entities, not parse modes.

telegramify-markdown renders Markdown to plain text plus MessageEntity offsets counted
in UTF-16 code units, as Telegram requires, so no answer can fail with "can't parse
entities" for a stray `*`; it also splits at line breaks and clips entities (a code
block cut in two stays two well-formed blocks).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import telegramify_markdown
from aiogram.types import MessageEntity

log = logging.getLogger(__name__)

TELEGRAM_LIMIT = 4096  # UTF-16 code units per message


@dataclass(frozen=True)
class Part:
    text: str
    entities: list[MessageEntity] = field(default_factory=list)


def utf16_length(text: str) -> int:
    return telegramify_markdown.utf16_len(text)


def render(markdown: str, limit: int = TELEGRAM_LIMIT) -> list[Part]:
    """The answer as message parts, each within `limit`; [] for a blank answer."""
    try:
        text, entities = telegramify_markdown.convert(keep_angle_brackets(markdown))
    except Exception:  # a renderer bug must not cost the user the answer
        log.exception("markdown rendering failed; sending plain text")
        text, entities = markdown, []
    return [
        Part(chunk, [MessageEntity(**entity.to_dict()) for entity in chunk_entities])
        for chunk, chunk_entities in telegramify_markdown.split_entities(text, entities, limit)
    ]


# Fenced blocks first, then inline code spans of any backtick run length.
_CODE = re.compile(r"(```.*?(?:```|\Z)|~~~.*?(?:~~~|\Z)|(`+).+?\2)", re.DOTALL)


def keep_angle_brackets(markdown: str) -> str:
    """Escape `<` outside code, so `List<String>` or `<div>` are words, not dropped HTML.

    Markdown treats them as inline HTML, which Telegram's entities cannot show, and the
    renderer leaves out; inside code they are shown as they are already.
    """
    pieces = []
    position = 0
    for code in _CODE.finditer(markdown):
        pieces.append(markdown[position:code.start()].replace("<", "\\<"))
        pieces.append(code.group(0))
        position = code.end()
    pieces.append(markdown[position:].replace("<", "\\<"))
    return "".join(pieces)
