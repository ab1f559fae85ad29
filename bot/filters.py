"""Whether a message in a group is meant for the bot."""

from __future__ import annotations

import re

from aiogram import Bot
from aiogram.enums import ChatType
from aiogram.filters import Filter
from aiogram.types import Message


class AddressedToBot(Filter):
    """Private chats always; groups only on an @mention of the bot or a reply to it.

    Gives the handler `request`: the text or caption without the bot's @mention.
    """

    async def __call__(self, message: Message, bot: Bot) -> bool | dict[str, str]:
        text = message.text or message.caption or ""
        if message.chat.type == ChatType.PRIVATE:
            return {"request": text}
        me = await bot.me()
        mention = re.compile(rf"@{re.escape(me.username or '')}\b", re.IGNORECASE)
        replied = message.reply_to_message
        if (replied is not None and replied.from_user is not None
                and replied.from_user.id == me.id) or (me.username and mention.search(text)):
            return {"request": mention.sub("", text).strip()}
        return False
