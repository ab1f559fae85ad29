"""The top entries of a py-spy profile in collapsed-stack ("raw") form, by self and total time.

    python -m tests.benchmarks.e2e --no-loop --duration 60 --profile /tmp/bot.prof
    python -m tests.benchmarks.hotspots /tmp/bot.prof --top 25 --within run_bot

`--within run_bot` keeps the event loop's stacks only: py-spy counts a worker thread
blocked on its queue (aiosqlite's, the default executor's) as busy.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

LINE_NUMBER = re.compile(r":\d+\)$")


def frames(stack: str) -> list[str]:
    """"name (file.py:12)" frames without the line numbers, so a function counts once."""
    return [LINE_NUMBER.sub(")", frame) for frame in stack.split(";")]


def tally(lines: list[str], within: str = "") -> tuple[Counter[str], Counter[str], int]:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit() or within not in stack:
            continue
        names, n = frames(stack), int(count)
        samples += n
        own[names[-1]] += n
        for name in set(names):
            total[name] += n
    return own, total, samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--within", default="", help="only stacks through this function")
    args = parser.parse_args()
    own, total, samples = tally(args.profile.read_text().splitlines(), args.within)
    for title, counts in (("self", own), ("total (incl. callees)", total)):
        print(f"\nby {title}, {samples} samples")
        for name, n in counts.most_common(args.top):
            print(f"{100 * n / samples:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
