"""`python -m bot backup PATH`: a consistent copy of a database that is being written."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from storage.backup import BackupError, backup_database
from storage.db import MIGRATIONS, open_database
from tests.botprocess import REPO

PAD = b"x" * 2000  # rows big enough that the copy takes a while


def run_backup(workdir: Path, target: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("CHATINFO_", "BOT_", "DATABASE_", "WEB"))}
    return subprocess.run(
        [sys.executable, "-m", "bot", "backup", str(target)], cwd=workdir,
        env={**clean, "PYTHONPATH": str(REPO), **env},
        capture_output=True, text=True, timeout=60, check=False,
    )


class Writer(threading.Thread):
    """Writes like the bot does (WAL, short transactions) until stopped. Each transaction
    adds one debit and one credit, so any consistent snapshot holds as many of each."""

    def __init__(self, database: Path) -> None:
        super().__init__(daemon=True)
        self.database = database
        self.committed = 0
        self.errors: list[Exception] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        with closing(sqlite3.connect(self.database, timeout=5)) as db:
            while not self.stopping.is_set():
                try:
                    with db:
                        db.execute("INSERT INTO debits (pad) VALUES (?)", (PAD,))
                        db.execute("INSERT INTO credits (pad) VALUES (?)", (PAD,))
                    self.committed += 1
                except sqlite3.Error as error:
                    self.errors.append(error)
                    return


@pytest.fixture
def live_database(tmp_path: Path) -> Path:
    """The bot's schema in WAL mode, as `python -m bot` leaves it, plus a ledger."""
    path = tmp_path / "data" / "bot.sqlite3"

    async def create() -> None:
        db = await open_database(path)
        await db.close()

    asyncio.run(create())
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE debits (id INTEGER PRIMARY KEY, pad BLOB)")
        db.execute("CREATE TABLE credits (id INTEGER PRIMARY KEY, pad BLOB)")
        rows = [(PAD,)] * 5000
        db.executemany("INSERT INTO debits (pad) VALUES (?)", rows)
        db.executemany("INSERT INTO credits (pad) VALUES (?)", rows)
    return path


@pytest.fixture
def writer(live_database: Path) -> Iterator[Writer]:
    writer = Writer(live_database)
    writer.start()
    yield writer
    writer.stopping.set()
    writer.join(timeout=10)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_backup_while_writing_is_whole_and_consistent(
    tmp_path: Path, live_database: Path, writer: Writer,
) -> None:
    wait_until(lambda: writer.committed >= 20)
    before = writer.committed
    target = tmp_path / "backups" / "bot.sqlite3"
    target.parent.mkdir()

    result = run_backup(tmp_path, target, DATABASE_PATH=str(live_database))
    during = writer.committed - before

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(target)
    assert during > 0, "the writer was not writing while the backup ran"
    assert writer.errors == []  # the backup never locked the writer out
    assert not list(target.parent.glob("*.partial"))
    with closing(sqlite3.connect(target)) as copy:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        debits, = copy.execute("SELECT count(*) FROM debits").fetchone()
        credits, = copy.execute("SELECT count(*) FROM credits").fetchone()
        assert debits == credits >= 5000 + before
        assert copy.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
        assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",)


def test_backup_in_the_middle_of_a_write_copies_the_last_commit_and_blocks_nobody(
    tmp_path: Path, live_database: Path,
) -> None:
    target = tmp_path / "copy.sqlite3"
    with closing(sqlite3.connect(live_database, isolation_level=None)) as writer:
        writer.execute("BEGIN IMMEDIATE")  # holds the write lock, as the bot does mid-write
        writer.execute("INSERT INTO debits (pad) VALUES (?)", (PAD,))

        result = run_backup(tmp_path, target, DATABASE_PATH=str(live_database))

        writer.execute("INSERT INTO credits (pad) VALUES (?)", (PAD,))
        writer.execute("COMMIT")  # the write goes on undisturbed

    assert result.returncode == 0, result.stderr
    with closing(sqlite3.connect(target)) as copy:
        assert copy.execute("SELECT count(*) FROM debits").fetchone() == (5000,)
        assert copy.execute("SELECT count(*) FROM credits").fetchone() == (5000,)


def test_backup_into_a_folder_gets_a_dated_name_and_needs_no_bot_token(
    tmp_path: Path, live_database: Path,
) -> None:
    folder = tmp_path / "backups"
    folder.mkdir()

    result = run_backup(tmp_path, folder, DATABASE_PATH=str(live_database))

    assert result.returncode == 0, result.stderr
    [written] = folder.iterdir()
    assert result.stdout.strip() == str(written)
    assert written.name.startswith("bot-") and written.suffix == ".sqlite3"


def test_backup_of_a_missing_database_fails_without_creating_one(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "bot.sqlite3"
    target = tmp_path / "copy.sqlite3"

    result = run_backup(tmp_path, target, DATABASE_PATH=str(missing))

    assert result.returncode == 1
    assert result.stderr.startswith("backup error: cannot back up")
    assert "Traceback" not in result.stderr
    assert not missing.exists() and not target.exists()


def test_a_failed_backup_leaves_an_earlier_copy_alone(tmp_path: Path) -> None:
    not_a_database = tmp_path / "notes.txt"
    not_a_database.write_bytes(b"my notes\n" * 500)
    target = tmp_path / "copy.sqlite3"
    target.write_bytes(b"yesterday's backup")

    with pytest.raises(BackupError):
        backup_database(not_a_database, target)

    assert target.read_bytes() == b"yesterday's backup"
    assert not (tmp_path / "copy.sqlite3.partial").exists()
