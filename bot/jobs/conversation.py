"""Conversations that remember: a new message carries the recent turns as context.

A unit costs the same however long the content is, so the context is bounded only by the
API's 5000 characters: the newest turns are kept first, the new message always whole.
The text sent upstream is plain and stable, in English since it is for the model:

    Earlier in this conversation:
    User: <an earlier message>
    Assistant: <its answer>
    User: <the next one>
    Assistant: <its answer>

    Now: <the new message>

A conversation belongs to a (chat, user) pair. It starts afresh with /new, with a change
of mode, and after CONVERSATION_IDLE_MINUTES of silence; nothing older than MAX_AGE is
read, so a /new marker that old is deleted.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiogram.utils.i18n import ngettext

from bot.config import MAX_CONTENT_CHARS
from bot.modes import MODES_BY_NAME
from storage.conversations import ConversationRepo, Turn

HEADER = "Earlier in this conversation:\n"
USER = "User: "
ASSISTANT = "\nAssistant: "
NOW = "\n\nNow: "
TURN_SEPARATOR = "\n"
ELLIPSIS = "…"
MAX_AGE = 30 * 24 * 3600.0  # seconds; older turns are never context
MAX_TURNS = 50  # turns read at most; a budget's worth unless every one is a word or two
MIN_EXCERPT = 100  # characters: a cut text shorter than this tells the model nothing


@dataclass(frozen=True, slots=True)
class MemorySetting:
    mode: str  # the user's current mode
    remembers: bool  # whether their new messages carry the conversation


@dataclass(frozen=True, slots=True)
class Composed:
    content: str  # what is sent upstream
    earlier: int  # earlier messages it carries (the user's and the answers)


class Conversations:
    def __init__(self, repo: ConversationRepo, idle_minutes: int,
                 clock: Callable[[], float] = time.time) -> None:
        self._repo = repo
        self._idle = idle_minutes * 60.0
        self._clock = clock

    async def memory(self, user_id: int) -> MemorySetting:
        """The user's mode and whether it remembers: their choice, or the mode's default."""
        choice = await self._repo.memory(user_id)
        if choice.remember is not None:
            return MemorySetting(choice.mode, choice.remember)
        known = MODES_BY_NAME.get(choice.mode)
        return MemorySetting(choice.mode, known.remembers if known else False)

    async def set_memory(self, user_id: int, mode: str, remembers: bool) -> None:
        await self._repo.set_memory(user_id, mode, remembers)

    async def start_afresh(self, chat_id: int, user_id: int) -> None:
        await self._repo.start_afresh(chat_id, user_id,
                                      forget_before=self._clock() - MAX_AGE)

    async def compose(self, chat_id: int, user_id: int, request: str) -> Composed:
        """`request` with as much of the conversation as the budget holds."""
        now = self._clock()
        turns = await self._repo.latest_turns(chat_id, user_id, since=now - MAX_AGE,
                                              chars=MAX_CONTENT_CHARS, limit=MAX_TURNS)
        return compose(request, live_turns(turns, now, self._idle))


def live_turns(turns: Sequence[Turn], now: float, idle: float) -> list[Turn]:
    """The turns (newest first) since the last silence longer than `idle` seconds."""
    live: list[Turn] = []
    later = now
    for turn in turns:
        if later - turn.ended_at > idle:
            break
        live.append(turn)
        later = turn.asked_at
    return live


def compose(request: str, turns: Sequence[Turn], budget: int = MAX_CONTENT_CHARS) -> Composed:
    """The content for `request` (newest turns first); the request alone if none fits."""
    request = request[:budget]
    room = budget - len(HEADER) - len(NOW) - len(request) + len(TURN_SEPARATOR)
    blocks: list[str] = []
    earlier = 0
    for turn in turns:
        block = fit(turn, room - len(TURN_SEPARATOR))
        if block is None:
            break
        blocks.append(block)
        earlier += 1 if turn.answer is None else 2
        room -= len(block) + len(TURN_SEPARATOR)
        if block != whole(turn):
            break  # cut to the budget: nothing older fits
    if not blocks:
        return Composed(request, 0)
    return Composed(HEADER + TURN_SEPARATOR.join(reversed(blocks)) + NOW + request, earlier)


def whole(turn: Turn) -> str:
    return USER + turn.said + ("" if turn.answer is None else ASSISTANT + turn.answer)


def fit(turn: Turn, room: int) -> str | None:
    """The turn as a block of at most `room` characters: whole, else its answer cut, else
    both its message and its answer cut; None if what is left would say nothing."""
    block = whole(turn)
    if len(block) <= room:
        return block
    if turn.answer is None:
        left = room - len(USER)
        return USER + cut(turn.said, left) if left >= MIN_EXCERPT else None
    left = room - len(USER) - len(ASSISTANT)
    if left - len(turn.said) >= MIN_EXCERPT:
        return USER + turn.said + ASSISTANT + cut(turn.answer, left - len(turn.said))
    said = cut(turn.said, max(left - min(len(turn.answer), left // 2), 0))
    answer_room = left - len(said)
    if len(said) < MIN_EXCERPT or answer_room < min(len(turn.answer), MIN_EXCERPT):
        return None
    return USER + said + ASSISTANT + cut(turn.answer, answer_room)


# Where a text may be cut, best first: a paragraph break, a line break, a sentence end,
# a space. The best kind found in the second half of what fits is taken; else any space;
# a word is cut only when there is none.
_SENTENCE_END = r"(?:(?<=[.!?…])|(?<=[.!?…][\"'»”)\]]))(?=\s)"
_BOUNDARIES = tuple(re.compile(pattern) for pattern in (r"\n[^\S\n]*\n", r"\n",
                                                        _SENTENCE_END, r"\s"))


def cut(text: str, limit: int) -> str:
    """`text` cut at a boundary to at most `limit` characters, "…" included."""
    if len(text) <= limit:
        return text
    if limit <= len(ELLIPSIS):
        return ELLIPSIS[:max(limit, 0)]
    head = text[:limit - len(ELLIPSIS) + 1]  # a boundary just past the room still ends it
    for boundary in _BOUNDARIES:
        ends = [match.start() for match in boundary.finditer(head, len(head) // 2)]
        if ends:
            return text[:ends[-1]].rstrip() + ELLIPSIS
    spaces = [match.start() for match in _BOUNDARIES[-1].finditer(head, 1)]
    end = spaces[-1] if spaces else len(head) - 1
    return text[:end].rstrip() + ELLIPSIS


def earlier_text(count: int) -> str:
    """What the placeholder says when the request carries the conversation."""
    return ngettext("↩️ {count} earlier message", "↩️ {count} earlier messages",
                    count).format(count=count)
