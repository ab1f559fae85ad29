"""The bot token and the API key never reach a log line or a chat, on error paths too.

tests/test_e2e.py checks a clean conversation and tests/test_chatinfo_client.py the
client's own exceptions. Here: the handlers and the runner through failures of every
kind (raw log records, before any redaction), and the real process on paths where a
library's exception carries the token in a URL, with a key-echoing upstream error.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiogram.methods import EditMessageText, SendMessage
from aiohttp import web

from bot.upstream.sandbox import FakeChatinfo, Fault, standard_faults
from tests.botprocess import BOT_TOKEN, BotProcess
from tests.fakes.telegram_api import message_update
from tests.harness import (
    SEEDED,
    App,
    FakeTelegram,
    WireSession,
    built_app,
    seed_solve_history,
    wait_until,
)

TOKEN = "424242:TOKEN-secret-zq9Wx7Lp"
KEY = "KEY-secret-mv3Rt8Yb"
ADMIN = 900


def leaks(text: str, *secrets: str) -> list[str]:
    return [secret for secret in secrets if secret in text]


def record_text(record: logging.LogRecord) -> str:
    """All a handler could print of a record: message, arguments, `extra` fields, traceback."""
    parts = [record.getMessage(), repr(record.args),
             repr({name: value for name, value in vars(record).items() if name != "exc_info"})]
    if record.exc_info:
        parts.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(parts)


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    async with (FakeChatinfo({KEY: "prestige"}, solve_time=0.0) as chatinfo,
                built_app(tmp_path, chatinfo, token=TOKEN, key=KEY,
                          admin_ids=str(ADMIN)) as wired):
        yield wired


async def test_failures_of_every_kind_log_and_send_no_secret(
        app: App, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    chatinfo, session = app.chatinfo, app.session
    assert isinstance(session, WireSession)
    for fault in (Fault.http(500, "boom"), Fault.disconnect(), Fault.truncated(),
                  Fault.slow(0.0), Fault.rate_limited()):
        chatinfo.inject("create_request", fault)
    chatinfo.inject("get_response", Fault.not_found(), times=2)
    chatinfo.inject("get_response", Fault.disconnect())
    chatinfo.inject("units", Fault.http(502), times=3)
    session.fail_network_next(EditMessageText)
    session.fail_next(SendMessage, 429, "Too Many Requests: retry after 1", retry_after=1)
    session.fail_next(SendMessage, 400, "Bad Request: chat not found")
    for n in range(8):
        await app.feed(message_update(100 + n, f"question {n}"))
    await app.feed(message_update(ADMIN, "/units"))  # the balance, from a failing endpoint
    await wait_until(lambda: app.runner.active == 0, timeout=20, what="jobs to end")
    chatinfo.keys[KEY] = "free"  # then the key is refused
    await app.feed(message_update(108, "refused"))
    await app.feed(message_update(ADMIN, "/units"))
    await wait_until(lambda: app.runner.active == 0, timeout=20, what="jobs to end")

    assert any(r.levelno >= logging.WARNING for r in caplog.records)  # the faults were hit
    for record in caplog.records:
        assert leaks(record_text(record), TOKEN, KEY) == [], record_text(record)
    for method in session.requests:
        assert leaks(repr(session.wire_fields(app.bot, method)), TOKEN, KEY) == [], method


class RedirectingTelegram(FakeTelegram):
    """Sends the bot's first getUpdates round in circles, until aiohttp gives up with
    TooManyRedirects, whose message holds the request URL and so the bot token."""

    def __init__(self, valid_token: str) -> None:
        super().__init__(valid_token)
        self.redirects_left = 11  # aiohttp follows 10

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.redirects_left and request.match_info["method"].lower() == "getupdates":
            self.redirects_left -= 1
            raise web.HTTPFound(request.path_qs)
        return await super()._handle(request)


async def test_error_paths_of_the_real_process_print_no_secret(tmp_path: Path) -> None:
    echoed = Fault(status=403, content_type="application/json",
                   body=f'{{"success": false, "error": "Неверный ключ {KEY}"}}')
    async with (FakeChatinfo({KEY: "prestige"}, solve_time=0.1) as chatinfo,
                RedirectingTelegram(valid_token=BOT_TOKEN) as telegram):
        chatinfo.inject("create_request", echoed)  # an upstream error quoting our key
        chatinfo.inject_random(standard_faults(slow_delay=0.2), rate=0.3, seed=5)
        bot = BotProcess(tmp_path, {"CHATINFO_API_KEY": KEY, "LOG_LEVEL": "DEBUG",
                                    "CHATINFO_BASE_URL": chatinfo.base_url,
                                    "TELEGRAM_API_URL": telegram.base_url})
        telegram.inject_disconnect("editMessageText")
        await seed_solve_history(bot.database)
        await bot.start()
        try:
            for n in range(4):
                telegram.push_update(message_update(300 + n, f"question {n}"))
            await telegram.wait_for(
                lambda: sum(bot.count_jobs(s) for s in ("delivered", "failed", "unknown"))
                == 4 + SEEDED,
                timeout=40)
        finally:
            assert await bot.stop(signal.SIGTERM) == 0
    log = bot.stderr.decode()
    assert "TooManyRedirects" in log  # the URL-carrying error was logged (redacted)
    assert "access_denied" in log  # so was the key-quoting upstream error
    assert leaks(log, BOT_TOKEN, KEY) == []
    for call in telegram.calls:
        assert leaks(repr(call.params), BOT_TOKEN, KEY) == [], call


async def test_a_token_telegram_rejects_stops_the_bot_without_printing_it(
        tmp_path: Path) -> None:
    async with (FakeChatinfo({KEY: "prestige"}) as chatinfo,
                FakeTelegram(valid_token="1:SOME-OTHER-TOKEN") as telegram):
        bot = BotProcess(tmp_path, {"CHATINFO_API_KEY": KEY, "LOG_LEVEL": "DEBUG",
                                    "CHATINFO_BASE_URL": chatinfo.base_url,
                                    "TELEGRAM_API_URL": telegram.base_url})
        await bot.start()
        assert bot.process is not None
        try:  # it must stop by itself
            _, stderr = await asyncio.wait_for(bot.process.communicate(), timeout=30)
        finally:
            if bot.process.returncode is None:
                await bot.stop(signal.SIGKILL)
    assert bot.process.returncode not in (0, None)
    assert leaks(stderr.decode(), BOT_TOKEN, KEY) == []
    assert stderr.decode().strip().splitlines()[-1] == (
        "startup error: Telegram rejected the bot token (BOT_TOKEN)")
    assert "Traceback" not in stderr.decode()
