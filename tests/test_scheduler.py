"""The poll scheduler's and the create queue's rules, without timing assertions."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from dataclasses import replace

import pytest
from aiogram.methods import EditMessageText

from bot.jobs import runner as runner_module
from bot.jobs.create_queue import FairQueue
from bot.jobs.poll_scheduler import (
    Answer,
    Lost,
    Poll,
    PollScheduler,
    PollTiming,
    next_poll_after,
    possible_from,
)
from bot.jobs.solve_times import MIN_SIGMA, PRIOR, RECENT, Estimate, SolveTimes
from bot.upstream.client import CREATE, RateLimited, RequestRejected
from bot.upstream.limiter import SlidingWindowLimiter
from storage.jobs import JobState
from tests.benchmarks.load import peak_in_window
from tests.fakes.telegram_api import message_update
from tests.harness import AppFactory, asked, wait_until


class RecordingLimiter(SlidingWindowLimiter):
    """Remembers the moment of every slot it granted."""

    def __init__(self, limit: int, period: float) -> None:
        super().__init__(limit, period)
        self.granted: list[float] = []

    async def acquire(self) -> None:
        await super().acquire()
        self.granted.append(self._stamps[-1])


EAGER = PollTiming(hit_chance=0.0, min_gap=0.0, max_gap=0.0, earliest=0.0)


class Waiting:
    """A started scheduler whose outcomes can be awaited job by job, as futures."""

    def __init__(self, poll: Poll, limiter: SlidingWindowLimiter,
                 timing: PollTiming = EAGER) -> None:
        self.outcomes: dict[int, asyncio.Future[str]] = {}
        self.solved_after: dict[int, float | None] = {}
        self.solve_times = SolveTimes(prior=(0.05, 0.1))
        self.scheduler = PollScheduler(poll, limiter, self.solve_times, timing,
                                       settled=self._settled)

    def _settled(self, job_id: int, outcome: Answer | Exception) -> None:
        if isinstance(outcome, Exception):
            self.outcomes[job_id].set_exception(outcome)
        else:
            self.outcomes[job_id].set_result(outcome.text)
            self.solved_after[job_id] = outcome.solved_after

    def watch(self, job_id: int, age: float = 0.0) -> asyncio.Future[str]:
        self.outcomes[job_id] = asyncio.get_running_loop().create_future()
        self.scheduler.watch(job_id=job_id, upstream_id=job_id, mode="chat", length=10,
                             age=age, max_wait=60.0)
        return self.outcomes[job_id]

    async def __aenter__(self) -> Waiting:
        self.scheduler.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.scheduler.stop()


async def test_polls_never_exceed_the_budget_in_any_window() -> None:
    limiter = RecordingLimiter(limit=10, period=0.3)
    polls: list[int] = []

    async def poll(upstream_id: int) -> str | None:
        polls.append(upstream_id)
        return f"answer {upstream_id}" if polls.count(upstream_id) >= 3 else None

    async with Waiting(poll, limiter) as waiting:
        answers = await asyncio.gather(*(waiting.watch(n) for n in range(12)))

    assert answers == [f"answer {n}" for n in range(12)]
    assert len(polls) == len(limiter.granted) == 36  # every poll took a budget slot
    assert peak_in_window(limiter.granted, 0.3) <= 10


async def test_a_saturated_budget_still_serves_every_job_in_due_order() -> None:
    limiter = SlidingWindowLimiter(limit=4, period=0.2)
    order: list[int] = []

    async def poll(upstream_id: int) -> str | None:
        order.append(upstream_id)
        return "done" if order.count(upstream_id) == 2 else None

    # A second poll is due a gap after the first returns: later than every first poll is
    # due, however long it took to watch all twenty (a loaded machine) and however soon
    # the first returned.
    timing = PollTiming(hit_chance=0.0, min_gap=0.2, max_gap=0.2, earliest=0.0)
    async with Waiting(poll, limiter, timing) as waiting:
        await asyncio.gather(*(waiting.watch(n) for n in range(20)))

    first_round = order[:20]
    assert sorted(first_round) == list(range(20))  # everyone polled once before anyone twice


async def test_unknown_ids_end_the_wait_after_bounded_tries() -> None:
    calls: list[int] = []

    async def poll(upstream_id: int) -> str | None:
        calls.append(upstream_id)
        raise RequestRejected("get_response: rejected (HTTP 404)", 404)

    async with Waiting(poll, SlidingWindowLimiter(100, 1.0)) as waiting:
        with pytest.raises(Lost):
            await waiting.watch(7)
    assert calls == [7] * PollScheduler.MAX_REJECTIONS


async def test_what_is_learned_is_when_the_answer_came_as_the_polls_bracket_it() -> None:
    asked: dict[int, list[float]] = {}

    async def poll(upstream_id: int) -> str | None:
        asked.setdefault(upstream_id, []).append(asyncio.get_running_loop().time())
        # Job 1 is ready at its second poll, jobs 2 and 3 at their first.
        return "done" if upstream_id != 1 or len(asked[1]) == 2 else None

    timing = PollTiming(hit_chance=0.0, min_gap=0.5, max_gap=0.5, earliest=0.0)
    async with Waiting(poll, SlidingWindowLimiter(100, 1.0), timing) as waiting:
        watched_at = asyncio.get_running_loop().time()
        # Job 3 is resumed long after its create: its answer may be ready for ages.
        await asyncio.gather(waiting.watch(1), waiting.watch(2), waiting.watch(3, age=30.0))

    missed, found = (moment - watched_at for moment in asked[1])
    learned = waiting.solved_after[1]
    assert learned is not None and missed < learned < found  # not when it was seen
    first_hit = waiting.solved_after[2]
    assert first_hit is not None and first_hit < asked[2][0] - watched_at
    assert waiting.solved_after[3] is None  # a first poll after downtime tells nothing
    assert len(waiting.solve_times._overall) == 2  # what told nothing taught nothing


async def test_a_dropped_job_is_polled_no_more_and_never_settled() -> None:
    polled = asyncio.Event()
    calls: list[int] = []

    async def poll(upstream_id: int) -> str | None:
        calls.append(upstream_id)
        polled.set()
        return None if upstream_id == 1 else "done"

    async with Waiting(poll, SlidingWindowLimiter(100, 1.0)) as waiting:
        dropped = waiting.watch(1)
        await asyncio.wait_for(polled.wait(), 5)
        waiting.scheduler.drop(1)
        polls_at_drop = calls.count(1)
        assert waiting.scheduler.pending == 0
        assert await waiting.watch(2) == "done"  # polled after the drop took effect
    assert not dropped.done()
    # At most one more: a poll already granted its slot when the drop came.
    assert calls.count(1) <= polls_at_drop + 1


def test_solve_times_learn_a_line_per_mode() -> None:
    times = SolveTimes()
    for length in range(100, 2100, 100):
        times.learn("essay", length, 10 + length / 100)  # 10 s plus 1 s per 100 characters

    short, long = times.estimate("essay", 200), times.estimate("essay", 3000)
    assert short.quantile(0.5) == pytest.approx(12, rel=0.01)
    assert long.quantile(0.5) == pytest.approx(40, rel=0.01)
    assert short.sigma == MIN_SIGMA  # on the line: as sure as it ever gets
    unlearned = times.estimate("poems", 200)  # a mode without answers yet: all answers
    assert 11.0 < unlearned.median < 30.0 and unlearned.sigma > 0.2
    assert unlearned.bound == 30.0  # never first polled later than the slowest lately
    prior = SolveTimes().estimate("poems", 200)  # nothing learned
    assert min(PRIOR) < prior.median < max(PRIOR) and prior.bound == math.inf


def noisy(seconds: float, n: int, spread: float) -> float:
    """`seconds` off by a fixed pattern of relative errors of about `spread`."""
    return seconds * math.exp(spread * math.sin(n * 2.4))


def fast(length: int) -> float:
    return 2.0 + length / 100


def learn_slow_then_fast(times: SolveTimes, fast_answers: int) -> None:
    """300 answers from an earlier regime ten times as slow, then the latest ones."""
    for n in range(300):
        length = 50 + 37 * n % 900
        times.learn("chat", length, noisy(10 * fast(length), n, 0.1))
    for n in range(fast_answers):
        length = 50 + 53 * n % 900
        times.learn("chat", length, noisy(fast(length), n, 0.1))


def test_after_a_regime_change_the_first_poll_waits_no_longer_than_recent_answers() -> None:
    timing = PollTiming()
    before, after = SolveTimes(), SolveTimes()
    learn_slow_then_fast(before, 0)
    learn_slow_then_fast(after, RECENT)

    # Most of what the model knows is ten times too slow, but the first poll for the
    # next job is bounded by the slowest of the 20 latest answers at its length.
    first_before = next_poll_after(0.0, before.estimate("chat", 400), timing)
    first_after = next_poll_after(0.0, after.estimate("chat", 400), timing)
    assert first_before > 5 * fast(400)
    assert first_after <= 1.2 * fast(400) + timing.max_gap


def test_first_polls_that_keep_finding_answers_move_the_first_poll_earlier() -> None:
    # Every answer learned is where a first poll found it: all the model hears is that
    # answers took about as long as it thought, since the polls never looked sooner.
    times, timing = SolveTimes(), PollTiming()
    learn_slow_then_fast(times, 0)
    first_polls = []
    for _ in range(12):
        estimate = times.estimate("chat", 400)
        first = next_poll_after(0.0, estimate, timing)
        first_polls.append(first)
        times.first_poll("chat", estimate, asked_at=first, found=True)  # ready long ago

    assert first_polls[-1] < first_polls[0] / 8  # it went looking sooner
    assert first_polls[-1] <= 2 * fast(400) + timing.max_gap

    # And once first polls find nothing that early, they move back towards the model.
    for _ in range(40):
        estimate = times.estimate("chat", 400)
        times.first_poll("chat", estimate, asked_at=next_poll_after(0.0, estimate, timing),
                         found=False)
    assert next_poll_after(0.0, times.estimate("chat", 400), timing) > 4 * first_polls[-1]


def test_first_polls_that_find_answers_as_often_as_expected_change_nothing() -> None:
    times, timing = SolveTimes(), PollTiming()
    for n in range(300):
        times.learn("chat", 100, noisy(5.0, n, 0.1))
    estimate = times.estimate("chat", 100)
    first = next_poll_after(0.0, estimate, timing)
    chance = 1.0 - estimate.survival(first)
    for n in range(200):  # hits and misses in the proportion the estimate holds
        times.first_poll("chat", estimate, asked_at=first, found=(n * chance) % 1.0 < chance)
    assert times.estimate("chat", 100).early == 1.0


def test_the_window_widens_with_the_residuals_and_follows_the_latest() -> None:
    def polls_for(times: SolveTimes, seconds: float) -> int:
        estimate, elapsed, polls = times.estimate("chat", 100), 0.0, 0
        while polls == 0 or elapsed < seconds:
            elapsed += next_poll_after(elapsed, estimate, PollTiming())
            polls += 1
        return polls

    precise, rough, calmed = SolveTimes(), SolveTimes(), SolveTimes()
    for n in range(300):
        precise.learn("chat", 100, noisy(20.0, n, 0.05))
        rough.learn("chat", 100, noisy(20.0, n, 0.8))
        calmed.learn("chat", 100, noisy(20.0, n, 0.8))
    for n in range(90):  # three half-lives of good predictions since
        calmed.learn("chat", 100, noisy(20.0, n, 0.05))

    sigmas = [t.estimate("chat", 100).sigma for t in (precise, rough, calmed)]
    assert sigmas[0] < 0.1 and sigmas[1] > 0.4
    assert sigmas[2] < sigmas[1] / 2  # the recent residuals weigh most
    # A rough model looks over a wider window: more polls for the same answer.
    assert polls_for(precise, 21.0) < polls_for(rough, 21.0)


def test_when_all_modes_get_harder_to_predict_a_quiet_mode_widens_too() -> None:
    times = SolveTimes()
    for n in range(300):
        times.learn("chat", 100, noisy(5.0, n, 0.05))
        times.learn("essay", 100, noisy(20.0, n, 0.05))
    quiet_before = times.estimate("essay", 100).sigma
    for n in range(40):  # upstream turns erratic; only chat answers come meanwhile
        times.estimate("chat", 100)  # as the scheduler does when the job is watched
        times.learn("chat", 100, noisy(5.0, n, 0.9))

    assert quiet_before < 0.1
    assert times.estimate("essay", 100).sigma > 0.4  # without an answer of its own


def test_history_is_learned_newest_last() -> None:
    newest_fast, newest_slow = SolveTimes(), SolveTimes()
    newest_fast.learn_all([("chat", 100, 5.0)] * 40 + [("chat", 100, 50.0)] * 260)
    newest_slow.learn_all([("chat", 100, 50.0)] * 40 + [("chat", 100, 5.0)] * 260)
    middle = math.sqrt(5.0 * 50.0)  # where both would be if all weighed alike
    assert newest_fast.estimate("chat", 100).median < middle  # the 40 latest weigh most
    assert newest_slow.estimate("chat", 100).median > middle


def test_polls_wait_for_a_possible_answer_then_crowd_then_thin_out() -> None:
    estimate = Estimate(10.0, 0.05)
    timing = PollTiming(hit_chance=0.4, min_gap=0.3, max_gap=2.0, earliest=0.01)
    moments, elapsed = [], 0.0
    while elapsed < 25:
        elapsed += next_poll_after(elapsed, estimate, timing)
        moments.append(elapsed)

    # Nothing is likely ready before 8.9 s (the 1% quantile); by 10 s half the answers are.
    assert estimate.quantile(0.01) < moments[0] <= estimate.quantile(0.01) + timing.max_gap
    inside = [m for m in moments if m <= 11]
    assert len(inside) <= 4  # the likely window takes a few polls, not one a second
    gaps = [b - a for a, b in itertools.pairwise(moments)]
    assert all(0.3 - 1e-9 <= gap <= 2.0 + 1e-9 for gap in gaps)
    assert gaps[-1] == pytest.approx(2.0)  # the overdue tail: every max_gap, so the lag
    # stays bounded


def test_no_poll_is_more_than_max_gap_after_an_answer_became_possible() -> None:
    timing = PollTiming()
    for median, sigma, bound in itertools.product((1.0, 8.0, 90.0), (0.05, 0.3, 0.9, 2.0),
                                                  (math.inf, 3.0)):
        estimate = Estimate(median, sigma, bound)
        possible = possible_from(estimate, timing)
        assert possible <= bound
        assert next_poll_after(0.0, estimate, timing) <= possible + timing.max_gap
        for elapsed in (possible, possible + 0.5, 2 * median, 10 * median + 100):
            assert timing.min_gap <= next_poll_after(elapsed, estimate, timing) \
                <= timing.max_gap


def test_the_first_poll_comes_within_max_gap_of_the_earliest_answer() -> None:
    widely_spread = Estimate(30.0, 1.0)  # 3 s to 300 s
    timing = PollTiming(hit_chance=0.5, min_gap=0.3, max_gap=2.0, earliest=0.01)
    earliest = widely_spread.quantile(0.01)

    assert next_poll_after(0.0, widely_spread, timing) == pytest.approx(earliest + 2.0)
    assert next_poll_after(30.0, widely_spread, timing) == 2.0


def test_a_proven_narrow_spread_polls_closer_while_behind_the_sample_loop() -> None:
    timing = PollTiming()
    narrow, wide = Estimate(8.0, 0.2), Estimate(8.0, 0.6)
    elapsed = 7.0  # the sample loop's pace, one poll every 2 s, is 3.5 polls by now
    usual = next_poll_after(elapsed, narrow, timing)

    assert next_poll_after(elapsed, narrow, timing, polls=3) < usual  # eager: less lag
    assert next_poll_after(elapsed, narrow, timing, polls=4) == usual  # ahead of the loop
    # A wide spread would spread them thin: as usual.
    assert next_poll_after(elapsed, wide, timing, polls=1) == next_poll_after(elapsed, wide,
                                                                                timing)


def test_eager_polls_never_get_ahead_of_the_sample_loop() -> None:
    """Eager polls add none beyond what the usual timing or the loop's pace makes (but
    for one moved earlier, which moves the usual polls after it earlier too)."""
    timing = PollTiming()

    def polled(estimate: Estimate, *, eager: bool) -> list[float]:
        moments: list[float] = []
        while not moments or moments[-1] < 3 * estimate.median + 20:  # no answer comes
            elapsed = moments[-1] if moments else 0.0
            moments.append(elapsed + next_poll_after(
                elapsed, estimate, timing, polls=len(moments) if eager else None))
        return moments

    for median, sigma in itertools.product((1.0, 4.0, 8.0, 30.0), (0.05, 0.1, 0.2, 0.3)):
        estimate = Estimate(median, sigma)
        usual, eager = polled(estimate, eager=False), polled(estimate, eager=True)
        assert eager[0] <= usual[0]  # it only ever brings polls closer
        for moment in eager:
            made = sum(1 for m in eager if m <= moment)
            allowed = max(sum(1 for m in usual if m <= moment),
                          int(moment / timing.loop_every) + 1)
            assert made <= allowed + 1, (median, sigma, moment)  # +1: a poll moved earlier


def learned_predictable(times: SolveTimes) -> Estimate:
    """300 chat answers of about 20 s, each within ±5%: a narrow spread."""
    for n in range(300):
        times.learn("chat", 100, noisy(20.0, n, 0.05))
    return times.estimate("chat", 100)


def polled_at(estimate: Estimate, timing: PollTiming, *, until: float,
              proven: bool) -> list[float]:
    """When a job whose answer does not come is polled, by the scheduler's rule."""
    moments: list[float] = []
    while not moments or moments[-1] < until:
        elapsed = moments[-1] if moments else 0.0
        last_poll = None if proven else elapsed
        moments.append(elapsed + next_poll_after(elapsed, estimate, timing,
                                                 last_poll=last_poll))
    return moments


