"""Putting text on the user's screen: the placeholder edited, or new messages.

Every path here is idempotent across restarts: an edit repeated after a crash is
"not modified", which counts as done.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiogram import Bot
from aiogram.exceptions import TelegramBadRequest
from aiogram.types import InlineKeyboardMarkup, MessageEntity, ReplyParameters

from bot.telegram.render import Part
from bot.telegram.retries import entities_rejected, message_gone, not_modified, with_retries
from bot.telegram.throttle import Pressure, PressureGauge
from storage.jobs import Job

log = logging.getLogger(__name__)

Keyboard = InlineKeyboardMarkup | None
# A Bot API call taking the entities to use (None: plain text).
_Call = Callable[[list[MessageEntity] | None], Awaitable[object]]


class Delivery:
    def __init__(self, bot: Bot, pressure: PressureGauge | None = None) -> None:
        """`pressure`: the throttle's, which progress edits give way to (none: never)."""
        self._bot = bot
        self.pressure = pressure or PressureGauge()

    async def show(self, job: Job, part: Part, keyboard: Keyboard = None) -> None:
        """Turn the placeholder into `part`; a new message if it is gone or too old.

        An inline job's placeholder is in a chat the bot may not be in: it is edited by its
        inline message id, and if it is gone there is nowhere else to put the answer (it
        stays in the user's /history).
        """
        if job.inline_message_id is not None:
            await self.show_inline(job.inline_message_id, part, keyboard)
            return
        if job.placeholder_id is not None:
            try:
                await self._entities_or_plain(part, lambda entities: self._bot.edit_message_text(
                    text=part.text, entities=entities, chat_id=job.chat_id,
                    message_id=job.placeholder_id, reply_markup=keyboard))
                return
            except TelegramBadRequest as error:
                if not_modified(error):
                    return  # already shown: a restart repeated a finished edit
                if not message_gone(error):
                    raise
        await self.send(job, part, keyboard)

    async def show_inline(self, inline_message_id: str, part: Part,
                          keyboard: Keyboard = None) -> None:
        """Turn an inline message (ours, posted on a user's behalf) into `part`."""
        try:
            await self._entities_or_plain(part, lambda entities: self._bot.edit_message_text(
                text=part.text, entities=entities, inline_message_id=inline_message_id,
                reply_markup=keyboard))
        except TelegramBadRequest as error:
            if not_modified(error):
                return  # already shown: a restart repeated a finished edit
            if not message_gone(error):
                raise
            log.info("inline message %s is gone (%s); the answer stays in /history",
                     inline_message_id, error.message)

    async def send(self, job: Job, part: Part, keyboard: Keyboard = None) -> None:
        """A new message, replying to the job's placeholder (or what it answers) if any."""
        await self.post(job.chat_id, part, keyboard, reply_to=job.placeholder_id or job.reply_to)

    async def post(self, chat_id: int, part: Part, keyboard: Keyboard = None, *,
                   reply_to: int | None = None) -> None:
        reply = _reply_to(reply_to)
        await self._entities_or_plain(part, lambda entities: self._bot.send_message(
            chat_id, part.text, entities=entities, reply_markup=keyboard,
            reply_parameters=reply))

    async def placeholder(self, job: Job, text: str) -> int:
        message = await with_retries(lambda: self._bot.send_message(
            job.chat_id, text, reply_parameters=_reply_to(job.reply_to)))
        return message.message_id

    async def progress(self, chat_id: int, placeholder_id: int | None, text: str) -> None:
        """Best effort, no retries: a missed progress update is not worth a delay, and none
        is made while answers wait for Telegram's budget."""
        if placeholder_id is None:
            return
        if self.pressure.level >= Pressure.QUIET:
            self.pressure.degrade(Pressure.QUIET)
            return
        try:
            await self._bot.edit_message_text(text=text, chat_id=chat_id,
                                              message_id=placeholder_id)
        except Exception as error:
            log.debug("progress edit of message %s in chat %s failed: %s", placeholder_id,
                      chat_id, type(error).__name__)

    @staticmethod
    async def _entities_or_plain(part: Part, call: _Call) -> None:
        try:
            await with_retries(lambda: call(part.entities or None))
        except TelegramBadRequest as error:
            if not part.entities or not entities_rejected(error):
                raise
            # Rendering should never produce entities Telegram rejects; if it does, the
            # words still matter more than the formatting.
            log.warning("telegram rejected entities (%s); sending plain text", error.message)
            await with_retries(lambda: call(None))


def _reply_to(message_id: int | None) -> ReplyParameters | None:
    # Still sent if the user deleted the message it answers.
    if message_id is None:
        return None
    return ReplyParameters(message_id=message_id, allow_sending_without_reply=True)
