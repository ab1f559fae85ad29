"""The real bot process against a fake chatinfo server and a fake Telegram Bot API server."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.sandbox import FakeChatinfo
from tests.botprocess import BOT_TOKEN, BotProcess
from tests.fakes.telegram_api import Call, FakeTelegramAPI, callback_update, message_update

API_KEY = "e2e-KEY-do-not-leak"


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegramAPI]:
    async with FakeTelegramAPI(valid_token=BOT_TOKEN) as server:
        yield server


def bot_process(tmp_path: Path, chatinfo: FakeChatinfo, telegram: FakeTelegramAPI) -> BotProcess:
    return BotProcess(tmp_path, {"CHATINFO_API_KEY": API_KEY,
                                 "CHATINFO_BASE_URL": chatinfo.base_url,
                                 "TELEGRAM_API_URL": telegram.base_url})


def answers(telegram: FakeTelegramAPI, prefix: str) -> list[Call]:
    return [call for call in telegram.calls_of("editMessageText")
            if not call.failed and str(call.params.get("text", "")).startswith(prefix)]


async def test_conversation_then_clean_shutdown(tmp_path: Path, telegram: FakeTelegramAPI) -> None:
    async with FakeChatinfo(keys={API_KEY: "prestige"}, solve_time=0.5) as chatinfo:
        bot = bot_process(tmp_path, chatinfo, telegram)
        await bot.start()
        try:
            telegram.push_update(message_update(501, "/start", language_code="en"))
            [greeting] = await telegram.wait_calls("sendMessage", 1, timeout=20)
            assert str(greeting.params["text"]).startswith("👋 Hi!")
            assert greeting.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == (
                "mode:chat")

            telegram.push_update(callback_update(501, "mode:poems", message_id=1000))
            [ack] = await telegram.wait_calls("answerCallbackQuery", 1)
            assert ack.params["text"] == "Mode: Poems"

            telegram.push_update(message_update(501, "a cat on the roof"))
            await telegram.wait_for(lambda: len(answers(telegram, "[poems]")) == 1)
            placeholder = telegram.calls_of("sendMessage")[1]
            assert placeholder.params["text"] == "⏳ Working on it…"
            [answer] = answers(telegram, "[poems]")
            assert answer.params["text"] == "[poems] a cat on the roof"
            assert answer.params["message_id"] == 1001
            assert telegram.calls_of("sendChatAction")
            assert chatinfo.calls["create_request"] == 1
        finally:
            code = await bot.stop(signal.SIGTERM)
        assert code == 0
        log = bot.stderr.decode()
        assert "Task was destroyed" not in log and "Traceback" not in log
        for secret in (BOT_TOKEN, API_KEY):
            assert secret not in log
            assert all(secret not in str(call.params) for call in telegram.calls)


async def test_sigkill_with_pending_jobs_then_restart_delivers_each_once(
    tmp_path: Path, telegram: FakeTelegramAPI,
) -> None:
    async with FakeChatinfo(keys={API_KEY: "prestige"}, solve_time=3.0) as chatinfo:
        first = bot_process(tmp_path, chatinfo, telegram)
        await first.start()
        texts = [f"question {n}" for n in range(6)]
        for n, text in enumerate(texts):
            telegram.push_update(message_update(600 + n % 3, text))
        await telegram.wait_for(lambda: first.count_jobs("pending") == len(texts), timeout=20)
        assert await first.stop(signal.SIGKILL) == -signal.SIGKILL
        assert answers(telegram, "[chat]") == []

        second = bot_process(tmp_path, chatinfo, telegram)
        await second.start()
        try:
            await telegram.wait_for(lambda: second.count_jobs("delivered") == len(texts),
                                    timeout=30)
        finally:
            assert await second.stop() == 0

    delivered = answers(telegram, "[chat]")
    assert sorted(str(call.params["text"]) for call in delivered) == sorted(
        f"[chat] {text}" for text in texts)
    edited = {(call.params["chat_id"], call.params["message_id"]) for call in delivered}
    assert len(edited) == len(texts)  # each placeholder edited once, none twice
    assert chatinfo.calls["create_request"] == len(texts)
    placeholders = [c for c in telegram.calls_of("sendMessage") if not c.failed]
    assert len(placeholders) == len(texts)
