"""Sharing the get_response budget among all pending jobs.

`PollScheduler` decides when each pending job is polled next: not before it is likely
done (`SolveTimes`), densely while it probably becomes ready, and in due-time order for
everyone when the poll budget is short, so nothing starves.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from bot.jobs import crashpoints
from bot.jobs.solve_times import MIN_SECONDS, Estimate, SolveTimes
from bot.services import Worker
from bot.upstream.client import ChatinfoError, RateLimited, RequestRejected, UpstreamUnavailable
from bot.upstream.limiter import SlidingWindowLimiter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PollTiming:
    # Chosen by replaying the load benchmark's jobs (README), cold and warm, at σ 0.1 to
    # 0.9: fewest polls per job with lag p50 <= 0.5 s and p99 <= 1.9 s at σ 0.1.
    hit_chance: float = 0.7  # each poll should find about this share of the answers left
    min_gap: float = 0.4  # never poll one job more often than this
    max_gap: float = 1.9  # once an answer is possible, never wait longer (bounds the lag)
    earliest: float = 0.003  # answers sooner than this quantile of solve times are rare
    # While the model's spread is not yet proven (SolveTimes.spread_proven), a job is also
    # polled this often from where an answer is possible at a spread of `safety_spread`:
    # so an answer sooner than a model learned before a regime change holds possible
    # waits about this long at most, and the answers these polls find test the spread.
    safety_gap: float = 3.0
    safety_spread: float = 1.0
    # When the budget has room and the model's spread is proven and narrow (at most
    # `eager_spread`), a job behind the pace of the spec's sample loop (one poll every
    # `loop_every` s) is polled at `eager_hit_chance`: its polls come closer, so less
    # lag, for polls the loop would have spent by then anyway.
    # A wide spread spreads such polls thin for little gain.
    eager_hit_chance: float = 0.3
    eager_spread: float = 0.35
    loop_every: float = 2.0


def possible_from(estimate: Estimate, timing: PollTiming) -> float:
    """Seconds after the create from which an answer is worth looking for: the model's
    `earliest` quantile, as its first polls have proved it (`early`), and never later
    than the slowest recent answers allow."""
    return min(estimate.quantile(timing.earliest) * estimate.early, estimate.bound)


def next_poll_after(elapsed: float, estimate: Estimate, timing: PollTiming, *,
                    last_poll: float | None = None, polls: int | None = None) -> float:
    """Seconds from now until the next poll of a job `elapsed` seconds old.

    An answer is possible only from `possible_from` on; from then (or now, if later)
    each poll is placed where it has about `hit_chance` of finding the answer, given
    that it was not there before: so polls crowd where answers usually arrive (little
    lag for few polls) and thin out where they rarely do, and the window is as wide as
    the model's recent errors. No poll is more than `max_gap` after the moment an
    answer became possible, which bounds the lag.

    While the spread is unproven, `last_poll` is when the job was last polled (0.0: its
    create) and the next poll is also no later than `safety_gap` after it, or after an
    answer became possible at the spread of `safety_spread` if that is later.

    `polls`, the job's polls so far, is given when the spread is proven and the budget
    has room: while they are behind the sample loop's pace, polls are eager.
    """
    start = max(elapsed, possible_from(estimate, timing))  # nothing to find before
    # An answer missing for longer than the spread allows says the model errs for this
    # job: the window is widened to that much error, so an overdue job is not polled
    # ever more densely where a precise model would have it come any moment.
    overdue = math.log(start / estimate.median) if start > 0.0 else 0.0
    if overdue > estimate.sigma:
        estimate = replace(estimate, sigma=overdue)
    left = estimate.survival(start)
    eager = polls is not None and estimate.sigma <= timing.eager_spread \
        and polls < elapsed / timing.loop_every
    hit_chance = timing.eager_hit_chance if eager else timing.hit_chance
    target = estimate.quantile(1.0 - left * (1.0 - hit_chance))
    delay = start - elapsed + min(max(target - start, timing.min_gap), timing.max_gap)
    if last_poll is None or estimate.sigma >= timing.safety_spread:
        return delay
    doubtful = replace(estimate, sigma=timing.safety_spread, early=1.0)
    safe = max(last_poll, doubtful.quantile(timing.earliest)) + timing.safety_gap
    return min(delay, max(0.0, safe - elapsed))


def solved_after(missed_at: float | None, found_at: float, estimate: Estimate) -> float:
    """When an answer was ready, as far as the polls tell: between the last poll that
    missed it (if any; else the create) and the one that found it, in seconds after the
    create, where the job's estimate puts it within them.

    Not the moment it was found, which is later by the lag: learning that would place
    every poll later, so the lag would grow, and so on. A hit at the first poll is placed
    within all the time before it, not just after the earliest likely moment: so answers
    sooner than the model expects still teach it.
    """
    return max(MIN_SECONDS, estimate.mean_between(missed_at or 0.0, found_at))


async def wait_event(event: asyncio.Event, timeout: float) -> None:
    """Wait until the event is set, `timeout` seconds at most.

    Not asyncio.wait_for: in Python 3.11, a cancellation that comes as its timeout
    expires can be turned into the TimeoutError, and a loop that suppresses that one
    then never stops (a test's teardown hung on it, one run in ten).
    """
    with suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


class Expired(Exception):
    """The job waited longer than allowed."""


class Lost(Exception):
    """get_response keeps saying the id is unknown."""


@dataclass(order=True, slots=True)
class _Entry:
    due: float
    order: int
    job_id: int = field(compare=False)
    upstream_id: int = field(compare=False)
    mode: str = field(compare=False)
    length: int = field(compare=False)
    started: float = field(compare=False)  # monotonic time of create_request
    deadline: float = field(compare=False)
    estimate: Estimate = field(compare=False)
    # Seconds after `started` of the last poll that found no answer; None before one, or
    # always for a job resumed so late that its answer may have come before any poll.
    missed_at: float | None = field(compare=False)
    blind: bool = field(compare=False)  # resumed late: its first poll teaches nothing
    rejections: int = field(default=0, compare=False)
    polls: int = field(default=0, compare=False)


class Answer(NamedTuple):
    text: str
    solved_after: float | None  # seconds upstream took, as the polls bracket it


Poll = Callable[[int], Awaitable[str | None]]
PACE_PERIOD = 0.02  # 5 polls at most in any 20 ms, at 15,000 a minute
SAFETY_SHARE = 0.8  # no safety polls (PollTiming.safety_gap) once this much budget is used
WIDER = 1.5  # a job's estimate gives way to the model's once its spread is this much wider
# Called once per watched job: its answer, or the exception that ends it (Expired, Lost,
# or a ChatinfoError such as AccessDenied).
Settled = Callable[[int, Answer | Exception], None]


class PollScheduler(Worker):
    """One loop that polls every pending job, within the poll budget, earliest due first.

    A pending job costs an entry here and nothing else: no task waits for it. When its
    answer arrives (or it ends), `settled` is called and the owner carries it on.
    """

    name = "poll-scheduler"

    MAX_IN_FLIGHT = 64  # concurrent get_response calls: 250/s at up to 250 ms each
    CALM_AFTER_429 = 2.0  # seconds without polls after the server says 429
    MAX_REJECTIONS = 5

    def __init__(self, poll: Poll, limiter: SlidingWindowLimiter, solve_times: SolveTimes,
                 timing: PollTiming | None = None, *, settled: Settled) -> None:
        self._poll = poll
        self._limiter = limiter
        # The budget is per minute; spent evenly, a few calls at a time, the load on the
        # server is steady, no minute starts with a burst that starves the rest of it,
        # and few connections are open at once.
        self._pace = SlidingWindowLimiter(
            math.ceil(limiter.limit * PACE_PERIOD / limiter.period), PACE_PERIOD)
        self._solve_times = solve_times
        self._timing = timing or PollTiming()
        self._settled = settled
        self._entries: dict[int, _Entry] = {}
        self._heap: list[_Entry] = []
        self._order = itertools.count()
        self._changed = asyncio.Event()
        self._in_flight = asyncio.Semaphore(self.MAX_IN_FLIGHT)
        self._polls: set[asyncio.Task[None]] = set()
        self._calm_until = 0.0
        self._doubts = solve_times.doubts

    @property
    def pending(self) -> int:
        return len(self._entries)

    async def stop(self) -> None:
        """Stop polling; the watched jobs are forgotten (they stay pending in SQLite)."""
        await super().stop()
        polls = list(self._polls)
        for task in polls:
            task.cancel()
        await asyncio.gather(*polls, return_exceptions=True)
        self._entries.clear()
        self._heap.clear()

    def watch(self, *, job_id: int, upstream_id: int, mode: str, length: int, age: float,
              max_wait: float) -> None:
        """Poll the job until its answer comes, or it ends; `settled` tells which.

        `age` is how long ago create_request returned (jobs resumed after a restart are
        older than zero).
        """
        if job_id in self._entries:
            return
        now = time.monotonic()
        estimate = self._solve_times.estimate(mode, length)
        entry = _Entry(
            due=now, order=next(self._order),
            job_id=job_id, upstream_id=upstream_id, mode=sys.intern(mode), length=length,
            started=now - age, deadline=now - age + max_wait, estimate=estimate,
            missed_at=None, blind=age > possible_from(estimate, self._timing))
        entry.due = now + self._next_poll(entry, now)
        self._entries[job_id] = entry
        self._push(entry)

    def _next_poll(self, entry: _Entry, now: float) -> float:
        """Seconds from `now` until the entry's next poll: by the model's estimate if it
        has widened since the job's, with safety polls while the model's spread is
        unproven and the budget has room for them."""
        latest = self._solve_times.estimate(entry.mode, entry.length)
        if latest.sigma > entry.estimate.sigma * WIDER:
            entry.estimate = latest  # a job planned by a spread since found too narrow
        room = not self._limiter.busy(SAFETY_SHARE)
        proven = self._solve_times.spread_proven
        return next_poll_after(now - entry.started, entry.estimate, self._timing,
                               last_poll=(entry.missed_at or 0.0) if room and not proven
                               else None,
                               polls=entry.polls if room and proven else None)

    def _follow_doubt(self) -> None:
        """When answers have just put the model's spread in doubt, the jobs waiting for a
        poll are planned again, safety polls included (never later than they were): the
        answers of jobs planned by a spread too narrow may be waiting already."""
        if self._solve_times.doubts == self._doubts:
            return
        self._doubts = self._solve_times.doubts
        now = time.monotonic()
        for entry in self._heap:
            if self._watched(entry):
                entry.due = min(entry.due, now + self._next_poll(entry, now))
        heapq.heapify(self._heap)
        self._changed.set()

    def drop(self, job_id: int) -> None:
        """Stop polling for the job; `settled` will not be called for it."""
        self._entries.pop(job_id, None)

    def _push(self, entry: _Entry) -> None:
        entry.due = min(entry.due, entry.deadline)
        heapq.heappush(self._heap, entry)
        self._changed.set()

    def _watched(self, entry: _Entry) -> bool:
        return self._entries.get(entry.job_id) is entry

    def _settle(self, entry: _Entry, outcome: Answer | Exception,
                found_at: float = 0.0) -> None:
        if not self._watched(entry):
            return  # dropped meanwhile
        del self._entries[entry.job_id]
        if isinstance(outcome, Answer) and outcome.solved_after is not None:
            # Only real answers teach the model; a timeout or a shutdown says nothing.
            self._solve_times.learn(entry.mode, entry.length, outcome.solved_after)
            self._solve_times.found(entry.estimate, missed_at=entry.missed_at,
                                    found_at=found_at)
            self._follow_doubt()
        self._settled(entry.job_id, outcome)

    def _bracket(self, entry: _Entry, found_at: float) -> float | None:
        if entry.blind and entry.missed_at is None:
            return None
        return solved_after(entry.missed_at, found_at, entry.estimate)

    async def _serve(self) -> None:
        while True:
            if not self._heap:
                self._changed.clear()
                await self._changed.wait()
                continue
            wait = self._heap[0].due - time.monotonic()
            if wait > 0:
                self._changed.clear()
                await wait_event(self._changed, wait)  # early if a job due sooner arrives
                continue
            entry = heapq.heappop(self._heap)
            if not self._watched(entry):
                continue
            if time.monotonic() >= entry.deadline and entry.polls:
                # Polled at least once past its time: a job resumed after a long downtime
                # gets its look at an answer that is probably waiting.
                self._settle(entry, Expired())
                continue
            if (calm := self._calm_until - time.monotonic()) > 0:
                await asyncio.sleep(calm)
            # A free connection first, then the budget slot: the slot is stamped when the
            # call really leaves, or the server could count a bunch of late calls in one
            # of its windows.
            await self._in_flight.acquire()
            await self._pace.acquire()
            await self._limiter.acquire()
            task = asyncio.create_task(self._poll_once(entry))
            self._polls.add(task)
            task.add_done_callback(self._polls.discard)

    async def _poll_once(self, entry: _Entry) -> None:
        asked_at = time.monotonic() - entry.started
        try:
            result = await self._poll(entry.upstream_id)
        except RequestRejected as error:
            entry.rejections += 1
            if entry.rejections >= self.MAX_REJECTIONS:
                self._settle(entry, Lost(str(error)))
                return
            result = None
        except RateLimited as error:
            # The server counts differently from us (its clock, its queue): give it room.
            self._calm_until = time.monotonic() + self.CALM_AFTER_429
            log.warning("poll of job %s failed: %s", entry.job_id, error)
            result = None
        except UpstreamUnavailable as error:
            log.warning("poll of job %s failed: %s", entry.job_id, error)
            result = None
        except ChatinfoError as error:
            self._settle(entry, error)
            return
        else:
            if entry.polls == 0 and not entry.blind:
                self._solve_times.first_poll(entry.mode, entry.estimate, asked_at=asked_at,
                                             found=result is not None)
        finally:
            self._in_flight.release()
            entry.polls += 1
        if result is not None:
            self._settle(entry, Answer(result, self._bracket(entry, asked_at)), asked_at)
            return
        entry.missed_at = asked_at
        if not self._watched(entry):
            return
        crashpoints.reach(crashpoints.WHILE_POLLING)
        now = time.monotonic()
        entry.due = now + self._next_poll(entry, now)
        self._push(entry)