def find_as_predicted(times: SolveTimes, estimate: Estimate, answers: int) -> None:
    """Answers found where the estimate has them, each bracketed by polls 1 s apart."""
    for n in range(answers):
        ready = noisy(estimate.median, n, estimate.sigma)
        times.found(estimate, missed_at=ready - 0.5, found_at=ready + 0.5)


def test_until_answers_prove_a_learned_spread_jobs_are_polled_every_safety_gap() -> None:
    # Warm from a history that was predictable; upstream may have changed since.
    times, timing = SolveTimes(), PollTiming()
    estimate = learned_predictable(times)
    assert estimate.sigma < 0.1 and not times.spread_proven
    doubting = polled_at(estimate, timing, until=estimate.median, proven=False)

    # From when any answer is plausible at all, however wrong the learned spread, a poll
    # at least every safety_gap: an answer far sooner than the model holds waits no more.
    plausible = replace(estimate, sigma=timing.safety_spread).quantile(timing.earliest)
    assert doubting[0] <= plausible + timing.safety_gap
    assert all(b - a <= timing.safety_gap + 1e-9 for a, b in itertools.pairwise(doubting))

    find_as_predicted(times, estimate, 40)
    assert times.spread_proven
    proven = polled_at(estimate, timing, until=estimate.median, proven=True)
    assert proven[0] >= estimate.quantile(timing.earliest)  # only where answers come
    assert len(proven) < len(doubting) / 2


