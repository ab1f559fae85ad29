from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramUnauthorizedError,
)
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup

from tests.fakes.telegram_api import (
    NOT_MODIFIED,
    FakeTelegramAPI,
    callback_update,
    message_update,
    photo_update,
    sticker_update,
)

TOKEN = "123456:TEST-token"


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegramAPI]:
    async with FakeTelegramAPI(valid_token=TOKEN) as server:
        yield server


@pytest.fixture
async def bot(tg: FakeTelegramAPI) -> AsyncIterator[Bot]:
    session = AiohttpSession(api=TelegramAPIServer.from_base(tg.base_url))
    async with Bot(TOKEN, session=session) as b:
        yield b


def _kb(label: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text=label, callback_data="x")]]
    )


async def test_get_me(bot: Bot) -> None:
    me = await bot.get_me()
    assert (me.id, me.is_bot, me.username) == (123456, True, "fake_bot")


async def test_send_and_edit_message(tg: FakeTelegramAPI, bot: Bot) -> None:
    sent = await bot.send_message(7, "hello", reply_markup=_kb("a"))
    assert sent.message_id == 1000 and sent.chat.type == "private" and sent.text == "hello"
    assert sent.reply_markup is not None
    assert sent.reply_markup.inline_keyboard[0][0].text == "a"
    assert (await bot.send_message(7, "again")).message_id == 1001

    [call, _] = tg.calls_of("SENDMESSAGE")
    assert call.method == "sendMessage" and call.params["chat_id"] == 7
    assert call.params["reply_markup"] == {
        "inline_keyboard": [[{"text": "a", "callback_data": "x"}]]
    }

    with pytest.raises(TelegramBadRequest, match="message is not modified"):
        await bot.edit_message_text("hello", chat_id=7, message_id=1000, reply_markup=_kb("a"))
    edited = await bot.edit_message_text("bye", chat_id=7, message_id=1000, reply_markup=_kb("a"))
    assert not isinstance(edited, bool) and edited.text == "bye"
    assert tg.messages[(7, 1000)]["text"] == "bye"

    with pytest.raises(TelegramBadRequest, match="message to edit not found"):
        await bot.edit_message_text("x", chat_id=7, message_id=5)
    assert await bot.delete_message(7, 1000)
    with pytest.raises(TelegramBadRequest, match="message to delete not found"):
        await bot.delete_message(7, 1000)
    assert [c.failed for c in tg.calls_of("editMessageText")] == [True, False, True]


async def test_get_updates_long_poll(tg: FakeTelegramAPI, bot: Bot) -> None:
    poll = asyncio.create_task(bot.get_updates(timeout=5))
    await tg.wait_calls("getUpdates", 1)
    pushed = tg.push_update(message_update(5, "/start"))
    [update] = await asyncio.wait_for(poll, 2)
    assert update.update_id == pushed["update_id"]
    assert update.message is not None and update.message.text == "/start"

    tg.push_update(callback_update(5, "pick:1", message_id=1000))
    tg.push_update(sticker_update(5))
    tg.push_update(photo_update(5, caption="cat"))
    updates = await bot.get_updates(offset=update.update_id + 1, timeout=1)
    assert [u.event_type for u in updates] == ["callback_query", "message", "message"]
    assert updates[1].message is not None and updates[1].message.sticker is not None
    assert updates[2].message is not None and updates[2].message.photo is not None
    assert [u["update_id"] for u in tg.updates] == [u.update_id for u in updates]

    started = time.monotonic()
    assert await bot.get_updates(offset=updates[-1].update_id + 1, timeout=1) == []
    assert 0.9 < time.monotonic() - started < 3


async def test_stop_ends_pending_long_poll() -> None:
    server = FakeTelegramAPI()
    url = await server.start()
    async with aiohttp.ClientSession() as http:
        poll = asyncio.create_task(
            http.post(f"{url}/bot{TOKEN}/getUpdates", data={"timeout": "30"})
        )
        await server.wait_calls("getUpdates", 1)
        started = time.monotonic()
        await server.stop()
        response = await asyncio.wait_for(poll, 5)
        assert await response.json() == {"ok": True, "result": []}
    assert time.monotonic() - started < 2


