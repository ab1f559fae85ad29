"""The database: one SQLite connection (WAL, a busy timeout), migrations by schema
version, transactions, and the health probe.

Everything the bot knows of SQLite is in storage/: the rest of the bot sees a `Database`
and the repositories built on it, so another database would change this package only.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterable, Mapping, Sized
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
from aiosqlite.context import Result

# Each entry brings the schema from version i to i + 1; never edit one that has shipped.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE users (
        id            INTEGER PRIMARY KEY,           -- Telegram user id
        mode          TEXT    NOT NULL DEFAULT 'chat',
        locale        TEXT,                          -- chosen language; NULL: from Telegram
        language_code TEXT,                          -- as Telegram last reported it
        first_seen    REAL    NOT NULL,
        last_seen     REAL    NOT NULL
    );
    CREATE TABLE jobs (
        id                INTEGER PRIMARY KEY,
        user_id           INTEGER NOT NULL REFERENCES users(id),
        chat_id           INTEGER NOT NULL,
        source_message_id INTEGER,                  -- the user's message, NULL for retries
        placeholder_id    INTEGER,                  -- our message that becomes the answer
        locale            TEXT    NOT NULL,
        mode              TEXT    NOT NULL,
        content           TEXT    NOT NULL,
        state             TEXT    NOT NULL,
        upstream_id       INTEGER,
        units_after       INTEGER,                  -- balance create_request reported
        result            TEXT,
        parts_delivered   INTEGER NOT NULL DEFAULT 0,
        error             TEXT,                     -- failure kind, for the log and stats
        created_at        REAL    NOT NULL,
        updated_at        REAL    NOT NULL,
        answered_at       REAL,
        delivered_at      REAL,
        -- Telegram may deliver an update twice after a crash: one job per message.
        UNIQUE (chat_id, source_message_id)
    );
    CREATE INDEX jobs_by_state ON jobs (state);
    CREATE INDEX jobs_by_user ON jobs (user_id, created_at);
    """,
    """
    ALTER TABLE users ADD COLUMN daily_quota INTEGER;      -- NULL: DAILY_QUOTA; 0: unlimited
    ALTER TABLE users ADD COLUMN banned INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN quota_day TEXT;            -- the day whose quota it counts on
    CREATE TABLE usage (
        user_id INTEGER NOT NULL REFERENCES users(id),
        day     TEXT    NOT NULL,                          -- local date in QUOTA_TIMEZONE
        used    INTEGER NOT NULL DEFAULT 0,
        granted INTEGER NOT NULL DEFAULT 0,                -- extra requests for that day
        PRIMARY KEY (user_id, day)
    );
    CREATE INDEX jobs_by_created ON jobs (created_at);
    """,
    """
    ALTER TABLE jobs ADD COLUMN reply_to INTEGER;  -- the message the placeholder answers
    """,
    """
    ALTER TABLE jobs ADD COLUMN upstream_at REAL;  -- when create_request returned the id
    CREATE INDEX jobs_by_answered ON jobs (answered_at);
    """,
    """
    -- 0 while a job has ended without an answer and the user has not yet seen why.
    ALTER TABLE jobs ADD COLUMN told INTEGER NOT NULL DEFAULT 1;
    """,
    """
    -- When upstream finished, as far as the polls tell (answered_at is when a poll saw
    -- it, later by up to a poll gap); what the poll scheduler learns from.
    ALTER TABLE jobs ADD COLUMN solved_after REAL;
    """,
    """
    -- A user's own daily quota: NULL follows DAILY_QUOTA, -1 is unlimited and 0 now cuts
    -- the user off (it meant unlimited before).
    UPDATE users SET daily_quota = -1 WHERE daily_quota = 0;
    -- What /history shows of a job: the user's own words (NULL: the content), and the
    -- answer button that made it (c: continue, s: shorter, r: again; NULL: typed).
    ALTER TABLE jobs ADD COLUMN question TEXT;
    ALTER TABLE jobs ADD COLUMN action TEXT;
    -- The answer whose button made the job: one such request per (answer, action) at a time.
    ALTER TABLE jobs ADD COLUMN parent_id INTEGER;
    CREATE INDEX jobs_by_parent ON jobs (parent_id, action) WHERE parent_id IS NOT NULL;
    -- 1: the user stopped waiting after the request was sent; its paid answer is still
    -- fetched and kept for /history, but not posted.
    ALTER TABLE jobs ADD COLUMN cancelled INTEGER NOT NULL DEFAULT 0;
    """,
    """
    -- The balance read while no create_request was in flight, and when. Less the creates
    -- acknowledged since, it is what the balance must be if only those spent units: the
    -- next start settles the creates a crash left without a reply against it.
    CREATE TABLE balance_anchor (
        id      INTEGER PRIMARY KEY CHECK (id = 1),
        units   INTEGER NOT NULL,
        read_at REAL    NOT NULL
    );
    """,
    """
    -- A job asked in inline mode: the message posted in someone's chat on the user's behalf,
    -- edited through this id (there is no chat id or placeholder). Telegram may deliver the
    -- chosen result again after a crash: one job per inline message.
    ALTER TABLE jobs ADD COLUMN inline_message_id TEXT;
    CREATE UNIQUE INDEX jobs_by_inline_message ON jobs (inline_message_id)
        WHERE inline_message_id IS NOT NULL;
    """,
    """
    -- Conversations that remember. Their turns are the jobs a user sent in one chat;
    -- what is stored here is only where a conversation starts afresh.
    -- /new: in this chat, jobs before started_at are not context.
    CREATE TABLE conversations (
        chat_id    INTEGER NOT NULL,
        user_id    INTEGER NOT NULL,
        started_at REAL    NOT NULL,
        PRIMARY KEY (chat_id, user_id)
    ) WITHOUT ROWID;
    CREATE INDEX conversations_by_start ON conversations (started_at);
    -- A change of mode starts every conversation of the user afresh.
    ALTER TABLE users ADD COLUMN mode_changed_at REAL;
    -- A user's choice to remember conversations in a mode, over the mode's default.
    CREATE TABLE mode_memory (
        user_id  INTEGER NOT NULL REFERENCES users(id),
        mode     TEXT    NOT NULL,
        remember INTEGER NOT NULL,
        PRIMARY KEY (user_id, mode)
    ) WITHOUT ROWID;
    -- A conversation's latest turns, newest first, in one index range.
    CREATE INDEX jobs_by_conversation ON jobs (chat_id, user_id, created_at);
    """,
    """
    -- When Telegram last refused a message to the user (403: they blocked the bot, or
    -- never opened its private chat); broadcasts skip them. A private message clears it.
    ALTER TABLE users ADD COLUMN blocked_at REAL;
    -- A broadcast: an admin's message copied to every reachable user. It is composed
    -- (waiting for the message), a draft (previewed, waiting for the admin's word), then
    -- sending, and ends done, stopped or cancelled.
    CREATE TABLE broadcasts (
        id           INTEGER PRIMARY KEY,
        admin_id     INTEGER NOT NULL,
        locale       TEXT    NOT NULL,          -- the admin's, for the progress report
        state        TEXT    NOT NULL,
        from_chat_id INTEGER,                   -- the admin's message, copied to everyone
        message_id   INTEGER,
        report_id    INTEGER,                   -- our message in the admin's chat: progress
        reason       TEXT,                      -- why it stopped before the end
        created_at   REAL    NOT NULL,
        started_at   REAL,
        finished_at  REAL
    );
    CREATE INDEX broadcasts_by_state ON broadcasts (state);
    -- Who gets it, fixed when the admin confirms. A row is "sending" from just before its
    -- copyMessage to just after: found so after a crash, it is sent again.
    CREATE TABLE broadcast_recipients (
        broadcast_id INTEGER NOT NULL REFERENCES broadcasts(id),
        user_id      INTEGER NOT NULL,
        state        TEXT    NOT NULL DEFAULT 'queued',  -- sending, sent, blocked, failed
        PRIMARY KEY (broadcast_id, user_id)
    ) WITHOUT ROWID;
    CREATE INDEX broadcast_recipients_by_state ON broadcast_recipients (broadcast_id, state);
    """,
    """
    -- A pool of API keys: the key a job's create_request went with, by its fingerprint
    -- (8 hex digits of its SHA-256, never the key); its polls use that key, also after a
    -- restart. NULL: sent before the pool, with the one key there was (the bot adopts
    -- those rows for its first key at start).
    ALTER TABLE jobs ADD COLUMN upstream_key TEXT;
    -- The balance anchor, one per key; the one kept before the pool names none ('').
    CREATE TABLE balance_anchors (
        key     TEXT PRIMARY KEY,
        units   INTEGER NOT NULL,
        read_at REAL    NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO balance_anchors (key, units, read_at)
        SELECT '', units, read_at FROM balance_anchor;
    DROP TABLE balance_anchor;
    """,
    """
    -- When create_request was sent: with the balance it reported and when its reply came,
    -- it pins a balance to a span of time, so the next start can tell which creates a
    -- crash abandoned spent a unit (bot/jobs/balance_ledger.py). NULL: sent before this.
    ALTER TABLE jobs ADD COLUMN sent_at REAL;
    CREATE INDEX jobs_by_acknowledged ON jobs (upstream_key, upstream_at)
        WHERE upstream_at IS NOT NULL;
    """,
    """
    -- The creates of the last minute count in the server's window after a restart too.
    CREATE INDEX jobs_by_sent ON jobs (upstream_key, sent_at) WHERE sent_at IS NOT NULL;
    """,
    """
    -- When the server was surely done with a create that failed and awaits the balance's
    -- verdict: a restart goes on from it, not from "a minute after it was sent".
    ALTER TABLE jobs ADD COLUMN create_done_by REAL;
    """,
    """
    -- What the balance showed of a failed create: 'spent', 'unspent', or 'assumed_spent'
    -- (NULL: not judged yet). A restart then watches only those still in doubt.
    ALTER TABLE jobs ADD COLUMN create_verdict TEXT;
    """,
)