def test_answers_sooner_than_a_proven_spread_allows_bring_it_into_doubt() -> None:
    times = SolveTimes()
    estimate = learned_predictable(times)
    find_as_predicted(times, estimate, 40)
    assert times.spread_proven and times.doubts == 0

    for _ in range(4):  # first polls find answers ready long before the model's window
        times.found(estimate, missed_at=None, found_at=estimate.median / 3)
    assert not times.spread_proven and times.doubts == 1

    find_as_predicted(times, estimate, 40)  # the spread holds again
    assert times.spread_proven


def test_a_few_answers_off_the_spread_do_not_bring_it_into_doubt() -> None:
    times = SolveTimes()
    estimate = learned_predictable(times)
    times.found(estimate, missed_at=None, found_at=0.0)  # polled at once: tells nothing
    for n in range(400):  # one answer in 40 far off, as a 2% tail of odd requests
        find_as_predicted(times, estimate, 1 if n % 40 else 0)
        if n % 40 == 0:
            times.found(estimate, missed_at=None, found_at=estimate.median / 3)
    assert times.doubts == 0


async def test_jobs_waiting_are_planned_again_when_the_spread_comes_into_doubt() -> None:
    async def poll(upstream_id: int) -> str | None:
        return None

    solve_times = SolveTimes()
    estimate = learned_predictable(solve_times)
    find_as_predicted(solve_times, estimate, 40)
    scheduler = PollScheduler(poll, SlidingWindowLimiter(100, 1.0), solve_times,
                              settled=lambda *_: None)
    scheduler.watch(job_id=1, upstream_id=1, mode="chat", length=100, age=0.0,
                    max_wait=600.0)
    planned = scheduler._heap[0].due - time.monotonic()
    assert planned > estimate.quantile(0.001)  # a proven spread: polled in its window

    for _ in range(4):
        solve_times.found(estimate, missed_at=None, found_at=estimate.median / 3)
    scheduler._follow_doubt()  # as after an answer found
    replanned = scheduler._heap[0].due - time.monotonic()
    assert replanned <= PollTiming().safety_gap + estimate.median * 0.1
    assert replanned < planned / 2