async def test_injected_errors(tg: FakeTelegramAPI, bot: Bot) -> None:
    tg.inject("sendMessage", status=429, description="Too Many Requests: retry after 3",
              retry_after=3)  # fmt: skip
    with pytest.raises(TelegramRetryAfter) as retry:
        await bot.send_message(1, "a")
    assert retry.value.retry_after == 3

    tg.inject("sendMessage", status=400, description="Bad Request: chat not found", chat_id=2)
    await bot.send_message(1, "unaffected chat")
    with pytest.raises(TelegramBadRequest, match="chat not found"):
        await bot.send_message(2, "b")
    await bot.send_message(2, "recovered")

    tg.inject_disconnect("sendMessage")
    with pytest.raises(TelegramNetworkError):
        await bot.send_message(1, "c")
    assert [c.failed for c in tg.calls_of("sendMessage")] == [True, False, True, False, True]
    assert len(await tg.wait_calls("sendMessage", 2, timeout=0.1)) == 2


async def test_unknown_method_bad_token_and_json_body(tg: FakeTelegramAPI) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{tg.base_url}/bot{TOKEN}/sendDice", json={"chat_id": 1}) as r:
            assert r.status == 404
            assert (await r.json())["description"] == "Not Found: method not found"
        async with http.get(f"{tg.base_url}/bot1:wrong/getMe") as r:
            assert r.status == 401
        url = f"{tg.base_url}/bot{TOKEN}/sendmessage?chat_id=-100"
        async with http.post(
            url, json={"text": "hi", "reply_markup": '{"inline_keyboard": []}'}
        ) as r:
            result = (await r.json())["result"]
    assert result["chat"] == {"id": -100, "type": "supergroup", "title": "Test Group"}
    assert tg.calls[-1].params == {
        "chat_id": -100,
        "text": "hi",
        "reply_markup": {"inline_keyboard": []},
    }
    with pytest.raises(AssertionError, match=r"sendDice \(failed\), getMe \(failed\), sendMessage"):
        await tg.wait_for(lambda: False, timeout=0.05)


async def test_aiogram_error_classes(tg: FakeTelegramAPI) -> None:
    session = AiohttpSession(api=TelegramAPIServer.from_base(tg.base_url))
    async with Bot("1:wrong", session=session) as wrong:
        with pytest.raises(TelegramUnauthorizedError):
            await wrong.get_me()
    tg.inject("getMe", status=404, description="Not Found")
    session = AiohttpSession(api=TelegramAPIServer.from_base(tg.base_url))
    async with Bot(TOKEN, session=session) as b:
        with pytest.raises(TelegramNotFound):
            await b.get_me()
    assert NOT_MODIFIED.startswith("Bad Request: message is not modified")


async def test_copies_are_counted_and_blocked_users_get_a_403(tg: FakeTelegramAPI,
                                                               bot: Bot) -> None:
    tg.blocked.add(8)
    copied = await bot.copy_message(7, from_chat_id=1, message_id=55)
    assert copied.message_id == 1000
    with pytest.raises(TelegramForbiddenError, match="bot was blocked by the user"):
        await bot.copy_message(8, from_chat_id=1, message_id=55)
    with pytest.raises(TelegramForbiddenError):
        await bot.send_message(8, "hello")
    await bot.copy_message(7, from_chat_id=1, message_id=55)
    assert tg.copies_of(1, 55) == {7: 2}


async def test_a_held_call_is_acted_on_only_if_its_caller_still_waits(
        tg: FakeTelegramAPI, bot: Bot) -> None:
    tg.hold("copyMessage", after=1)
    await bot.copy_message(7, from_chat_id=1, message_id=55)  # the one let through
    waiting = asyncio.create_task(bot.copy_message(8, from_chat_id=1, message_id=55))
    await tg.wait_for(lambda: len(tg.held) == 1)
    abandoned = asyncio.create_task(bot.copy_message(9, from_chat_id=1, message_id=55,
                                                     request_timeout=1))
    await tg.wait_for(lambda: len(tg.held) == 2)
    with pytest.raises(TelegramNetworkError):
        await abandoned  # the bot gave up on it: as if it had been killed
    await tg.wait_for(lambda: tg.abandoned() == 1)
    tg.release()
    assert (await waiting).message_id == 1000
    assert tg.copies_of(1, 55) == {7: 1, 8: 1}
