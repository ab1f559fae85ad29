"""Schema, migrations and the job repository's guarantees."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import storage.db
from bot.modes import DEFAULT_MODE
from storage.db import MIGRATIONS, migrate, open_database
from storage.jobs import JobRepo, JobState
from storage.quotas import QuotaRepo
from storage.users import NEW_USER_MODE, UserRepo

DAY = "2026-12-02"


async def test_migrations_are_recorded_and_idempotent(tmp_path: Path) -> None:
    db = await open_database(tmp_path / "a.sqlite3")
    await migrate(db.connection)  # a second run must change nothing
    async with db.execute("PRAGMA user_version") as cursor:
        assert tuple(await cursor.fetchone() or ()) == (len(MIGRATIONS),)
    async with db.execute("PRAGMA journal_mode") as cursor:
        assert tuple(await cursor.fetchone() or ()) == ("wal",)
    await db.close()

    reopened = await open_database(tmp_path / "a.sqlite3")
    async with reopened.execute("SELECT count(*) FROM jobs") as cursor:
        assert tuple(await cursor.fetchone() or ()) == (0,)
    await reopened.close()


async def test_one_job_per_telegram_message(tmp_path: Path) -> None:
    db = await open_database(tmp_path / "b.sqlite3")
    await db.execute("INSERT INTO users (id, first_seen, last_seen) VALUES (1, 0, 0)")
    jobs = JobRepo(db)
    fields = {"user_id": 1, "chat_id": 1, "locale": "en", "mode": "chat", "content": "hi"}

    first = await jobs.add(source_message_id=10, **fields)  # type: ignore[arg-type]
    again = await jobs.add(source_message_id=10, **fields)  # type: ignore[arg-type]
    retry_a = await jobs.add(source_message_id=None, **fields)  # type: ignore[arg-type]
    retry_b = await jobs.add(source_message_id=None, **fields)  # type: ignore[arg-type]

    assert first is not None and again is None
    assert retry_a is not None and retry_b is not None and retry_a != retry_b
    await db.close()


async def test_a_retry_can_be_claimed_once_and_only_by_its_owner(tmp_path: Path) -> None:
    db = await open_database(tmp_path / "c.sqlite3")
    await db.execute("INSERT INTO users (id, first_seen, last_seen) VALUES (1, 0, 0)")
    jobs = JobRepo(db)
    job_id = await jobs.add(user_id=1, chat_id=1, source_message_id=None, locale="en",
                            mode="chat", content="hi")
    assert job_id is not None
    assert await jobs.claim_retry(job_id, user_id=1) is None  # NEW jobs cannot be retried
    await jobs.end(job_id, JobState.UNKNOWN, "test")

    assert await jobs.claim_retry(job_id, user_id=2) is None
    claimed = await jobs.claim_retry(job_id, user_id=1)
    assert claimed is not None and claimed.state is JobState.UNKNOWN  # as it was
    stored = await jobs.get(job_id)
    assert stored is not None and stored.state is JobState.RETRIED
    assert await jobs.claim_retry(job_id, user_id=1) is None
    await db.close()


async def test_migration_7_keeps_an_unlimited_quota_unlimited(tmp_path: Path,
                                                              monkeypatch: Any) -> None:
    """Before it, a user's quota of 0 meant unlimited; after it, 0 cuts the user off."""
    path = tmp_path / "old.sqlite3"
    monkeypatch.setattr(storage.db, "MIGRATIONS", MIGRATIONS[:6])
    old = await open_database(path)
    await old.executemany(
        "INSERT INTO users (id, first_seen, last_seen, daily_quota) VALUES (?, 1, 1, ?)",
        [(1, 0), (2, 5), (3, None)])
    await old.commit()
    await old.close()
    monkeypatch.setattr(storage.db, "MIGRATIONS", MIGRATIONS)

    db = await open_database(path)
    quotas = QuotaRepo(db, 30)
    usages = [await quotas.usage(user, "2026-12-02") for user in (1, 2, 3)]
    await db.close()
    assert [(u.quota, u.personal) for u in usages] == [(None, True), (5, True), (30, False)]