def test_the_limiter_tells_when_most_of_the_budget_is_used() -> None:
    now = [0.0]
    limiter = SlidingWindowLimiter(10, 1.0, clock=lambda: now[0])
    limiter._stamps.extend([0.0] * 7)
    assert not limiter.busy(0.8)
    limiter._stamps.append(0.0)
    assert limiter.busy(0.8)
    now[0] = 1.5  # the window has passed
    assert not limiter.busy(0.8)


async def test_the_create_queue_serves_users_round_robin() -> None:
    queue = FairQueue(SlidingWindowLimiter(limit=1, period=0.02))
    served: list[str] = []

    async def request(user: int, job_id: int, name: str) -> None:
        await queue.turn(user, job_id)
        served.append(name)
        queue.sent(job_id, rate_limited=False)

    heavy = [asyncio.create_task(request(1, n, f"heavy{n}")) for n in range(6)]
    light = [asyncio.create_task(request(2, 10 + n, f"light{n}")) for n in range(2)]
    queue.start()
    try:
        await asyncio.gather(*heavy, *light)
    finally:
        await queue.stop()

    assert served[:4] == ["heavy0", "light0", "heavy1", "light1"]
    assert served[4:] == ["heavy2", "heavy3", "heavy4", "heavy5"]


async def test_after_a_429_the_queue_waits_out_the_window_then_sends_one_probe() -> None:
    period = 0.3
    limiter = SlidingWindowLimiter(limit=100, period=period)
    queue = FairQueue(limiter)
    granted: list[tuple[int, float]] = []
    started = time.monotonic()

    async def request(job_id: int) -> None:
        await queue.turn(job_id, job_id)
        granted.append((job_id, time.monotonic() - started))

    queue.start()
    try:
        first = asyncio.create_task(request(1))
        await first
        queue.sent(1, rate_limited=True)  # the server said 429 to it
        assert queue.held
        waiting = [asyncio.create_task(request(n)) for n in (2, 3, 4)]
        await wait_until(lambda: len(granted) == 2, timeout=2, what="the probe")
        probe, at = granted[1]
        assert at >= period * 0.9  # not before the 429'd call left the window
        await asyncio.sleep(0.1)
        assert len(granted) == 2  # nothing else while the probe is out
        queue.sent(probe, rate_limited=False)  # it went through
        await asyncio.gather(*waiting)
    finally:
        await queue.stop()
    assert len(granted) == 4 and queue.outstanding == 2  # the last two still to report


