"""Text becomes a job; anything else gets told what the bot accepts."""

from __future__ import annotations

from contextlib import suppress
from datetime import datetime

from aiogram import F, Router
from aiogram.exceptions import TelegramBadRequest
from aiogram.types import CallbackQuery, Message
from aiogram.utils.i18n import gettext as _

from bot.chatinfo import MAX_CONTENT_CHARS
from bot.failures import Failure, failure_text
from bot.keyboards import RetryCallback
from bot.quota import Admission, QuotaClock, Refusal
from bot.runner import JobRunner, placeholder_text
from storage.jobs import JobRepo
from storage.users import UserRepo


async def ask(message: Message, users: UserRepo, jobs: JobRepo, admission: Admission,
              runner: JobRunner, clock: QuotaClock, locale: str) -> None:
    assert message.from_user is not None and message.text is not None
    text = message.text
    outcome = await admission.admit(
        user_id=message.from_user.id, chat_id=message.chat.id,
        source_message_id=message.message_id, locale=locale,
        mode=await users.mode(message.from_user.id), content=text[:MAX_CONTENT_CHARS],
    )
    if outcome is None:
        return  # Telegram delivered this message again; its job is already under way
    if isinstance(outcome, Refusal):
        await message.reply(refusal_text(outcome, clock))
        return
    if len(text) > MAX_CONTENT_CHARS:
        await message.reply(_("Your message is {length} characters long; only the first "
                              "{limit} will be processed.").format(
                                  length=len(text), limit=MAX_CONTENT_CHARS))
    try:
        placeholder = await message.answer(placeholder_text())
        await jobs.set_placeholder(outcome, placeholder.message_id)
    finally:
        runner.start(outcome)  # sends the placeholder itself if the reply above failed


def refusal_text(refusal: Refusal, clock: QuotaClock) -> str:
    if refusal is Refusal.NO_UNITS:
        return failure_text(Failure.NO_UNITS)
    if refusal is Refusal.TOO_MANY_PENDING:
        return _("⏳ Your earlier requests are still being answered. Please wait for them "
                 "before sending more.")
    return _("You have used all your requests for today. New ones arrive at midnight "
             "({zone}), in {wait}.").format(zone=clock.zone.key, wait=until(clock.next_reset(),
                                                                            clock))


def until(moment: datetime, clock: QuotaClock) -> str:
    minutes = max(1, int((moment - clock.now()).total_seconds() // 60))
    return _("{hours} h {minutes} min").format(hours=minutes // 60, minutes=minutes % 60)


async def retry(query: CallbackQuery, callback_data: RetryCallback, jobs: JobRepo,
                admission: Admission, runner: JobRunner, clock: QuotaClock,
                locale: str) -> None:
    old = await jobs.claim_retry(callback_data.job_id, query.from_user.id)
    if old is None:
        await query.answer(_("This button is no longer valid."), show_alert=True)
        return
    outcome = await admission.admit(user_id=old.user_id, chat_id=old.chat_id,
                                    source_message_id=None, locale=locale, mode=old.mode,
                                    content=old.content)
    if not isinstance(outcome, int):
        await jobs.unclaim_retry(old)
        await query.answer(refusal_text(outcome or Refusal.TOO_MANY_PENDING, clock),
                           show_alert=True)
        return
    await query.answer(_("Sending again…"))
    if isinstance(query.message, Message):  # the old button has done its job
        with suppress(TelegramBadRequest):
            await query.message.edit_reply_markup(reply_markup=None)
    runner.start(outcome)


async def not_text(message: Message) -> None:
    await message.reply(_("I understand only text messages. Please send your request as "
                          "text (up to {limit} characters).").format(limit=MAX_CONTENT_CHARS))


def make_router() -> Router:
    router = Router(name="chat")
    router.message.register(ask, F.text & ~F.text.startswith("/"))
    router.callback_query.register(retry, RetryCallback.filter())
    router.message.register(not_text, ~F.text)
    return router
