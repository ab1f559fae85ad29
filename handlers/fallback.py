"""What no other router took: unknown commands and stale or forged buttons.

`on_error` is registered on the dispatcher itself, so it sees every router's errors.
"""

from __future__ import annotations

import logging

from aiogram import Bot, F, Router
from aiogram.enums import ChatType
from aiogram.types import CallbackQuery, ErrorEvent, Message
from aiogram.utils.i18n import gettext as _

log = logging.getLogger(__name__)
async def unknown_command(message: Message, bot: Bot) -> None:
    if not await is_for_us(message, bot):
        return  # in a group, a command for another bot (or for nobody in particular)
    await message.reply(_("I don't know this command. Send /help to see what I can do."))


async def is_for_us(message: Message, bot: Bot) -> bool:
    if message.chat.type == ChatType.PRIVATE:
        return True
    _command, _at, target = (message.text or "").split(maxsplit=1)[0].partition("@")
    me = await bot.me()
    return bool(target) and target.lower() == (me.username or "").lower()


async def unknown_button(query: CallbackQuery) -> None:
    await query.answer(_("This button is no longer valid."), show_alert=True)


async def on_error(event: ErrorEvent) -> None:
    log.error("update %s failed", event.update.update_id, exc_info=event.exception)
    text = _("😔 Something went wrong. Please try again.")
    update = event.update
    try:
        if update.message is not None:
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
