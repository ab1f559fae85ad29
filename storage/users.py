"""Users: who talks to the bot, their mode and language."""

from __future__ import annotations

import time
from dataclasses import dataclass

from storage.db import Database

# The users.mode column's default (migration 1): the mode of a user who never chose one.
# bot/modes.py's DEFAULT_MODE names the same (tests/test_storage.py checks).
NEW_USER_MODE = "chat"


@dataclass(frozen=True)
class Profile:
    locale: str | None  # chosen with /language; None: from Telegram
    banned: bool


class UserRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def touch(self, user_id: int, language_code: str | None) -> Profile:
        """Record that the user was seen (creating the row); what the bot knows of them."""
        now = time.time()
        async with self._db.transaction():  # a write that returns its row
            row = await self._db.fetch_one(
                """INSERT INTO users (id, language_code, first_seen, last_seen)
                   VALUES (?, ?, ?, ?)
                   ON CONFLICT (id) DO UPDATE SET
                       language_code = excluded.language_code, last_seen = excluded.last_seen,
                       first_seen = CASE users.first_seen WHEN 0 THEN excluded.first_seen
                                    ELSE users.first_seen END
                   RETURNING locale, banned""",
                (user_id, language_code, now, now),
            )
        assert row is not None  # an upsert always returns its row
        return Profile(locale=row["locale"], banned=bool(row["banned"]))

    async def mode(self, user_id: int) -> str:
        row = await self._db.fetch_one("SELECT mode FROM users WHERE id = ?", (user_id,))
        return str(row["mode"]) if row else NEW_USER_MODE

    async def set_mode(self, user_id: int, mode: str) -> None:
        """A different mode also starts the user's conversations afresh, in every chat."""
        await self._db.write(
            """UPDATE users SET mode = :mode, mode_changed_at = CASE WHEN mode = :mode
                   THEN mode_changed_at ELSE :now END WHERE id = :user""",
            {"mode": mode, "now": time.time(), "user": user_id})

    async def locale(self, user_id: int) -> str | None:
        """The language the user chose with /language, if any."""
        row = await self._db.fetch_one("SELECT locale FROM users WHERE id = ?", (user_id,))
        return str(row["locale"]) if row and row["locale"] else None

    async def set_locale(self, user_id: int, locale: str) -> None:
        await self._db.write("UPDATE users SET locale = ? WHERE id = ?", (locale, user_id))

    async def exists(self, user_id: int) -> bool:
        return await self._db.fetch_one("SELECT 1 FROM users WHERE id = ?", (user_id,)) is not None

    async def languages(self, user_id: int) -> tuple[str | None, str | None]:
        """(the language chosen with /language, the one Telegram last reported)."""
        row = await self._db.fetch_one("SELECT locale, language_code FROM users WHERE id = ?",
                                       (user_id,))
        return (row["locale"], row["language_code"]) if row else (None, None)

    async def has_written(self, user_id: int) -> bool:
        """Whether the user ever talked to the bot (an admin may know them before that)."""
        row = await self._db.fetch_one("SELECT first_seen FROM users WHERE id = ?", (user_id,))
        return bool(row and row["first_seen"])

    async def ensure(self, user_id: int) -> None:
        """A row for a user who may never have written, so admins can ban them in advance.

        first_seen 0 marks them as not seen; their first message sets it.
        """
        await self._db.write(
            "INSERT OR IGNORE INTO users (id, first_seen, last_seen) VALUES (?, 0, 0)",
            (user_id,))

    async def set_banned(self, user_id: int, banned: bool) -> bool:
        """Whether that changed anything (False: the user already was so)."""
        written = await self._db.write(
            "UPDATE users SET banned = ? WHERE id = ? AND banned != ?", (banned, user_id, banned))
        return written.rowcount == 1

    async def is_banned(self, user_id: int) -> bool:
        row = await self._db.fetch_one("SELECT banned FROM users WHERE id = ?", (user_id,))
        return bool(row and row["banned"])
