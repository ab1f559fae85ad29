"""How long answers take: learned per mode and content length from the jobs already
answered, so the poll scheduler polls a job only once its answer is likely."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from statistics import NormalDist

SAMPLES_KEPT = 300  # per mode: recent enough to follow upstream changes
MIN_SAMPLES = 10  # fewer, and the mode is estimated from all answers instead
MIN_SECONDS = 0.3
# Residuals this many answers old (of the same mode) count half as much as the latest:
# when upstream gets faster, slower or more predictable, the estimate follows within a
# few dozen answers.
HALF_LIFE = 30.0
# The first poll of a job is never later than the slowest of this many latest answers of
# its mode would be at its length: a model learned on other times cannot hold back an
# answer that recent answers say is likely.
RECENT = 20
MIN_SIGMA = 0.05  # no prediction is trusted closer than ±5%
# A mode's line is fitted again once answers since make this share of its samples: a fit
# of 300 answers takes about a millisecond, and each answer changes it little.
REFIT_SHARE = 16
# But when answers get harder to predict, all modes show it, and a mode would learn it
# only from its own next answers (a few a minute for a rare one): so no mode's spread is
# narrower than the root mean square error of the latest answers of all modes, each
# weighing half as much as one this many answers later.
OVERALL_HALF_LIFE = 20.0
# A first poll that finds the answer says only that it came sooner, so learning from such
# hits alone, a model that holds answers slower than they now are never learns otherwise
# (a 5-s answer first polled at 60 s is learned as about 60 s). So every first poll tests
# the model: when its hits and misses make "answers come twice (or eight times) as soon as
# believed" so much likelier than what is believed (a likelihood ratio, summed while it
# grows), first polls move to half (an eighth) as late, down to MIN_EARLY of the
# model's; the same test for "twice as late" moves them back as the model relearns. One
# test per mode, and one of all modes together, which catches a change of upstream's pace
# within a few answers but needs more evidence, as it sees many more polls.
MODE_EVIDENCE = math.log(200.0)
OVERALL_EVIDENCE = math.log(10_000.0)
MIN_EARLY = 1 / 64
MOVES = (1 / 8, 8.0, 1 / 2, 2.0)  # the alternatives tested; the bolder first
# A model learned before upstream got harder to predict holds answers possible later than
# they now come, and those sooner wait for the first poll (it is placed by the model), to
# be learned only as soon as it found them, as if the model had been right. So the spread
# is trusted only once the answers found since the start make it likelier than one
# DOUBTED times as wide by PROOF (each answer as likely as its polls bracket it), and
# until they make the wider one likelier by as much; meanwhile the poll scheduler also
# polls sooner than the spread allows (PollTiming.safety_gap).
DOUBTED = 2.0
PROOF = math.log(100.0)
LATE_EVIDENCE = 1.0  # at most, from one answer later than the estimate's median
# Before anything is learned: the spread of GPT answers seen in practice.
PRIOR = (2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0, 12.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0)

_NORMAL = NormalDist()
_SQRT2 = math.sqrt(2.0)
_DECAY = 0.5 ** (1.0 / HALF_LIFE)


@dataclass(frozen=True, slots=True)
class Estimate:
    """Likely solve times: log-normal around `median`, `sigma` the spread of log(actual /
    predicted) in recent answers; `bound` is the latest moment the first poll may wait
    for, from the slowest recent answers."""

    median: float
    sigma: float
    bound: float = math.inf
    early: float = 1.0  # first polls are placed as if answers took this times as long

    def quantile(self, q: float) -> float:
        q = min(max(q, 1e-9), 1.0 - 1e-9)
        return self.median * math.exp(self.sigma * _NORMAL.inv_cdf(q))

    def mean_between(self, low: float, high: float) -> float:
        """The likely solve time of an answer known to have come after `low` and by
        `high` seconds: the mean of the estimate within them (their middle, where it
        finds them unlikely)."""
        low, high = max(0.0, low), max(low, high)
        if low == high:
            return high
        spread, centre = self.sigma, math.log(self.median)
        z_low = (math.log(low) - centre) / spread if low > 0.0 else -math.inf
        z_high = (math.log(high) - centre) / spread
        mass = _NORMAL.cdf(z_high) - _NORMAL.cdf(z_low)
        if mass < 1e-9:
            return (low + high) / 2
        weighted = _NORMAL.cdf(z_high - spread) - _NORMAL.cdf(z_low - spread)
        mean = self.median * math.exp(spread * spread / 2) * weighted / mass
        return min(max(mean, low), high)

    def survival(self, seconds: float) -> float:
        """The chance the answer takes longer than `seconds`."""
        if seconds <= 0.0:
            return 1.0
        return 0.5 * math.erfc(math.log(seconds / self.median) / (self.sigma * _SQRT2))


@dataclass(frozen=True, slots=True)
class _Fit:
    intercept: float
    slope: float
    shift: float  # recency-weighted mean of log(actual / line)
    sigma: float  # and their spread
    slowest_ratio: float  # the largest actual / line among the RECENT latest answers

    def median(self, length: int) -> float:
        return max(MIN_SECONDS, self.intercept + self.slope * length) * math.exp(self.shift)

    def estimate(self, length: int, early: float, floor: float = 0.0) -> Estimate:
        line = max(MIN_SECONDS, self.intercept + self.slope * length)
        return Estimate(line * math.exp(self.shift), max(self.sigma, floor),
                        line * self.slowest_ratio, early)


class SolveTimes:
    """Learns solve times from answered jobs.

    GPT's time grows with what it reads and writes, so per mode the model is a straight
    line in the content length (fixed latency plus time per character), fitted on recent
    answers with their relative errors; how far actual times stray from the line (in log
    terms, the latest answers weighing most) gives the spread, never narrower than the
    latest errors of all modes. A mode with few answers yet is estimated from all answers.
    Its first polls are bounded by its latest answers and calibrated (MODE_EVIDENCE).
    """

    def __init__(self, prior: Iterable[float] = PRIOR) -> None:
        self._prior = _spread(list(prior), bound=math.inf, recency=False)
        self._by_mode: dict[str, deque[tuple[int, float]]] = {}
        self._overall: deque[float] = deque(maxlen=SAMPLES_KEPT)
        self._fits: dict[str, _Fit] = {}
        self._unfitted: dict[str, int] = {}  # answers of the mode since its fit
        self._overall_estimate: Estimate | None = None
        self._first_polls: dict[str, _FirstPolls] = {}
        self._first_polls_overall = _FirstPolls(OVERALL_EVIDENCE)
        self._spread = _SpreadTrial()
        self._lately = 0.0  # the recent mean square of log(actual / estimated), all modes

    def learn(self, mode: str, length: int, seconds: float) -> None:
        seconds = max(MIN_SECONDS, seconds)
        if (fit := self._fits.get(mode)) is not None:
            rate = 1.0 - 0.5 ** (1.0 / OVERALL_HALF_LIFE)
            residual = math.log(seconds / fit.median(length))
            self._lately += rate * (residual * residual - self._lately)
        samples = self._by_mode.setdefault(mode, deque(maxlen=SAMPLES_KEPT))
        samples.append((length, seconds))
        self._overall.append(seconds)
        self._unfitted[mode] = unfitted = self._unfitted.get(mode, 0) + 1
        if unfitted * REFIT_SHARE >= len(samples):
            del self._unfitted[mode]
            self._fits.pop(mode, None)
        self._overall_estimate = None

    def found(self, estimate: Estimate, *, missed_at: float | None,
              found_at: float) -> None:
        """A job's answer was found `found_at` seconds after its create, and was not there
        at `missed_at` (None: the first poll found it); `estimate` is the job's."""
        self._spread.found(estimate, missed_at or 0.0, found_at)

    @property
    def spread_proven(self) -> bool:
        """Whether the answers found bear the spread out (DOUBTED)."""
        return self._spread.proven

    @property
    def doubts(self) -> int:
        """How often a spread proven by the answers found came into doubt."""
        return self._spread.doubts

    def learn_all(self, history: Iterable[tuple[str, int, float]]) -> None:
        """Learn answers given newest first (as JobRepo.solve_history lists them), so the
        latest end up weighing most."""
        for mode, length, seconds in reversed(list(history)):
            self.learn(mode, length, seconds)

    def first_poll(self, mode: str, estimate: Estimate, *, asked_at: float,
                   found: bool) -> None:
        """A job's first poll, `asked_at` seconds after its create, found its answer or
        not; `estimate` is the job's."""
        self._first_polls_overall.observe(estimate, asked_at, found)
        self._first_polls.setdefault(mode, _FirstPolls(MODE_EVIDENCE)).observe(
            estimate, asked_at, found)

    def estimate(self, mode: str, length: int) -> Estimate:
        calibration = self._first_polls.get(mode)
        early = max(MIN_EARLY, self._first_polls_overall.early
                    * (calibration.early if calibration else 1.0))
        samples = self._by_mode.get(mode, ())
        if len(samples) < MIN_SAMPLES:
            if len(self._overall) < MIN_SAMPLES:
                estimate = self._prior
            else:
                if self._overall_estimate is None:
                    recent = list(self._overall)
                    self._overall_estimate = _spread(recent, bound=max(recent[-RECENT:]))
                estimate = self._overall_estimate
            return estimate if early == 1.0 else replace(estimate, early=early)
        fit = self._fits.get(mode)
        if fit is None:
            fit = self._fits[mode] = _fit(list(samples))
        return fit.estimate(length, early, math.sqrt(self._lately))


