"""Running the bot until SIGTERM or SIGINT, by long polling or by webhook.

Both modes share one order:

    start: the web server (/healthz, /metrics), the dispatcher's startup (the background
           services start, jobs resume), then updates (getUpdates, or setWebhook). With a
           webhook the startup comes before the server, since the server then takes
           updates too.
    stop:  updates stop coming, the updates being handled finish, the dispatcher's
           shutdown (the services stop; the runner leaves its jobs in SQLite), the
           Telegram calls still in flight finish; then the caller closes the sessions and
           the database.

Every wait in the stop is bounded, to fit in the 10 s Docker gives before SIGKILL. A
second signal is left to Python's default and ends the process at once; the jobs in
SQLite still carry on at the next start.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, Protocol

from aiogram import BaseMiddleware, Bot, Dispatcher
from aiogram.client.session.middlewares.base import (
    BaseRequestMiddleware,
    NextRequestMiddlewareType,
)
from aiogram.dispatcher.event.handler import HandlerObject
from aiogram.exceptions import TelegramAPIError
from aiogram.methods import TelegramMethod
from aiogram.methods.base import Response, TelegramType
from aiogram.types import TelegramObject, Update

from bot.config import Settings
from bot.ops.health import HealthCheck, Probe, Unhealthy
from bot.ops.metrics import Metrics
from bot.ops.web import Webhook, WebServer, make_web_app
from bot.telegram.receipt import HandedOut, receipt
from bot.telegram.retries import with_retries

log = logging.getLogger(__name__)
UPDATES_GRACE = 3.0  # for updates being handled when the stop begins
CALLS_GRACE = 1.5  # for Telegram calls still in flight after the dispatcher's shutdown


class StartupError(Exception):
    """The bot cannot start serving (the port is taken, Telegram refused the webhook)."""


class InFlight:
    """Counts work in progress, so a stop can wait for it to finish."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextmanager
    def track(self) -> Iterator[None]:
        self.count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.count -= 1
            if self.count == 0:
                self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """True when nothing was left in progress within `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


class UpdatesInFlight(BaseMiddleware):
    """An outer middleware on `dp.update`: every update from receipt to handled."""

    def __init__(self, in_flight: InFlight, handed_out: HandedOut) -> None:
        self._in_flight = in_flight
        self._handed_out = handed_out

    async def __call__(self, handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
                       event: TelegramObject, data: dict[str, Any]) -> Any:
        update_id = event.update_id if isinstance(event, Update) else None
        try:
            with self._in_flight.track(), receipt(lambda: self._handed_out.handled(update_id)):
                return await handler(event, data)
        finally:
            self._handed_out.handled(update_id)


class CallsInFlight(BaseRequestMiddleware):
    """A session middleware: every Bot API call from sent to answered."""

    def __init__(self, in_flight: InFlight) -> None:
        self._in_flight = in_flight

    async def __call__(self, make_request: NextRequestMiddlewareType[TelegramType], bot: Bot,
                       method: TelegramMethod[TelegramType]) -> Response[TelegramType]:
        with self._in_flight.track():
            return await make_request(bot, method)


class Served(Protocol):
    """What serving needs of the built application (bot/app/wiring.py)."""

    @property
    def dp(self) -> Dispatcher: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def health(self) -> HealthCheck: ...


async def serve(settings: Settings, *, bot: Bot, app: Served) -> None:
    """Serve updates until a stop signal; the caller closes the clients and the database."""
    stop = _stop_on_signals()
    dp, health, metrics = app.dp, app.health, app.metrics
    updates, calls, handed_out = InFlight(), InFlight(), HandedOut()
    dp.update.outer_middleware(UpdatesInFlight(updates, handed_out))
    bot.session.middleware(CallsInFlight(calls))
    if settings.webhook_url is not None:
        assert settings.webhook_secret is not None, "Settings requires it with a webhook"
        webhook = Webhook(settings.webhook_path, settings.webhook_secret.get_secret_value())
        web_app = make_web_app(health, metrics, dp=dp, bot=bot, webhook=webhook)
        server = WebServer(web_app, settings.web_host, settings.web_port)
        await _serve_webhook(bot, dp, server, str(settings.webhook_url), webhook, stop,
                             updates)
    else:
        server = WebServer(make_web_app(health, metrics), settings.web_host, settings.web_port)
        await _serve_polling(bot, dp, server, health, stop, updates, handed_out)
    if not await calls.wait_idle(CALLS_GRACE):
        log.warning("%d Telegram call(s) still in flight at exit", calls.count)
    log.info("stopped")


async def _serve_polling(bot: Bot, dp: Dispatcher, server: WebServer, health: HealthCheck,
                         stop: asyncio.Event, updates: InFlight, handed_out: HandedOut) -> None:
    await server.start()
    try:
        # A webhook left from a run in webhook mode would make every getUpdates fail.
        await with_retries(lambda: bot.delete_webhook(drop_pending_updates=False))
        if stop.is_set():
            return
        bot.session.middleware(handed_out)
        # start_polling runs the dispatcher's shutdown as soon as polling ends; updates
        # still being handled get to finish first.
        dp.shutdown.handlers.insert(0, HandlerObject(_wait_for(updates, "update")))
        polling = asyncio.create_task(dp.start_polling(
            bot, handle_signals=False, close_bot_session=False,
            allowed_updates=dp.resolve_used_update_types()), name="polling")
        health.probes["polling"] = _polling_probe(polling)
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({polling, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not polling.done():
            await dp.stop_polling()
        await polling  # a failure of polling itself surfaces here
    finally:
        await server.stop()


async def _serve_webhook(bot: Bot, dp: Dispatcher, server: WebServer, url: str,
                         webhook: Webhook, stop: asyncio.Event, updates: InFlight) -> None:
    # What start_polling passes to the startup and shutdown hooks.
    workflow: dict[str, Any] = {"dispatcher": dp, "bots": (bot,), **dp.workflow_data}
    # Startup first: an update must not reach a handler before the runner resumed its jobs.
    await dp.emit_startup(bot=bot, **workflow)
    try:
        await server.start()
        try:
            await with_retries(lambda: bot.set_webhook(
                url, secret_token=webhook.secret,
                allowed_updates=dp.resolve_used_update_types(), drop_pending_updates=False))
        except TelegramAPIError as error:
            raise StartupError(f"Telegram refused the webhook {url}: {error.message}") from None
        log.info("taking updates by webhook at %s", url)
        await stop.wait()
    finally:
        # The webhook stays registered: Telegram keeps the updates until the next start.
        await server.stop()
        await _wait_for(updates, "update")()
        await dp.emit_shutdown(bot=bot, **workflow)


def _wait_for(in_flight: InFlight, what: str) -> Callable[[], Awaitable[None]]:
    async def wait() -> None:
        if not await in_flight.wait_idle(UPDATES_GRACE):
            log.warning("%d %s(s) still being handled at shutdown", in_flight.count, what)

    return wait


def _polling_probe(polling: asyncio.Task[None]) -> Probe:
    async def probe() -> None:
        if polling.done():
            raise Unhealthy("polling stopped")

    return probe


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def request_stop(sig: signal.Signals) -> None:
        log.info("received %s, stopping", sig.name)
        stop.set()
        for each in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(each)

    for sig in (signal.SIGTERM, signal.SIGINT):
        with suppress(NotImplementedError):  # no signal handlers on Windows' event loop
            loop.add_signal_handler(sig, request_stop, sig)
    return stop
