"""How long answers take: learned per mode and content length from the jobs already
answered, so the poll scheduler polls a job only once its answer is likely."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

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
