"""Telegram's pace kept before Telegram has to say 429: per chat and per bot."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, cast

from aiogram import Bot
from aiogram.methods import SendMessage, TelegramMethod
from aiogram.methods.base import Response, TelegramType

from bot.telegram.throttle import TelegramThrottle, in_background


async def test_messages_keep_one_a_second_per_chat_after_a_short_burst_and_the_bot_wide_rate(
) -> None:
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
    await asyncio.gather(*(send(7) for _ in range(5)),
                         *(send(1000 + n) for n in range(40)))

    one_chat = [moment for chat_id, moment in sent if chat_id == 7]
    # The Bot FAQ allows a short burst in a chat; after it, one a second.
    assert one_chat[2] - one_chat[0] < 0.5
    assert all(b - a >= 0.9 for a, b in itertools.pairwise(one_chat[2:]))
    # A burst of 20, then 20 a second: the other 25 messages need at least a second more.
    assert max(moment for _, moment in sent) - started >= 0.9
    assert len(sent) == 45


def recorder(throttle: TelegramThrottle, sent: list[tuple[str, float]]) -> Any:
    """Sends through `throttle`, noting when each message went out and whose it was."""
    loop = asyncio.get_running_loop()

    async def make_request(bot: Bot, method: TelegramMethod[TelegramType],
                           timeout: int | None = None) -> Response[TelegramType]:
        sent.append((cast(str, cast(Any, method).text), loop.time()))
        return cast(Response[TelegramType], None)

    async def send(chat_id: int, whose: str) -> None:
        if whose == "background":
            with in_background():
                await throttle(make_request, cast(Bot, None),
                               SendMessage(chat_id=chat_id, text=whose))
        else:
            await throttle(make_request, cast(Bot, None), SendMessage(chat_id=chat_id, text=whose))

    return send


async def test_background_gets_its_share_and_only_what_answers_leave() -> None:
    throttle = TelegramThrottle(per_bot_per_second=20, background_share=1 / 2)
    loop = asyncio.get_running_loop()
    sent: list[tuple[str, float]] = []
    send = recorder(throttle, sent)

    async def broadcast() -> None:
        for n in range(1000):
            await send(10_000 + n, "background")

    started = loop.time()
    background = asyncio.create_task(broadcast())
    await asyncio.sleep(1.0)
    # A burst of answers while the broadcast runs: all at once, as with no broadcast.
    burst_at = loop.time()
    await asyncio.gather(*(send(100 + n, "answer") for n in range(10)))
    assert loop.time() - burst_at < 0.05
    # Then answers that need the whole rate for two seconds: the broadcast steps aside.
    flood_at = loop.time()
    await asyncio.gather(*(send(200 + n, "answer") for n in range(50)))
    flood_took = loop.time() - flood_at
    background.cancel()

    copies = [at for whose, at in sent if whose == "background"]
    early = [at for at in copies if at < burst_at]
    assert (len(early) - 1) / (early[-1] - started) <= 10.5  # half of 20 a second
    during_flood = [at for at in copies if flood_at + 0.3 < at < flood_at + flood_took]
    assert flood_took < 2.6 and len(during_flood) <= 1


async def test_background_goes_even_at_one_message_a_second() -> None:
    throttle = TelegramThrottle(per_bot_per_second=1, background_share=1)
    sent: list[tuple[str, float]] = []
    await asyncio.wait_for(recorder(throttle, sent)(7, "background"), 2)
    assert [whose for whose, _ in sent] == ["background"]
