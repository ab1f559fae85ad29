"""Sharing the upstream's per-minute budgets among all jobs.

- `SolveTimes` learns how long answers take, per mode and content length, from the
  jobs already answered.
- `PollScheduler` decides when each pending job is polled next: not before it is
  likely done, densely while it probably becomes ready, and in due-time order for
  everyone when the poll budget is short, so nothing starves.
- `FairQueue` hands out create_request slots round-robin between users, so one heavy
  user cannot starve the others.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field

from bot import crashpoints
from bot.chatinfo import ChatinfoError, RateLimited, RequestRejected, UpstreamUnavailable
from bot.limiter import SlidingWindowLimiter

log = logging.getLogger(__name__)

LENGTH_BUCKETS = (200, 1000, 3000)  # content characters: short, medium, long, very long
SAMPLES_KEPT = 200  # per (mode, length) key: recent enough to follow upstream changes
MIN_SAMPLES = 8  # fewer, and the broader key's samples are used
# Before anything is learned: the spread of GPT answers seen in practice.
PRIOR = (2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0, 12.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0)


def length_bucket(length: int) -> int:
    return bisect.bisect_left(LENGTH_BUCKETS, length)


class SolveTimes:
    """Recent solve durations (seconds) by (mode, length bucket), by mode, and overall."""

    def __init__(self) -> None:
        self._samples: dict[object, deque[float]] = {}

    def learn(self, mode: str, length: int, seconds: float) -> None:
        for key in ((mode, length_bucket(length)), mode, None):
            self._samples.setdefault(key, deque(maxlen=SAMPLES_KEPT)).append(seconds)

    def learn_all(self, history: Iterable[tuple[str, int, float]]) -> None:
        for mode, length, seconds in history:
            self.learn(mode, length, seconds)

    def distribution(self, mode: str, length: int) -> list[float]:
        """Sorted durations for the most specific key with enough samples."""
        for key in ((mode, length_bucket(length)), mode, None):
            samples = self._samples.get(key)
            if samples is not None and len(samples) >= MIN_SAMPLES:
                return sorted(samples)
        return list(PRIOR)


@dataclass(frozen=True)
class PollTiming:
    hit_chance: float = 0.2  # aim each poll to catch about this share of the remaining jobs
    min_gap: float = 0.4  # never poll one job more often than this
    max_gap: float = 4.0  # never leave a job unpolled for longer (bounds the lag)
    first_at_least: float = 0.5  # seconds after create_request, whatever was learned


def next_poll_after(elapsed: float, durations: list[float], timing: PollTiming) -> float:
    """Seconds from now until the next poll of a job `elapsed` seconds old.

    Polls are placed so that each has about `hit_chance` of finding the answer among
    the durations still possible, so they crowd where answers usually arrive and thin
    out in the tail; `max_gap` keeps the tail from starving.
    """
    later = durations[bisect.bisect_right(durations, elapsed):]
    if not later:
        return timing.max_gap if elapsed else timing.first_at_least
    index = min(len(later) - 1, int(len(later) * timing.hit_chance))
    target = max(later[index], timing.first_at_least)
    return min(max(target - elapsed, timing.min_gap), timing.max_gap)


class Expired(Exception):
    """The job waited longer than allowed."""


class Lost(Exception):
    """get_response keeps saying the id is unknown."""


@dataclass(order=True)
class _Entry:
    due: float
    order: int
    job_id: int = field(compare=False)
    upstream_id: int = field(compare=False)
    started: float = field(compare=False)  # monotonic time of create_request
    deadline: float = field(compare=False)
    durations: list[float] = field(compare=False)
    answer: asyncio.Future[str] = field(compare=False)
    rejections: int = field(default=0, compare=False)
    polls: int = field(default=0, compare=False)


Poll = Callable[[int], Awaitable[str | None]]


class PollScheduler:
    """One loop that polls every pending job, within the poll budget, earliest due first."""

    MAX_REJECTIONS = 5
    MAX_IN_FLIGHT = 256  # concurrent get_response calls; the budget is the real limit

    def __init__(self, poll: Poll, limiter: SlidingWindowLimiter, solve_times: SolveTimes,
                 timing: PollTiming | None = None) -> None:
        self._poll = poll
        self._limiter = limiter
        self._solve_times = solve_times
        self._timing = timing or PollTiming()
        self._heap: list[_Entry] = []
        self._order = itertools.count()
        self._changed = asyncio.Event()
        self._in_flight = asyncio.Semaphore(self.MAX_IN_FLIGHT)
        self._polls: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self.polls_done = 0

    @property
    def pending(self) -> int:
        return len(self._heap)

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._serve(), name="poll-scheduler")

    async def stop(self) -> None:
        tasks = [t for t in (self._loop_task, *self._polls) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def answer(self, *, job_id: int, upstream_id: int, mode: str, length: int,
                     age: float, max_wait: float) -> str:
        """Wait for the job's answer; raises Expired, Lost, or a ChatinfoError that ends it.

        `age` is how long ago create_request returned (jobs resumed after a restart are
        older than zero).
        """
        now = time.monotonic()
        durations = self._solve_times.distribution(mode, length)
        entry = _Entry(
            due=now + next_poll_after(age, durations, self._timing), order=next(self._order),
            job_id=job_id, upstream_id=upstream_id, started=now - age,
            deadline=now - age + max_wait, durations=durations,
            answer=asyncio.get_running_loop().create_future(),
        )
        self._push(entry)
        try:
            return await entry.answer
        finally:
            if not entry.answer.done():  # the waiter was cancelled: stop polling for it
                entry.answer.cancel()
            self._solve_times.learn(mode, length, time.monotonic() - entry.started)

    def _push(self, entry: _Entry) -> None:
        entry.due = min(entry.due, entry.deadline)
        heapq.heappush(self._heap, entry)
        self._changed.set()

    async def _serve(self) -> None:
        while True:
            if not self._heap:
                self._changed.clear()
                await self._changed.wait()
                continue
            wait = self._heap[0].due - time.monotonic()
            if wait > 0:
                self._changed.clear()
                # Wake early if a job due sooner arrives.
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), wait)
                continue
            entry = heapq.heappop(self._heap)
            if entry.answer.done():
                continue  # its waiter went away
            if time.monotonic() >= entry.deadline:
                entry.answer.set_exception(Expired())
                continue
            await self._limiter.acquire()
            await self._in_flight.acquire()
            task = asyncio.create_task(self._poll_once(entry))
            self._polls.add(task)
            task.add_done_callback(self._polls.discard)

    async def _poll_once(self, entry: _Entry) -> None:
        try:
            result = await self._poll(entry.upstream_id)
        except RequestRejected as error:
            entry.rejections += 1
            if entry.rejections >= self.MAX_REJECTIONS:
                _settle(entry, error=Lost(str(error)))
                return
            result = None
        except (RateLimited, UpstreamUnavailable) as error:
            log.warning("poll of job %s failed: %s", entry.job_id, error)
            result = None
        except ChatinfoError as error:
            _settle(entry, error=error)
            return
        finally:
            self._in_flight.release()
            entry.polls += 1
            self.polls_done += 1
        if result is not None:
            _settle(entry, result=result)
            return
        crashpoints.reach(crashpoints.WHILE_POLLING)
        age = time.monotonic() - entry.started
        entry.due = time.monotonic() + next_poll_after(age, entry.durations, self._timing)
        self._push(entry)


def _settle(entry: _Entry, *, result: str | None = None,
            error: BaseException | None = None) -> None:
    if entry.answer.done():
        return
    if error is not None:
        entry.answer.set_exception(error)
    else:
        entry.answer.set_result(result or "")


class FairQueue:
    """create_request slots, handed out round-robin between users as the budget allows."""

    def __init__(self, limiter: SlidingWindowLimiter) -> None:
        self._limiter = limiter
        self._waiting: OrderedDict[int, deque[asyncio.Future[None]]] = OrderedDict()
        self._changed = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def position(self, user_id: int) -> int:
        """How many slots go to others before this user's newest request gets one."""
        mine = len(self._waiting.get(user_id, ()))
        return sum(min(len(q), mine) for uid, q in self._waiting.items() if uid != user_id) \
            + max(0, mine - 1)

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._serve(), name="create-queue")

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)

    async def turn(self, user_id: int) -> None:
        """Wait until this user's request may be sent; the budget slot is taken for it."""
        ticket = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(user_id, deque()).append(ticket)
        self._changed.set()
        try:
            await ticket
        except asyncio.CancelledError:
            if not ticket.done() or ticket.cancelled():
                self._forget(user_id, ticket)
            raise

    def _forget(self, user_id: int, ticket: asyncio.Future[None]) -> None:
        queue = self._waiting.get(user_id)
        if queue is not None and ticket in queue:
            queue.remove(ticket)
            if not queue:
                del self._waiting[user_id]

    async def _serve(self) -> None:
        while True:
            if not self._waiting:
                self._changed.clear()
                await self._changed.wait()
                continue
            await self._limiter.acquire()
            ticket = self._next_ticket()
            if ticket is None:
                self._limiter.release_last()  # everyone waiting went away meanwhile
                continue
            ticket.set_result(None)

    def _next_ticket(self) -> asyncio.Future[None] | None:
        while self._waiting:
            user_id, queue = self._waiting.popitem(last=False)
            ticket = queue.popleft()
            if queue:
                self._waiting[user_id] = queue  # to the back of the round
            if not ticket.done():
                return ticket
        return None
