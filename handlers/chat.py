"""Text becomes a job; anything else gets told what the bot accepts."""

from __future__ import annotations

from contextlib import suppress

from aiogram import F, Router
from aiogram.exceptions import TelegramBadRequest
from aiogram.types import CallbackQuery, Message
from aiogram.utils.i18n import gettext as _

from bot.chatinfo import MAX_CONTENT_CHARS
from bot.keyboards import RetryCallback
from bot.runner import JobRunner, placeholder_text
from storage.jobs import JobRepo
from storage.users import UserRepo


async def ask(message: Message, users: UserRepo, jobs: JobRepo, runner: JobRunner,
              locale: str) -> None:
    assert message.from_user is not None and message.text is not None
    text = message.text
    if len(text) > MAX_CONTENT_CHARS:
        await message.reply(_("Your message is {length} characters long; only the first "
                              "{limit} will be processed.").format(
                                  length=len(text), limit=MAX_CONTENT_CHARS))
    job_id = await jobs.add(
        user_id=message.from_user.id, chat_id=message.chat.id,
        source_message_id=message.message_id, locale=locale,
        mode=await users.mode(message.from_user.id), content=text[:MAX_CONTENT_CHARS],
    )
    if job_id is None:
        return  # Telegram delivered this message again; its job is already under way
    try:
        placeholder = await message.answer(placeholder_text())
        await jobs.set_placeholder(job_id, placeholder.message_id)
    finally:
        runner.start(job_id)  # sends the placeholder itself if the reply above failed


async def retry(query: CallbackQuery, callback_data: RetryCallback, jobs: JobRepo,
                runner: JobRunner, locale: str) -> None:
    old = await jobs.claim_retry(callback_data.job_id, query.from_user.id)
    if old is None:
        await query.answer(_("This button is no longer valid."), show_alert=True)
        return
    await query.answer(_("Sending again…"))
    if isinstance(query.message, Message):  # the old button has done its job
        with suppress(TelegramBadRequest):
            await query.message.edit_reply_markup(reply_markup=None)
    job_id = await jobs.add(user_id=old.user_id, chat_id=old.chat_id, source_message_id=None,
                            locale=locale, mode=old.mode, content=old.content)
    assert job_id is not None  # retries carry no source message, so they never collide
    runner.start(job_id)


async def not_text(message: Message) -> None:
    await message.reply(_("I understand only text messages. Please send your request as "
                          "text (up to {limit} characters).").format(limit=MAX_CONTENT_CHARS))


def make_router() -> Router:
    router = Router(name="chat")
    router.message.register(ask, F.text & ~F.text.startswith("/"))
    router.callback_query.register(retry, RetryCallback.filter())
    router.message.register(not_text, ~F.text)
    return router
