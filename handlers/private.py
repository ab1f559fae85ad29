"""Commands that show private data answer only in the private chat.

In a group, a user's personal command gets a short reply with a button that opens the
private chat (and, for one that only shows something, runs it there: a /start link whose
payload names it). An admin command in a group gets no reply there at all, so the group
learns nothing of who is an admin or whom they act on; the admin is told in private.
A non-admin's admin command falls through to the unknown-command reply.
"""

from __future__ import annotations

import logging

from aiogram import Bot, Dispatcher, F, Router
from aiogram.enums import ChatType
from aiogram.exceptions import TelegramAPIError
from aiogram.filters import Command, CommandObject, CommandStart
from aiogram.types import InlineKeyboardMarkup, Message, MessageEntity, Update
from aiogram.utils.deep_linking import create_start_link
from aiogram.utils.i18n import gettext as _
from aiogram.utils.keyboard import InlineKeyboardBuilder

from bot.telegram.commands import command_from_payload, names, start_payload

log = logging.getLogger(__name__)


async def ask_in_private(message: Message, command: CommandObject, bot: Bot) -> None:
    if start_payload(command.command, command.args) is not None:
        text = _("I answer /{command} only in our private chat, so nothing personal shows "
                 "up here.")
    else:
        text = _("I take /{command} only in our private chat: please send it there.")
    await message.reply(text.format(command=command.command),
                        reply_markup=await private_chat_button(bot, command))


async def tell_admin_in_private(message: Message, command: CommandObject, bot: Bot) -> None:
    assert message.from_user is not None
    try:
        await bot.send_message(
            message.from_user.id,
            _("You sent /{command} in a group. I answer admin commands only here, so the "
              "group sees nothing of them.").format(command=command.command),
            reply_markup=await private_chat_button(bot, command))
    except TelegramAPIError as error:  # the admin never opened the private chat
        log.info("could not tell admin %s in private: %s", message.from_user.id,
                 type(error).__name__)


async def private_chat_button(bot: Bot, command: CommandObject) -> InlineKeyboardMarkup:
    """Opens the private chat; runs the command there if it only shows something."""
    payload = start_payload(command.command, command.args)
    link = (await create_start_link(bot, payload) if payload is not None
            else f"https://t.me/{(await bot.me()).username}")
    keyboard = InlineKeyboardBuilder()
    keyboard.button(text=_("🔒 Open the private chat"), url=link)
    return keyboard.as_markup()


async def run_from_link(message: Message, command: CommandObject, bot: Bot,
                        dispatcher: Dispatcher, event_update: Update) -> None:
    """`/start history` from a link: handled exactly as if the user had typed /history."""
    text = command_from_payload(command.args or "")
    assert text is not None  # the filter let only such payloads through
    name = text.split(maxsplit=1)[0]
    typed = message.model_copy(update={"text": text, "entities": [
        MessageEntity(type="bot_command", offset=0, length=len(name))]})
    # model_copy does not validate; a round trip gives an update bound to the bot like
    # one that came from Telegram, for every middleware and filter to read as usual.
    raw = Update(update_id=event_update.update_id, message=typed).model_dump(
        mode="json", by_alias=True, exclude_none=True)
    await dispatcher.feed_update(bot, Update.model_validate(raw, context={"bot": bot}))


def make_router(admin_ids: frozenset[int]) -> Router:
    router = Router(name="private")
    in_group = F.chat.type != ChatType.PRIVATE
    router.message.register(ask_in_private, in_group, Command(*names(admin=False, private=True)))
    router.message.register(tell_admin_in_private, in_group, F.from_user.id.in_(admin_ids),
                            Command(*names(admin=True)))
    router.message.register(
        run_from_link, F.chat.type == ChatType.PRIVATE,
        CommandStart(deep_link=True, magic=F.args.func(command_from_payload)))
    return router
