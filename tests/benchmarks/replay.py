"""Offline replay of the load benchmark's jobs: where our polls would land, in seconds.

    python -m tests.benchmarks.replay --noise 0.05 0.1 0.2 0.3

The same messages, modes and solve times as `tests.benchmarks.load`, and the same
solve-time model trained on the same history, but no servers and no clock: each job's
polls are placed by `next_poll_after` until one finds the answer, and the model learns
from it what the scheduler would. It leaves out what the live benchmark measures on top
(HTTP, the event loop, a saturated budget), so it runs in seconds and shows how the poll
timing trades polls for lag, e.g. as solve times become harder to predict (`--noise`),
over a long run (`--duration`, the figures are of its last 3,000 jobs), or for other
`PollTiming` values. By default each job is answered and learned before the next is
asked; `--overlap` lets them overlap in time as live, so a model that is wrong for a
while (after a regime change) is wrong for all the jobs asked meanwhile.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import sys
from dataclasses import dataclass, field
from typing import Any

from bot.jobs.poll_scheduler import WIDER, PollTiming, next_poll_after, solved_after
from bot.jobs.solve_times import Estimate, SolveTimes
from tests.benchmarks.load import (
    SAMPLE_EVERY,
    SAMPLE_FIRST_WAIT,
    percentile,
    plan_messages,
    user_modes,
)
from tests.benchmarks.upstream import solve_seconds


def replay(noise: float, timing: PollTiming, *, seed: int = 1, rate: float = 25.0,
           duration: float = 120.0, history: int = 2000, history_noise: float | None = None,
           history_scale: float = 1.0, overlap: bool = False) -> dict[str, Any]:
    """`history_noise` and `history_scale`: the history had other solve times (a regime
    change since); by default, the same as now. `overlap`: jobs overlap in time as they
    do live (see `overlapping`); else each is answered before the next is asked."""
    modes = user_modes(seed)
    model = SolveTimes()
    earlier_noise = noise if history_noise is None else history_noise
    for _, user, text in plan_messages(seed + 1000, rate, history / rate):
        model.learn(modes[user], len(text), solve_seconds(seed + 1000, modes[user], text,
                                                          earlier_noise, history_scale))
    jobs = [(at, modes[user], len(text), solve_seconds(seed, modes[user], text, noise))
            for at, user, text in plan_messages(seed, rate, duration)]
    ours = overlapping(jobs, model, timing) if overlap else one_by_one(jobs, model, timing)
    sample: list[tuple[int, float]] = []
    for *_, solved in jobs:
        moment, polls = SAMPLE_FIRST_WAIT, 1
        while moment < solved:
            moment += SAMPLE_EVERY
            polls += 1
        sample.append((polls, moment - solved))
    return {"noise": noise, "ours": summary(ours[-3000:]),
            "baseline": summary(sample[-3000:])}


Job = tuple[float, str, int, float]  # created at (s), mode, length, solve time (s)


def one_by_one(jobs: list[Job], model: SolveTimes, timing: PollTiming) -> list[tuple[int, float]]:
    """(polls, lag) per job, each job's answer found and learned before the next job."""
    ours = []
    for _, mode, length, solved in jobs:
        estimate = model.estimate(mode, length)
        moment, missed, polls = 0.0, None, 0
        while polls == 0 or moment < solved:
            missed = moment if polls else None
            moment += next_poll_after(moment, estimate, timing)
            polls += 1
            if polls == 1:
                model.first_poll(mode, estimate, asked_at=moment, found=moment >= solved)
        ours.append((polls, moment - solved))
        model.learn(mode, length, solved_after(missed, moment, estimate))
    return ours


@dataclass(order=True)
class _Pending:
    due: float  # seconds from the start
    order: int
    job: Job = field(compare=False)
    estimate: Estimate = field(compare=False)
    missed_at: float | None = field(default=None, compare=False)  # seconds after create
    polls: int = field(default=0, compare=False)


