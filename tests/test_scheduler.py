"""The poll scheduler's and the create queue's rules, without timing assertions."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from aiogram.methods import EditMessageText

from bot.chatinfo import RateLimited, RequestRejected
from bot.limiter import SlidingWindowLimiter
from bot.scheduler import (
    PRIOR,
    Estimate,
    FairQueue,
    Lost,
    PollScheduler,
    PollTiming,
    SolveTimes,
    next_poll_after,
)
from storage.jobs import JobState
from tests.benchmarks.load import peak_in_window
from tests.conftest import AppFactory
from tests.fakes.telegram_api import message_update


class RecordingLimiter(SlidingWindowLimiter):
    """Remembers the moment of every slot it granted."""

    def __init__(self, limit: int, period: float) -> None:
        super().__init__(limit, period)
        self.granted: list[float] = []

    async def acquire(self) -> None:
        await super().acquire()
        self.granted.append(self._stamps[-1])


async def test_polls_never_exceed_the_budget_in_any_window() -> None:
    limiter = RecordingLimiter(limit=10, period=0.3)
    polls: list[int] = []

    async def poll(upstream_id: int) -> str | None:
        polls.append(upstream_id)
        return f"answer {upstream_id}" if polls.count(upstream_id) >= 3 else None

    eager = PollTiming(hit_chance=0.0, min_gap=0.0, max_gap=0.0, earliest=0.0)
    scheduler = PollScheduler(poll, limiter, SolveTimes(), eager)
    scheduler.start()
    try:
        answers = await asyncio.gather(*(
            scheduler.answer(job_id=n, upstream_id=n, mode="chat", length=10, age=0.0,
                             max_wait=60.0) for n in range(12)))
    finally:
        await scheduler.stop()

    assert answers == [f"answer {n}" for n in range(12)]
    assert len(polls) == len(limiter.granted) == 36  # every poll took a budget slot
    assert peak_in_window(limiter.granted, 0.3) <= 10


async def test_a_saturated_budget_still_serves_every_job_in_due_order() -> None:
    limiter = SlidingWindowLimiter(limit=4, period=0.2)
    order: list[int] = []

    async def poll(upstream_id: int) -> str | None:
        order.append(upstream_id)
        return "done" if order.count(upstream_id) == 2 else None

    timing = PollTiming(hit_chance=0.0, min_gap=0.0, max_gap=0.0, earliest=0.0)
    scheduler = PollScheduler(poll, limiter, SolveTimes(), timing)
    scheduler.start()
    try:
        await asyncio.gather(*(
            scheduler.answer(job_id=n, upstream_id=n, mode="chat", length=10, age=0.0,
                             max_wait=60.0) for n in range(20)))
    finally:
        await scheduler.stop()

    first_round = order[:20]
    assert sorted(first_round) == list(range(20))  # everyone polled once before anyone twice


async def test_unknown_ids_end_the_wait_after_bounded_tries() -> None:
    calls: list[int] = []

    async def poll(upstream_id: int) -> str | None:
        calls.append(upstream_id)
        raise RequestRejected("get_response: rejected (HTTP 404)", 404)

    timing = PollTiming(hit_chance=0.0, min_gap=0.0, max_gap=0.0, earliest=0.0)
    scheduler = PollScheduler(poll, SlidingWindowLimiter(100, 1.0), SolveTimes(), timing)
    scheduler.start()
    try:
        with pytest.raises(Lost):
            await scheduler.answer(job_id=1, upstream_id=7, mode="chat", length=1, age=0.0,
                                   max_wait=60.0)
    finally:
        await scheduler.stop()
    assert calls == [7] * PollScheduler.MAX_REJECTIONS


def test_solve_times_learn_a_line_per_mode() -> None:
    times = SolveTimes()
    for length in range(100, 2100, 100):
        times.learn("essay", length, 10 + length / 100)  # 10 s plus 1 s per 100 characters

    short, long = times.estimate("essay", 200), times.estimate("essay", 3000)
    assert short.quantile(0.5) == pytest.approx(12, rel=0.01)
    assert long.quantile(0.5) == pytest.approx(40, rel=0.01)
    unlearned = times.estimate("poems", 200)  # a mode without answers yet: all answers
    assert (unlearned.scale, unlearned.ratios) == (1.0, [11.0 + n for n in range(20)])
    assert SolveTimes().estimate("poems", 200).ratios == list(PRIOR)  # nothing learned


def test_polls_wait_for_a_possible_answer_then_crowd_then_thin_out() -> None:
    estimate = Estimate(10.0, sorted([0.9, 0.95, 1.0, 1.0, 1.05, 1.1] * 10))
    timing = PollTiming(hit_chance=0.4, min_gap=0.3, max_gap=2.0, earliest=0.0)
    moments, elapsed = [], 0.0
    while elapsed < 20:
        elapsed += next_poll_after(elapsed, estimate, timing)
        moments.append(round(elapsed, 2))

    assert moments[0] == 9.0  # nothing can be ready before 9 s: no poll before
    inside = [m for m in moments if m <= 11]
    assert len(inside) <= 4  # the likely window takes a few polls, not one a second
    gaps = [b - a for a, b in itertools.pairwise(moments)]
    assert all(0.3 <= gap <= 2.0 for gap in gaps)
    assert gaps[-1] == 2.0  # the overdue tail: every max_gap, so the lag stays bounded


async def test_the_create_queue_serves_users_round_robin() -> None:
    queue = FairQueue(SlidingWindowLimiter(limit=1, period=0.02))
    served: list[str] = []

    async def request(user: int, name: str) -> None:
        await queue.turn(user)
        served.append(name)

    heavy = [asyncio.create_task(request(1, f"heavy{n}")) for n in range(6)]
    light = [asyncio.create_task(request(2, f"light{n}")) for n in range(2)]
    queue.start()
    try:
        await asyncio.gather(*heavy, *light)
    finally:
        await queue.stop()

    assert served[:4] == ["heavy0", "light0", "heavy1", "light1"]
    assert served[4:] == ["heavy2", "heavy3", "heavy4", "heavy5"]


async def test_queued_requests_survive_a_restart(make_app: AppFactory) -> None:
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
    assert sorted(r.content for r in second.chatinfo.requests) == [f"q{n}" for n in range(5)]
    answers = [e.text for e in second.sent(EditMessageText) if e.text.startswith("[chat]")]
    assert sorted(answers) == [f"[chat] q{n}" for n in range(5)]


async def test_a_429_pauses_all_polling_before_the_next_call() -> None:
    moments: list[float] = []

    async def poll(upstream_id: int) -> str | None:
        moments.append(asyncio.get_running_loop().time())
        if len(moments) == 1:
            raise RateLimited("get_response: rate limited (429)")
        return "done"

    timing = PollTiming(hit_chance=0.0, min_gap=0.0, max_gap=0.0, earliest=0.0)
    scheduler = PollScheduler(poll, SlidingWindowLimiter(100, 1.0), SolveTimes(), timing)
    scheduler.CALM_AFTER_429 = 0.3
    scheduler.start()
    try:
        assert await scheduler.answer(job_id=1, upstream_id=1, mode="chat", length=1,
                                      age=0.0, max_wait=60.0) == "done"
    finally:
        await scheduler.stop()
    assert moments[1] - moments[0] >= 0.3
