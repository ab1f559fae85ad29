"""The job runner: carries each job from its stored state to a delivered answer.

Every step is written to SQLite before the next one starts, so a restart resumes
from the last step that completed. The runner owns every task it starts and
cancels or awaits them all at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from aiogram import Bot
from aiogram.exceptions import TelegramBadRequest, TelegramForbiddenError
from aiogram.types import InlineKeyboardMarkup
from aiogram.utils.i18n import I18n
from aiogram.utils.i18n import gettext as _

from bot.chatinfo import (
    AccessDenied,
    ChatinfoClient,
    ChatinfoError,
    NotEnoughUnits,
    RateLimited,
    RequestRejected,
    UpstreamUnavailable,
)
from bot.failures import Failure, failure_text
from bot.keyboards import retry_keyboard
from bot.render import split_message
from bot.telegram import Typing, with_retries
from bot.units import UnitsTracker
from storage.jobs import Job, JobRepo, JobState
from storage.quotas import QuotaRepo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PollPolicy:
    first_delay: float = 1.5  # few answers come sooner
    interval: float = 1.0
    growth: float = 1.25
    max_interval: float = 5.0
    max_wait: float = 600.0  # then the job fails with a clear message
    max_rejections: int = 5  # consecutive "unknown id" answers before giving up


class JobRunner:
    def __init__(
        self, bot: Bot, client: ChatinfoClient, jobs: JobRepo, i18n: I18n, *,
        quotas: QuotaRepo, units: UnitsTracker, policy: PollPolicy | None = None,
    ) -> None:
        self._bot = bot
        self._client = client
        self._jobs = jobs
        self._quotas = quotas
        self._units = units
        self._i18n = i18n
        self._policy = policy or PollPolicy()
        self._typing = Typing(bot)
        self._tasks: set[asyncio.Task[None]] = set()
        self._creating: set[asyncio.Task[None]] = set()

    @property
    def active(self) -> int:
        return len(self._tasks)

    def start(self, job_id: int) -> None:
        task = asyncio.create_task(self._run(job_id), name=f"job-{job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def resume(self) -> int:
        """Carry on every unfinished job after a start; how many there were."""
        unfinished = await self._jobs.unfinished()
        for job in unfinished:
            self.start(job.id)
        if unfinished:
            log.info("resuming %d unfinished jobs", len(unfinished))
        return len(unfinished)

    async def stop(self) -> None:
        """Cancel the waiting; let create_request calls in flight store their id first."""
        if self._creating:
            await asyncio.wait(self._creating, timeout=15)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, job_id: int) -> None:
        try:
            await self._advance(job_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The job stays in SQLite at its last step and resumes at the next start.
            log.exception("job %s stopped unexpectedly", job_id)

    async def _advance(self, job_id: int) -> None:
        job = await self._jobs.get(job_id)
        if job is None:
            return
        if job.placeholder_id is None and job.state in (JobState.NEW, JobState.CREATING):
            job = await self._send_placeholder(job)
        if job.state is JobState.CREATING:
            await self._tell(job, Failure.UNKNOWN_OUTCOME, "found mid-create at start")
            return
        async with self._typing.during(job.chat_id):
            if job.state is JobState.NEW:
                job = await self._create(job)
            if job.state is JobState.PENDING:
                job = await self._poll(job)
        if job.state is JobState.ANSWERED:
            await self._deliver(job)

    async def _send_placeholder(self, job: Job) -> Job:
        with self._locale(job.locale):
            text = placeholder_text()
        message = await with_retries(lambda: self._bot.send_message(job.chat_id, text))
        await self._jobs.set_placeholder(job.id, message.message_id)
        return await self._reload(job)

    async def _create(self, job: Job) -> Job:
        # Shielded: once create_request is sent, its id must be stored even during a
        # shutdown, or the unit it spent is lost to an "unknown" job.
        step = asyncio.ensure_future(self._create_step(job))
        self._creating.add(step)
        step.add_done_callback(self._creating.discard)
        await asyncio.shield(step)
        return await self._reload(job)

    async def _create_step(self, job: Job) -> None:
        await self._jobs.mark_creating(job.id)
        try:
            created = await self._client.create_request(job.content, job.mode)
        except UpstreamUnavailable as error:
            failure = Failure.UNKNOWN_OUTCOME if error.maybe_spent else Failure.BUSY
            await self._tell(job, failure, str(error))
        except NotEnoughUnits as error:
            await self._units.observe(0)
            await self._tell(job, Failure.NO_UNITS, str(error))
        except AccessDenied as error:
            await self._units.denied()
            await self._tell(job, Failure.ACCESS_DENIED, f"{error}: {error.upstream_error}")
        except RateLimited as error:
            await self._tell(job, Failure.BUSY, str(error))
        except ChatinfoError as error:
            await self._tell(job, Failure.REJECTED, f"{error}: {error.upstream_error}")
        else:
            await self._jobs.set_upstream(job.id, created.id, created.units)
            log.info("job %s created upstream id %s (units left %s)", job.id, created.id,
                     created.units)
            if created.units is not None:
                await self._units.observe(created.units)

    async def _poll(self, job: Job) -> Job:
        assert job.upstream_id is not None
        policy = self._policy
        deadline = job.created_at + policy.max_wait
        delay = max(0.0, job.created_at + policy.first_delay - time.time())
        interval, rejections = policy.interval, 0
        while True:
            await asyncio.sleep(min(delay, max(0.0, deadline - time.time())))
            if time.time() >= deadline:
                await self._tell(job, Failure.TIMEOUT, "no answer in time")
                return await self._reload(job)
            try:
                result = await self._client.get_response(job.upstream_id)
            except RequestRejected as error:
                rejections += 1
                if rejections >= policy.max_rejections:
                    await self._tell(job, Failure.LOST, str(error))
                    return await self._reload(job)
            except (RateLimited, UpstreamUnavailable) as error:
                log.warning("job %s poll failed: %s", job.id, error)
            except ChatinfoError as error:
                await self._tell(job, Failure.ACCESS_DENIED, f"{error}: {error.upstream_error}")
                return await self._reload(job)
            else:
                rejections = 0
                if result is not None:
                    await self._jobs.set_result(job.id, result)
                    return await self._reload(job)
            delay, interval = interval, min(interval * policy.growth, policy.max_interval)

    async def _deliver(self, job: Job) -> None:
        assert job.result is not None
        with self._locale(job.locale):
            parts = split_message(job.result) if job.result.strip() else [_("(empty answer)")]
        try:
            for index in range(job.parts_delivered, len(parts)):
                if index == 0:
                    await self._show(job, parts[0])
                else:
                    await with_retries(lambda i=index: self._bot.send_message(  # type: ignore[misc]
                        job.chat_id, parts[i], reply_to_message_id=job.placeholder_id,
                        allow_sending_without_reply=True))
                await self._jobs.set_parts_delivered(job.id, index + 1)
        except TelegramForbiddenError:
            await self._jobs.end(job.id, JobState.FAILED, Failure.BLOCKED)
            return
        await self._jobs.mark_delivered(job.id)
        log.info("job %s delivered in %d part(s)", job.id, len(parts))

    async def _tell(self, job: Job, failure: Failure, detail: str) -> None:
        """End the job and tell the user why, on its placeholder."""
        log.warning("job %s failed: %s (%s)", job.id, failure, detail)
        with self._locale(job.locale):
            text = failure_text(failure)
            keyboard = retry_keyboard(job.id) if failure.retryable else None
        state = JobState.UNKNOWN if failure is Failure.UNKNOWN_OUTCOME else JobState.FAILED
        await self._jobs.end(job.id, state, failure)
        never_sent = job.upstream_id is None and failure is not Failure.UNKNOWN_OUTCOME
        if never_sent and job.quota_day is not None:
            await self._quotas.give_back(job.user_id, job.quota_day)  # no unit was spent
        with suppress(TelegramForbiddenError):
            await self._show(job, text, keyboard)

    async def _show(self, job: Job, text: str, keyboard: InlineKeyboardMarkup | None = None,
                    ) -> None:
        """Edit the placeholder into `text`; a new message if the user deleted it."""
        if job.placeholder_id is not None:
            try:
                await with_retries(lambda: self._bot.edit_message_text(
                    text=text, chat_id=job.chat_id, message_id=job.placeholder_id,
                    reply_markup=keyboard))
                return
            except TelegramBadRequest as error:
                if "not modified" in error.message:
                    return  # already shown: a restart repeated a finished edit
                if "not found" not in error.message:
                    raise
        await with_retries(lambda: self._bot.send_message(job.chat_id, text,
                                                          reply_markup=keyboard))

    async def _reload(self, job: Job) -> Job:
        fresh = await self._jobs.get(job.id)
        assert fresh is not None
        return fresh

    @contextmanager
    def _locale(self, locale: str) -> Iterator[None]:
        with self._i18n.context(), self._i18n.use_locale(locale):
            yield


def placeholder_text() -> str:
    return _("⏳ Working on it…")
