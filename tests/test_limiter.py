"""SlidingWindowLimiter on a fake clock: no real waiting, exact times."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest

from bot.upstream.limiter import SlidingWindowLimiter

LIMIT = 5
PERIOD = 60.0


class FakeTime:
    """A clock whose sleep moves time forward by exactly the delay, then yields once."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        await asyncio.sleep(0)  # let other tasks run, as a real sleep would

    def limiter(self, limit: int = LIMIT, period: float = PERIOD) -> SlidingWindowLimiter:
        return SlidingWindowLimiter(limit, period, clock=self.clock, sleep=self.sleep)


def max_in_any_window(stamps: list[float], period: float) -> int:
    """The most calls in any half-open window [t, t + period); a busiest window can always
    be slid right until it starts at a call, so checking windows starting at calls suffices."""
    return max(sum(1 for s in stamps if t <= s < t + period) for t in stamps)


async def drive(
    acquire: Callable[[], Awaitable[None]], time: FakeTime, gaps: list[float]
) -> list[float]:
    """Before each call idle for `gap`, then acquire; return the time each call started."""
    starts: list[float] = []
    for gap in gaps:
        time.now += gap
        await acquire()
        starts.append(time.now)
    return starts


def random_gaps(seed: int, calls: int = 50) -> list[float]:
    """Bursts (gap 0), short gaps and the odd long pause, from a seeded generator."""
    rng = random.Random(seed)
    gaps: list[float] = []
    for _ in range(calls):
        roll = rng.random()
        if roll < 0.5:
            gaps.append(0.0)
        elif roll < 0.9:
            gaps.append(rng.uniform(0.0, 15.0))
        else:
            gaps.append(rng.uniform(30.0, 120.0))
    return gaps


class NaiveTokenBucket:
    """The usual bucket: `limit` tokens, refilled steadily at limit/period per second."""

    def __init__(self, limit: int, period: float, time: FakeTime) -> None:
        self.capacity, self.rate, self.time = float(limit), limit / period, time
        self.tokens, self.last = float(limit), time.now

    async def acquire(self) -> None:
        while True:
            now = self.time.now
            self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return
            await self.time.sleep((1.0 - self.tokens) / self.rate)


@pytest.mark.parametrize("limit", [0, -1])
def test_non_positive_limit_is_rejected(limit: int) -> None:
    with pytest.raises(ValueError):
        SlidingWindowLimiter(limit, PERIOD)


async def test_a_full_burst_goes_through_at_once() -> None:
    time = FakeTime(100.0)
    limiter = time.limiter()
    for _ in range(LIMIT):
        await limiter.acquire()
    assert time.now == 100.0
    assert time.sleeps == []
    assert limiter.in_use() == LIMIT
    assert limiter.delay() == PERIOD


async def test_the_next_call_waits_for_the_oldest_to_leave() -> None:
    time = FakeTime()
    limiter = time.limiter()
    await drive(limiter.acquire, time, [0.0, 10.0, 0.0, 0.0, 5.0])  # calls at 0,10,10,10,15
    await limiter.acquire()
    assert time.sleeps == [45.0]
    assert time.now == 60.0  # the call at 0 has left [60, 120)
    await limiter.acquire()
    assert time.now == 70.0  # then the one at 10


@pytest.mark.parametrize("seed", range(8))
async def test_every_window_holds_at_most_limit_calls(seed: int) -> None:
    time = FakeTime()
    limiter = time.limiter()
    gaps = random_gaps(seed)
    starts = await drive(limiter.acquire, time, gaps)
    assert len(starts) == len(gaps)
    assert max_in_any_window(starts, PERIOD) <= LIMIT
    # Not merely safe but tight: each call starts as soon as both its caller and the
    # window allow, i.e. at its arrival or when the call `limit` back leaves the window.
    for i, (gap, start) in enumerate(zip(gaps, starts, strict=True)):
        arrival = (starts[i - 1] if i else 0.0) + gap
        earliest = max(arrival, starts[i - LIMIT] + PERIOD) if i >= LIMIT else arrival
        assert start == pytest.approx(earliest, abs=1e-9), i


async def test_a_burst_then_a_steady_stream_stays_within_the_limit() -> None:
    time = FakeTime()
    starts = await drive(time.limiter().acquire, time, [0.0] * 50)
    assert max_in_any_window(starts, PERIOD) == LIMIT
    assert starts[::LIMIT] == [PERIOD * k for k in range(10)]  # five every minute, on the dot


async def test_a_naive_token_bucket_breaks_the_window() -> None:
    """Why the sliding window exists: the same workload through a token bucket with the same
    nominal rate puts almost twice the limit into the minute that holds the burst."""
    time = FakeTime()
    bucket = NaiveTokenBucket(LIMIT, PERIOD, time)
    starts = await drive(bucket.acquire, time, [0.0] * 50)
    assert max_in_any_window(starts, PERIOD) > LIMIT
    assert max_in_any_window(starts, PERIOD) == 2 * LIMIT - 1  # 5 at 0, then 12, 24, 36, 48