async def test_storage_and_the_modes_agree_on_the_mode_of_a_new_user(tmp_path: Path) -> None:
    """Storage knows it from its schema (the users.mode column's default), the bot from its
    modes: a user who never chose a mode has the same one, stored yet or not."""
    db = await open_database(tmp_path / "d.sqlite3")
    [column] = await db.execute_fetchall(
        "SELECT dflt_value FROM pragma_table_info('users') WHERE name = 'mode'")
    users = UserRepo(db)
    not_stored = await users.mode(1)
    await users.touch(1, "en")
    stored = await users.mode(1)
    await db.close()
    assert column[0] == f"'{DEFAULT_MODE}'"
    assert NEW_USER_MODE == not_stored == stored == DEFAULT_MODE


async def test_a_transaction_that_fails_leaves_nothing_written(tmp_path: Path) -> None:
    """A repo's write inside the caller's transaction is not committed by the repo: the
    reservation and the job go with the transaction, and so do writes of nested ones."""
    db = await open_database(tmp_path / "e.sqlite3")
    await UserRepo(db).touch(1, "en")
    quotas, jobs = QuotaRepo(db, 1), JobRepo(db)

    with pytest.raises(RuntimeError):
        async with db.transaction():
            assert await quotas.reserve(1, DAY)
            async with db.transaction():  # part of the outer one
                await jobs.add(user_id=1, chat_id=1, source_message_id=1, locale="en",
                               mode="chat", content="hi", quota_day=DAY)
            raise RuntimeError("adding the job failed")

    assert (await quotas.usage(1, DAY)).used == 0
    assert await jobs.unfinished() == []
    async with db.transaction():  # and the next one starts clean
        assert await quotas.reserve(1, DAY)
    await db.close()


async def test_another_tasks_write_waits_for_a_transaction_and_outlives_its_rollback(
        tmp_path: Path) -> None:
    db = await open_database(tmp_path / "f.sqlite3")
    users, quotas = UserRepo(db), QuotaRepo(db, 1)
    await users.touch(1, "en")
    reserved, written = asyncio.Event(), asyncio.Event()

    async def fail_after_reserving() -> None:
        async with db.transaction():
            assert await quotas.reserve(1, DAY)
            reserved.set()
            await asyncio.sleep(0.1)  # time enough for the other write, were it let through
            assert not written.is_set()
            raise RuntimeError("adding the job failed")

    async def choose_a_language() -> None:
        await reserved.wait()
        await users.set_locale(1, "ru")  # committed on its own, after the rollback
        written.set()

    failing = asyncio.create_task(fail_after_reserving())
    await choose_a_language()
    with pytest.raises(RuntimeError):
        await failing

    reopened = await open_database(tmp_path / "f.sqlite3")  # what was committed
    assert await UserRepo(reopened).locale(1) == "ru"
    assert (await QuotaRepo(reopened, 1).usage(1, DAY)).used == 0
    await reopened.close()
    await db.close()


async def test_a_failed_create_s_verdict_is_kept_for_the_next_start(tmp_path: Path) -> None:
    """What the balance showed of a failed create taken as spent: a restart watches only
    those still in doubt, and leaves out those shown to have spent nothing."""
    db = await open_database(tmp_path / "v.sqlite3")
    await db.execute("INSERT INTO users (id, first_seen, last_seen) VALUES (1, 0, 0)")
    jobs = JobRepo(db)
    ids: list[int] = []
    for verdict in ("spent", "unspent", "assumed_spent"):
        job_id = await jobs.add(user_id=1, chat_id=1, source_message_id=None, locale="en",
                                mode="chat", content=verdict)
        assert job_id is not None
        await jobs.mark_creating(job_id, key="k", sent_at=100.0 + len(ids))
        await jobs.end(job_id, JobState.UNKNOWN, "unknown_outcome")
        await jobs.set_create_verdict(job_id, verdict)
        ids.append(job_id)
    taken = await jobs.taken_as_spent_from(0.0, key="k")
    assert {job_id: entry.shown_spent for job_id, entry in taken.items()} == {
        ids[0]: True, ids[2]: False}
    await db.close()
