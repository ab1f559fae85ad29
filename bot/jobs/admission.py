"""Admission of a request: the balance, the user's pending requests, their daily quota."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from aiogram.utils.i18n import gettext as _
from aiogram.utils.i18n import lazy_gettext as __
from babel.support import LazyProxy

from bot.upstream.pool import UpstreamPool
from storage.db import Database
from storage.jobs import JobRepo
from storage.quotas import QuotaRepo

# Zones named as people say them, in a phrase that follows "at midnight"; others are
# named by their UTC offset.
ZONE_NAMES: dict[str, LazyProxy] = {
    "Europe/Moscow": __("Moscow time"),
    "Europe/Kaliningrad": __("Kaliningrad time"),
    "Europe/Samara": __("Samara time"),
    "Asia/Yekaterinburg": __("Yekaterinburg time"),
    "Asia/Omsk": __("Omsk time"),
    "Asia/Novosibirsk": __("Novosibirsk time"),
    "Asia/Krasnoyarsk": __("Krasnoyarsk time"),
    "Asia/Irkutsk": __("Irkutsk time"),
    "Asia/Yakutsk": __("Yakutsk time"),
    "Asia/Vladivostok": __("Vladivostok time"),
    "Asia/Magadan": __("Magadan time"),
    "Asia/Kamchatka": __("Kamchatka time"),
    "Europe/Minsk": __("Minsk time"),
    "Europe/Kyiv": __("Kyiv time"),
    "Europe/Kiev": __("Kyiv time"),
    "Asia/Almaty": __("Almaty time"),
    "Asia/Tashkent": __("Tashkent time"),
    "UTC": __("UTC"),
    "Etc/UTC": __("UTC"),
}


class QuotaClock:
    """Quota days run from local midnight to local midnight in QUOTA_TIMEZONE."""

    def __init__(self, zone: ZoneInfo) -> None:
        self.zone = zone

    def zone_name(self) -> str:
        """The zone as people say it after "at midnight": "Moscow time", or "UTC+5:30"."""
        name = ZONE_NAMES.get(self.zone.key)
        if name is not None:
            return str(name)
        offset = self.now().strftime("%z")  # e.g. +0530
        hours, minutes = offset[:3].replace("+0", "+").replace("-0", "-"), offset[3:]
        return _("UTC{offset}").format(offset=hours if minutes == "00" else f"{hours}:{minutes}")

    def now(self) -> datetime:
        return datetime.now(self.zone)

    def today(self) -> str:
        return self.now().date().isoformat()

    def next_reset(self) -> datetime:
        tomorrow = self.now().date() + timedelta(days=1)
        return datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=self.zone)

    def day_start(self, days_ago: int = 0) -> float:
        """The Unix time when the local day `days_ago` days back began."""
        day = self.now().date() - timedelta(days=days_ago)
        return datetime(day.year, day.month, day.day, tzinfo=self.zone).timestamp()


class Refusal(StrEnum):
    NO_UNITS = "no_units"
    TOO_MANY_PENDING = "too_many_pending"
    OVER_QUOTA = "over_quota"
    NO_QUOTA = "no_quota"  # an admin set the user's daily quota to 0
    ALREADY_ASKED = "already_asked"  # the same button's request is still unanswered


@dataclass(frozen=True)
class Admitted:
    job_id: int


@dataclass(frozen=True)
class Refused:
    refusal: Refusal


@dataclass(frozen=True)
class Redelivered:
    """Telegram delivered the message (or chosen inline result) again: its job exists."""


Verdict = Admitted | Refused | Redelivered


class Admission:
    def __init__(self, jobs: JobRepo, quotas: QuotaRepo, upstream: UpstreamPool,
                 clock: QuotaClock, max_pending: int, *, late_after: float,
                 database: Database) -> None:
        self._database = database
        self._jobs = jobs
        self._quotas = quotas
        self._upstream = upstream
        self._clock = clock
        self.max_pending = max_pending
        # A job older than this has its user told it is late: it no longer holds them up.
        self._late_after = late_after
        # The checks and the insert must not interleave with another message's, or two
        # concurrent messages could both take a user's last request.
        self._lock = asyncio.Lock()

    async def admit(self, *, user_id: int, chat_id: int, source_message_id: int | None,
                    locale: str, mode: str, content: str, reply_to: int | None = None,
                    question: str | None = None, action: str | None = None,
                    parent_id: int | None = None,
                    inline_message_id: str | None = None) -> Verdict:
        """The new job, the reason it was refused, or that it already exists."""
        async with self._lock:
            if await self._delivered_again(chat_id, source_message_id, inline_message_id):
                return Redelivered()
            if parent_id is not None and action is not None and (
                    await self._jobs.has_unfinished_child(parent_id, action)):
                return Refused(Refusal.ALREADY_ASKED)  # a double tap: one unit, not two
            if self._upstream.exhausted:
                return Refused(Refusal.NO_UNITS)
            if await self._jobs.pending_count(
                    user_id, created_after=time.time() - self._late_after) >= self.max_pending:
                return Refused(Refusal.TOO_MANY_PENDING)
            day = self._clock.today()
            # The request counts on the quota if and only if the job is stored.
            async with self._database.transaction():
                if not await self._quotas.reserve(user_id, day):
                    usage = await self._quotas.usage(user_id, day)
                    return Refused(Refusal.NO_QUOTA if usage.quota == 0
                                   else Refusal.OVER_QUOTA)
                job_id = await self._jobs.add(
                    user_id=user_id, chat_id=chat_id, source_message_id=source_message_id,
                    locale=locale, mode=mode, content=content, quota_day=day,
                    reply_to=reply_to, question=question, action=action, parent_id=parent_id,
                    inline_message_id=inline_message_id)
            return Redelivered() if job_id is None else Admitted(job_id)

    async def _delivered_again(self, chat_id: int, source_message_id: int | None,
                               inline_message_id: str | None) -> bool:
        """Whether Telegram delivered this message (or chosen inline result) again."""
        if source_message_id is not None:
            return await self._jobs.exists_for_message(chat_id, source_message_id)
        if inline_message_id is not None:
            return await self._jobs.exists_for_inline_message(inline_message_id)
        return False
