"""Conversations: read from the jobs a user sent in one chat, not stored a second time.

A turn is a job the user typed (not one made by an answer's button) that was answered or
is still on its way: its user side is the user's own words, its answer the result. All
that is stored besides is where a conversation starts afresh (`conversations`, written by
/new; `users.mode_changed_at`, by a change of mode) and each user's choice of memory per
mode (`mode_memory`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from storage.db import Database, placeholders
from storage.jobs import JobState
from storage.users import NEW_USER_MODE

# A job that ended without an answer (or was sent again as another job) is no turn.
NOT_TURNS = (JobState.FAILED, JobState.UNKNOWN, JobState.RETRIED)


@dataclass(frozen=True, slots=True)
class Turn:
    said: str  # the user's own words (their first `chars` characters)
    answer: str | None  # None while it is on its way
    asked_at: float
    ended_at: float  # when the answer came, or when it was asked if it has not


@dataclass(frozen=True, slots=True)
class MemoryChoice:
    mode: str  # the user's current mode
    remember: bool | None  # their choice for that mode; None: they made none


class ConversationRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def latest_turns(self, chat_id: int, user_id: int, *, since: float, chars: int,
                           limit: int) -> list[Turn]:
        """The conversation's latest turns, newest first: at most `limit`, after `since`
        and after the last /new and change of mode, and only as many as `chars` holds
        (the last one may reach past it); each text is read up to `chars` characters."""
        marks = placeholders(NOT_TURNS)
        # One index range (jobs_by_conversation), newest first; the texts are read only
        # for the turns the budget can hold.
        rows = await self._db.execute_fetchall(
            f"""WITH recent AS (
                    SELECT id, created_at, length(coalesce(question, content))
                               + coalesce(length(result), 0) AS size
                    FROM jobs
                    WHERE chat_id = ? AND user_id = ? AND created_at > max(?,
                          coalesce((SELECT started_at FROM conversations
                                    WHERE chat_id = ? AND user_id = ?), 0),
                          coalesce((SELECT mode_changed_at FROM users WHERE id = ?), 0))
                      AND action IS NULL AND inline_message_id IS NULL AND cancelled = 0
                      AND state NOT IN ({marks})
                    ORDER BY created_at DESC LIMIT ?),
                counted AS (
                    SELECT id, sum(size) OVER (ORDER BY created_at DESC, id DESC)
                               - size AS before
                    FROM recent)
                SELECT substr(coalesce(question, content), 1, ?) AS said,
                       substr(result, 1, ?) AS answer, created_at, answered_at
                FROM counted JOIN jobs USING (id)
                WHERE before < ? ORDER BY created_at DESC, id DESC""",
            (chat_id, user_id, since, chat_id, user_id, user_id, *NOT_TURNS, limit,
             chars, chars, chars))
        return [Turn(said=row["said"], answer=row["answer"], asked_at=row["created_at"],
                     ended_at=row["answered_at"] or row["created_at"]) for row in rows]

    async def start_afresh(self, chat_id: int, user_id: int, *, forget_before: float) -> None:
        """/new in this chat; markers older than `forget_before` are deleted on the way,
        since no turn that old is context any more."""
        now = time.time()
        async with self._db.transaction():
            await self._db.write("DELETE FROM conversations WHERE started_at < ?",
                                 (forget_before,))
            await self._db.write(
                """INSERT INTO conversations (chat_id, user_id, started_at) VALUES (?, ?, ?)
                   ON CONFLICT (chat_id, user_id) DO UPDATE SET
                       started_at = excluded.started_at""",
                (chat_id, user_id, now))

    async def memory(self, user_id: int) -> MemoryChoice:
        """The user's mode and their choice of memory for it; one query."""
        row = await self._db.fetch_one(
            """SELECT users.mode, mode_memory.remember FROM users
               LEFT JOIN mode_memory ON mode_memory.user_id = users.id
                                    AND mode_memory.mode = users.mode
               WHERE users.id = ?""", (user_id,))
        mode = str(row["mode"]) if row else NEW_USER_MODE
        choice = row["remember"] if row else None
        return MemoryChoice(mode, None if choice is None else bool(choice))

    async def set_memory(self, user_id: int, mode: str, remembers: bool) -> None:
        await self._db.write(
            """INSERT INTO mode_memory (user_id, mode, remember) VALUES (?, ?, ?)
               ON CONFLICT (user_id, mode) DO UPDATE SET remember = excluded.remember""",
            (user_id, mode, remembers))
