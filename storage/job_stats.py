"""Job counts for /metrics (bot/ops/metrics.py), read from SQLite so they survive restarts.

A finished job never changes its mode, outcome or times, so the jobs up to the oldest
unfinished one are added up once and kept; each scrape reads only the jobs after it.
Months of history cost a scrape no more than the last few minutes do.

Reads are blocking (run them in a thread) on a read-only connection of their own: in
WAL mode a reader never holds up the bot's writes.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from storage.db import DatabaseError, placeholders
from storage.jobs import UNFINISHED, JobState

# From "the answer is stored" to "Telegram accepted the last part".
ANSWER_LAG_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# From the user's message to the delivered answer: what the user waits.
TIME_TO_ANSWER_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_UNFINISHED = tuple(str(state) for state in UNFINISHED)
_MARKS = placeholders(_UNFINISHED)
_DELIVERED = str(JobState.DELIVERED)


@dataclass(frozen=True)
class BucketCounts:
    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]  # one count per bound, then the total (+Inf)
    total: float = 0.0

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> BucketCounts:
        return cls(bounds, (0,) * (len(bounds) + 1))

    def __add__(self, other: BucketCounts) -> BucketCounts:
        counts = tuple(a + b for a, b in zip(self.cumulative, other.cumulative, strict=True))
        return BucketCounts(self.bounds, counts, self.total + other.total)


@dataclass(frozen=True)
class Finished:
    """Finished jobs: counts by (mode, outcome), and the delivered ones' timings."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    answer_lag: BucketCounts = field(default_factory=lambda: BucketCounts.empty(ANSWER_LAG_BUCKETS))
    time_to_answer: BucketCounts = field(
        default_factory=lambda: BucketCounts.empty(TIME_TO_ANSWER_BUCKETS))

    def __add__(self, other: Finished) -> Finished:
        return Finished(self.counts + other.counts, self.answer_lag + other.answer_lag,
                        self.time_to_answer + other.time_to_answer)


@dataclass(frozen=True)
class JobStats:
    in_progress: dict[str, int]  # unfinished jobs by state, every state present
    finished: Finished


class JobStatsReader:
    def __init__(self, database: Path) -> None:
        self._uri = database.resolve().as_uri() + "?mode=ro"
        self._settled = Finished()
        self._settled_through = 0  # every job up to this id is finished and counted
        # One read at a time: a scrape whose client went away leaves its thread running.
        self._lock = threading.Lock()

    def read(self) -> JobStats:
        """Raises DatabaseError if the jobs cannot be read."""
        try:
            with self._lock, closing(sqlite3.connect(self._uri, uri=True, timeout=2.0)) as db:
                db.execute("BEGIN")  # one snapshot for every query below
                try:
                    return self._read(db)
                finally:
                    db.rollback()
        except sqlite3.Error as error:
            raise DatabaseError(str(error)) from error

    def _read(self, db: sqlite3.Connection) -> JobStats:
        oldest_open, newest = db.execute(
            f"SELECT (SELECT min(id) FROM jobs WHERE state IN ({_MARKS})), "
            "(SELECT coalesce(max(id), 0) FROM jobs)", _UNFINISHED).fetchone()
        if newest < self._settled_through:  # a different (restored) database
            self._settled, self._settled_through = Finished(), 0
        settled_through = newest if oldest_open is None else oldest_open - 1
        if settled_through > self._settled_through:
            self._settled += _finished(db, self._settled_through, settled_through)
            self._settled_through = settled_through
        in_progress = dict.fromkeys(_UNFINISHED, 0)
        in_progress.update(db.execute(
            f"SELECT state, count(*) FROM jobs WHERE state IN ({_MARKS}) GROUP BY state",
            _UNFINISHED).fetchall())
        recent = _finished(db, self._settled_through, newest)
        return JobStats(in_progress, self._settled + recent)


def _finished(db: sqlite3.Connection, after_id: int, through_id: int) -> Finished:
    """Finished jobs with after_id < id <= through_id (a range of the primary key)."""
    # The outcome: delivered, or the failure kind the job ended with. A failed job the
    # user retried keeps its kind, so these counts never go down.
    counts = Counter({(mode, outcome): count for mode, outcome, count in db.execute(
        f"""SELECT mode, CASE WHEN state = ? THEN state ELSE coalesce(error, state) END, count(*)
            FROM jobs WHERE id > ? AND id <= ? AND state NOT IN ({_MARKS}) GROUP BY 1, 2""",
        (_DELIVERED, after_id, through_id, *_UNFINISHED))})
    return Finished(
        counts,
        _histogram(db, "delivered_at - answered_at", ANSWER_LAG_BUCKETS, after_id, through_id),
        _histogram(db, "delivered_at - created_at", TIME_TO_ANSWER_BUCKETS, after_id,
                   through_id))


def _histogram(db: sqlite3.Connection, span: str, bounds: tuple[float, ...], after_id: int,
               through_id: int) -> BucketCounts:
    below: Sequence[str] = ["coalesce(sum(x <= ?), 0)"] * len(bounds)
    *counts, total = db.execute(
        f"""SELECT {", ".join(below)}, count(*), total(x) FROM (
                SELECT {span} AS x FROM jobs
                WHERE id > ? AND id <= ? AND state = ?
                  AND answered_at IS NOT NULL AND delivered_at IS NOT NULL)""",
        (*bounds, after_id, through_id, _DELIVERED)).fetchone()
    return BucketCounts(bounds, tuple(int(count) for count in counts), float(total))
