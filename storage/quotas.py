"""Daily request quotas: what each user used and was granted, per local day."""

from __future__ import annotations

from dataclasses import dataclass

from storage.db import Database

UNLIMITED = -1  # users.daily_quota for a user an admin set to unlimited


@dataclass(frozen=True)
class Usage:
    quota: int | None  # requests a day; None: unlimited
    used: int
    granted: int
    personal: bool  # set for this user with /quota; False: the DAILY_QUOTA default

    @property
    def left(self) -> int | None:
        """Requests left today, or None when unlimited."""
        return None if self.quota is None else max(0, self.quota + self.granted - self.used)


class QuotaRepo:
    def __init__(self, db: Database, default_quota: int | None) -> None:
        """`default_quota`: requests a day for users without their own; None: unlimited."""
        self._db = db
        self.default = default_quota

    async def usage(self, user_id: int, day: str) -> Usage:
        row = await self._db.fetch_one(
            """SELECT u.daily_quota AS quota, coalesce(s.used, 0) AS used,
                      coalesce(s.granted, 0) AS granted
               FROM users u LEFT JOIN usage s ON s.user_id = u.id AND s.day = ?
               WHERE u.id = ?""",
            (day, user_id),
        )
        if row is None or row["quota"] is None:
            used, granted = (int(row["used"]), int(row["granted"])) if row else (0, 0)
            return Usage(self.default, used, granted, personal=False)
        quota = int(row["quota"])
        return Usage(None if quota == UNLIMITED else quota, int(row["used"]),
                     int(row["granted"]), personal=True)

    async def reserve(self, user_id: int, day: str) -> bool:
        """Count one request against the day's quota if any is left; whether it was.

        One statement, so two concurrent calls cannot both take the last request. Made
        inside the transaction that adds the job it admits, it lands with that job or not
        at all.
        """
        quota = (await self.usage(user_id, day)).quota
        written = await self._db.write(
            # The first request of the day inserts the row; later ones (and grants, which
            # make the row) go through the conflict's condition.
            """INSERT INTO usage (user_id, day, used) SELECT :user, :day, 1
               WHERE :quota IS NULL OR :quota > 0 OR EXISTS (
                   SELECT 1 FROM usage WHERE user_id = :user AND day = :day)
               ON CONFLICT (user_id, day) DO UPDATE SET used = used + 1
               WHERE :quota IS NULL OR usage.used < :quota + usage.granted""",
            {"user": user_id, "day": day, "quota": quota},
        )
        return written.rowcount == 1

    async def give_back(self, user_id: int, day: str) -> None:
        await self._db.write(
            "UPDATE usage SET used = max(0, used - 1) WHERE user_id = ? AND day = ?",
            (user_id, day),
        )

    async def set_quota(self, user_id: int, quota: int | None) -> None:
        """`quota`: requests a day, UNLIMITED, or None to follow DAILY_QUOTA again."""
        await self._db.write("UPDATE users SET daily_quota = ? WHERE id = ?", (quota, user_id))

    async def grant(self, user_id: int, day: str, extra: int) -> None:
        await self._db.write(
            """INSERT INTO usage (user_id, day, granted) VALUES (?, ?, ?)
               ON CONFLICT (user_id, day) DO UPDATE SET granted = granted + excluded.granted""",
            (user_id, day, extra),
        )
