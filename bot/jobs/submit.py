"""Turning what a user sent into a job: admission, the placeholder, and the runner.

Shared by typed messages, documents, and the buttons that ask again.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Coroutine
from datetime import datetime
from typing import Any

from aiogram.types import Message
from aiogram.utils.i18n import gettext as _
from aiogram.utils.i18n import ngettext

from bot.config import MAX_CONTENT_CHARS
from bot.jobs import crashpoints
from bot.jobs.admission import Admission, QuotaClock, Redelivered, Refusal, Refused, Verdict
from bot.jobs.conversation import earlier_text
from bot.jobs.failures import Failure, failure_text
from bot.jobs.runner import JobRunner
from bot.telegram.receipt import secured
from bot.telegram.wording import duration_text
from storage.jobs import JobRepo

log = logging.getLogger(__name__)


class Submitter:
    def __init__(self, admission: Admission, jobs: JobRepo, runner: JobRunner,
                 clock: QuotaClock) -> None:
        self._admission = admission
        self._jobs = jobs
        self._runner = runner
        self.clock = clock

    async def submit(self, message: Message, *, request: str, content: str, mode: str,
                     locale: str, notices: list[str], question: str | None = None,
                     earlier: int = 0) -> None:
        """Admit `content` as a job answering `message`, or say why not.

        `request`: what the user added (a follow-up's text, a file's caption and text); a
        blank one is not sent. `question`: their own words for /history, where `content`
        holds more. `earlier`: messages of the conversation `content` carries, which the
        placeholder mentions.
        """
        assert message.from_user is not None
        if is_blank(request):
            await message.reply(_("✋ There is nothing to send: write your request as text, up "
                                  "to {limit} characters.").format(limit=MAX_CONTENT_CHARS))
            return
        verdict = await self._admit(self._admission.admit(
            user_id=message.from_user.id, chat_id=message.chat.id,
            source_message_id=message.message_id, locale=locale, mode=mode,
            content=storable(content[:MAX_CONTENT_CHARS]), reply_to=message.message_id,
            question=storable(question) if question is not None else None))
        if isinstance(verdict, Redelivered):
            return  # Telegram delivered this message again; its job is already under way
        if isinstance(verdict, Refused):
            refusal = verdict.refusal
            log.info("request refused: %s", refusal, extra={
                "user_id": message.from_user.id, "mode": mode, "outcome": f"refused:{refusal}"})
            await message.reply(self.refusal_text(refusal))
            return
        job_id = verdict.job_id
        log.info("job %s accepted", job_id, extra={
            "job_id": job_id, "user_id": message.from_user.id, "mode": mode,
            "outcome": "accepted"})
        view = self._runner.view
        try:
            for notice in notices:
                await message.reply(notice)
            # Telegram's budget short: the answer alone, as a reply to the message.
            if not view.one_message(job_id, message.from_user.id):
                text = view.first_text(job_id, message.from_user.id)
                if earlier:
                    text += "\n" + earlier_text(earlier)
                with view.placeholder_turn():
                    placeholder = await message.reply(text)
                await self._jobs.set_placeholder(job_id, placeholder.message_id)
        except Exception as error:
            # The job is admitted: whatever failed here, it goes on (the runner sends the
            # placeholder itself if need be), so the user must not be told to try again.
            log.warning("replies for job %s failed: %s", job_id, type(error).__name__)
        finally:
            self._runner.start(job_id)  # whatever failed above, the admitted job goes on

    async def _admit(self, admitting: Coroutine[Any, Any, Verdict]) -> Verdict:
        """`admitting`: the call to `Admission.admit`, not begun yet."""
        crashpoints.reach(crashpoints.BEFORE_ADMISSION)
        verdict = await admitting
        if not isinstance(verdict, Refused):
            secured()  # stored (or stored before): Telegram may forget the update
        return verdict

    def refusal_text(self, refusal: Refusal) -> str:
        return refusal_text(refusal, self.clock, self._admission.max_pending)

    async def resubmit(self, *, user_id: int, chat_id: int, reply_to: int | None, mode: str,
                       content: str, locale: str, question: str | None, action: str | None,
                       parent_id: int | None) -> Refusal | None:
        """A new job from a button; the refusal, if it was refused."""
        verdict = await self._admit(self._admission.admit(
            user_id=user_id, chat_id=chat_id, source_message_id=None, locale=locale,
            mode=mode, content=storable(content[:MAX_CONTENT_CHARS]), reply_to=reply_to,
            question=question, action=action, parent_id=parent_id))
        if isinstance(verdict, Refused):
            return verdict.refusal
        if isinstance(verdict, Redelivered):  # a button's job has no message to come twice
            return Refusal.TOO_MANY_PENDING
        self._runner.start(verdict.job_id)
        return None


    async def submit_inline(self, *, user_id: int, inline_message_id: str, question: str,
                            mode: str, locale: str) -> Refusal | None:
        """A job from a chosen inline result, answered by editing that message; the refusal,
        if it was refused. Its chat is the user's private chat, where alone the whole of a
        long answer is shown."""
        verdict = await self._admit(self._admission.admit(
            user_id=user_id, chat_id=user_id, source_message_id=None, locale=locale, mode=mode,
            content=storable(question[:MAX_CONTENT_CHARS]), inline_message_id=inline_message_id))
        if isinstance(verdict, Redelivered):
            return None  # Telegram reported this choice again; its job is already under way
        if isinstance(verdict, Refused):
            log.info("inline request refused: %s", verdict.refusal, extra={
                "user_id": user_id, "mode": mode, "outcome": f"refused:{verdict.refusal}"})
            return verdict.refusal
        log.info("job %s accepted inline", verdict.job_id, extra={
            "job_id": verdict.job_id, "user_id": user_id, "mode": mode, "outcome": "accepted"})
        self._runner.start(verdict.job_id)
        return None


def is_blank(text: str) -> bool:
    """Nothing a model could answer: only whitespace, zero-width and control characters.

    (The bot's own @mention is taken out before, by the AddressedToBot filter.)
    """
    return all(char.isspace() or unicodedata.category(char) in ("Cc", "Cf") for char in text)


def storable(text: str) -> str:
    """Lone surrogates (Telegram can send them) replaced: UTF-8, and SQLite, refuse them."""
    return text.encode("utf-8", "replace").decode("utf-8")


def cut_notice(length: int) -> str | None:
    if length <= MAX_CONTENT_CHARS:
        return None
    return ngettext("Your message is {length} character long; only the first {limit} will be "
                    "processed.",
                    "Your message is {length} characters long; only the first {limit} will be "
                    "processed.", length).format(length=length, limit=MAX_CONTENT_CHARS)


def refusal_text(refusal: Refusal, clock: QuotaClock, max_pending: int) -> str:
    """Why a request was refused; none of them was sent or counted."""
    if refusal is Refusal.NO_UNITS:
        return failure_text(Failure.NO_UNITS)
    if refusal is Refusal.TOO_MANY_PENDING:
        return ngettext(
            "✋ You already have {count} request in progress. Please wait for its answer "
            "before sending another; this one was not sent.",
            "✋ You already have {count} requests in progress. Please wait for one of the "
            "answers before sending another; this one was not sent.",
            max_pending).format(count=max_pending)
    if refusal is Refusal.ALREADY_ASKED:
        return _("Already on its way: the answer to this button has not come yet.")
    if refusal is Refusal.NO_QUOTA:
        return _("🚫 An admin has set your daily quota to 0, so your requests are not sent. "
                 "Ask an admin if you think this is a mistake.")
    return _("🚫 You have used all your requests for today, so this one was not sent. New "
             "ones arrive at midnight {zone}, in {wait}.").format(
                 zone=clock.zone_name(), wait=until(clock.next_reset(), clock))


def until(moment: datetime, clock: QuotaClock) -> str:
    """How long until `moment`, in whole minutes: "3 hours 5 minutes"."""
    return duration_text(max(60.0, (moment - clock.now()).total_seconds()))
