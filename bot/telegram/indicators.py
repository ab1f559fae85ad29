"""What a waiting user sees: "typing…" in the chat and the placeholder's waiting time.

One loop serves every waiting job, so ten thousand pending jobs cost one task, not
twenty thousand; both signals are cosmetic and get a small, fixed share of Telegram's
budget, skipped (never queued) when it is used up, or when answers wait for the budget
(the first level of `Pressure`).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import NamedTuple

from aiogram import Bot
from aiogram.enums import ChatAction

from bot.services import Worker
from bot.telegram.delivery import Delivery
from bot.telegram.throttle import Pressure
from bot.upstream.limiter import SlidingWindowLimiter
from storage.jobs import Job

log = logging.getLogger(__name__)

TICK = 0.5
TYPING_EVERY = 4.5  # Telegram shows "typing" for 5 s after each action
TYPING_PER_SECOND = 10
PROGRESS_PER_SECOND = 5


class _Watched(NamedTuple):
    """What the signals need of a job, and no more: thousands may wait at once."""

    chat_id: int
    placeholder_id: int | None
    locale: str
    created_at: float
    due: float  # of the next progress edit


class WaitingIndicators(Worker):
    """A service: one loop for every watched job's signals, idle while none waits."""

    name = "waiting-indicators"

    def __init__(self, bot: Bot, delivery: Delivery, progress_every: float,
                 progress_text: Callable[[int, str, float], str]) -> None:
        """`progress_text(job id, locale, seconds)`: the placeholder's text after that wait."""
        self._bot = bot
        self._delivery = delivery
        self._progress_every = progress_every
        self._progress_text = progress_text
        self._jobs: dict[int, _Watched] = {}
        self._due: list[tuple[float, int]] = []  # (next progress edit at, id), a heap
        self._chats: Counter[int] = Counter()
        self._typed_at: dict[int, float] = {}
        self._typing_budget = SlidingWindowLimiter(TYPING_PER_SECOND, 1.0)
        self._progress_budget = SlidingWindowLimiter(PROGRESS_PER_SECOND, 1.0)
        self._editing: tuple[int, asyncio.Task[None]] | None = None
        self._watching = asyncio.Event()  # set while some job is watched

    def watch(self, job: Job) -> None:
        """Show the job's signals until `forget`; watching it again changes nothing.

        An inline job gets none: its message is in a chat the bot may not be in (nowhere to
        show "typing…"), and it is left as posted until its answer comes.
        """
        if job.id in self._jobs or job.inline:
            return
        due = job.created_at + self._progress_every
        self._jobs[job.id] = _Watched(job.chat_id, job.placeholder_id, sys.intern(job.locale),
                                      job.created_at, due)
        heapq.heappush(self._due, (due, job.id))
        self._chats[job.chat_id] += 1
        self._watching.set()

    async def forget(self, job_id: int) -> None:
        """Stop the job's signals; after this no progress edit of it can land."""
        if (watched := self._jobs.pop(job_id, None)) is not None:
            chat_id = watched.chat_id
            self._chats[chat_id] -= 1
            if self._chats[chat_id] <= 0:
                del self._chats[chat_id]
                self._typed_at.pop(chat_id, None)
        if self._editing is not None and self._editing[0] == job_id:
            # Wait for the edit in flight without taking on its outcome; a cancellation
            # of the caller still goes through.
            await asyncio.wait({self._editing[1]})

    def hurry(self, job_id: int) -> None:
        """Show the job's progress at the next tick (its stage changed), not at its due."""
        if (watched := self._jobs.get(job_id)) is None:
            return
        now = time.time()
        self._jobs[job_id] = watched._replace(due=now)
        heapq.heappush(self._due, (now, job_id))

    async def _serve(self) -> None:
        while True:
            if not self._jobs:
                self._due.clear()  # only entries of forgotten jobs are left
                self._watching.clear()
                await self._watching.wait()
            try:
                await self._send_typing()
                await self._send_progress()
            except Exception:  # cosmetic: a failed tick must not end the signals of all
                log.exception("waiting indicators failed a tick")
            await asyncio.sleep(TICK)

    async def _send_typing(self) -> None:
        now = time.monotonic()
        for chat_id in list(self._chats):
            if now - self._typed_at.get(chat_id, 0.0) < TYPING_EVERY:
                continue
            if self._delivery.pressure.level >= Pressure.QUIET:
                # Answers wait for Telegram: "typing…" is the first thing to go (counted
                # once per chat and round, as if it had been sent).
                self._delivery.pressure.degrade(Pressure.QUIET)
                self._typed_at[chat_id] = now
                continue
            if self._typing_budget.delay() > 0:
                return
            await self._typing_budget.acquire()
            self._typed_at[chat_id] = now
            try:
                await self._bot.send_chat_action(chat_id=chat_id, action=ChatAction.TYPING)
            except Exception as error:
                log.debug("typing in chat %s failed: %s", chat_id, type(error).__name__)

    async def _send_progress(self) -> None:
        now = time.time()
        while self._due and self._due[0][0] <= now:
            if self._progress_budget.delay() > 0:
                return  # the most overdue stay first in line for the next tick
            due, job_id = heapq.heappop(self._due)
            watched = self._jobs.get(job_id)
            if watched is None or watched.due != due:
                continue  # forgotten, or watched again since
            await self._progress_budget.acquire()
            self._jobs[job_id] = watched._replace(due=now + self._progress_every)
            heapq.heappush(self._due, (now + self._progress_every, job_id))
            edit = asyncio.create_task(self._delivery.progress(
                watched.chat_id, watched.placeholder_id,
                self._progress_text(job_id, watched.locale, now - watched.created_at)))
            self._editing = (job_id, edit)
            try:
                await asyncio.shield(edit)
            finally:
                self._editing = None
