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
import math
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import NamedTuple

from bot.jobs import crashpoints
from bot.upstream.client import ChatinfoError, RateLimited, RequestRejected, UpstreamUnavailable
from bot.upstream.limiter import SlidingWindowLimiter

log = logging.getLogger(__name__)

SAMPLES_KEPT = 300  # per mode: recent enough to follow upstream changes
MIN_SAMPLES = 10  # fewer, and the mode is estimated from all answers instead
MIN_SECONDS = 0.3
# Before anything is learned: the spread of GPT answers seen in practice.
PRIOR = (2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0, 12.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0)


@dataclass(frozen=True, slots=True)
class Estimate:
    """Likely solve times: `scale` times each of the sorted `ratios` (shared, not copied)."""

    scale: float
    ratios: list[float]

    def quantile(self, q: float) -> float:
        index = min(len(self.ratios) - 1, max(0, int(q * len(self.ratios))))
        return self.scale * self.ratios[index]


class SolveTimes:
    """Learns solve times from answered jobs.

    GPT's time grows with what it reads and writes, so per mode the model is a straight
    line in the content length (fixed latency plus time per character), fitted on recent
    answers; how far actual times stray from the line gives the spread. A mode with few
    answers yet is estimated from all answers.
    """

    def __init__(self, prior: Iterable[float] = PRIOR) -> None:
        self._prior = sorted(prior)
        self._by_mode: dict[str, deque[tuple[int, float]]] = {}
        self._overall: deque[float] = deque(maxlen=SAMPLES_KEPT)
        self._fits: dict[str, tuple[float, float, list[float]]] = {}
        self._overall_sorted: list[float] | None = None

    def learn(self, mode: str, length: int, seconds: float) -> None:
        self._by_mode.setdefault(mode, deque(maxlen=SAMPLES_KEPT)).append((length, seconds))
        self._overall.append(seconds)
        self._fits.pop(mode, None)
        self._overall_sorted = None

    def learn_all(self, history: Iterable[tuple[str, int, float]]) -> None:
        for mode, length, seconds in history:
            self.learn(mode, length, seconds)

    def estimate(self, mode: str, length: int) -> Estimate:
        samples = self._by_mode.get(mode, ())
        if len(samples) < MIN_SAMPLES:
            if len(self._overall) < MIN_SAMPLES:
                return Estimate(1.0, self._prior)
            if self._overall_sorted is None:
                self._overall_sorted = sorted(self._overall)
            return Estimate(1.0, self._overall_sorted)
        if mode not in self._fits:
            self._fits[mode] = _fit(samples)
        intercept, slope, ratios = self._fits[mode]
        return Estimate(max(MIN_SECONDS, intercept + slope * length), ratios)


def _fit(samples: Iterable[tuple[int, float]]) -> tuple[float, float, list[float]]:
    """Least-squares line through (length, seconds), and the sorted actual/line ratios."""
    points = list(samples)
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    slope = max(0.0, sum((x - mean_x) * (y - mean_y) for x, y in points) / spread) \
        if spread else 0.0
    intercept = max(MIN_SECONDS, mean_y - slope * mean_x)
    ratios = sorted(y / max(MIN_SECONDS, intercept + slope * x) for x, y in points)
    return intercept, slope, ratios


@dataclass(frozen=True)
class PollTiming:
    # Chosen by replaying the load benchmark's jobs (README): fewest polls per job with
    # lag p50 <= 0.45 s and p99 <= 1.9 s.
    hit_chance: float = 0.6  # each poll should find about this share of the answers left
    min_gap: float = 0.4  # never poll one job more often than this
    max_gap: float = 1.9  # once an answer is possible, never wait longer (bounds the lag)
    earliest: float = 0.01  # answers sooner than this quantile of solve times are rare


def next_poll_after(elapsed: float, estimate: Estimate, timing: PollTiming) -> float:
    """Seconds from now until the next poll of a job `elapsed` seconds old.

    An answer is possible only from the `earliest` quantile on; from then (or now, if
    later) each poll is placed where it has about `hit_chance` of finding the answer,
    given that it was not there before: so polls crowd where answers usually arrive
    (little lag for few polls) and thin out where they rarely do. No poll is more than
    `max_gap` after the moment an answer became possible, which bounds the lag.
    """
    start = max(elapsed, estimate.quantile(timing.earliest))  # nothing to find before
    later = bisect.bisect_right(estimate.ratios, start / estimate.scale)
    remaining = len(estimate.ratios) - later
    if remaining <= 0:
        return start - elapsed + timing.max_gap
    target = estimate.scale * estimate.ratios[later + int(remaining * timing.hit_chance)]
    return start - elapsed + min(max(target - start, timing.min_gap), timing.max_gap)


