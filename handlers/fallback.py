"""What no other router took: unknown commands and stale or forged buttons.

`on_error` is registered on the dispatcher itself, so it sees every router's errors.
"""

from __future__ import annotations

import logging

from aiogram import Router
from aiogram.types import CallbackQuery, ErrorEvent, Message
from aiogram.utils.i18n import gettext as _

log = logging.getLogger(__name__)
async def unknown_command(message: Message) -> None:
    await message.reply(_("I don't know this command. Send /help to see what I can do."))


async def unknown_button(query: CallbackQuery) -> None:
    await query.answer(_("This button is no longer valid."), show_alert=True)


async def on_error(event: ErrorEvent) -> None:
    log.error("update %s failed", event.update.update_id, exc_info=event.exception)
    text = _("😔 Something went wrong. Please try again.")
    update = event.update
    try:
        if update.message is not None:
            await update.message.answer(text)
        elif update.callback_query is not None:
            await update.callback_query.answer(text, show_alert=True)
    except Exception:  # telling the user is best effort; the error is logged above
        log.warning("could not tell the user about the failed update %s", update.update_id)


def make_router() -> Router:
    router = Router(name="fallback")
    router.message.register(unknown_command)
    router.callback_query.register(unknown_button)
    return router