async def test_a_paused_queue_grants_nothing_until_resumed() -> None:
    queue = FairQueue(SlidingWindowLimiter(limit=100, period=1.0))
    queue.pause()
    queue.start()
    try:
        waiting = asyncio.create_task(queue.turn(1, 1))
        await asyncio.sleep(0.1)
        assert not waiting.done() and queue.outstanding == 0
        queue.resume()
        await asyncio.wait_for(waiting, 1.0)
        assert queue.outstanding == 1
    finally:
        await queue.stop()


async def test_no_more_calls_are_granted_than_may_be_in_flight() -> None:
    queue = FairQueue(SlidingWindowLimiter(limit=100, period=1.0), in_flight=2)
    queue.start()
    try:
        turns = [asyncio.create_task(queue.turn(1, job_id)) for job_id in range(5)]
        await asyncio.wait_for(turns[0], 1.0)
        queue.sent(0, rate_limited=False)  # the start's probe went through
        await wait_until(lambda: sum(t.done() for t in turns) == 3, timeout=2, what="two grants")
        await asyncio.sleep(0.05)  # the budget has room for all four: only the cap holds
        assert [t.done() for t in turns] == [True, True, True, False, False]
        queue.sent(1, rate_limited=False)  # one call ends: one more may go
        await asyncio.wait_for(turns[3], 1.0)
        assert not turns[4].done() and queue.outstanding == 2
    finally:
        await queue.stop()


