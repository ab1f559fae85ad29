"""Offline replay of the load benchmark's jobs: where our polls would land, in seconds.

    python -m tests.benchmarks.replay --noise 0.05 0.1 0.2 0.3

The same messages, modes and solve times as `tests.benchmarks.load`, and the same
solve-time model trained on the same history, but no servers and no clock: each job's
polls are placed by `next_poll_after` until one finds the answer, and the model learns
from it what the scheduler would. It leaves out what the live benchmark measures on top
(HTTP, the event loop, a saturated budget), so it runs in seconds and shows how the poll
timing trades polls for lag, e.g. as solve times become harder to predict (`--noise`),
over a long run (`--duration`, the figures are of its last 3,000 jobs), or for other
`PollTiming` values.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bot.jobs.poll_scheduler import PollTiming, next_poll_after, solved_after
from bot.jobs.solve_times import SolveTimes
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
           history_scale: float = 1.0) -> dict[str, Any]:
    """`history_noise` and `history_scale`: the history had other solve times (a regime
    change since); by default, the same as now."""
    modes = user_modes(seed)
    model = SolveTimes()
    earlier_noise = noise if history_noise is None else history_noise
    for _, user, text in plan_messages(seed + 1000, rate, history / rate):
        model.learn(modes[user], len(text), solve_seconds(seed + 1000, modes[user], text,
                                                          earlier_noise, history_scale))
    ours: list[tuple[int, float]] = []  # (polls, lag) per job
    sample: list[tuple[int, float]] = []
    for _, user, text in plan_messages(seed, rate, duration):
        solved = solve_seconds(seed, modes[user], text, noise)
        estimate = model.estimate(modes[user], len(text))
        moment, missed, polls = 0.0, None, 0
        while polls == 0 or moment < solved:
            missed = moment if polls else None
            moment += next_poll_after(moment, estimate, timing)
            polls += 1
            if polls == 1:
                model.first_poll(modes[user], estimate, asked_at=moment,
                                 found=moment >= solved)
        ours.append((polls, moment - solved))
        model.learn(modes[user], len(text), solved_after(missed, moment, estimate))
        moment, polls = SAMPLE_FIRST_WAIT, 1
        while moment < solved:
            moment += SAMPLE_EVERY
            polls += 1
        sample.append((polls, moment - solved))
    return {"noise": noise, "ours": summary(ours[-3000:]),
            "baseline": summary(sample[-3000:])}


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
    defaults = PollTiming()
    for name in ("hit_chance", "min_gap", "max_gap", "earliest"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float,
                            default=getattr(defaults, name))
    args = parser.parse_args()
    timing = PollTiming(args.hit_chance, args.min_gap, args.max_gap, args.earliest)
    print("| noise σ | polls per job: ours / baseline (ratio) | lag p50 (s) | lag p99 (s) "
          "| lag worst (s) | answers > 5 s late |")
    print("|---|---|---|---|---|---|")
    for noise in args.noise:
        result = replay(noise, timing, duration=args.duration, history=args.history,
                        history_noise=args.history_noise, history_scale=args.history_scale)
        ours, base = result["ours"], result["baseline"]
        print(f"| {noise} | {ours['polls']:.2f} / {base['polls']:.2f} "
              f"({ours['polls'] / base['polls']:.2f}) | {ours['lag_p50']:.2f} / "
              f"{base['lag_p50']:.2f} | {ours['lag_p99']:.2f} / {base['lag_p99']:.2f} "
              f"| {ours['lag_max']:.1f} / {base['lag_max']:.1f} | {ours['late']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
