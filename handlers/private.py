"""Commands that show private data answer only in the private chat.

In a group they get a short reply with a button that opens the private chat and runs the
command there (a /start link whose payload names it), so nothing personal is posted
where others read. An admin command from a non-admin falls through to the unknown-command
reply, so nothing reveals that it exists.
"""

from __future__ import annotations

from aiogram import Bot, Dispatcher, F, Router
from aiogram.enums import ChatType
from aiogram.filters import Command, CommandObject, CommandStart
from aiogram.types import Message, MessageEntity, Update
from aiogram.utils.deep_linking import create_start_link
from aiogram.utils.i18n import gettext as _
from aiogram.utils.keyboard import InlineKeyboardBuilder

from bot.commands import command_from_payload, names, start_payload


async def ask_in_private(message: Message, command: CommandObject, bot: Bot) -> None:
    link = await create_start_link(bot, start_payload(command.command, command.args))
    keyboard = InlineKeyboardBuilder()
    keyboard.button(text=_("🔒 Open the private chat"), url=link)
    await message.reply(_("I answer /{command} only in our private chat, so nothing personal "
                          "shows up here.").format(command=command.command),
                        reply_markup=keyboard.as_markup())


async def run_from_link(message: Message, command: CommandObject, bot: Bot,
                        dispatcher: Dispatcher, event_update: Update) -> None:
    """`/start history` from a link: handled exactly as if the user had typed /history."""
    text = command_from_payload(command.args or "")
    assert text is not None  # the filter let only such payloads through
    name = text.split(maxsplit=1)[0]
    typed = message.model_copy(update={"text": text, "entities": [
        MessageEntity(type="bot_command", offset=0, length=len(name))]})
    raw = Update(update_id=event_update.update_id, message=typed).model_dump(
        mode="json", by_alias=True, exclude_none=True)
    await dispatcher.feed_update(bot, Update.model_validate(raw, context={"bot": bot}))


def make_router(admin_ids: frozenset[int]) -> Router:
    router = Router(name="private")
    in_group = F.chat.type != ChatType.PRIVATE
    router.message.register(ask_in_private, in_group, Command(*names(admin=False, private=True)))
    router.message.register(ask_in_private, in_group, F.from_user.id.in_(admin_ids),
                            Command(*names(admin=True)))
    router.message.register(
        run_from_link, F.chat.type == ChatType.PRIVATE,
        CommandStart(deep_link=True, magic=F.args.func(command_from_payload)))
    return router