def solved_after(missed_at: float | None, found_at: float, timing: PollTiming) -> float:
    """When an answer was ready, as far as the polls tell: between the last poll that
    missed it (if any) and the one that found it, in seconds after the create.

    Not the moment it was found, which is later by the lag: learning that would place
    every poll later, so the lag would grow, and so on. A hit at the first poll is taken
    to have come in the 1.5 poll gaps before it, not just since the earliest likely
    moment: so answers sooner than the model expects still teach it.
    """
    if missed_at is not None:
        return (missed_at + found_at) / 2
    return max(MIN_SECONDS, found_at - 0.75 * timing.max_gap)


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
# Called once per watched job: its answer, or the exception that ends it (Expired, Lost,
# or a ChatinfoError such as AccessDenied).
Settled = Callable[[int, Answer | Exception], None]


class PollScheduler:
    """One loop that polls every pending job, within the poll budget, earliest due first.

    A pending job costs an entry here and nothing else: no task waits for it. When its
    answer arrives (or it ends), `settled` is called and the owner carries it on.
    """

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
        self._loop_task: asyncio.Task[None] | None = None
        self._calm_until = 0.0

    @property
    def pending(self) -> int:
        return len(self._entries)

    @property
    def running(self) -> bool:
        return self._loop_task is not None and not self._loop_task.done()

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._serve(), name="poll-scheduler")

    async def stop(self) -> None:
        tasks = [t for t in (self._loop_task, *self._polls) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
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
            due=now + next_poll_after(age, estimate, self._timing), order=next(self._order),
            job_id=job_id, upstream_id=upstream_id, mode=sys.intern(mode), length=length,
            started=now - age, deadline=now - age + max_wait, estimate=estimate,
            missed_at=None, blind=age > estimate.quantile(self._timing.earliest))
        self._entries[job_id] = entry
        self._push(entry)

    def drop(self, job_id: int) -> None:
        """Stop polling for the job; `settled` will not be called for it."""
        self._entries.pop(job_id, None)

    def _push(self, entry: _Entry) -> None:
        entry.due = min(entry.due, entry.deadline)
        heapq.heappush(self._heap, entry)
        self._changed.set()

    def _watched(self, entry: _Entry) -> bool:
        return self._entries.get(entry.job_id) is entry

    def _settle(self, entry: _Entry, outcome: Answer | Exception) -> None:
        if not self._watched(entry):
            return  # dropped meanwhile
        del self._entries[entry.job_id]
        if isinstance(outcome, Answer) and outcome.solved_after is not None:
            # Only real answers teach the model; a timeout or a shutdown says nothing.
            self._solve_times.learn(entry.mode, entry.length, outcome.solved_after)
        self._settled(entry.job_id, outcome)

    def _bracket(self, entry: _Entry, found_at: float) -> float | None:
        if entry.blind and entry.missed_at is None:
            return None
        return solved_after(entry.missed_at, found_at, self._timing)

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
        finally:
            self._in_flight.release()
            entry.polls += 1
        if result is not None:
            self._settle(entry, Answer(result, self._bracket(entry, asked_at)))
            return
        entry.missed_at = asked_at
        if not self._watched(entry):
            return
        crashpoints.reach(crashpoints.WHILE_POLLING)
        age = time.monotonic() - entry.started
        entry.due = time.monotonic() + next_poll_after(age, entry.estimate, self._timing)
        self._push(entry)


