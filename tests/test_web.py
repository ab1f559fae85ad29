"""/healthz and /metrics on the bot's web app, around the real Dispatcher."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiogram.methods import SendMessage
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from bot.ops.health import Heartbeat, Unhealthy
from bot.ops.metrics import Metrics
from bot.ops.web import make_web_app
from bot.upstream.account import Upstream
from bot.upstream.sandbox import TOO_MANY_BODY, Fault
from tests.fakes.telegram_api import message_update
from tests.harness import App

Labels = frozenset[tuple[str, str]]


@dataclass
class Served:
    app: App
    http: TestClient[web.Request, web.Application]
    metrics: Metrics

    @property
    def tracker(self) -> Upstream:
        return self.app.application.upstream

    async def health(self) -> tuple[int, dict[str, str]]:
        reply = await self.http.get("/healthz")
        body = json.loads(await reply.text())
        return reply.status, body["checks"]

    async def samples(self) -> dict[str, dict[Labels, float]]:
        reply = await self.http.get("/metrics")
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        found: dict[str, dict[Labels, float]] = {}
        for family in text_string_to_metric_families(await reply.text()):
            for sample in family.samples:
                found.setdefault(sample.name, {})[frozenset(sample.labels.items())] = (
                    sample.value)
        return found


@pytest.fixture
async def served(app: App) -> AsyncIterator[Served]:
    metrics, health = app.application.metrics, app.application.health
    async with TestClient(TestServer(make_web_app(health, metrics))) as http:
        # As at start: the background services start, jobs resume.
        await app.dp.emit_startup(bot=app.bot, **app.dp.workflow_data)
        try:
            yield Served(app, http, metrics)
        finally:
            await app.dp.emit_shutdown(bot=app.bot, **app.dp.workflow_data)


async def test_healthz_is_200_when_loop_database_and_workers_are_alive(served: Served) -> None:
    status, checks = await served.health()

    assert status == 200
    assert checks == {"event_loop": "ok", "database": "ok", "units_refresher": "ok",
                      "job_workers": "ok"}


async def test_healthz_is_503_naming_the_database_when_it_is_closed(served: Served) -> None:
    await served.app.db.close()

    status, checks = await served.health()

    assert status == 503
    assert checks["database"] != "ok"
    assert checks["event_loop"] == checks["units_refresher"] == "ok"


async def test_healthz_is_503_when_a_background_worker_is_gone(served: Served) -> None:
    await served.tracker.stop()

    status, checks = await served.health()

    assert status == 503
    assert checks["units_refresher"] == "units-refresher is not running"


async def test_healthz_is_503_when_the_poll_scheduler_died(served: Served) -> None:
    await served.app.feed(message_update(31, "hello"))  # starts the job workers
    await served.app.settle()
    await served.app.runner.scheduler.stop()

    status, checks = await served.health()

    assert status == 503
    assert checks["job_workers"] == "the poll scheduler or the create queue has stopped"


async def test_heartbeat_reports_a_stalled_loop() -> None:
    now = [100.0]
    heartbeat = Heartbeat(stale_after=5.0, clock=lambda: now[0])
    with pytest.raises(Unhealthy, match="not running"):
        await heartbeat.probe()
    heartbeat.start()
    try:
        await heartbeat.probe()
        now[0] += 6.0  # as if the loop had been blocked for 6 s since the last tick
        with pytest.raises(Unhealthy, match=r"no heartbeat for 6\.0s"):
            await heartbeat.probe()
    finally:
        await heartbeat.stop()


async def test_metrics_after_traffic_have_their_names_and_labels(served: Served) -> None:
    app = served.app
    app.chatinfo.inject("create_request", Fault.http(429, TOO_MANY_BODY))  # queued, not spent
    await app.feed(message_update(11, "hello"))
    await app.settle()
    app.session.fail_next(SendMessage, 403, "Forbidden: bot was blocked by the user")
    await app.feed(message_update(12, "/start"))

    samples = await served.samples()

    def value(name: str, **labels: str) -> float:
        return samples[name][frozenset(labels.items())]

    assert value("chatinfo_bot_requests_total", mode="chat", outcome="delivered") == 1
    assert value("chatinfo_bot_jobs_in_progress", state="new") == 0
    assert set(samples["chatinfo_bot_jobs_in_progress"]) == {
        frozenset({("state", state)}) for state in ("new", "creating", "pending", "answered")}
    assert value("chatinfo_bot_upstream_requests_total", endpoint="create_request",
                 status="429") == 1
    assert value("chatinfo_bot_upstream_requests_total", endpoint="create_request",
                 status="200") == 1
    assert value("chatinfo_bot_upstream_rate_limited_total", endpoint="create_request") == 1
    assert value("chatinfo_bot_upstream_rate_limited_total", endpoint="get_response") == 0
    assert value("chatinfo_bot_upstream_request_duration_seconds_count",
                 endpoint="create_request", status="200") == 1
    # After the 429 the queue waited for that call to leave the window before sending again.
    assert value("chatinfo_bot_rate_limit_used", endpoint="create_request") == 1
    assert value("chatinfo_bot_rate_limit_used", endpoint="get_response") >= 1
    assert value("chatinfo_bot_rate_limit", endpoint="get_response") == 15000
    assert value("chatinfo_bot_units_balance") == served.tracker.balance
    assert value("chatinfo_bot_reconciled_creates_total", verdict="unspent") == 0
    assert value("chatinfo_bot_telegram_errors_total", method="sendMessage",
                 kind="forbidden") == 1
    assert value("chatinfo_bot_telegram_requests_total", method="editMessageText") >= 1
    assert value("chatinfo_bot_answer_lag_seconds_count") == 1
    assert value("chatinfo_bot_time_to_answer_seconds_count") == 1
    assert value("chatinfo_bot_time_to_answer_seconds_bucket", le="+Inf") == 1
    assert value("chatinfo_bot_job_tasks") == 0
    assert value("chatinfo_bot_queued_jobs") == value("chatinfo_bot_polled_jobs") == 0
    assert value("chatinfo_bot_updates_info", source="polling") == 1
    assert "chatinfo_bot_event_loop_lag_seconds" in samples
    assert not [name for name in samples if name.endswith("_created")]


async def test_metrics_leave_out_job_counts_when_the_database_cannot_be_read(
    served: Served,
) -> None:
    served.app.dp["settings"].database_path.unlink()  # as if the volume went away

    samples = await served.samples()

    assert "chatinfo_bot_requests_total" not in samples
    assert "chatinfo_bot_rate_limit_used" in samples
