"""Which failed create_request calls spent a unit, told by the balances the API reports.

The balance only falls, by one unit for each create the server processed. Every balance we
see is pinned to a span of time: a successful create reports the balance just after its
own debit, at some moment between sending it and its reply; a read of the units endpoint
reports it at some moment during the read. Put in order of value, these sightings are in
order of time, and where two neighbours differ by more than the debits seen between them,
the difference is debits nobody reported: failed creates whose span overlaps the time
between the two sightings. So a failed create that overlaps no such gap spent nothing; a
gap with exactly as many candidates as missing units shows each of them spent; anything
else (two candidates for one unit, a gap nobody of ours explains, a balance that rose) is
taken as spent, never risking a second unit.

Counting alone (the balance now against the last read less the creates acknowledged since)
cannot tell which of several creates that failed close together spent; the order of the
reported balances usually can.

Creates still in flight are known too (`sending`): the balance they will report is not seen
yet, so a gap they may fall in is open, and decides nothing until they end. So nothing has
to be held while failed creates are settled: the creates that go on meanwhile only add
sightings, which pin the debits closer in time. They go one at a time meanwhile, though
(`unsettled`, see FairQueue): creates out together share their times, and a failure among
them could not be told from the others' debits.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from enum import StrEnum

log = logging.getLogger(__name__)

# How long after the server was surely done with a failed create taken as spent for want
# of time the balances are still watched for its outcome.
WATCHED_FOR = 300.0


class Verdict(StrEnum):
    UNSPENT = "unspent"  # the balance shows it spent nothing: sending it again is safe
    SPENT = "spent"  # the balance shows its unit debited: its answer is lost
    ASSUMED_SPENT = "assumed_spent"  # the balance cannot tell: taken as spent


@dataclass(frozen=True, slots=True)
class _Sighting:
    """The balance `value`, as it was at some moment between `start` and `end`; `debit`:
    it is the balance right after a create of ours, so that create's unit is in it."""

    value: int
    start: float
    end: float
    debit: bool


@dataclass(slots=True, eq=False)  # each failed create is itself, whatever its times
class _Failure:
    sent: float
    done_by: float  # when the server has surely finished with it
    noticed: float  # when it failed (a read from then on may show its debit)
    verdict: Verdict | None = None
    # Taken as spent for want of time: the balances may still show it spent or not, and
    # are watched for that until then (see `revised`).
    watched_until: float | None = None


@dataclass(frozen=True, slots=True)
class _Gap:
    units: int  # debits nobody reported
    start: float
    end: float

    def overlaps(self, failure: _Failure) -> bool:
        return failure.sent < self.end and self.start < failure.done_by