async def test_delay_and_in_use() -> None:
    time = FakeTime()
    limiter = time.limiter(limit=3, period=10.0)
    assert (limiter.delay(), limiter.in_use()) == (0.0, 0)
    await limiter.acquire()  # at 0
    time.now = 2.0
    await limiter.acquire()  # at 2
    assert (limiter.delay(), limiter.in_use()) == (0.0, 2)  # room for one more
    time.now = 5.0
    await limiter.acquire()  # at 5
    assert (limiter.delay(), limiter.in_use()) == (5.0, 3)
    time.now = 9.5
    assert (limiter.delay(), limiter.in_use()) == (0.5, 3)
    time.now = 10.0  # the call at 0 leaves the window exactly now
    assert (limiter.delay(), limiter.in_use()) == (0.0, 2)
    await limiter.acquire()  # at 10; window now holds 2, 5, 10
    assert (limiter.delay(), limiter.in_use()) == (2.0, 3)
    time.now = 100.0
    assert (limiter.delay(), limiter.in_use()) == (0.0, 0)
    assert time.sleeps == []  # every acquire above was allowed at once


async def test_calls_recalled_from_a_previous_run_fill_the_window() -> None:
    time = FakeTime(start=100.0)
    limiter = time.limiter(limit=3, period=10.0)
    limiter.recall([9.0, 4.0, 10.0, 25.0])  # those 10 s ago or more have left the window
    assert (limiter.delay(), limiter.in_use()) == (0.0, 2)
    assert limiter.window_clears_at() == 101.0  # the one made 9 s ago
    await limiter.acquire()  # at 100: the window holds 91, 96, 100
    assert (limiter.delay(), limiter.in_use()) == (1.0, 3)


async def test_concurrent_waiters_are_served_in_arrival_order() -> None:
    time = FakeTime()
    limiter = time.limiter(limit=1, period=10.0)
    served: list[tuple[str, float]] = []

    async def caller(name: str) -> None:
        await limiter.acquire()
        served.append((name, time.now))

    names = [f"caller-{i}" for i in range(10)]
    random.Random(7).shuffle(names)  # arrival order differs from any natural sort order
    tasks = [asyncio.create_task(caller(name)) for name in names]
    await asyncio.gather(*tasks)
    assert served == [(name, 10.0 * i) for i, name in enumerate(names)]


async def test_a_late_arrival_does_not_jump_the_queue() -> None:
    time = FakeTime()
    limiter = time.limiter(limit=1, period=10.0)
    served: list[str] = []

    async def caller(name: str) -> None:
        await limiter.acquire()
        served.append(name)

    await limiter.acquire()  # the window is full until 10
    first = asyncio.create_task(caller("first"))
    second = asyncio.create_task(caller("second"))
    await asyncio.sleep(0)  # both are now waiting, "first" inside its sleep
    late = asyncio.create_task(caller("late"))
    await asyncio.gather(first, second, late)
    assert served == ["first", "second", "late"]
    assert time.now == 30.0


async def test_a_cancelled_waiter_takes_no_slot() -> None:
    time = FakeTime()
    released = asyncio.Event()

    async def blocking_sleep(delay: float) -> None:
        await released.wait()
        time.now += delay

    limiter = SlidingWindowLimiter(1, 10.0, clock=time.clock, sleep=blocking_sleep)
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    assert not waiter.done()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limiter.in_use() == 1  # only the first call
    time.now = 10.0
    await asyncio.wait_for(limiter.acquire(), timeout=1.0)  # the lock was released
    assert limiter.in_use() == 1


async def test_429s_below_our_limit_lower_it_and_quiet_windows_raise_it_back() -> None:
    time = FakeTime()
    limiter = time.limiter(limit=40)
    for _ in range(10):
        await limiter.acquire()
    for _ in range(7):
        limiter.answered()
    assert not limiter.rate_limited() and not limiter.rate_limited()  # two: could be chance
    assert limiter.rate_limited()  # a third in the window: the server let about 7 through
    assert (limiter.limit, limiter.configured) == (7, 40)
    assert limiter.rate_limited() and limiter.limit == 6  # each later one refines it
    assert limiter.delay() > 0  # this window's calls are all it may make

    time.now += PERIOD  # a whole window without a 429
    await limiter.acquire()
    before = limiter.limit
    time.now += PERIOD
    await limiter.acquire()
    raised = before + (40 - before) // 10  # a tenth of the way back, each quiet window
    assert limiter.limit == raised > before
    time.now += PERIOD / 2
    await limiter.acquire()
    assert limiter.limit == raised  # at most once a window
    for _ in range(100):
        time.now += PERIOD
        await limiter.acquire()
    assert limiter.limit == 40  # never above what the settings allow


