"""The bot's web server: `/healthz` and `/metrics` in both modes, plus the webhook path
when `WEBHOOK_URL` is set."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from aiogram import Bot, Dispatcher
from aiogram.webhook.aiohttp_server import SimpleRequestHandler
from aiohttp import web
from aiohttp.typedefs import Handler

from bot.ops.health import HealthCheck, is_healthy
from bot.ops.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)
# Long enough for an update's handler to finish, short enough for a 10-second stop.
SHUTDOWN_TIMEOUT = 3.0


class WebServerError(Exception):
    """The web server cannot listen where it was told to."""


@dataclass(frozen=True)
class Webhook:
    path: str
    secret: str


def make_web_app(health: HealthCheck, metrics: Metrics, *, dp: Dispatcher | None = None,
                 bot: Bot | None = None, webhook: Webhook | None = None) -> web.Application:
    app = web.Application()
    app.router.add_get("/healthz", _healthz_handler(health))
    app.router.add_get("/metrics", _metrics_handler(metrics))
    if webhook is not None:
        assert dp is not None and bot is not None, "a webhook needs the dispatcher and the bot"
        # Answered only once the update is handled, so a stopping server waits for it;
        # a wrong or missing X-Telegram-Bot-Api-Secret-Token header gets 401.
        updates = SimpleRequestHandler(dp, bot, handle_in_background=False,
                                       secret_token=webhook.secret)
        # Not updates.register(): that would close the bot's session as the server stops,
        # before the job runner's last Telegram calls.
        app.router.add_post(webhook.path, updates.handle)
    return app


def _healthz_handler(health: HealthCheck) -> Handler:
    async def healthz(request: web.Request) -> web.Response:
        verdicts = await health.run()
        healthy = is_healthy(verdicts)
        if not healthy:
            log.warning("health check failing: %s", verdicts)
        return web.json_response({"status": "ok" if healthy else "failing", "checks": verdicts},
                                 status=200 if healthy else 503)

    return healthz


def _metrics_handler(metrics: Metrics) -> Handler:
    async def metrics_page(request: web.Request) -> web.Response:
        response = web.Response(body=await metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    return metrics_page


class WebServer:
    def __init__(self, app: web.Application, host: str, port: int) -> None:
        # access_log=None: a health check every 30 s would fill the log.
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None,
                                     shutdown_timeout=SHUTDOWN_TIMEOUT)
        self._host = host
        self._port = port
        self._listening = False

    @property
    def port(self) -> int:
        """The port listened on (the one picked, when started with port 0)."""
        return int(self._runner.addresses[0][1])

    async def start(self) -> None:
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self._host, self._port).start()
        except OSError as error:
            await self._runner.cleanup()
            # asyncio's message repeats the address; the errno's text says it plainly.
            reason = os.strerror(error.errno) if error.errno else str(error)
            message = f"cannot listen on {self._host}:{self._port}: {reason}"
            raise WebServerError(message) from None
        self._listening = True
        log.info("web server on %s:%d (/healthz, /metrics)", self._host, self.port)

    async def stop(self) -> None:
        """Stop listening, then wait up to SHUTDOWN_TIMEOUT for requests in progress."""
        if self._listening:
            self._listening = False
            await self._runner.cleanup()