class BalanceLedger:
    """The balances seen since the oldest undecided failed create, and the failures."""

    def __init__(self) -> None:
        self._sightings: list[_Sighting] = []
        self._failures: dict[int, _Failure] = {}
        self._in_flight: dict[int, float] = {}  # job id -> when its create was sent
        self.sends = 0  # creates sent so far
        self._blind = False  # a create succeeded without reporting the balance
        # Failed creates taken as spent for want of time that the balances have shown
        # since to have spent or not: job id -> verdict (see `take_revised`).
        self._revised: dict[int, Verdict] = {}
        # Whether anything came since the last round of verdicts: with nothing new, a round
        # decides nothing more, and every job awaiting a verdict asks for one at each news.
        self._news = True

    def read(self, balance: int, start: float, end: float) -> None:
        """The units endpoint said `balance` during [start, end]."""
        self._news = True
        self._sightings.append(_Sighting(balance, start, end, debit=False))

    def sending(self, job_id: int, sent: float) -> None:
        """A create of ours is sent: until it ends, a gap it may fall in is open."""
        self._news = True
        self._in_flight[job_id] = sent
        self.sends += 1

    def ended(self, job_id: int) -> None:
        """The job's create ended spending nothing (a 429, a key turned away), or its
        outcome is recorded (`created`, `failed`)."""
        self._news = True
        self._in_flight.pop(job_id, None)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def created(self, balance: int | None, sent: float, replied: float,
                job_id: int | None = None) -> None:
        """A create of ours succeeded and reported the balance after it."""
        self._news = True
        if job_id is not None:
            self.ended(job_id)
        if balance is None:
            self._blind = True
        else:
            self._sightings.append(_Sighting(balance, sent, replied, debit=True))

    def failed(self, job_id: int, sent: float, done_by: float,
               noticed: float | None = None) -> None:
        """A create of ours failed without saying whether the server processed it; we
        knew at `noticed` (by default: when it was sent)."""
        self.ended(job_id)
        self._failures[job_id] = _Failure(sent, done_by, sent if noticed is None else noticed)

    def spent_earlier(self, job_id: int, sent: float, done_by: float, *,
                      watched: bool = False) -> None:
        """A failed create taken as spent before (a previous run's): its debit may be one
        of the gaps around the failures still to decide. `watched`: taken as spent for
        want of time not long ago, its outcome is still watched for."""
        self._news = True
        failure = _Failure(sent, done_by, sent, Verdict.ASSUMED_SPENT)
        if watched:
            failure.watched_until = done_by + WATCHED_FOR
        self._failures[job_id] = failure

    def watching(self) -> bool:
        """Whether a failed create taken as spent for want of time is still watched."""
        return any(f.watched_until is not None for f in self._failures.values())

    def take_revised(self) -> dict[int, Verdict]:
        """The failed creates taken as spent for want of time whose outcome the balances
        have shown since (each once)."""
        revised, self._revised = self._revised, {}
        return revised

    def unsettled(self) -> bool:
        """Whether a failed create awaits its verdict."""
        return any(f.verdict is None for f in self._failures.values())

    def undecided(self, job_id: int) -> bool:
        """Whether the job's failed create awaits its verdict."""
        failure = self._failures.get(job_id)
        return failure is not None and failure.verdict is None

    def decide(self) -> dict[int, Verdict]:
        """The verdict on each undecided failed create that the balances seen settle.

        A create the server may have processed after the last balance seen is decided
        only if a gap already shows it spent; one that may fall in a gap a create in
        flight may yet explain waits for that create."""
        if not self._news:
            return {}
        self._news = False
        gaps = self._gaps()
        last_seen = max((s.start for s in self._sightings), default=float("-inf"))
        verdicts = {}
        chains: dict[int, _Chain] = {}
        for job_id, failure in self._undecided():
            verdict = self._judge(failure, gaps, chains)
            if verdict is None:
                continue
            # Shown spent, or never to be told (nothing seen before it, or sightings not to
            # be trusted), or surely finished: decided now; else a later read may tell.
            final = verdict is Verdict.SPENT or not self._judgeable(failure, gaps)
            if final or failure.done_by <= last_seen:
                verdicts[job_id] = failure.verdict = verdict
                if verdict is Verdict.ASSUMED_SPENT:
                    self._explain(job_id, failure, gaps)
        self._rejudge(gaps, last_seen, chains)
        self._forget_settled()
        return verdicts

    def _rejudge(self, gaps: list[_Gap] | None, last_seen: float,
                 chains: dict[int, _Chain]) -> None:
        """Judge again the failed creates taken as spent for want of time: those the
        balances show now are `revised`; those they never will tell are no longer watched."""
        for job_id, failure in self._failures.items():
            if failure.watched_until is None:
                continue
            verdict = self._judge(failure, gaps, chains)
            done = failure.done_by <= last_seen
            if verdict is Verdict.SPENT or (verdict is Verdict.UNSPENT and done):
                self._revised[job_id] = failure.verdict = verdict
            if (verdict is not None and done) or last_seen > failure.watched_until:
                failure.watched_until = None

    def wants_read(self, job_id: int, now: float) -> bool:
        """Whether a read of the balance now may tell the failed create's outcome, and
        no balance seen would: none since it failed (its debit may show already), or none
        since the server is surely done with it (only then can the balance show it spent
        nothing)."""
        failure = self._failures.get(job_id)
        if failure is None:
            return False
        since = failure.done_by if failure.done_by <= now else failure.noticed
        return all(s.start < since for s in self._sightings)

    def assume_spent(self, job_id: int) -> dict[int, Verdict]:
        """No balance tells (soon enough): the failed create is taken as spent."""
        log.info("job %s: the balances did not tell in time whether its failed create spent "
                 "(%s)", job_id, self._awaited(self._failures[job_id]))
        failure = self._failures[job_id]
        failure.verdict = Verdict.ASSUMED_SPENT
        failure.watched_until = failure.done_by + WATCHED_FOR
        self._news = True
        self._forget_settled()
        return {job_id: Verdict.ASSUMED_SPENT}

    def _awaited(self, failure: _Failure) -> str:
        """What an undecided failure is waiting for, for the log."""
        gaps = self._gaps()
        if gaps is None:
            return "no balance to judge by"
        last_seen = max((s.start for s in self._sightings), default=float("-inf"))
        mine = [gap for gap in gaps if gap.overlaps(failure)]
        earliest_in_flight = min(self._in_flight.values(), default=float("inf"))
        if any(gap.end > earliest_in_flight for gap in mine):
            return (f"a create sent {earliest_in_flight - failure.sent:+.0f} s from it is "
                    f"still in flight, and may report a balance in its gap")
        near, rivals = self._around(failure, gaps)
        if late := [rival for rival in rivals if rival.done_by > last_seen]:
            return (f"{len(late)} of {len(rivals)} other failed create(s) around it may still "
                    f"be processed, {sum(gap.units for gap in near)} unit(s) missing")
        return "no balance seen since the server was surely done with it"

    def _undecided(self) -> list[tuple[int, _Failure]]:
        return [(job_id, f) for job_id, f in self._failures.items() if f.verdict is None]

    def _pending(self) -> list[_Failure]:
        """The failures still to judge: undecided, or watched."""
        return [f for f in self._failures.values()
                if f.verdict is None or f.watched_until is not None]

    def _judgeable(self, failure: _Failure, gaps: list[_Gap] | None) -> bool:
        return gaps is not None and any(s.end <= failure.sent for s in self._sightings)

    def _judge(self, failure: _Failure, gaps: list[_Gap] | None,
               chains: dict[int, _Chain]) -> Verdict | None:
        """None: a create in flight may yet report a unit of a gap the failure may be in,
        or a rival failure may yet show its own. (None overlapping shows it spent nothing
        already: a debit of its would be missing from the sightings for good, which those
        in flight can only add to.) `chains`: those found so far in this round of
        verdicts, by the id of each failure in them."""
        if gaps is None or not self._judgeable(failure, gaps):
            return Verdict.ASSUMED_SPENT
        mine = [gap for gap in gaps if gap.overlaps(failure)]
        if not mine:
            return Verdict.UNSPENT
        earliest_in_flight = min(self._in_flight.values(), default=float("inf"))
        if any(gap.end > earliest_in_flight for gap in mine):
            return None
        # Spent, if the missing units around it cannot all be others' debits.
        chain = chains.get(id(failure))
        if chain is None:
            closed = [gap for gap in gaps if gap.end <= earliest_in_flight]
            chain = _Chain(*self._around(failure, closed), failure)
            chains.update(dict.fromkeys(map(id, chain.failures), chain))
        if chain.coverable() and not chain.coverable(without=failure):
            return Verdict.SPENT
        # A rival the server may still be working on may yet show its own unit elsewhere,
        # leaving this one's to this failure.
        last_seen = max(s.start for s in self._sightings)
        if any(rival.done_by > last_seen for rival in chain.failures if rival is not failure):
            return None
        return Verdict.ASSUMED_SPENT

    def _explain(self, job_id: int, failure: _Failure, gaps: list[_Gap] | None) -> None:
        """Why the balances cannot tell, for the log."""
        if gaps is None or not self._judgeable(failure, gaps):
            log.info("job %s: no balance to judge its failed create by", job_id)
            return
        near, rivals = self._around(failure, gaps)
        log.info("job %s: %d unit(s) missing around its failed create, which %d other failed "
                 "create(s) may explain", job_id, sum(gap.units for gap in near), len(rivals))

    def _around(self, failure: _Failure, gaps: list[_Gap]) -> tuple[list[_Gap], list[_Failure]]:
        """The gaps linked to the failure's through failed creates that overlap two, and
        those other failed creates (not shown unspent) that overlap them."""
        near = [gap for gap in gaps if gap.overlaps(failure)]
        # By identity: a chain may hold a hundred failures, and comparing them by value
        # on every step made a verdict take a second of the event loop.
        others = [f for f in self._failures.values()
                  if f is not failure and f.verdict is not Verdict.UNSPENT]
        rivals: list[_Failure] = []
        while True:
            joined = [f for f in others if any(g.overlaps(f) for g in near)]
            if not joined:
                return near, rivals
            rivals += joined
            taken = {id(f) for f in joined}
            others = [f for f in others if id(f) not in taken]
            seen = {id(g) for g in near}
            near += [g for g in gaps
                     if id(g) not in seen and any(g.overlaps(f) for f in joined)]

    def _gaps(self) -> list[_Gap] | None:
        """The stretches of time with debits nobody reported; None when the sightings
        cannot be trusted to show them (a rising balance, or a create that did not say)."""
        if self._blind:
            log.info("a create did not report the balance: failed creates are assumed spent")
            return None
        if not self._sightings:
            return None
        # Equal values: the create's own sighting comes before a read that saw the same.
        ordered = sorted(self._sightings, key=lambda s: (-s.value, not s.debit, s.start))
        # In this order the moments seen are in order of time too: each is no sooner than
        # any start before it, and no later than any end after it. (A slow create's reply
        # says little of when its debit came; its neighbours may say more.)
        after = list(itertools.accumulate((s.start for s in ordered), max))
        before = list(itertools.accumulate((s.end for s in reversed(ordered)), min))[::-1]
        if rose := next((s for s, start in zip(ordered, after, strict=True) if start > s.end),
                        None):  # seen sooner than one higher: the balance rose
            log.info("the balance rose (%s seen too soon): failed creates are assumed spent",
                     rose)
            return None
        gaps = []
        for index, (earlier, later) in enumerate(itertools.pairwise(ordered)):
            units = earlier.value - later.value - later.debit
            if units < 0:  # two creates reported the same balance after their debits
                log.info("the balance rose (%s and %s): failed creates are assumed spent",
                         earlier, later)
                return None
            if units:
                gaps.append(_Gap(units, after[index], before[index + 1]))
        return gaps

    def _forget_settled(self) -> None:
        """Keep only what later verdicts need: the sightings from the last one before the
        oldest failure still to judge was sent (just the last one when none is left), and
        the others that may still share a gap with them."""
        pending = self._pending()
        if not pending:
            self._blind = False
        oldest = min((f.sent for f in pending), default=float("inf"))
        before = [s for s in self._sightings if s.end <= oldest]
        if not before:
            return
        anchor = max(before, key=lambda s: s.end)
        self._sightings = [s for s in self._sightings if s.end >= anchor.start]
        self._failures = {job_id: f for job_id, f in self._failures.items()
                          if f.done_by > anchor.start or f.verdict is None
                          or f.watched_until is not None}


