"""`python -m bot --sandbox`: the real process with no API key, against the fake Bot API only;
the fake chatinfo server runs inside it."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

from tests.botprocess import BOT_TOKEN, BotProcess
from tests.fakes.telegram_api import FakeTelegramAPI, message_update

ADMIN = 601
USER = 602
SANDBOX_LINE = "🧪 Sandbox: the answers come from the built-in fake chatinfo server"


def texts(telegram: FakeTelegramAPI, method: str, chat_id: int) -> list[str]:
    return [str(c.params["text"]) for c in telegram.calls_of(method)
            if not c.failed and c.params.get("chat_id") == chat_id]


async def test_the_sandbox_answers_with_no_api_key(tmp_path: Path) -> None:
    async with FakeTelegramAPI(valid_token=BOT_TOKEN) as telegram:
        # No CHATINFO_API_KEY, no CHATINFO_BASE_URL: a BotFather token is all it needs.
        bot = BotProcess(tmp_path, {"TELEGRAM_API_URL": telegram.base_url,
                                    "ADMIN_IDS": str(ADMIN)}, args=("--sandbox",))
        await bot.start()
        try:
            telegram.push_update(message_update(ADMIN, "/start"))
            telegram.push_update(message_update(USER, "/start"))
            await telegram.wait_for(lambda: bool(texts(telegram, "sendMessage", USER)), 30)
            [admin_greeting] = texts(telegram, "sendMessage", ADMIN)
            assert admin_greeting.startswith("👋 Hi!") and SANDBOX_LINE in admin_greeting
            assert SANDBOX_LINE not in texts(telegram, "sendMessage", USER)[0]

            telegram.push_update(message_update(USER, "hello sandbox"))
            await telegram.wait_for(
                lambda: "[chat] hello sandbox" in texts(telegram, "editMessageText", USER), 30)
        finally:
            assert await bot.stop(signal.SIGTERM) == 0
    log = bot.stderr.decode()
    assert "SANDBOX MODE: answers come from the built-in fake chatinfo server" in log
    assert "Traceback" not in log
    # Its own database: nothing mixes with the real API's jobs and balance.
    assert not bot.database.exists()
    sandbox_database = bot.database.with_name("bot-sandbox.sqlite3")
    with sqlite3.connect(sandbox_database) as db:
        [(state,)] = db.execute("SELECT state FROM jobs WHERE user_id = ?", (USER,)).fetchall()
    assert state == "delivered"
