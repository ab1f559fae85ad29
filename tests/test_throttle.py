"""Telegram's pace kept before Telegram has to say 429: per chat and per bot."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, cast

from aiogram import Bot
from aiogram.methods import SendMessage, TelegramMethod
from aiogram.methods.base import Response, TelegramType

from bot.telegram.throttle import TelegramThrottle


async def test_messages_keep_one_a_second_per_chat_and_the_bot_wide_rate() -> None:
    throttle = TelegramThrottle(per_bot_per_second=20)
    loop = asyncio.get_running_loop()
    sent: list[tuple[int, float]] = []

    async def make_request(bot: Bot, method: TelegramMethod[TelegramType],
                           timeout: int | None = None) -> Response[TelegramType]:
        sent.append((cast(int, cast(Any, method).chat_id), loop.time()))
        return cast(Response[TelegramType], None)

    def send(chat_id: int) -> Any:
        return throttle(make_request, cast(Bot, None), SendMessage(chat_id=chat_id, text="x"))

    started = loop.time()
    await asyncio.gather(*(send(7) for _ in range(3)),
                         *(send(1000 + n) for n in range(40)))

    one_chat = [moment for chat_id, moment in sent if chat_id == 7]
    assert all(b - a >= 0.9 for a, b in itertools.pairwise(one_chat))
    # A burst of 20, then 20 a second: the other 23 messages need at least a second more.
    assert max(moment for _, moment in sent) - started >= 0.9
    assert len(sent) == 43
