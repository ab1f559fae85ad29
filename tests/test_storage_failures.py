"""SQLite under stress: a busy database waits instead of failing, a migration cut off
halfway leaves the old schema intact, and one task's commit cannot break another's write.

tests/test_storage.py covers WAL and idempotent migrations; tests/test_startup.py a file
that is not a database and an unwritable folder.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import storage.db
from storage.db import MIGRATIONS, Database, DatabaseError, open_database
from storage.jobs import JobRepo
from storage.users import UserRepo
from tests.botprocess import REPO


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    connection = await open_database(tmp_path / "bot.sqlite3")
    yield connection
    await connection.close()


async def scalar(db: Database, sql: str) -> object:
    [row] = await db.execute_fetchall(sql)
    return row[0]


def columns(path: Path, table: str) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


async def test_a_busy_database_is_waited_for_not_failed(tmp_path: Path,
                                                        db: Database) -> None:
    assert await scalar(db, "PRAGMA busy_timeout") == 5000
    await UserRepo(db).touch(1, "en")
    locked, release = threading.Event(), threading.Event()

    def hold_the_write_lock() -> None:  # another process, say a backup or sqlite3 shell
        with sqlite3.connect(tmp_path / "bot.sqlite3", isolation_level=None) as other:
            other.execute("BEGIN IMMEDIATE")
            locked.set()
            release.wait(5)
            other.execute("COMMIT")

    holder = threading.Thread(target=hold_the_write_lock)
    holder.start()
    try:
        assert await asyncio.to_thread(locked.wait, 5)
        asyncio.get_running_loop().call_later(0.3, release.set)
        started = time.monotonic()
        await UserRepo(db).set_mode(1, "poems")  # blocks on the lock, then goes through
        assert time.monotonic() - started >= 0.25
    finally:
        release.set()
        await asyncio.to_thread(holder.join)
    assert await UserRepo(db).mode(1) == "poems"


KILLED_MIGRATION = """
import asyncio, os, signal, sys
import aiosqlite
import storage.db

async def main(path: str) -> None:
    db = await aiosqlite.connect(path)
    await db.create_function("die_here", 0, lambda: os.kill(os.getpid(), signal.SIGKILL))
    storage.db.MIGRATIONS = (*storage.db.MIGRATIONS,
                             "ALTER TABLE jobs ADD COLUMN half_done INTEGER; SELECT die_here();")
    await storage.db.migrate(db)

asyncio.run(main(sys.argv[1]))
"""


async def test_a_migration_killed_halfway_leaves_the_old_version(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    first = await open_database(path)
    await UserRepo(first).touch(7, "en")
    await first.close()

    # A next version's migration, killed by SIGKILL after its first statement ran.
    killed = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILLED_MIGRATION, str(path), cwd=REPO,
        env={"PYTHONPATH": str(REPO)}, stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(killed.communicate(), timeout=30)
    assert killed.returncode == -signal.SIGKILL, stderr.decode()

    assert "half_done" not in columns(path, "jobs")
    reopened = await open_database(path)  # this version: nothing to migrate
    try:
        assert await scalar(reopened, "PRAGMA user_version") == len(MIGRATIONS)
        assert await scalar(reopened, "PRAGMA integrity_check") == "ok"
        assert await UserRepo(reopened).exists(7)
    finally:
        await reopened.close()


async def test_a_migration_that_fails_halfway_changes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bot.sqlite3"
    await (await open_database(path)).close()
    monkeypatch.setattr(storage.db, "MIGRATIONS", (
        *MIGRATIONS, "ALTER TABLE jobs ADD COLUMN half_done INTEGER; SELECT * FROM no_such;"))

    with pytest.raises(DatabaseError):
        await open_database(path)
    assert "half_done" not in columns(path, "jobs")
    with sqlite3.connect(path) as plain:
        assert plain.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)

    monkeypatch.setattr(storage.db, "MIGRATIONS", MIGRATIONS)
    await (await open_database(path)).close()  # and the current version still opens it


async def test_a_commit_cannot_land_inside_another_tasks_upsert(db: Database,
                                                                ) -> None:
    """Regression: every update's user upsert (INSERT … RETURNING) used to be executed
    and fetched in two steps; a job committing between them failed with "cannot commit
    transaction - SQL statements in progress", and its task died."""
    await UserRepo(db).touch(1, "en")
    job_id = await JobRepo(db).add(user_id=1, chat_id=1, source_message_id=1, locale="en",
                                   mode="chat", content="x")
    assert job_id is not None
    loop, upserting = asyncio.get_running_loop(), asyncio.Event()

    def watch(sql: str) -> None:  # called on SQLite's thread as each statement starts
        if "RETURNING" in sql:
            loop.call_soon_threadsafe(upserting.set)

    await db.connection.set_trace_callback(watch)
    await db.execute("UPDATE jobs SET parts_delivered = 1 WHERE id = ?", (job_id,))
    touching = asyncio.create_task(UserRepo(db).touch(2, "en"))
    await upserting.wait()
    await db.commit()  # queued as early as a job's commit could be
    await touching
    assert await scalar(db, "SELECT parts_delivered FROM jobs WHERE id = 1") == 1
