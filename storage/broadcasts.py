"""Broadcasts: an admin's message copied to every reachable user, with per-recipient progress.

A broadcast walks COMPOSING (waiting for the admin's message) -> DRAFT (previewed, waiting
for the admin's word) -> SENDING -> DONE or STOPPED; COMPOSING and DRAFT may end CANCELLED.
Its recipients are fixed when it starts; each walks QUEUED -> SENDING -> SENT, BLOCKED or
FAILED, and a row still SENDING after a crash is sent again.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, fields
from enum import StrEnum

import aiosqlite

from storage.db import Database


class BroadcastState(StrEnum):
    COMPOSING = "composing"
    DRAFT = "draft"
    SENDING = "sending"
    DONE = "done"
    STOPPED = "stopped"
    CANCELLED = "cancelled"


class RecipientState(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"  # copyMessage may be in flight
    SENT = "sent"
    BLOCKED = "blocked"  # Telegram said 403: blocked, deactivated, never started
    FAILED = "failed"


class StopReason(StrEnum):
    ADMIN = "admin"  # the ⏹ button
    SOURCE_GONE = "source_gone"  # the admin's message was deleted: nothing left to copy


@dataclass(frozen=True, slots=True)
class Broadcast:
    id: int
    admin_id: int
    locale: str
    state: BroadcastState
    from_chat_id: int | None
    message_id: int | None
    report_id: int | None
    reason: str | None
    created_at: float
    started_at: float | None

    @classmethod
    def from_row(cls, row: aiosqlite.Row) -> Broadcast:
        values = {field.name: row[field.name] for field in fields(cls)}
        return cls(**{**values, "state": BroadcastState(values["state"])})


@dataclass(frozen=True)
class Tally:
    """Where a broadcast's recipients are."""

    sent: int = 0
    blocked: int = 0
    failed: int = 0
    left: int = 0  # queued or sending

    @classmethod
    def of(cls, counts: Counter[str]) -> Tally:
        return cls(sent=counts[RecipientState.SENT], blocked=counts[RecipientState.BLOCKED],
                   failed=counts[RecipientState.FAILED],
                   left=counts[RecipientState.QUEUED] + counts[RecipientState.SENDING])

    @property
    def total(self) -> int:
        return self.sent + self.blocked + self.failed + self.left


KEEP_RECIPIENTS_DAYS = 30  # who got a finished broadcast, for looking into it afterwards
_COLUMNS = ", ".join(field.name for field in fields(Broadcast))
_RECIPIENTS = """SELECT id FROM users WHERE first_seen > 0 AND banned = 0
                 AND blocked_at IS NULL ORDER BY id"""


class BroadcastRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def compose(self, admin_id: int, locale: str) -> int:
        """A new broadcast waiting for the admin's message; their unfinished ones end."""
        async with self._db.transaction():
            await self._db.write(
                "UPDATE broadcasts SET state = ?, finished_at = ? WHERE admin_id = ? AND state "
                "IN (?, ?)", (BroadcastState.CANCELLED, time.time(), admin_id,
                              BroadcastState.COMPOSING, BroadcastState.DRAFT))
            written = await self._db.write(
                "INSERT INTO broadcasts (admin_id, locale, state, created_at) VALUES (?, ?, ?, ?)",
                (admin_id, locale, BroadcastState.COMPOSING, time.time()))
        assert written.lastrowid is not None
        return written.lastrowid

    async def get(self, broadcast_id: int) -> Broadcast | None:
        row = await self._db.fetch_one(f"SELECT {_COLUMNS} FROM broadcasts WHERE id = ?",
                                       (broadcast_id,))
        return Broadcast.from_row(row) if row else None

    async def composing(self, admin_id: int, since: float) -> Broadcast | None:
        """The admin's broadcast waiting for its message, if they began it after `since`."""
        row = await self._db.fetch_one(
            f"""SELECT {_COLUMNS} FROM broadcasts WHERE admin_id = ? AND state = ?
                          AND created_at >= ? ORDER BY id DESC LIMIT 1""",
            (admin_id, BroadcastState.COMPOSING, since))
        return Broadcast.from_row(row) if row else None

    async def set_message(self, broadcast_id: int, from_chat_id: int, message_id: int) -> bool:
        """The message to copy is chosen: the broadcast is a draft. False if it no longer
        waited for one."""
        return await self._move(broadcast_id, BroadcastState.COMPOSING, BroadcastState.DRAFT,
                                from_chat_id=from_chat_id, message_id=message_id)

    async def cancel(self, broadcast_id: int) -> bool:
        """False if it was no longer being composed or waiting for the admin's word."""
        written = await self._db.write(
            "UPDATE broadcasts SET state = ?, finished_at = ? WHERE id = ? AND state IN (?, ?)",
            (BroadcastState.CANCELLED, time.time(), broadcast_id, BroadcastState.COMPOSING,
             BroadcastState.DRAFT))
        return written.rowcount == 1

    async def reachable_users(self, only: frozenset[int] | None = None) -> list[int]:
        """Users who wrote to the bot, are not banned and have not blocked it; with `only`,
        just those of them (the whitelist and the admins)."""
        rows = await self._db.execute_fetchall(_RECIPIENTS)
        return [row["id"] for row in rows if only is None or row["id"] in only]

    async def set_blocked(self, user_id: int, blocked: bool) -> None:
        """What Telegram reported: the user blocked the bot, or let it write again."""
        await self._db.write(
            """UPDATE users SET blocked_at = CASE WHEN :blocked THEN coalesce(blocked_at, :now)
                                                  ELSE NULL END WHERE id = :user""",
            {"blocked": blocked, "now": time.time(), "user": user_id})

    async def sending(self) -> list[Broadcast]:
        rows = await self._db.execute_fetchall(
            f"SELECT {_COLUMNS} FROM broadcasts WHERE state = ? ORDER BY id",
            (BroadcastState.SENDING,))
        return [Broadcast.from_row(row) for row in rows]

    async def start(self, broadcast_id: int, recipients: Iterable[int], report_id: int) -> bool:
        """The draft starts sending to `recipients`, all in one step; False if it was no
        longer a draft (a second tap, a cancel)."""
        async with self._db.transaction():
            started = await self._move(broadcast_id, BroadcastState.DRAFT,
                                       BroadcastState.SENDING, report_id=report_id,
                                       started_at=time.time())
            if started:
                await self._db.executemany(
                    "INSERT INTO broadcast_recipients (broadcast_id, user_id) VALUES (?, ?)",
                    ((broadcast_id, user_id) for user_id in recipients))
                # A row per user per broadcast would grow for ever; the counts stay in the
                # admin's report.
                await self._db.write(
                    """DELETE FROM broadcast_recipients WHERE broadcast_id IN
                       (SELECT id FROM broadcasts WHERE finished_at < ?)""",
                    (time.time() - KEEP_RECIPIENTS_DAYS * 86400,))
        return started

    async def next_recipients(self, broadcast_id: int, limit: int) -> list[int]:
        """Recipients still to be sent it, a crash's "sending" ones first."""
        rows = await self._db.execute_fetchall(
            """SELECT user_id FROM broadcast_recipients WHERE broadcast_id = ? AND state IN (?, ?)
               ORDER BY state = ? DESC, user_id LIMIT ?""",
            (broadcast_id, RecipientState.SENDING, RecipientState.QUEUED, RecipientState.SENDING,
             limit))
        return [row["user_id"] for row in rows]

    async def interrupted(self, broadcast_id: int) -> list[int]:
        """Recipients a crash left between the copy and its record: they may have it."""
        rows = await self._db.execute_fetchall(
            "SELECT user_id FROM broadcast_recipients WHERE broadcast_id = ? AND state = ?",
            (broadcast_id, RecipientState.SENDING))
        return [row["user_id"] for row in rows]

    async def mark(self, broadcast_id: int, user_id: int, state: RecipientState) -> None:
        """Committed at once: "sending" must be stored before the copy is sent."""
        async with self._db.transaction():
            await self._db.write(
                "UPDATE broadcast_recipients SET state = ? WHERE broadcast_id = ? AND user_id = ?",
                (state, broadcast_id, user_id))
            if state is RecipientState.BLOCKED:
                await self._db.write(
                    "UPDATE users SET blocked_at = ? WHERE id = ? AND blocked_at IS NULL",
                    (time.time(), user_id))

    async def tally(self, broadcast_id: int) -> Tally:
        rows = await self._db.execute_fetchall(
            "SELECT state, count(*) AS n FROM broadcast_recipients WHERE broadcast_id = ? "
            "GROUP BY state", (broadcast_id,))
        return Tally.of(Counter({row["state"]: row["n"] for row in rows}))

    async def finish(self, broadcast_id: int) -> Broadcast:
        """Sending ends: DONE, unless it was stopped meanwhile (which stays)."""
        await self._move(broadcast_id, BroadcastState.SENDING, BroadcastState.DONE,
                         finished_at=time.time())
        broadcast = await self.get(broadcast_id)
        assert broadcast is not None
        return broadcast

    async def stop(self, broadcast_id: int, reason: StopReason) -> bool:
        """False if it was not sending (already done or stopped)."""
        return await self._move(broadcast_id, BroadcastState.SENDING, BroadcastState.STOPPED,
                                reason=reason.value, finished_at=time.time())

    async def _move(self, broadcast_id: int, before: BroadcastState, after: BroadcastState,
                    **values: object) -> bool:
        """Set the state (and `values`) only if it is `before`; whether it was."""
        assignments = "".join(f", {name} = :{name}" for name in values)
        written = await self._db.write(
            f"UPDATE broadcasts SET state = :after{assignments} WHERE id = :id AND state = :before",
            {"after": after, "before": before, "id": broadcast_id, **values})
        return written.rowcount == 1