@dataclass(slots=True)
class _FirstPolls:
    """Whether first polls find answers as often as believed (MODE_EVIDENCE)."""

    evidence: float  # how much likelier an alternative must be to be taken
    early: float = 1.0  # this test's factor of the time first polls are placed at
    # The evidence so far for answers taking these factors of the time believed.
    support: dict[float, float] = field(default_factory=lambda: dict.fromkeys(MOVES, 0.0))

    def observe(self, estimate: Estimate, asked_at: float, found: bool) -> None:
        believed = estimate.early  # of all the tests together
        odds = _chance(estimate, asked_at / believed, found)
        for move in MOVES:
            alternative = min(1.0, believed * move)
            self.support[move] = max(0.0, self.support[move] + math.log(
                _chance(estimate, asked_at / alternative, found) / odds))
        taken = [move for move in MOVES if self.support[move] > self.evidence]
        if taken:
            self.early = min(1.0, max(MIN_EARLY, self.early * taken[0]))
            self.support = dict.fromkeys(MOVES, 0.0)


@dataclass(slots=True)
class _SpreadTrial:
    """Whether the answers found bear the spread out (DOUBTED)."""

    # The log likelihood ratio of a spread DOUBTED times as wide over the believed one,
    # summed within +-PROOF: the spread is proven at -PROOF, and doubted at +PROOF.
    evidence: float = 0.0
    proven: bool = False
    doubts: int = 0  # how often a proven spread came into doubt

    def found(self, estimate: Estimate, missed_at: float, found_at: float) -> None:
        if found_at <= 0.0:
            return  # polled within the create's clock tick: it tells nothing
        wider = replace(estimate, sigma=estimate.sigma * DOUBTED)
        ratio = _within(wider, missed_at, found_at) - _within(estimate, missed_at, found_at)
        # No single answer is proof: it may be an odd request, not a changed upstream.
        # And one later than believed counts little: the polls of an overdue job follow
        # it closely (next_poll_after), so it waited for nothing; yet when many are, the
        # spread is too narrow on the other side too, where answers would wait.
        ratio = min(ratio, LATE_EVIDENCE if found_at > estimate.median else PROOF)
        self.evidence = min(max(self.evidence + ratio, -PROOF), PROOF)
        if self.evidence <= -PROOF:
            self.proven = True
        elif self.evidence >= PROOF and self.proven:
            self.proven = False
            self.doubts += 1


