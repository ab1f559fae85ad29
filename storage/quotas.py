"""Daily request quotas: what each user used and was granted, per local day."""

from __future__ import annotations

from dataclasses import dataclass

import aiosqlite

from storage.db import fetch_one


@dataclass(frozen=True)
class Usage:
    quota: int  # 0: unlimited
    used: int
    granted: int

    @property
    def left(self) -> int | None:
        """Requests left today, or None when unlimited."""
        return None if self.quota == 0 else max(0, self.quota + self.granted - self.used)


class QuotaRepo:
    def __init__(self, db: aiosqlite.Connection, default_quota: int) -> None:
        self._db = db
        self._default = default_quota

    async def usage(self, user_id: int, day: str) -> Usage:
        row = await fetch_one(
            self._db,
            """SELECT coalesce(u.daily_quota, ?) AS quota,
                      coalesce(s.used, 0) AS used, coalesce(s.granted, 0) AS granted
               FROM users u LEFT JOIN usage s ON s.user_id = u.id AND s.day = ?
               WHERE u.id = ?""",
            (self._default, day, user_id),
        )
        if row is None:
            return Usage(self._default, 0, 0)
        return Usage(int(row["quota"]), int(row["used"]), int(row["granted"]))

    async def reserve(self, user_id: int, day: str) -> bool:
        """Count one request against the day's quota if any is left; whether it was.

        Not committed here: it is committed with the job it admits.
        """
        usage = await self.usage(user_id, day)
        cursor = await self._db.execute(
            """INSERT INTO usage (user_id, day, used) VALUES (:user, :day, 1)
               ON CONFLICT (user_id, day) DO UPDATE SET used = used + 1
               WHERE :quota = 0 OR usage.used < :quota + usage.granted""",
            {"user": user_id, "day": day, "quota": usage.quota},
        )
        return cursor.rowcount == 1

    async def give_back(self, user_id: int, day: str) -> None:
        await self._db.execute(
            "UPDATE usage SET used = max(0, used - 1) WHERE user_id = ? AND day = ?",
            (user_id, day),
        )
        await self._db.commit()

    async def set_quota(self, user_id: int, quota: int) -> None:
        await self._db.execute("UPDATE users SET daily_quota = ? WHERE id = ?", (quota, user_id))
        await self._db.commit()

    async def grant(self, user_id: int, day: str, extra: int) -> None:
        await self._db.execute(
            """INSERT INTO usage (user_id, day, granted) VALUES (?, ?, ?)
               ON CONFLICT (user_id, day) DO UPDATE SET granted = granted + excluded.granted""",
            (user_id, day, extra),
        )
        await self._db.commit()
