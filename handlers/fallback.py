"""What no other router took: unknown commands and stale or forged buttons.

`on_error` is registered on the dispatcher itself, so it sees every router's errors.
"""

from __future__ import annotations

import logging

from aiogram import Bot, F, Router
from aiogram.enums import ChatType
from aiogram.types import CallbackQuery, ErrorEvent, Message
from aiogram.utils.i18n import gettext as _

from bot.telegram.filters import addressed_to, command_target

log = logging.getLogger(__name__)


async def unknown_command(message: Message, bot: Bot) -> None:
    # In a group, only a command naming the bot: a bare unknown one is for another bot.
    if message.chat.type != ChatType.PRIVATE and not command_target(message.text or ""):
        return
    if not addressed_to(message, await bot.me()):
        return  # a command for another bot
    await message.reply(_("I don't know this command. Send /help to see what I can do."))


async def unknown_button(query: CallbackQuery) -> None:
    await query.answer(_("This button is no longer valid."), show_alert=True)


async def on_error(event: ErrorEvent, bot: Bot) -> None:
    log.error("update %s failed", event.update.update_id, exc_info=event.exception)
    text = _("😔 Something went wrong. Please try again.")
    update = event.update
    try:
        if update.message is not None:
            if not addressed_to(update.message, await bot.me()):
                return  # a group message that was not for the bot gets no reply at all
            await update.message.reply(text)
        elif update.callback_query is not None:
            await update.callback_query.answer(text, show_alert=True)
    except Exception:  # telling the user is best effort; the error is logged above
        log.warning("could not tell the user about the failed update %s", update.update_id)


def make_router() -> Router:
    router = Router(name="fallback")
    router.message.register(unknown_command, F.text.startswith("/"))
    router.callback_query.register(unknown_button)
    return router
