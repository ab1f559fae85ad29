"""How a test wires the bot, and the pieces the tests (and tests/soak.py) share.

- `built_app` is the one wiring of the real Dispatcher for tests: the Bot API session
  (a `WireSession` by default, which encodes calls like the real one and can drop them),
  the chatinfo client (or options for it: a short timeout, tight rate limits), the polling
  policy, the token, the key, settings. The `make_app` and `app` fixtures
  (tests/conftest.py) are it on a plain recording session with an empty database.
- `FakeTelegram` is the fake Bot API server with the one method it lacks.
- `seed_solve_history` gives a real bot process a past, so it polls at once.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiogram import Bot, Dispatcher
from aiogram.exceptions import TelegramAPIError, TelegramNetworkError
from aiogram.methods import TelegramMethod
from aiogram.methods.base import TelegramType
from aiogram.types import Update

from bot.app.wiring import Application, make_application
from bot.config import Settings
from bot.jobs.conversation import HEADER, NOW
from bot.jobs.poll_scheduler import PollTiming
from bot.jobs.runner import JobRunner, RunnerPolicy
from bot.telegram.i18n import make_i18n
from bot.upstream.client import ChatinfoClient
from bot.upstream.sandbox import FakeChatinfo
from storage.db import Database, open_database
from storage.jobs import JobRepo
from storage.users import UserRepo
from tests.fakes.mocked_bot import BOT_ID, M, RecordingSession
from tests.fakes.telegram_api import FakeTelegramAPI

TOKEN = f"{BOT_ID}:TEST-TOKEN"
KEY = "test-key"
_update_ids = itertools.count(1)
# The client's rate window in tests, as the server's 60 s would be: after a 429 the create
# queue waits for the window to clear, which must not take a minute here.
TEST_WINDOW = 2.0
# Tests' answers come in a fraction of a second; so does the first poll.
FAST_POLLS = RunnerPolicy(max_wait=30.0, timing=PollTiming(min_gap=0.02, max_gap=0.05),
                          prior=(0.05, 0.1, 0.2), balance_check_grace=0.05, late_wait=0.5,
                          create_settles_after=0.3, verdict_patience=1.0)


def asked(content: str) -> str:
    """The new message of a request's content, without the conversation it carries: for
    tests about something else, whose messages follow each other in a mode that remembers."""
    return content.rpartition(NOW)[2] if content.startswith(HEADER) else content


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


AppFactory = Callable[..., Awaitable[App]]  # the make_app fixture: built_app's options


class WireSession(RecordingSession):
    """A recording session that also encodes each call the way the aiohttp session would,
    so text Telegram could never receive (a lone surrogate) fails here as it would there,
    and that can fail a method with a network error (which `fail_next` cannot)."""

    def __init__(self) -> None:
        super().__init__()
        self._network_failures: list[type[TelegramMethod[Any]]] = []
        self.failed: list[TelegramMethod[Any]] = []  # requests answered with an error

    def delivered(self, method: type[M]) -> list[M]:
        """Requests of `method` that Telegram accepted (`sent` also lists refused ones)."""
        return [request for request in self.sent(method)
                if not any(request is failed for failed in self.failed)]

    def fail_network_next(self, method: type[TelegramMethod[Any]], times: int = 1) -> None:
        self._network_failures.extend([method] * times)

    def wire_fields(self, bot: Bot, method: TelegramMethod[Any]) -> dict[str, str]:
        """The form fields the aiohttp session would post for `method`."""
        fields = {}
        for name, value in method.model_dump(warnings=False).items():
            prepared = self.prepare_value(value, bot=bot, files={})
            if prepared is not None:
                fields[name] = str(prepared)
        return fields

    async def make_request(self, bot: Bot, method: TelegramMethod[TelegramType],
                           timeout: int | None = None) -> TelegramType:
        for value in self.wire_fields(bot, method).values():
            value.encode("utf-8")  # what aiohttp does to every form field
        failing = next((m for m in self._network_failures if isinstance(method, m)), None)
        if failing is not None:
            self._network_failures.remove(failing)
            self.requests.append(method)
            self.failed.append(method)
            raise TelegramNetworkError(method=method, message="ServerDisconnectedError: "
                                                              "Server disconnected")
        try:
            return await super().make_request(bot, method, timeout)
        except TelegramAPIError:
            self.failed.append(method)
            raise


@asynccontextmanager
async def built_app(
    tmp_path: Path, chatinfo: FakeChatinfo, *, session: RecordingSession | None = None,
    client: ChatinfoClient | None = None, client_options: dict[str, Any] | None = None,
    policy: RunnerPolicy = FAST_POLLS, token: str = TOKEN, key: str = KEY,
    history: bool = True, **settings: Any,
) -> AsyncIterator[App]:
    """The app on `session` (a WireSession by default) and `client` (closed afterwards; by
    default the wiring's for `chatinfo`, with `client_options`), with `settings` overridden.

    With `history`, the database starts with SEED_USER's answered jobs and the runner has
    learned from them, as after a start: new jobs are polled within a fraction of a second.
    """
    database = tmp_path / "bot.sqlite3"
    if history:
        await seed_solve_history(database)
    db = await open_database(database)
    session = session or WireSession()
    bot = Bot(token, session=session)
    options: dict[str, Any] = {"bot_token": token, "chatinfo_api_key": key,
                               "chatinfo_base_url": chatinfo.base_url,
                               "database_path": database, **settings}
    application = make_application(
        bot, db, make_i18n(), Settings(**options), client=client, policy=policy,
        client_options={"backoff": 0.01, "window": TEST_WINDOW, **(client_options or {})})
    application.runner.workers.start()  # as the first job used to; the rest is the test's
    if history:
        await application.runner.resume()
    try:
        yield App(application, bot, session, db, chatinfo)
    finally:
        await application.dp["broadcaster"].stop()
        await application.services.stop()
        await application.pool.close()
        await db.close()


async def wait_until(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Poll `condition` every 20 ms until it holds; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


FakeTelegram = FakeTelegramAPI  # the name the fault tests use


# The bot polls a new job first when answers are likely due, learned from earlier answers;
# a fresh install guesses from a prior and first polls after seconds. A bot that has
# answered before knows answers come fast, so tests starting the real process need not
# wait. Seconds from create to answer: mostly under 1.5 s, a few slower; 30 of them, more
# than the scheduler needs before it trusts what it learned.
ANSWERED_AFTER = (*(0.3 + 0.05 * n for n in range(24)), 2.0, 2.5, 3.0, 4.0, 5.0, 6.0)
SEEDED = len(ANSWERED_AFTER)  # delivered jobs seed_solve_history adds
SEED_USER = 1  # whose they are


async def seed_solve_history(database: Path) -> None:
    """Delivered jobs from an earlier life of the bot (SEED_USER's), answered after
    ANSWERED_AFTER seconds, so its first polls come after a fraction of a second."""
    database.parent.mkdir(parents=True, exist_ok=True)
    db = await open_database(database)
    try:
        await UserRepo(db).touch(SEED_USER, "en")
        jobs = JobRepo(db)
        for n, seconds in enumerate(ANSWERED_AFTER):
            # Contents of one length: the times depend on nothing but chance.
            job_id = await jobs.add(user_id=SEED_USER, chat_id=SEED_USER, source_message_id=n,
                                    locale="en", mode="chat", content=f"earlier {n:03d}")
            assert job_id is not None
            await jobs.set_upstream(job_id, 10_000 + n, None)
            await jobs.set_result(job_id, "earlier answer")
            await jobs.mark_delivered(job_id, 1)
            await db.execute("UPDATE jobs SET answered_at = upstream_at + ? WHERE id = ?",
                             (seconds, job_id))
        await db.commit()
    finally:
        await db.close()