async def test_429s_scattered_among_answered_calls_do_not_lower_the_limit() -> None:
    """A few 429s in a busy window (a flaky proxy, not a limit) are not learned: lowering
    the limit for them starved the bot to a tenth of its budget in the soak."""
    time = FakeTime()
    limiter = time.limiter(limit=1000)
    for call in range(1, 2001):  # 200 calls a window for ten windows, one in 25 refused
        await limiter.acquire()
        if call % 25:
            limiter.answered()
        else:
            assert not limiter.rate_limited()
        time.now += PERIOD / 200
    assert limiter.limit == 1000


async def test_a_lowered_limit_climbs_back_while_429s_are_rare() -> None:
    time = FakeTime()
    limiter = time.limiter(limit=100)
    for _ in range(10):
        await limiter.acquire()
    for _ in range(7):
        limiter.answered()
    assert [limiter.rate_limited() for _ in range(3)] == [False, False, True]  # a storm
    assert limiter.limit == 7
    call = 0
    while time.now < 30 * PERIOD:  # then calls at the lowered limit, one in 30 refused
        call += 1
        await limiter.acquire()
        if call % 30:
            limiter.answered()
        else:
            limiter.rate_limited()
        time.now += PERIOD / max(1, limiter.limit)
    assert limiter.limit == 100


async def test_a_server_limit_below_ours_is_found_and_kept_to() -> None:
    """The server refuses every call past its own 60 a window; ours says 100. The limit
    settles near 60, and after the first windows few calls meet a 429."""
    time = FakeTime()
    limiter = time.limiter(limit=100)
    accepted: list[float] = []
    refusals_by_window = [0] * 20
    while time.now < 20 * PERIOD:
        await limiter.acquire()
        accepted[:] = [t for t in accepted if t > time.now - PERIOD]
        if len(accepted) < 60:
            accepted.append(time.now)
            limiter.answered()
        else:
            limiter.rate_limited()
            refusals_by_window[int(time.now // PERIOD)] += 1
        time.now += 0.1  # demand: 600 a window, far above either limit
    assert 50 <= limiter.limit <= 66
    # Each window wastes a few calls finding the edge again after a climb, never many.
    assert max(refusals_by_window) <= 0.15 * 60, refusals_by_window


async def test_a_server_refusing_everything_teaches_no_limit() -> None:
    """A storm of 429s met right after a start: nothing was let through, so nothing says
    where a limit lies; the queue waits the storm out, the budget stays."""
    time = FakeTime()
    limiter = time.limiter(limit=500)
    for _ in range(16):
        await limiter.acquire()
        assert not limiter.rate_limited()
    assert limiter.limit == 500


async def test_a_storm_after_answered_calls_does_not_starve_the_window_that_follows() -> None:
    """Another program takes the whole key for 30 s while we make 100 calls a window: the
    queue probes as each of our calls leaves the window, and every probe meets a 429.
    A limit of the server's own could not refuse with fewer calls answered than it let
    through before, so these are no limit: ours must not end the storm far below what
    the server was answering (it fell to 68 in the soak, against 130 a minute wanted)."""
    time = FakeTime()
    limiter = time.limiter(limit=500)
    for _ in range(200):  # two windows of 100 calls, all answered
        await limiter.acquire()
        limiter.answered()
        time.now += PERIOD / 100
    lowest = limiter.limit
    storm_ends = time.now + 30
    while time.now < storm_ends:  # a probe each time one of our calls leaves the window
        await limiter.acquire()
        limiter.rate_limited()
        lowest = min(lowest, limiter.limit)
        time.now += PERIOD / 100
    # The first 429s look like a limit at about what was answered, and lower it a little
    # until their answered calls are clearly fewer.
    assert lowest >= 80, lowest
    assert limiter.limit == 500  # the later ones showed it was no limit


async def test_a_storm_met_after_a_restart_does_not_starve_the_window_that_follows() -> None:
    """As above, but the storm begins just after a restart: the window holds the last
    run's 100 calls (recalled), this run has had five answered, then every probe meets a
    429 as the recalled calls leave the window."""
    time = FakeTime()
    limiter = time.limiter(limit=500)
    limiter.recall(age * PERIOD / 100 for age in range(1, 100))
    for _ in range(5):
        await limiter.acquire()
        limiter.answered()
        time.now += PERIOD / 100
    lowest = limiter.limit
    storm_ends = time.now + 30
    while time.now < storm_ends:
        await limiter.acquire()
        limiter.rate_limited()
        lowest = min(lowest, limiter.limit)
        time.now += PERIOD / 100
    assert lowest >= 80, lowest
    assert limiter.limit == 500