class _Chain:
    """Gaps linked through the failed creates that overlap them (`_around`): every one
    of those failures has the same chain, so it is found once per round of verdicts."""

    __slots__ = ("_all_coverable", "_slots", "failures", "gaps")

    def __init__(self, gaps: list[_Gap], rivals: list[_Failure], failure: _Failure) -> None:
        self.gaps, self.failures = gaps, [*rivals, failure]
        # For each unit missing, the failures (by index) whose time overlaps its gap.
        self._slots = [candidates for gap in gaps for candidates in itertools.repeat(
            [index for index, each in enumerate(self.failures) if gap.overlaps(each)],
            gap.units)]
        self._all_coverable: bool | None = None

    def coverable(self, *, without: _Failure | None = None) -> bool:
        """Whether every unit missing in the gaps can be the debit of a different one of
        the chain's failed creates (but `without`), each in a gap its time overlaps."""
        if without is not None:
            return _matched(self._slots, next(
                index for index, each in enumerate(self.failures) if each is without))
        if self._all_coverable is None:
            self._all_coverable = _matched(self._slots)
        return self._all_coverable


def _matched(slots: list[list[int]], excluded: int | None = None) -> bool:
    """Whether each slot can have a candidate of its own, but `excluded` (a bipartite
    matching, by augmenting paths: the gaps are few)."""
    if len(slots) > len({index for slot in slots for index in slot} - {excluded}):
        return False
    slot_of: dict[int, int] = {}  # candidate -> the slot it has

    def claim(slot: int, tried: set[int]) -> bool:
        for index in slots[slot]:
            if index in tried or index == excluded:
                continue
            tried.add(index)
            if index not in slot_of or claim(slot_of[index], tried):
                slot_of[index] = slot
                return True
        return False

    return all(claim(slot, set()) for slot in range(len(slots)))
