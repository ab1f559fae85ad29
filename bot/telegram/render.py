"""Turning a Markdown answer into Telegram messages: entities, not parse modes.

telegramify-markdown renders Markdown to plain text plus MessageEntity offsets counted
in UTF-16 code units, as Telegram requires, so no answer can fail with "can't parse
entities" for a stray `*`. A long answer is then cut the way a person would cut it: at a
paragraph break, else a line break, else a sentence end, else a space; entities are
clipped into both parts (a code block cut in two stays two well-formed blocks).
"""

from __future__ import annotations

import logging
import re
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate

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
    # offsets[i]: UTF-16 offset of text[i]. `text` is indexed by code point, so no cut
    # can fall between the two halves of a surrogate pair.
    offsets = [0, *accumulate(2 if ord(char) > 0xFFFF else 1 for char in text)]
    parts = [
        Part(text[start:end], _clip(entities, offsets[start], offsets[end]))
        for start, end in _ranges(text, offsets, entities, limit)
    ]
    return [part for part in parts if part.text.strip()]  # Telegram rejects blank text


CUT_MARK = "\n…"  # ends an answer cut to fit the one message it may have


def first_part(markdown: str, limit: int = TELEGRAM_LIMIT) -> tuple[Part | None, bool]:
    """The answer in one message, for one that cannot be followed by more (an inline
    message): its first part, cut at the same boundaries as `render` cuts and marked with
    CUT_MARK, and whether it was cut. (None, False) for a blank answer."""
    parts = render(markdown, limit)
    if len(parts) <= 1:
        return next(iter(parts), None), False
    first = render(markdown, limit - utf16_length(CUT_MARK))[0]
    return Part(first.text + CUT_MARK, first.entities), True


# telegramify_markdown.split_entities cuts only at line breaks, else mid-word at the limit,
# and takes no cut points of its own choosing; so the cuts are chosen here.
# Boundary kinds, best first. A cut drops the whitespace it falls in.
PARAGRAPH, LINE, SENTENCE, SPACE = range(4)
_GAP = re.compile(r"[^\S\xa0\u2007\u202f]+")  # whitespace, but never a no-break space
_SENTENCE_END = re.compile(r"[.!?…][\"'»”)\]]*\Z")  # the same marks end Russian sentences


def _kind(text: str, gap: re.Match[str]) -> int:
    newlines = gap.group().count("\n")
    if newlines:
        return PARAGRAPH if newlines > 1 else LINE
    ends_sentence = _SENTENCE_END.search(text, max(0, gap.start() - 4), gap.start())
    return SENTENCE if ends_sentence else SPACE


def _ranges(
    text: str, offsets: list[int], entities: list[telegramify_markdown.MessageEntity], limit: int
) -> Iterator[tuple[int, int]]:
    """(start, end) code point ranges of the parts, each at most `limit` UTF-16 units."""
    gaps = [(gap.start(), gap.end(), _kind(text, gap)) for gap in _GAP.finditer(text)]
    gap_starts = [start for start, _, _ in gaps]
    start = 0
    while start < len(text):
        end = bisect_right(offsets, offsets[start] + limit) - 1  # the most that fits
        if end >= len(text):
            yield start, len(text)
            return
        # A gap at `end` still fits: the part ends where the whitespace begins.
        after = bisect_right(gap_starts, end)
        window = gaps[bisect_right(gap_starts, start) : after]
        word_end = gap_starts[after] if after < len(gaps) else len(text)
        if not window or offsets[word_end] - offsets[window[-1][1]] > limit:
            # One word longer than a message: the only place a word is cut, and then at the
            # limit, since a cut before it would only add a part.
            cut = resume = max(end, start + 1)
        else:
            # The last boundary of the best kind, unless it would leave a stub of a part
            # (under a quarter of the limit: say a title line, then a near-full message):
            # then a weaker boundary further on reads better. With no boundary past the
            # quarter, the last one of any kind still beats cutting a word.
            last = {kind: (cut, resume) for cut, resume, kind in window}  # last of each kind
            shortest = offsets[start] + limit // 4
            good = [last[kind] for kind in sorted(last) if offsets[last[kind][0]] >= shortest]
            cut, resume = good[0] if good else window[-1][:2]
            if "\n" in text[cut:resume] and _in_code_block(entities, offsets[resume]):
                resume = text.rindex("\n", cut, resume) + 1  # keep the next line's indent
        yield start, cut
        start = resume


def _in_code_block(entities: list[telegramify_markdown.MessageEntity], offset: int) -> bool:
    return any(e.type == "pre" and e.offset <= offset < e.offset + e.length for e in entities)


def _clip(
    entities: list[telegramify_markdown.MessageEntity], start: int, end: int
) -> list[MessageEntity]:
    """The entities over UTF-16 units [start, end), cut to them and counted from `start`."""
    clipped = []
    for entity in entities:
        first, last = max(entity.offset, start), min(entity.offset + entity.length, end)
        if first < last:
            fields = entity.to_dict() | {"offset": first - start, "length": last - first}
            clipped.append(MessageEntity(**fields))
    return clipped


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
