"""/new starts a conversation afresh; /memory turns the memory on or off for a mode."""

from __future__ import annotations

from aiogram import Router
from aiogram.types import Message
from aiogram.utils.i18n import gettext as _

from bot.jobs.conversation import Conversations
from bot.modes import MODES_BY_NAME
from bot.telegram.commands import Commands


async def start_afresh(message: Message, conversations: Conversations) -> None:
    assert message.from_user is not None
    await conversations.start_afresh(message.chat.id, message.from_user.id)
    memory = await conversations.memory(message.from_user.id)
    if memory.remembers:
        await message.reply(_("🆕 New conversation: your next message starts afresh, "
                              "without the earlier ones."))
    else:
        mode = MODES_BY_NAME[memory.mode]
        await message.reply(_("🆕 New conversation. In {emoji} {label} mode each message "
                              "stands alone anyway; /memory makes me remember the "
                              "conversation.").format(emoji=mode.emoji, label=mode.label))


async def toggle_memory(message: Message, conversations: Conversations) -> None:
    assert message.from_user is not None
    memory = await conversations.memory(message.from_user.id)
    await conversations.set_memory(message.from_user.id, memory.mode, not memory.remembers)
    mode = MODES_BY_NAME[memory.mode]
    if memory.remembers:
        text = _("In {emoji} {label} mode each message now stands alone, without the "
                 "earlier ones. /memory turns the memory back on.")
    else:
        text = _("🧠 In {emoji} {label} mode each message now carries our recent "
                 "conversation. /new starts afresh; /memory turns this off.")
    await message.reply(text.format(emoji=mode.emoji, label=mode.label))


def make_router() -> Router:
    router = Router(name="conversation")
    router.message.register(start_afresh, Commands.new.filter())
    router.message.register(toggle_memory, Commands.memory.filter())
    return router
