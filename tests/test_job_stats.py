"""Job counts for /metrics: kept incrementally, always equal to counting every row afresh."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from storage.db import open_database
from storage.job_stats import ANSWER_LAG_BUCKETS, JobStatsReader


@pytest.fixture
def database(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    path = tmp_path / "bot.sqlite3"

    async def create() -> None:
        await (await open_database(path)).close()

    asyncio.run(create())
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode = WAL")
        yield db


def add_job(db: sqlite3.Connection, mode: str, state: str, error: str | None = None,
            lag: float | None = None) -> int:
    delivered = state == "delivered"
    cursor = db.execute(
        """INSERT INTO jobs (user_id, chat_id, locale, mode, content, state, error, created_at,
                             updated_at, answered_at, delivered_at)
           VALUES (1, 1, 'en', ?, 'x', ?, ?, 100.0, 100.0, ?, ?)""",
        (mode, state, error, 103.0 if delivered else None,
         103.0 + (lag or 0.0) if delivered else None))
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def recount(db: sqlite3.Connection) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    for mode, state, error in db.execute("SELECT mode, state, error FROM jobs"):
        if state not in {"new", "creating", "pending", "answered"}:
            counts[mode, "delivered" if state == "delivered" else error or state] += 1
    return counts


def test_counts_follow_jobs_finishing_out_of_order(database: sqlite3.Connection) -> None:
    reader = JobStatsReader(Path(database.execute("PRAGMA database_list").fetchone()[2]))
    add_job(database, "chat", "delivered", lag=0.2)
    slow = add_job(database, "poems", "pending")  # holds back what counts as settled
    add_job(database, "chat", "failed", "timeout")
    add_job(database, "code", "delivered", lag=7.0)

    first = reader.read()
    assert first.finished.counts == recount(database)
    assert first.in_progress == {"new": 0, "creating": 0, "pending": 1, "answered": 0}

    database.execute("UPDATE jobs SET state = 'failed', error = 'lost' WHERE id = ?", (slow,))
    database.execute("UPDATE jobs SET state = 'retried' WHERE error = 'timeout'")
    add_job(database, "chat", "delivered", lag=40.0)
    add_job(database, "chat", "new")

    second = reader.read()
    assert second.finished.counts == recount(database) == Counter({
        ("chat", "delivered"): 2, ("code", "delivered"): 1, ("chat", "timeout"): 1,
        ("poems", "lost"): 1})
    assert second.in_progress["new"] == 1
    lag = second.finished.answer_lag
    assert lag.cumulative[-1] == 3 and lag.total == pytest.approx(47.2)
    assert lag.cumulative[ANSWER_LAG_BUCKETS.index(0.25)] == 1
    assert lag.cumulative[ANSWER_LAG_BUCKETS.index(10.0)] == 2

    assert reader.read() == second  # reading again counts nothing twice


def test_a_restored_older_database_is_counted_afresh(database: sqlite3.Connection) -> None:
    reader = JobStatsReader(Path(database.execute("PRAGMA database_list").fetchone()[2]))
    for _ in range(3):
        add_job(database, "chat", "delivered")
    assert reader.read().finished.counts == Counter({("chat", "delivered"): 3})

    database.execute("DELETE FROM jobs")
    add_job(database, "essay", "failed", "busy")

    assert reader.read().finished.counts == Counter({("essay", "busy"): 1})
