"""Whether a message in a group is meant for the bot."""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiogram import Bot, Router
from aiogram.dispatcher.event.handler import FilterObject
from aiogram.enums import ChatType
from aiogram.filters import Filter
from aiogram.types import Message, User
from magic_filter import MagicFilter

from bot.telegram.commands import COMMANDS_BY_NAME


def addressed_to(message: Message, me: User) -> bool:
    """Private chats always; in a group: a command for the bot (one of its own, or any
    naming it), an @mention of the bot, or a reply to one of its messages."""
    if message.chat.type == ChatType.PRIVATE:
        return True
    text = message.text or message.caption or ""
    replied = message.reply_to_message
    if replied is not None and replied.from_user is not None and replied.from_user.id == me.id:
        return True
    if text.startswith("/"):
        if target := command_target(text):
            return target.lower() == (me.username or "").lower()
        return command_name(text).lower() in COMMANDS_BY_NAME
    return bool(me.username) and _mention(me.username or "").search(text) is not None


def command_name(text: str) -> str:
    """"help" of "/help@some_bot args"."""
    return text.split(maxsplit=1)[0][1:].partition("@")[0] if text.strip() else ""


def command_target(text: str) -> str:
    """"some_bot" of "/help@some_bot args"; "" when the command names no bot."""
    return text.split(maxsplit=1)[0].partition("@")[2] if text.strip() else ""


@functools.cache
def _mention(username: str) -> re.Pattern[str]:
    return re.compile(rf"@{re.escape(username)}\b", re.IGNORECASE)


class AddressedToBot(Filter):
    """Messages `addressed_to` the bot.

    Gives the handler `request`: the text or caption without the bot's @mention.
    """

    async def __call__(self, message: Message, bot: Bot) -> bool | dict[str, str]:
        text = message.text or message.caption or ""
        if message.chat.type == ChatType.PRIVATE:
            return {"request": text}
        me = await bot.me()
        if not addressed_to(message, me):
            return False
        return {"request": _mention(me.username).sub("", text).strip() if me.username else text}


def check_magic_on_the_loop(router: Router) -> None:
    """Make the router's (and its sub-routers') `F` filters async.

    aiogram calls a filter that is not async in a worker thread, and `F` filters are not:
    160 µs of CPU a check, and a text message passes some six of them on its way to its
    handler. They only read the update's fields, so they lose nothing run on the loop.
    """
    for filter_object in _filters(router):
        if filter_object.magic is not None and not filter_object.awaitable:
            filter_object.callback = _on_the_loop(filter_object.magic)
            filter_object.awaitable = True


def _filters(router: Router) -> Iterator[FilterObject]:
    for observer in router.observers.values():
        # The router's own filters (`router.message.filter(...)`) sit on a handler of its own.
        for handler in (observer._handler, *observer.handlers):
            yield from handler.filters or ()
    for child in router.sub_routers:
        yield from _filters(child)


def _on_the_loop(magic: MagicFilter) -> Callable[[Any], Awaitable[Any]]:
    async def resolve(value: Any) -> Any:  # named as MagicFilter.resolve's argument
        return magic.resolve(value)

    return resolve
