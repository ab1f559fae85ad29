"""Read-only figures for the admin console."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from storage.db import Database, placeholders
from storage.jobs import UNFINISHED


@dataclass(frozen=True)
class Activity:
    users: int
    active_today: int
    active_week: int
    requests_by_mode: dict[str, int]  # today
    failures_by_kind: dict[str, int]  # over the week
    median_answer_seconds: float | None  # over the week


class StatsRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def units_spent_since(self, since: float) -> int:
        """create_request calls that counted: every job that got an upstream id."""
        return await self._scalar(
            "SELECT count(*) FROM jobs WHERE upstream_id IS NOT NULL AND created_at >= ?", (since,)
        )

    async def units_spent_by_key_since(self, since: float) -> dict[str | None, int]:
        """`units_spent_since`, per API key (its fingerprint; None: sent before the pool)."""
        rows = await self._db.execute_fetchall(
            """SELECT upstream_key, count(*) FROM jobs
               WHERE upstream_id IS NOT NULL AND created_at >= ? GROUP BY upstream_key""",
            (since,))
        return {row[0]: int(row[1]) for row in rows}

    async def outcome_unknown_since(self, since: float) -> int:
        """create_request calls that may or may not have spent a unit (no id came back)."""
        return await self._scalar(
            "SELECT count(*) FROM jobs WHERE error = 'unknown_outcome' AND created_at >= ?",
            (since,))

    async def first_spent_at(self) -> float | None:
        """When the first unit this database knows of was spent: how far back data goes."""
        row = await self._db.fetch_one(
            "SELECT min(created_at) FROM jobs WHERE upstream_id IS NOT NULL")
        return float(row[0]) if row and row[0] is not None else None

    async def pending_jobs(self) -> int:
        marks = placeholders(UNFINISHED)
        return await self._scalar(f"SELECT count(*) FROM jobs WHERE state IN ({marks})", UNFINISHED)

    async def activity(self, today: float, week: float) -> Activity:
        active = "SELECT count(DISTINCT user_id) FROM jobs WHERE created_at >= ?"
        by_mode = {
            row[0]: row[1]
            for row in await self._db.execute_fetchall(
                "SELECT mode, count(*) FROM jobs WHERE created_at >= ? GROUP BY mode "
                "ORDER BY count(*) DESC, mode",
                (today,),
            )
        }
        failures = {
            str(row[0]): row[1]
            for row in await self._db.execute_fetchall(
                # Every failure a user was told of, also one they then sent again (its
                # state is 'retried'); not a blocked bot, a /cancel, or a kept answer.
                "SELECT error, count(*) FROM jobs WHERE error IS NOT NULL AND told = 1 "
                "AND error NOT IN ('blocked', 'cancelled') AND cancelled = 0 "
                "AND created_at >= ? GROUP BY error ORDER BY count(*) DESC, error",
                (week,),
            )
        }
        durations = [
            row[0]
            for row in await self._db.execute_fetchall(
                "SELECT answered_at - created_at FROM jobs WHERE answered_at IS NOT NULL "
                "AND created_at >= ?",
                (week,),
            )
        ]
        return Activity(
            users=await self._scalar("SELECT count(*) FROM users WHERE first_seen > 0", ()),
            active_today=await self._scalar(active, (today,)),
            active_week=await self._scalar(active, (week,)),
            requests_by_mode=by_mode,
            failures_by_kind=failures,
            median_answer_seconds=statistics.median(durations) if durations else None,
        )

    async def _scalar(self, sql: str, parameters: tuple[object, ...]) -> int:
        row = await self._db.fetch_one(sql, parameters)
        return int(row[0]) if row else 0
