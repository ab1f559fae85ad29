"""Turning what a user sent into a job: admission, the placeholder, and the runner.

Shared by typed messages, documents, and the buttons that ask again.
"""

from __future__ import annotations

import logging
from datetime import datetime

from aiogram.exceptions import TelegramAPIError
from aiogram.types import Message
from aiogram.utils.i18n import gettext as _

from bot.chatinfo import MAX_CONTENT_CHARS
from bot.failures import Failure, failure_text
from bot.quota import Admission, QuotaClock, Refusal
from bot.runner import JobRunner, placeholder_text
from storage.jobs import JobRepo

log = logging.getLogger(__name__)


class Submitter:
    def __init__(self, admission: Admission, jobs: JobRepo, runner: JobRunner,
                 clock: QuotaClock) -> None:
        self._admission = admission
        self._jobs = jobs
        self._runner = runner
        self.clock = clock

    async def submit(self, message: Message, *, content: str, mode: str, locale: str,
                     notices: list[str]) -> None:
        """Admit `content` as a job answering `message`, or say why not."""
        assert message.from_user is not None
        outcome = await self._admission.admit(
            user_id=message.from_user.id, chat_id=message.chat.id,
            source_message_id=message.message_id, locale=locale, mode=mode,
            content=storable(content[:MAX_CONTENT_CHARS]), reply_to=message.message_id)
        if outcome is None:
            return  # Telegram delivered this message again; its job is already under way
        if isinstance(outcome, Refusal):
            log.info("request refused: %s", outcome, extra={
                "user_id": message.from_user.id, "mode": mode, "outcome": f"refused:{outcome}"})
            await message.reply(refusal_text(outcome, self.clock))
            return
        log.info("job %s accepted", outcome, extra={
            "job_id": outcome, "user_id": message.from_user.id, "mode": mode,
            "outcome": "accepted"})
        try:
            for notice in notices:
                await message.reply(notice)
            placeholder = await message.reply(placeholder_text())
            await self._jobs.set_placeholder(outcome, placeholder.message_id)
        except TelegramAPIError as error:
            # The runner sends the placeholder itself, with retries and the job's rules.
            log.warning("replies for job %s failed: %s", outcome, type(error).__name__)
        finally:
            self._runner.start(outcome)  # whatever failed above, the admitted job goes on

    async def resubmit(self, *, user_id: int, chat_id: int, reply_to: int | None, mode: str,
                       content: str, locale: str) -> Refusal | None:
        """A new job from a button; the refusal, if it was refused."""
        outcome = await self._admission.admit(
            user_id=user_id, chat_id=chat_id, source_message_id=None, locale=locale,
            mode=mode, content=storable(content[:MAX_CONTENT_CHARS]), reply_to=reply_to)
        if not isinstance(outcome, int):
            return outcome or Refusal.TOO_MANY_PENDING
        self._runner.start(outcome)
        return None


def storable(text: str) -> str:
    """Lone surrogates (Telegram can send them) replaced: UTF-8, and SQLite, refuse them."""
    return text.encode("utf-8", "replace").decode("utf-8")


def cut_notice(length: int) -> str | None:
    if length <= MAX_CONTENT_CHARS:
        return None
    return _("Your message is {length} characters long; only the first {limit} will be "
             "processed.").format(length=length, limit=MAX_CONTENT_CHARS)


def refusal_text(refusal: Refusal, clock: QuotaClock) -> str:
    if refusal is Refusal.NO_UNITS:
        return failure_text(Failure.NO_UNITS)
    if refusal is Refusal.TOO_MANY_PENDING:
        return _("⏳ Your earlier requests are still being answered. Please wait for them "
                 "before sending more.")
    return _("You have used all your requests for today. New ones arrive at midnight "
             "({zone}), in {wait}.").format(zone=clock.zone.key,
                                            wait=until(clock.next_reset(), clock))


def until(moment: datetime, clock: QuotaClock) -> str:
    minutes = max(1, int((moment - clock.now()).total_seconds() // 60))
    return _("{hours} h {minutes} min").format(hours=minutes // 60, minutes=minutes % 60)