def _within(estimate: Estimate, low: float, high: float) -> float:
    """The log of how likely, by the estimate, an answer comes after `low` seconds and by
    `high`: from the tail they are in, so that one far out still tells how far."""
    centre, spread = math.log(estimate.median), estimate.sigma * _SQRT2
    z_low = (math.log(low) - centre) / spread if low > 0.0 else -math.inf
    z_high = (math.log(high) - centre) / spread
    if z_high <= 0.0:  # the lower tail: 1 - erfc would round its mass away
        mass = math.erfc(-z_high) - math.erfc(-z_low)
    else:
        mass = math.erfc(z_low) - math.erfc(z_high)
    return math.log(max(mass / 2, 1e-300))


def _chance(estimate: Estimate, seconds: float, found: bool) -> float:
    """How likely, by the estimate, a poll `seconds` after the create finds the answer
    (or misses it); never quite 0 or 1, so no single poll is proof."""
    missed = estimate.survival(seconds)
    return min(max(1.0 - missed if found else missed, 1e-4), 1.0 - 1e-4)


def _recency_weights(count: int) -> list[float]:
    """Oldest first, the latest weighing 1."""
    return [_DECAY ** (count - 1 - n) for n in range(count)]


def _spread(seconds: Sequence[float], *, bound: float, recency: bool = True) -> Estimate:
    """A log-normal of these times (oldest first), the latest weighing most."""
    weights = _recency_weights(len(seconds)) if recency else [1.0] * len(seconds)
    logs = [math.log(max(MIN_SECONDS, s)) for s in seconds]
    centre, sigma = _weighted_mean_sd(logs, weights)
    return Estimate(math.exp(centre), sigma, bound)


