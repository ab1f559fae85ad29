"""Jobs: one row per request, the source of truth for its progress.

A job walks NEW -> CREATING -> PENDING -> ANSWERED -> DELIVERED. Any state may end in
FAILED; CREATING found at start means create_request may have been sent and counted,
so the job becomes UNKNOWN (the user is offered a retry) instead of being re-sent.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, NamedTuple

import aiosqlite

from storage.db import Database, placeholders


class JobState(StrEnum):
    NEW = "new"  # stored; create_request not sent yet, so sending it is safe
    CREATING = "creating"  # create_request may be in flight
    PENDING = "pending"  # upstream id known, polling
    ANSWERED = "answered"  # result stored, delivery in progress
    DELIVERED = "delivered"
    FAILED = "failed"  # ended; the user was told why
    UNKNOWN = "unknown"  # create outcome unknowable; the user was offered a retry
    RETRIED = "retried"  # an UNKNOWN or FAILED job the user chose to send again


UNFINISHED = (JobState.NEW, JobState.CREATING, JobState.PENDING, JobState.ANSWERED)
RETRYABLE = (JobState.UNKNOWN, JobState.FAILED)


@dataclass(frozen=True, slots=True)
class Job:
    id: int
    user_id: int
    chat_id: int
    placeholder_id: int | None
    locale: str
    mode: str
    content: str
    state: JobState
    upstream_id: int | None
    result: str | None
    parts_delivered: int
    created_at: float
    quota_day: str | None
    reply_to: int | None
    error: str | None
    upstream_at: float | None
    told: bool
    question: str | None  # the user's own words, where the content holds more
    action: str | None  # the answer button that made the job, if one did
    parent_id: int | None  # the answer whose button it was
    cancelled: bool  # the user stopped waiting after it was sent: the answer is kept quietly
    # Asked in inline mode: the answer edits this message in another chat, and chat_id is
    # the user's private chat, where only the whole answer is shown on request.
    inline_message_id: str | None
    upstream_key: str | None  # the fingerprint of the API key it was sent with

    @property
    def inline(self) -> bool:
        return self.inline_message_id is not None

    @classmethod
    def from_row(cls, row: aiosqlite.Row) -> Job:
        values = {field.name: row[field.name] for field in fields(cls)}
        return cls(**{**values, "state": JobState(values["state"]), "told": bool(values["told"]),
                      "cancelled": bool(values["cancelled"])})


class TakenAsSpent(NamedTuple):
    """A failed create_request taken as spent: when it was sent, when the server was
    surely done with it (if known), and whether the balance showed it spent."""

    sent: float
    done_by: float | None
    shown_spent: bool


class MidCreate(NamedTuple):
    """A create_request that may have spent a unit, and when it was sent."""

    sent: float
    done_by: float | None  # failed, and the server was surely done with it by then


class JobRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(
        self,
        *,
        user_id: int,
        chat_id: int,
        source_message_id: int | None,
        locale: str,
        mode: str,
        content: str,
        quota_day: str | None = None,
        reply_to: int | None = None,
        question: str | None = None,
        action: str | None = None,
        parent_id: int | None = None,
        inline_message_id: str | None = None,
    ) -> int | None:
        """The new job's id, or None if this message (or inline message) already has a job."""
        now = time.time()
        written = await self._db.write(
            """INSERT INTO jobs (user_id, chat_id, source_message_id, locale, mode, content,
                                 state, quota_day, reply_to, question, action, parent_id,
                                 inline_message_id, created_at, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT DO NOTHING""",
            (
                user_id,
                chat_id,
                source_message_id,
                locale,
                mode,
                content,
                JobState.NEW,
                quota_day,
                reply_to,
                question,
                action,
                parent_id,
                inline_message_id,
                now,
                now,
            ),
        )
        return written.lastrowid if written.rowcount == 1 else None

    async def get(self, job_id: int) -> Job | None:
        row = await self._db.fetch_one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return Job.from_row(row) if row else None

    async def unfinished(self, *, after: int = 0, limit: int = -1) -> list[Job]:
        """Jobs to carry on at a start, in id order; a page of them with `after`/`limit`."""
        marks = placeholders(UNFINISHED)
        return [
            Job.from_row(row)
            for row in await self._db.execute_fetchall(
                f"""SELECT * FROM jobs WHERE id > ? AND (state IN ({marks})
                    OR (state IN (?, ?) AND told = 0)) ORDER BY id LIMIT ?""",
                (after, *UNFINISHED, JobState.FAILED, JobState.UNKNOWN, limit),
            )
        ]

    async def exists_for_message(self, chat_id: int, source_message_id: int) -> bool:
        return (
            await self._db.fetch_one(
                "SELECT 1 FROM jobs WHERE chat_id = ? AND source_message_id = ?",
                (chat_id, source_message_id),
            )
            is not None
        )

    async def exists_for_inline_message(self, inline_message_id: str) -> bool:
        return await self._db.fetch_one(
            "SELECT 1 FROM jobs WHERE inline_message_id = ?", (inline_message_id,),
        ) is not None

    async def has_unfinished_child(self, parent_id: int, action: str) -> bool:
        """Whether a request made with this answer's `action` button is still unanswered."""
        marks = placeholders(UNFINISHED)
        return await self._db.fetch_one(
            f"""SELECT 1 FROM jobs WHERE parent_id = ? AND action = ?
                AND state IN ({marks}) AND cancelled = 0 LIMIT 1""",
            (parent_id, action, *UNFINISHED),
        ) is not None

    async def adopt_unkeyed(self, key: str) -> None:
        """Rows from before the pool of keys name none: they were sent with `key`, and so
        was the balance anchor kept then."""
        marks = placeholders(UNFINISHED)
        async with self._db.transaction():
            await self._db.write(
                f"""UPDATE jobs SET upstream_key = ? WHERE upstream_key IS NULL
                    AND (upstream_id IS NOT NULL OR state IN ({marks}))""", (key, *UNFINISHED))
            await self._db.write(
                "UPDATE OR IGNORE balance_anchors SET key = ? WHERE key = ''", (key,))
            await self._db.write("DELETE FROM balance_anchors WHERE key = ''")

    async def set_balance_anchor(self, units: int | None, read_at: float, *,
                                 key: str = "") -> None:
        """Keep the balance of `key` read at `read_at` while none of its creates was in
        flight (None: unknown)."""
        if units is None:
            await self._db.write("DELETE FROM balance_anchors WHERE key = ?", (key,))
        else:
            await self._db.write(
                """INSERT INTO balance_anchors (key, units, read_at) VALUES (?, ?, ?)
                   ON CONFLICT (key) DO UPDATE SET units = excluded.units,
                                                   read_at = excluded.read_at""",
                (key, units, read_at))

    async def balance_anchor(self, *, key: str) -> tuple[int, float] | None:
        """The kept balance of `key` and when it was read, if one is kept."""
        row = await self._db.fetch_one(
            "SELECT units, read_at FROM balance_anchors WHERE key = ?", (key,))
        return (int(row[0]), float(row[1])) if row else None

    async def creates_from(self, moment: float, *, key: str
                           ) -> list[tuple[int | None, float | None, float]]:
        """The creates acknowledged with `key`, from the last one acknowledged before
        `moment` on: (the balance it reported, when it was sent (None: not kept), when its
        reply came)."""
        rows = await self._db.execute_fetchall(
            """SELECT units_after, sent_at, upstream_at FROM jobs
               WHERE upstream_key = :key AND upstream_at >= coalesce(
                   (SELECT max(upstream_at) FROM jobs
                    WHERE upstream_key = :key AND upstream_at < :moment), :moment)
               ORDER BY upstream_at""", {"key": key, "moment": moment})
        return [(None if units is None else int(units), None if sent is None else float(sent),
                 float(acked)) for units, sent, acked in rows]

    async def sent_from(self, moment: float, *, key: str) -> list[float]:
        """When each create sent with `key` from `moment` on was sent (a job's last one)."""
        rows = await self._db.execute_fetchall(
            "SELECT sent_at FROM jobs WHERE upstream_key = ? AND sent_at >= ? ORDER BY sent_at",
            (key, moment))
        return [float(row[0]) for row in rows]

    async def taken_as_spent_from(self, moment: float, *, key: str
                                  ) -> dict[int, TakenAsSpent]:
        """The creates sent with `key` from `moment` on that failed and were taken as spent
        (their jobs unknown, or since retried), but for those the balance showed later to
        have spent nothing: by job id."""
        rows = await self._db.execute_fetchall(
            """SELECT id, sent_at, create_done_by, create_verdict FROM jobs WHERE sent_at >= ?
               AND upstream_key = ? AND state IN (?, ?) AND upstream_id IS NULL
               AND coalesce(create_verdict, '') != 'unspent'""",
            (moment, key, JobState.UNKNOWN, JobState.RETRIED))
        return {int(row[0]): TakenAsSpent(float(row[1]),
                                          None if row[2] is None else float(row[2]),
                                          row[3] == "spent")
                for row in rows}

    async def mid_create(self, *, key: str | None = None,
                         keys_except: Sequence[str] = ()) -> dict[int, MidCreate]:
        """Jobs whose create_request may have been sent (with `key`, if given; with none of
        `keys_except`): id -> when it was (about to be), and if it is known to have failed,
        when the server was surely done with it."""
        rows = await self._db.execute_fetchall(
            f"""SELECT id, coalesce(sent_at, updated_at), create_done_by FROM jobs
                WHERE state = ? AND (? IS NULL OR upstream_key = ?)
                AND coalesce(upstream_key, '') NOT IN ({placeholders(keys_except)})""",
            (JobState.CREATING, key, key, *keys_except))
        return {int(row[0]): MidCreate(float(row[1]), None if row[2] is None else float(row[2]))
                for row in rows}

    async def pending_count(self, user_id: int, *, created_after: float = 0.0) -> int:
        """The user's unfinished jobs they still wait for (not cancelled, not older than
        `created_after`)."""
        marks = placeholders(UNFINISHED)
        row = await self._db.fetch_one(
            f"SELECT count(*) FROM jobs WHERE user_id = ? AND state IN ({marks}) "
            "AND cancelled = 0 AND created_at > ?",
            (user_id, *UNFINISHED, created_after),
        )
        return int(row[0]) if row else 0

    async def unfinished_for(self, user_id: int) -> list[Job]:
        marks = placeholders(UNFINISHED)
        return [
            Job.from_row(row)
            for row in await self._db.execute_fetchall(
                f"SELECT * FROM jobs WHERE user_id = ? AND state IN ({marks}) ORDER BY id",
                (user_id, *UNFINISHED),
            )
        ]

    async def solve_history(self, limit: int) -> list[tuple[str, int, float]]:
        """(mode, content length, seconds upstream took) of the latest answers."""
        rows = await self._db.execute_fetchall(
            """SELECT mode, length(content), coalesce(solved_after, answered_at - upstream_at)
               FROM jobs
               WHERE answered_at IS NOT NULL AND upstream_at IS NOT NULL
               ORDER BY answered_at DESC LIMIT ?""",
            (limit,),
        )
        return [(row[0], int(row[1]), float(row[2])) for row in rows]

    async def recent(self, user_id: int, limit: int) -> list[Job]:
        return [
            Job.from_row(row)
            for row in await self._db.execute_fetchall(
                "SELECT * FROM jobs WHERE user_id = ? ORDER BY id DESC LIMIT ?", (user_id, limit)
            )
        ]

    async def set_placeholder(self, job_id: int, message_id: int) -> None:
        await self._update(job_id, placeholder_id=message_id)

    async def mark_creating(self, job_id: int, *, key: str | None = None,
                            sent_at: float | None = None) -> None:
        """About to send create_request (at `sent_at`), with the key of fingerprint `key`."""
        fields: dict[str, Any] = {"state": JobState.CREATING, "sent_at": sent_at or time.time(),
                                  "create_done_by": None, "create_verdict": None}
        if key is not None:
            fields["upstream_key"] = key
        await self._update(job_id, **fields)

    async def mark_create_failed(self, job_id: int, done_by: float) -> None:
        """Its create failed, and the server was surely done with it by `done_by`."""
        await self._update(job_id, create_done_by=done_by)

    async def set_create_verdict(self, job_id: int, verdict: str) -> None:
        """What the balance showed of the job's failed create (see the column)."""
        await self._update(job_id, create_verdict=verdict)

    async def requeue(self, job_id: int) -> None:
        """Back to NEW after a create_request that surely did not count (a 429)."""
        await self._update(job_id, state=JobState.NEW)

    async def set_upstream(self, job_id: int, upstream_id: int, units: int | None) -> None:
        await self._update(
            job_id,
            state=JobState.PENDING,
            upstream_id=upstream_id,
            units_after=units,
            upstream_at=time.time(),
        )

    async def set_result(self, job_id: int, result: str,
                         solved_after: float | None = None) -> None:
        """`solved_after`: seconds upstream took, as the polls bracket it, if they do."""
        await self._update(job_id, state=JobState.ANSWERED, result=result,
                           answered_at=time.time(), solved_after=solved_after)

    async def set_parts_delivered(self, job_id: int, parts: int) -> None:
        await self._update(job_id, parts_delivered=parts)

    async def mark_delivered(self, job_id: int, parts: int) -> None:
        await self._update(job_id, state=JobState.DELIVERED, parts_delivered=parts,
                           delivered_at=time.time())

    async def end(self, job_id: int, state: JobState, error: str, *, told: bool = False) -> None:
        """End the job without an answer; `told` once the user has seen why (or never will)."""
        await self._update(job_id, state=state, error=error, told=told)

    async def mark_cancelled(self, job_id: int) -> bool:
        """Mark a job still waiting for its answer; whether it was (not answered meanwhile)."""
        written = await self._db.write(
            "UPDATE jobs SET cancelled = 1, updated_at = ? WHERE id = ? AND state = ?",
            (time.time(), job_id, JobState.PENDING))
        return written.rowcount == 1

    async def mark_told(self, job_id: int) -> None:
        await self._update(job_id, told=True)

    async def claim_retry(self, job_id: int, user_id: int) -> Job | None:
        """Mark an UNKNOWN or FAILED job as retried, once: the job as it was, or None."""
        job = await self.get(job_id)
        if job is None or job.user_id != user_id or job.state not in RETRYABLE:
            return None
        written = await self._db.write(
            "UPDATE jobs SET state = ?, updated_at = ? WHERE id = ? AND state = ?",
            (JobState.RETRIED, time.time(), job_id, job.state),
        )
        return job if written.rowcount == 1 else None  # a concurrent tap took it first

    async def unclaim_retry(self, job: Job) -> None:
        """Undo claim_retry when the retry could not be admitted, so the button still works."""
        await self._update(job.id, state=job.state)

    async def _update(self, job_id: int, **fields: Any) -> None:
        fields["updated_at"] = time.time()
        assignments = ", ".join(f"{name} = ?" for name in fields)
        await self._db.write(
            f"UPDATE jobs SET {assignments} WHERE id = ?", (*fields.values(), job_id)
        )
