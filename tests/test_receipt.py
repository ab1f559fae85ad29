"""getUpdates confirms the updates it handed out only once their requests are stored."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aiogram import Bot
from aiogram.methods import GetUpdates
from aiogram.types import TelegramObject, Update

from bot.ops.serve import HandedOut, InFlight, UpdatesInFlight
from bot.telegram.receipt import secured

NO_BOT = cast(Bot, None)


async def test_the_next_get_updates_waits_for_the_request_to_be_stored_not_answered() -> None:
    handed_out = HandedOut()
    track = UpdatesInFlight(InFlight(), handed_out)
    asked: list[int | None] = []

    async def get_updates(bot: Bot, method: Any) -> Any:
        asked.append(method.offset)
        return [Update(update_id=7)] if method.offset is None else []

    store, answer = asyncio.Event(), asyncio.Event()

    async def handler(event: TelegramObject, data: dict[str, Any]) -> None:
        await store.wait()
        secured()  # the job row is written; the reply to it may take long
        await answer.wait()

    await handed_out(get_updates, NO_BOT, GetUpdates())  # hands out update 7
    handling = asyncio.create_task(track(handler, Update(update_id=7), {}))
    following = asyncio.create_task(handed_out(get_updates, NO_BOT, GetUpdates(offset=8)))
    with pytest.raises(TimeoutError):  # update 7 is not stored yet: not confirmed
        await asyncio.wait_for(asyncio.shield(following), 0.2)
    assert asked == [None]

    store.set()
    await asyncio.wait_for(following, 1.0)  # stored: confirmed, its reply still pending
    assert asked == [None, 8] and not handling.done()
    answer.set()
    await handling


async def test_an_update_whose_handling_ends_without_storing_anything_is_confirmed() -> None:
    handed_out = HandedOut()
    track = UpdatesInFlight(InFlight(), handed_out)

    async def get_updates(bot: Bot, method: Any) -> Any:
        return [Update(update_id=3), Update(update_id=4)] if method.offset is None else []

    async def handler(event: TelegramObject, data: dict[str, Any]) -> None:
        return None  # a command answered, a blank message refused

    await handed_out(get_updates, NO_BOT, GetUpdates())
    await track(handler, Update(update_id=3), {})
    following = asyncio.create_task(handed_out(get_updates, NO_BOT, GetUpdates(offset=5)))
    with pytest.raises(TimeoutError):  # 4 is still being handled
        await asyncio.wait_for(asyncio.shield(following), 0.2)
    await track(handler, Update(update_id=4), {})
    await asyncio.wait_for(following, 1.0)