async def test_while_a_failed_create_is_settled_calls_go_one_at_a_time_but_for_slow_ones(
        ) -> None:
    careful = [True]
    queue = FairQueue(SlidingWindowLimiter(limit=100, period=1.0), in_flight=16,
                      careful=lambda: careful[0], slow_after=0.3)
    queue.start()
    try:
        turns = [asyncio.create_task(queue.turn(job_id, job_id)) for job_id in range(6)]
        await asyncio.wait_for(turns[0], 1.0)
        queue.sent(0, rate_limited=False)  # the start's probe went through
        await asyncio.wait_for(turns[1], 1.0)
        await asyncio.sleep(0.1)
        assert [t.done() for t in turns] == [True, True, False, False, False, False]
        queue.sent(1, rate_limited=False)  # it ended: the next goes
        await asyncio.wait_for(turns[2], 1.0)
        started = time.monotonic()
        await asyncio.wait_for(turns[3], 2.0)  # 2 is slow: it no longer holds the others
        assert time.monotonic() - started >= 0.25 and not turns[4].done()
        careful[0] = False  # every failed create decided: the cap grows back
        queue.sent(3, rate_limited=False)
        await asyncio.wait_for(asyncio.gather(*turns[4:]), 1.0)
        assert queue.outstanding == 3  # 2 (slow), 4 and 5 out together
    finally:
        await queue.stop()