class DatabaseError(Exception):
    """The database cannot be opened or read, or is not ours to use."""


Parameters = Iterable[Any] | Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Written:
    """What a write statement did."""

    rowcount: int  # rows it inserted, changed or deleted
    lastrowid: int | None  # the id of the row it inserted, if it inserted one


class Database:
    """The bot's one connection, shared by every coroutine, and the rules for writing.

    A write is committed at once, unless it is made inside `transaction()`: then it lands
    with the transaction's other writes, or (if the block raises) with none of them. So a
    repository method never commits a transaction its caller holds; it only writes.
    One transaction is open at a time: another task's write waits for it to end, so it is
    neither committed by this transaction's commit nor undone by its rollback (so a
    transaction must not wait for another task that writes).
    """

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self.connection = connection  # SQLite's own API, for storage's tests and tools
        self._writing = asyncio.Lock()
        self._holder: asyncio.Task[Any] | None = None  # the task whose transaction is open

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """Writes inside land together or not at all; inside another transaction of the
        same task, they are part of that one."""
        if self._in_own_transaction():
            yield
            return
        async with self._writing:
            self._holder = asyncio.current_task()
            try:
                await self.connection.execute("BEGIN")
                yield
                await self.connection.commit()
            except BaseException:
                await self.connection.rollback()
                raise
            finally:
                self._holder = None

    async def write(self, sql: str, parameters: Parameters = ()) -> Written:
        """One statement that changes rows: committed now, or with the open transaction."""
        # Alone, it is its own transaction: SQLite commits it as it runs, in one trip to
        # the connection's thread instead of two. It still waits for another task's
        # transaction, or it would be part of it.
        async with nullcontext() if self._in_own_transaction() else self._writing:
            cursor = await self.connection.execute(sql, parameters)
            return Written(cursor.rowcount, cursor.lastrowid)

    def _in_own_transaction(self) -> bool:
        return self._holder is not None and self._holder is asyncio.current_task()

    async def fetch_one(self, sql: str, parameters: Parameters = ()) -> aiosqlite.Row | None:
        """The first row, fetched and closed in one step.

        The connection is shared by all coroutines; a cursor left open across an await
        would make another coroutine's commit fail with "SQL statements in progress".
        """
        rows = await self.connection.execute_fetchall(sql, parameters)
        return next(iter(rows), None)

    async def execute_fetchall(self, sql: str,
                               parameters: Parameters = ()) -> Iterable[aiosqlite.Row]:
        """Every row, fetched and closed in one step (see `fetch_one`)."""
        return await self.connection.execute_fetchall(sql, parameters)

    async def probe(self) -> None:
        """For the health check: raises if the database does not answer."""
        await self.execute_fetchall("SELECT 1")

    async def close(self) -> None:
        await self.connection.close()

    # Statements as they are, neither committed nor waiting for a transaction: for tests
    # and tools that set up or change rows by hand. The bot writes with `write`.
    def execute(self, sql: str, parameters: Parameters = ()) -> Result[aiosqlite.Cursor]:
        return self.connection.execute(sql, parameters)

    async def executemany(self, sql: str, parameters: Iterable[Parameters]) -> None:
        await self.connection.executemany(sql, parameters)

    async def commit(self) -> None:
        await self.connection.commit()


