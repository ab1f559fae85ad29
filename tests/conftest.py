"""Shared fixtures: the fake chatinfo server and the bot's Dispatcher on a recording session."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiogram import Bot, Dispatcher
from aiogram.methods import TelegramMethod
from aiogram.types import Update

from bot.app.wiring import Application, make_application
from bot.config import Settings
from bot.jobs.conversation import HEADER, NOW
from bot.jobs.poll_scheduler import PollTiming
from bot.jobs.runner import JobRunner, RunnerPolicy
from bot.telegram.i18n import make_i18n
from bot.upstream.sandbox import FakeChatinfo
from storage.db import Database, open_database
from storage.jobs import JobRepo
from tests.fakes.mocked_bot import RecordingSession, mocked_bot

_update_ids = itertools.count(1)
# The client's rate window in tests, as the server's 60 s would be: after a 429 the create
# queue waits for the window to clear, which must not take a minute here.
TEST_WINDOW = 2.0
# Tests' answers come in a fraction of a second; so does the first poll.
FAST_POLLS = RunnerPolicy(max_wait=30.0, timing=PollTiming(min_gap=0.02, max_gap=0.05),
                          prior=(0.05, 0.1, 0.2), balance_check_grace=0.05, late_wait=0.5,
                          create_settles_after=0.3)


def asked(content: str) -> str:
    """The new message of a request's content, without the conversation it carries: for
    tests about something else, whose messages follow each other in a mode that remembers."""
    return content.rpartition(NOW)[2] if content.startswith(HEADER) else content


@pytest.fixture
async def chatinfo() -> AsyncIterator[FakeChatinfo]:
    async with FakeChatinfo(solve_time=0.1) as server:
        yield server


@dataclass
class App:
    """The bot as handlers see it, wired exactly as in production. Its job workers run,
    as after a start; the rest of the start (jobs resumed, the units refresher, command
    menus) is the test's to do: `runner.resume()`, `dp.emit_startup(...)`."""

    application: Application
    bot: Bot
    session: RecordingSession
    db: Database
    chatinfo: FakeChatinfo

    @property
    def dp(self) -> Dispatcher:
        return self.application.dp

    @property
    def runner(self) -> JobRunner:
        return self.application.runner

    @property
    def jobs(self) -> JobRepo:
        jobs: JobRepo = self.dp["jobs"]
        return jobs

    async def feed(self, update: dict[str, Any]) -> None:
        update = {"update_id": next(_update_ids), **update}
        parsed = Update.model_validate(update, context={"bot": self.bot})
        await self.dp.feed_update(self.bot, parsed)

    def sent(self, method: type[TelegramMethod[Any]]) -> list[Any]:
        return self.session.sent(method)

    async def settle(self) -> None:
        """Wait until every job the runner started has finished."""
        assert await self.runner.wait_idle(10.0), "jobs still running after 10 s"


AppFactory = Callable[..., Awaitable[App]]


@pytest.fixture
async def make_app(tmp_path: Path, chatinfo: FakeChatinfo) -> AsyncIterator[AppFactory]:
    """Builds the app with settings overridden as a test needs (once per test)."""
    cleanups: list[Callable[[], Awaitable[None]]] = []

    async def build(policy: RunnerPolicy = FAST_POLLS, client_options: dict[str, Any] | None = None,
                    **overrides: Any) -> App:
        db = await open_database(tmp_path / "bot.sqlite3")
        bot, session = mocked_bot()
        settings = Settings(bot_token="42:TEST-TOKEN", chatinfo_api_key="test-key",
                            chatinfo_base_url=chatinfo.base_url,
                            database_path=tmp_path / "bot.sqlite3", **overrides)
        application = make_application(
            bot, db, make_i18n(), settings, policy=policy,
            client_options={"backoff": 0.01, "window": TEST_WINDOW, **(client_options or {})})
        application.runner.workers.start()

        async def cleanup() -> None:
            await application.services.stop()
            await application.upstream.close()
            await db.close()

        cleanups.append(cleanup)
        return App(application, bot, session, db, chatinfo)

    yield build
    for cleanup in cleanups:
        await cleanup()


@pytest.fixture
async def app(make_app: AppFactory) -> App:
    return await make_app()