async def test_a_backlog_one_at_a_time_would_take_too_long_over_lifts_the_care() -> None:
    queue = FairQueue(SlidingWindowLimiter(limit=100, period=1.0), in_flight=4,
                      careful=lambda: True, lift_after=1.0)
    queue.start()
    try:
        turns = [asyncio.create_task(queue.turn(job_id, job_id)) for job_id in range(9)]
        await asyncio.wait_for(turns[0], 1.0)
        queue.sent(0, rate_limited=False)  # the start's probe, back at once
        await asyncio.wait_for(turns[1], 1.0)
        await asyncio.sleep(0.05)  # quick calls: seven waiting go one at a time
        assert queue.outstanding == 1 and queue.queued == 7
        await asyncio.sleep(0.5)
        queue.sent(1, rate_limited=False)  # seven at a quarter of a second each: too long
        await wait_until(lambda: queue.outstanding == 4, timeout=2, what="four out at once")
    finally:
        await queue.stop()


async def test_a_backlog_is_let_out_one_more_at_a_time_for_each_call_that_ends() -> None:
    queue = FairQueue(SlidingWindowLimiter(limit=100, period=1.0), in_flight=16)
    queue.start()
    try:
        turns = [asyncio.create_task(queue.turn(job_id, job_id)) for job_id in range(8)]
        out: list[int] = []

        def granted_now() -> int:
            return sum(turn.done() for turn in turns)

        for ended, granted in enumerate((1, 3, 5, 7)):  # 1 out at once, then 2, 3, 4
            await wait_until(lambda: granted_now() >= granted, timeout=2,  # noqa: B023
                             what=f"{granted} granted")
            await asyncio.sleep(0.05)
            assert granted_now() == granted
            out.append(queue.outstanding)
            queue.sent(ended, rate_limited=False)
        assert out == [1, 2, 3, 4]
    finally:
        await queue.stop()