class FairQueue:
    """create_request slots, handed out round-robin between users as the budget allows.

    After a 429 (which spent nothing) the queue honours the server's window: it grants
    nothing until the oldest call of the last window has left it, then lets one call
    through as a probe and grants no other until that one's outcome is known (`sent`).
    While paused (a balance check), it grants nothing at all.
    """

    PROBE_TIMEOUT = 60.0  # longer than a create call with its retries

    def __init__(self, limiter: SlidingWindowLimiter) -> None:
        self._limiter = limiter
        # user -> their waiting (job id, ticket)s, users in round-robin order
        self._waiting: OrderedDict[int, deque[tuple[int, asyncio.Future[None]]]] = OrderedDict()
        self._changed = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._hold_until = 0.0  # monotonic; no grant before it
        self._need_probe = False  # a 429 came: the next grant is a probe
        self._probe_job: int | None = None  # the probe out now
        self._probe_done = asyncio.Event()
        self._open = asyncio.Event()  # cleared while the balance is checked
        self._open.set()
        self.outstanding = 0  # granted calls whose outcome (`sent`) is not known yet

    @property
    def running(self) -> bool:
        return self._loop_task is not None and not self._loop_task.done()

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def ahead_of_new(self, user_id: int) -> int:
        """About how many requests go before one this user queues now (round-robin)."""
        mine = len(self._waiting.get(user_id, ()))
        return mine + sum(min(len(queue), mine + 1)
                          for uid, queue in self._waiting.items() if uid != user_id)

    def ahead(self, job_id: int) -> int | None:
        """How many queued requests go before this job's (None: it is not waiting)."""
        users = list(self._waiting.items())
        for place, (_user, queue) in enumerate(users):
            round_ = next((n for n, (key, _) in enumerate(queue) if key == job_id), None)
            if round_ is None:
                continue
            # Every earlier round of everyone, then this round's turns of the users before.
            return sum(min(len(q), round_) for _, q in users) + sum(
                1 for _, q in users[:place] if len(q) > round_)
        return None

    @property
    def held(self) -> bool:
        """Whether a 429 (or a balance check) holds the queue now."""
        return self._hold_until > time.monotonic() or not self._open.is_set()

    def eta(self, ahead: int) -> float:
        """Seconds until the request with `ahead` others before it is sent, at the budget."""
        held = max(0.0, self._hold_until - time.monotonic(), self._limiter.delay())
        return held + ahead * self._limiter.period / self._limiter.limit

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._serve(), name="create-queue")

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)

    async def turn(self, user_id: int, job_id: int, *, first: bool = False) -> None:
        """Wait until this user's request may be sent; the budget slot is taken for it.

        The caller then reports how the call went with `sent`. `first`: ahead of the
        user's other waiting requests (one sent before and queued again).
        """
        ticket = asyncio.get_running_loop().create_future()
        queue = self._waiting.setdefault(user_id, deque())
        (queue.appendleft if first else queue.append)((job_id, ticket))
        self._changed.set()
        try:
            await ticket
        except asyncio.CancelledError:
            if ticket.done() and not ticket.cancelled():
                self.give_back(job_id)  # granted, but the call will not be made
            else:
                self._forget(user_id, ticket)
            raise

    def give_back(self, job_id: int) -> None:
        """A granted slot whose call will not be made."""
        self._limiter.release_last()
        self.sent(job_id, rate_limited=False)

    def pause(self) -> None:
        """Grant nothing until `resume`: the balance is being compared."""
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    def sent(self, job_id: int, *, rate_limited: bool) -> None:
        """How the granted call went: a 429 holds the queue for the server's window."""
        self.outstanding -= 1
        if rate_limited:
            self._hold_until = max(self._hold_until, self._limiter.window_clears_at())
            self._need_probe = True
            log.warning("create_request got 429: holding new requests for %.0f s",
                        self._hold_until - time.monotonic())
        if job_id == self._probe_job:
            self._probe_job = None
            self._probe_done.set()

    def _forget(self, user_id: int, ticket: asyncio.Future[None]) -> None:
        queue = self._waiting.get(user_id)
        entry = next((item for item in queue or () if item[1] is ticket), None)
        if queue is not None and entry is not None:
            queue.remove(entry)
            if not queue:
                del self._waiting[user_id]

    async def _serve(self) -> None:
        while True:
            if not self._waiting:
                self._changed.clear()
                await self._changed.wait()
                continue
            await self._open.wait()
            if (held := self._hold_until - time.monotonic()) > 0:
                await asyncio.sleep(held)
                continue  # the hold may have grown, or a pause come, meanwhile
            await self._limiter.acquire()
            if self.held:  # a pause or a 429 came while waiting for the budget
                self._limiter.release_last()
                continue
            if not await self._grant():
                self._limiter.release_last()  # everyone waiting went away meanwhile

    async def _grant(self) -> bool:
        """Hand the slot just taken to the next request; after a 429, as a probe whose
        outcome is awaited before anything else is granted."""
        entry = self._next_ticket()
        if entry is None:
            return False
        job_id, ticket = entry
        self.outstanding += 1
        if not self._need_probe:
            ticket.set_result(None)
            return True
        self._need_probe, self._probe_job = False, job_id
        self._probe_done.clear()
        ticket.set_result(None)
        with suppress(TimeoutError):  # a caller that never reports cannot stall us
            async with asyncio.timeout(self.PROBE_TIMEOUT):
                await self._probe_done.wait()
        self._probe_job = None
        return True

    def _next_ticket(self) -> tuple[int, asyncio.Future[None]] | None:
        while self._waiting:
            user_id, queue = self._waiting.popitem(last=False)
            job_id, ticket = queue.popleft()
            if queue:
                self._waiting[user_id] = queue  # to the back of the round
            if not ticket.done():
                return job_id, ticket
        return None