def placeholders(values: Sized) -> str:
    """`?,?,?` for a `IN (...)` of as many values."""
    return ",".join("?" * len(values))


async def open_database(path: Path) -> Database:
    try:
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit: a statement outside `transaction()` commits as it runs, and a
        # transaction is begun and ended by hand.
        db = await aiosqlite.connect(path, isolation_level=None)
    except (OSError, sqlite3.Error) as error:
        raise DatabaseError(f"cannot open database {path}: {error}") from None
    try:
        db.row_factory = aiosqlite.Row
        await db.execute("PRAGMA busy_timeout = 5000")
        await db.execute("PRAGMA journal_mode = WAL")
        # With WAL, commits survive a killed process without an fsync each; only an OS
        # crash or power cut can lose the last ones, and every step is safe to redo.
        await db.execute("PRAGMA synchronous = NORMAL")
        await db.execute("PRAGMA foreign_keys = ON")
        await migrate(db)
    except sqlite3.Error as error:
        await db.close()  # its worker thread would keep the process alive
        raise DatabaseError(f"cannot use database {path}: {error}") from None
    return Database(db)


async def migrate(db: aiosqlite.Connection) -> None:
    rows = await db.execute_fetchall("PRAGMA user_version")
    row = next(iter(rows), None)
    version = int(row[0]) if row else 0
    if version > len(MIGRATIONS):
        raise DatabaseError(f"schema version {version} is newer than this bot knows")
    for number in range(version, len(MIGRATIONS)):
        # One transaction per step: a crash leaves the old version or the new, never half.
        await db.executescript(
            f"BEGIN;\n{MIGRATIONS[number]}\nPRAGMA user_version = {number + 1};\nCOMMIT;"
        )