def _weighted_mean_sd(values: Sequence[float], weights: Sequence[float]) -> tuple[float, float]:
    total = sum(weights)
    mean = sum(w * v for w, v in zip(weights, values, strict=True)) / total
    variance = sum(w * (v - mean) ** 2 for w, v in zip(weights, values, strict=True)) / total
    return mean, max(MIN_SIGMA, math.sqrt(variance))


def _weighted_mad(values: Sequence[float], weights: Sequence[float], centre: float) -> float:
    """The spread as the weighted median distance from the centre (scaled to a normal's
    sigma): once the answers since a change weigh more than half, it is theirs, where a
    standard deviation would stay wide for as long as a few old outliers weigh at all."""
    pairs = sorted((abs(v - centre), w) for v, w in zip(values, weights, strict=True))
    half, total = sum(weights) / 2, 0.0
    for deviation, weight in pairs:
        total += weight
        if total >= half:
            return max(MIN_SIGMA, 1.4826 * deviation)
    return MIN_SIGMA


def _line(points: Sequence[tuple[int, float]], weights: Sequence[float]) -> tuple[float, float]:
    """Weighted least-squares line through (length, seconds), kept non-decreasing."""
    total = sum(weights)
    mean_x = sum(w * x for w, (x, _) in zip(weights, points, strict=True)) / total
    mean_y = sum(w * y for w, (_, y) in zip(weights, points, strict=True)) / total
    spread = sum(w * (x - mean_x) ** 2 for w, (x, _) in zip(weights, points, strict=True))
    covariance = sum(w * (x - mean_x) * (y - mean_y)
                     for w, (x, y) in zip(weights, points, strict=True))
    slope = max(0.0, covariance / spread) if spread else 0.0
    return max(MIN_SECONDS, mean_y - slope * mean_x), slope


def _fit(points: Sequence[tuple[int, float]]) -> _Fit:
    """The line, fitted twice: the second time each answer weighs by 1 / its predicted
    time squared, so the errors that count are relative ones (a long answer's seconds of
    noise would otherwise tilt the line for all the short ones)."""
    recency = _recency_weights(len(points))
    intercept, slope = _line(points, recency)
    lines = [max(MIN_SECONDS, intercept + slope * x) for x, _ in points]
    intercept, slope = _line(points, [w / (line * line) for w, line in zip(recency, lines,
                                                                          strict=True)])
    logs = [math.log(y / max(MIN_SECONDS, intercept + slope * x)) for x, y in points]
    shift, _ = _weighted_mean_sd(logs, recency)
    sigma = _weighted_mad(logs, recency, shift)
    return _Fit(intercept, slope, shift, sigma, math.exp(max(logs[-RECENT:])))