async def test_a_slow_probe_at_the_start_holds_the_others_only_briefly() -> None:
    queue = FairQueue(SlidingWindowLimiter(limit=100, period=0.3))
    queue.start()
    try:
        turns = [asyncio.create_task(queue.turn(job_id, job_id)) for job_id in range(3)]
        await asyncio.wait_for(turns[0], 1.0)  # out, and never reports in time
        await asyncio.wait_for(turns[1], FairQueue.START_PROBE_TIMEOUT + 2)
        queue.sent(1, rate_limited=False)
        await asyncio.wait_for(turns[2], 1.0)
    finally:
        await queue.stop()


async def test_the_first_call_after_a_start_is_a_probe() -> None:
    """The server's window may be full (our calls before a restart, another program's):
    a 429 storm met at a start costs one 429, not a burst of them."""
    queue = FairQueue(SlidingWindowLimiter(limit=100, period=0.3))
    queue.start()
    try:
        turns = [asyncio.create_task(queue.turn(job_id, job_id)) for job_id in range(3)]
        await asyncio.wait_for(turns[0], 1.0)
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in turns[1:])  # nothing else while the probe is out
        queue.sent(0, rate_limited=True)  # a storm: the queue holds for the window
        assert queue.held
        await asyncio.wait_for(turns[1], 2.0)  # the next probe, once the window cleared
        assert not turns[2].done()
        queue.sent(1, rate_limited=False)  # the storm is over: the rest go
        await asyncio.wait_for(turns[2], 1.0)
    finally:
        await queue.stop()


async def test_a_restart_counts_the_creates_of_the_last_window_in_its_budget(
        make_app: AppFactory) -> None:
    """The server's window still holds them: a 429 after the start is then waited out until
    the oldest leaves it, not for a whole window from the first call of the new run."""
    first = await make_app()
    for n in range(3):
        await first.feed(message_update(100 + n, f"q{n}"))
    await first.settle()
    await first.runner.stop()

    second = await make_app()
    [lane] = second.runner.lanes.values()
    budget = lane.upstream.budget(CREATE)
    assert budget.in_use() == 0
    await second.runner.resume()
    assert budget.in_use() == 3


async def test_queued_requests_survive_a_restart(make_app: AppFactory,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_module, "RESUME_PAGE", 2)  # resumed over three pages
    first = await make_app(client_options={"create_per_min": 2, "window": 3600.0})
    for n in range(5):
        await first.feed(message_update(100 + n % 2, f"q{n}"))
    await first.chatinfo.wait_for(lambda: first.chatinfo.calls["create_request"] == 2)
    await first.runner.stop()  # a deploy while three requests wait in the queue
    queued = [await first.jobs.get(n) for n in range(3, 6)]
    assert all(job is not None and job.state is JobState.NEW for job in queued)

    second = await make_app()
    assert await second.runner.resume() == 5
    await second.settle()
    sent = sorted(asked(r.content) for r in second.chatinfo.requests)
    assert sent == [f"q{n}" for n in range(5)]
    answers = [asked(e.text.removeprefix("[chat] ")) for e in second.sent(EditMessageText)
               if e.text.startswith("[chat]")]
    assert sorted(answers) == [f"q{n}" for n in range(5)]


async def test_a_429_pauses_all_polling_before_the_next_call() -> None:
    moments: list[float] = []

    async def poll(upstream_id: int) -> str | None:
        moments.append(asyncio.get_running_loop().time())
        if len(moments) == 1:
            raise RateLimited("get_response: rate limited (429)")
        return "done"

    waiting = Waiting(poll, SlidingWindowLimiter(100, 1.0))
    waiting.scheduler.CALM_AFTER_429 = 0.3
    async with waiting:
        assert await waiting.watch(1) == "done"
    assert moments[1] - moments[0] >= 0.3
