"""Acting on answers: the buttons under them, retries, /history and /cancel."""

from __future__ import annotations

from contextlib import suppress
from datetime import datetime, tzinfo

from aiogram import Router
from aiogram.enums import ChatType
from aiogram.exceptions import TelegramBadRequest
from aiogram.types import CallbackQuery, Message
from aiogram.utils.i18n import gettext as _
from aiogram.utils.i18n import ngettext

from bot.config import MAX_CONTENT_CHARS
from bot.jobs.runner import JobRunner
from bot.jobs.submit import Submitter
from bot.modes import MODES_BY_NAME
from bot.telegram.commands import Commands
from bot.telegram.delivery import Delivery
from bot.telegram.keyboards import (
    AnswerAction,
    AnswerCallback,
    HistoryCallback,
    RetryCallback,
    history_keyboard,
)
from bot.telegram.render import Part, render
from storage.jobs import Job, JobRepo, JobState

HISTORY_SIZE = 10
PREVIEW_CHARS = 60
STATE_MARKS = {JobState.DELIVERED: "✅", JobState.ANSWERED: "✅", JobState.FAILED: "⚠️",
               JobState.UNKNOWN: "❔", JobState.RETRIED: "🔁"}


async def act_on_answer(query: CallbackQuery, callback_data: AnswerCallback, jobs: JobRepo,
                        submitter: Submitter, locale: str) -> None:
    job = await own_job(query, callback_data.job_id, jobs)
    if job is None or job.result is None:
        return
    mode, content = {
        AnswerAction.REGENERATE: (job.mode, job.content),
        AnswerAction.CONTINUE: ("continue", job.result[-MAX_CONTENT_CHARS:]),
        AnswerAction.SHORTER: ("shorter", job.result[:MAX_CONTENT_CHARS]),
    }[callback_data.action]
    reply_to = query.message.message_id if query.message else None
    refusal = await submitter.resubmit(user_id=job.user_id, chat_id=job.chat_id,
                                       reply_to=reply_to, mode=mode, content=content,
                                       locale=locale, question=job.question or job.content,
                                       action=callback_data.action, parent_id=job.id)
    if refusal is not None:
        await query.answer(submitter.refusal_text(refusal), show_alert=True)
    else:
        await query.answer(_("Sending…"))


async def retry(query: CallbackQuery, callback_data: RetryCallback, jobs: JobRepo,
                submitter: Submitter, locale: str) -> None:
    if await own_job(query, callback_data.job_id, jobs) is None:
        return
    old = await jobs.claim_retry(callback_data.job_id, query.from_user.id)
    if old is None:
        job = await jobs.get(callback_data.job_id)
        if job is not None and job.state is JobState.RETRIED:  # a second tap: one unit
            await query.answer(_("Already sent again; the answer is on its way."))
        else:
            await query.answer(_("This button is no longer valid."), show_alert=True)
        return
    refusal = await submitter.resubmit(user_id=old.user_id, chat_id=old.chat_id,
                                       reply_to=old.reply_to, mode=old.mode,
                                       content=old.content, locale=locale,
                                       question=old.question, action=old.action,
                                       parent_id=old.parent_id)
    if refusal is not None:
        await jobs.unclaim_retry(old)
        await query.answer(submitter.refusal_text(refusal), show_alert=True)
        return
    await query.answer(_("Sending again…"))
    if isinstance(query.message, Message):  # the old button has done its job
        with suppress(TelegramBadRequest):
            await query.message.edit_reply_markup(reply_markup=None)


async def history(message: Message, jobs: JobRepo, submitter: Submitter) -> None:
    assert message.from_user is not None
    recent = await jobs.recent(message.from_user.id, HISTORY_SIZE)
    if not recent:
        await message.answer(_("You have no requests yet."))
        return
    zone = submitter.clock.zone
    lines = [_("Your last requests:")] + [history_line(job, zone) for job in recent]
    answered = [job.id for job in recent if job.result is not None]
    await message.answer("\n".join(lines),
                         reply_markup=history_keyboard(answered) if answered else None)


def history_line(job: Job, zone: tzinfo) -> str:
    when = datetime.fromtimestamp(job.created_at, zone).strftime("%d.%m %H:%M")
    mode = MODES_BY_NAME.get(job.mode)
    mark = "✖️" if job.cancelled else STATE_MARKS.get(job.state, "⏳")
    line = f"#{job.id} {mark} {when} {mode.emoji if mode else ''} {preview(job)}"
    if job.cancelled:
        line += " · " + (_("cancelled, answer kept") if job.result is not None
                         else _("cancelled"))
    return line


def preview(job: Job) -> str:
    """The user's own question, one line: never an earlier answer it was sent with."""
    # Jobs from before questions were stored show their content as it reads, not Markdown.
    words = job.question or next(iter(render(job.content[:PREVIEW_CHARS * 4])), Part("")).text
    question = " ".join(words.split())
    if len(question) > PREVIEW_CHARS:
        question = question[:PREVIEW_CHARS - 1].rstrip() + "…"
    labels: dict[str, str] = {AnswerAction.CONTINUE: _("Continue: {question}"),
                              AnswerAction.SHORTER: _("Shorter: {question}"),
                              AnswerAction.REGENERATE: _("Again: {question}")}
    label = labels.get(job.action or "")
    return label.format(question=question) if label else question


async def show_again(query: CallbackQuery, callback_data: HistoryCallback, jobs: JobRepo,
                     delivery: Delivery) -> None:
    """The answer, in the chat where the button was pressed, to its owner only: in a group,
    only the group's own answers (a private one is never posted where others read)."""
    job = await own_job(query, callback_data.job_id, jobs)
    if job is None or job.result is None or query.message is None:
        return
    chat = query.message.chat
    if chat.type != ChatType.PRIVATE and chat.id != job.chat_id:
        await query.answer(_("I show this answer only in our private chat."), show_alert=True)
        return
    await query.answer()
    reply_to = job.placeholder_id if chat.id == job.chat_id else None
    for part in render(job.result):
        await delivery.post(chat.id, part, reply_to=reply_to)


async def cancel(message: Message, runner: JobRunner) -> None:
    assert message.from_user is not None
    stopped, kept = await runner.cancel(message.from_user.id)
    lines = []
    if stopped:
        lines.append(ngettext(
            "Stopped {count} request before it was sent, so it was not counted.",
            "Stopped {count} requests before they were sent, so they were not counted.",
            stopped).format(count=stopped))
    if kept:
        lines.append(ngettext(
            "{count} request had already been sent and was counted: its answer will be "
            "kept in /history.",
            "{count} requests had already been sent and were counted: their answers will "
            "be kept in /history.", kept).format(count=kept))
    await message.answer("\n".join(lines) or _("You have no requests in progress."))


async def own_job(query: CallbackQuery, job_id: int, jobs: JobRepo) -> Job | None:
    """The job behind a button, if it is the tapper's; otherwise say so politely."""
    job = await jobs.get(job_id)
    if job is None:
        await query.answer(_("This button is no longer valid."), show_alert=True)
        return None
    if job.user_id != query.from_user.id:
        await query.answer(_("This button belongs to someone else's request."),
                           show_alert=True)
        return None
    return job


def make_router() -> Router:
    router = Router(name="answers")
    router.callback_query.register(act_on_answer, AnswerCallback.filter())
    router.callback_query.register(retry, RetryCallback.filter())
    router.callback_query.register(show_again, HistoryCallback.filter())
    router.message.register(history, Commands.history.filter())
    router.message.register(cancel, Commands.cancel.filter())
    return router