def overlapping(jobs: list[Job], model: SolveTimes,
                timing: PollTiming) -> list[tuple[int, float]]:
    """(polls, lag) per job, in the order found, the jobs overlapping in time as live, by
    PollScheduler's rules (no budget): each job planned by the model as it is when the
    job is watched (or later, once the model is much wider), safety polls while its
    spread is unproven, the answers learned when found, and the jobs waiting planned
    again (never later) when the spread comes into doubt."""
    def next_poll(entry: _Pending, now: float) -> float:
        latest = model.estimate(entry.job[1], entry.job[2])
        if latest.sigma > entry.estimate.sigma * WIDER:
            entry.estimate = latest
        last_poll = None if model.spread_proven else (entry.missed_at or 0.0)
        return next_poll_after(now - entry.job[0], entry.estimate, timing, last_poll=last_poll,
                               polls=entry.polls if model.spread_proven else None)

    pending: list[_Pending] = []
    order = itertools.count()
    arrivals = iter(jobs)
    upcoming = next(arrivals, None)
    ours: list[tuple[int, float]] = []
    doubts = model.doubts
    while pending or upcoming:
        if upcoming and (not pending or upcoming[0] <= pending[0].due):
            entry = _Pending(upcoming[0], next(order), upcoming,
                             model.estimate(upcoming[1], upcoming[2]))
            entry.due += next_poll(entry, upcoming[0])
            heapq.heappush(pending, entry)
            upcoming = next(arrivals, None)
            continue
        entry = heapq.heappop(pending)
        (created, mode, length, solved), now = entry.job, entry.due
        moment, entry.polls = now - created, entry.polls + 1
        if entry.polls == 1:
            model.first_poll(mode, entry.estimate, asked_at=moment, found=moment >= solved)
        if moment >= solved:
            ours.append((entry.polls, moment - solved))
            model.learn(mode, length, solved_after(entry.missed_at, moment, entry.estimate))
            model.found(entry.estimate, missed_at=entry.missed_at, found_at=moment)
        else:
            entry.missed_at = moment
            entry.due = now + next_poll(entry, now)
            heapq.heappush(pending, entry)
        if model.doubts != doubts:
            doubts = model.doubts
            for waiting in pending:
                waiting.due = min(waiting.due, now + next_poll(waiting, now))
            heapq.heapify(pending)
    return ours


def summary(jobs: list[tuple[int, float]]) -> dict[str, float]:
    lags = [lag for _, lag in jobs]
    return {"polls": sum(polls for polls, _ in jobs) / len(jobs),
            "lag_p50": percentile(lags, 0.5), "lag_p99": percentile(lags, 0.99),
            "lag_max": max(lags), "late": sum(1 for lag in lags if lag > 5.0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3])
    parser.add_argument("--duration", type=float, default=120.0,
                        help="seconds of messages at 25 a second")
    parser.add_argument("--history", type=int, default=2000,
                        help="answered jobs learned before the start (0: a cold start)")
    parser.add_argument("--history-noise", type=float, default=None,
                        help="the σ the history's solve times had (default: --noise)")
    parser.add_argument("--history-scale", type=float, default=1.0,
                        help="the history's solve times were this many times today's")
    parser.add_argument("--overlap", action="store_true",
                        help="jobs overlap in time as live: planned when watched, learned "
                             "when found (else each is done before the next)")
    defaults = PollTiming()
    for name in ("hit_chance", "min_gap", "max_gap", "earliest", "safety_gap", "safety_spread",
                 "eager_hit_chance", "eager_spread", "loop_every"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float,
                            default=getattr(defaults, name))
    args = parser.parse_args()
    timing = PollTiming(args.hit_chance, args.min_gap, args.max_gap, args.earliest,
                        args.safety_gap, args.safety_spread, args.eager_hit_chance,
                        args.eager_spread, args.loop_every)
    print("| noise σ | polls per job: ours / baseline (ratio) | lag p50 (s) | lag p99 (s) "
          "| lag worst (s) | answers > 5 s late |")
    print("|---|---|---|---|---|---|")
    for noise in args.noise:
        result = replay(noise, timing, duration=args.duration, history=args.history,
                        history_noise=args.history_noise, history_scale=args.history_scale,
                        overlap=args.overlap)
        ours, base = result["ours"], result["baseline"]
        print(f"| {noise} | {ours['polls']:.2f} / {base['polls']:.2f} "
              f"({ours['polls'] / base['polls']:.2f}) | {ours['lag_p50']:.2f} / "
              f"{base['lag_p50']:.2f} | {ours['lag_p99']:.2f} / {base['lag_p99']:.2f} "
              f"| {ours['lag_max']:.1f} / {base['lag_max']:.1f} | {ours['late']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
