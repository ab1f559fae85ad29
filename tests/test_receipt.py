"""getUpdates confirms no update handed out until its request is stored or its handling is
over: Telegram keeps those, and sends them again after a crash."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aiogram import Bot
from aiogram.methods import GetUpdates
from aiogram.types import TelegramObject, Update

from bot.ops.serve import InFlight, UpdatesInFlight
from bot.telegram.receipt import HandedOut, secured

NO_BOT = cast(Bot, None)


class FakeUpdates:
    """Telegram's getUpdates: every update from the offset on (an offset confirms the ones
    before it)."""

    def __init__(self, *update_ids: int) -> None:
        self.kept = list(update_ids)
        self.asked: list[tuple[int | None, int | None]] = []  # (offset, timeout)

    async def __call__(self, bot: Bot, method: Any) -> Any:
        self.asked.append((method.offset, method.timeout))
        if method.offset is not None:
            self.kept = [n for n in self.kept if n >= method.offset]
        return [Update(update_id=n) for n in self.kept]


async def poll(handed_out: HandedOut, telegram: FakeUpdates, offset: int | None) -> list[int]:
    updates: Any = await handed_out(telegram, NO_BOT, GetUpdates(offset=offset, timeout=10))
    return [update.update_id for update in updates]


async def test_an_update_is_not_confirmed_until_its_request_is_stored() -> None:
    handed_out, telegram = HandedOut(), FakeUpdates(7)
    track = UpdatesInFlight(InFlight(), handed_out)
    store, stored, answer = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def handler(event: TelegramObject, data: dict[str, Any]) -> None:
        await store.wait()
        secured()  # the job row is written; the reply to it may take long
        stored.set()
        await answer.wait()

    assert await poll(handed_out, telegram, None) == [7]
    handling = asyncio.create_task(track(handler, Update(update_id=7), {}))
    telegram.kept.append(8)  # a new message meanwhile
    # 7 is not stored: asked from 7 (Telegram keeps it), and 8 comes at once.
    assert await poll(handed_out, telegram, 8) == [8]
    assert telegram.asked[-1] == (7, 0) and 7 in telegram.kept

    store.set()
    await stored.wait()
    await track(lambda event, data: asyncio.sleep(0), Update(update_id=8), {})
    assert await poll(handed_out, telegram, 9) == []
    assert telegram.asked[-1] == (9, 10) and telegram.kept == []  # both confirmed
    assert not handling.done()  # its reply still pending
    answer.set()
    await handling


async def test_asked_again_only_for_updates_handed_out_it_waits_a_moment() -> None:
    handed_out, telegram = HandedOut(), FakeUpdates(3)
    assert await poll(handed_out, telegram, None) == [3]
    assert await poll(handed_out, telegram, 4) == []  # 3 again, left out; after a moment
    assert telegram.asked == [(None, 10), (3, 0)]
    handed_out.handled(3)  # a command answered: its handling is over
    assert await poll(handed_out, telegram, 4) == []
    assert telegram.asked[-1] == (4, 10) and telegram.kept == []


async def test_an_update_stuck_without_storing_anything_is_confirmed_in_the_end() -> None:
    now = [0.0]
    handed_out, telegram = HandedOut(clock=lambda: now[0]), FakeUpdates(5)
    assert await poll(handed_out, telegram, None) == [5]
    now[0] = 61.0
    assert await poll(handed_out, telegram, 6) == []
    assert telegram.asked[-1] == (6, 10)


async def test_updates_stored_a_moment_after_they_are_handed_out_are_not_asked_again() -> None:
    """aiogram asks for more before the handlers have run: getUpdates gives them a moment
    rather than fetch and parse the same updates again."""
    handed_out, telegram = HandedOut(), FakeUpdates(3)
    assert await poll(handed_out, telegram, None) == [3]
    asyncio.get_running_loop().call_soon(handed_out.handled, 3)  # its handler stores it
    assert await poll(handed_out, telegram, 4) == []
    assert telegram.asked == [(None, 10), (4, 10)]


async def test_a_failed_ask_again_leaves_the_unsecured_update_unconfirmed() -> None:
    """Telegram's error on the ask from the oldest unsecured update goes to aiogram (which
    backs off and asks again); the update is still asked for from then on."""
    handed_out, telegram = HandedOut(), FakeUpdates(3)
    assert await poll(handed_out, telegram, None) == [3]

    async def unreachable(bot: Bot, method: Any) -> Any:
        raise ConnectionError("Telegram is down")

    with pytest.raises(ConnectionError):
        await handed_out(unreachable, NO_BOT, GetUpdates(offset=4, timeout=10))
    assert await poll(handed_out, telegram, 4) == []
    assert telegram.asked[-1] == (3, 0) and telegram.kept == [3]
