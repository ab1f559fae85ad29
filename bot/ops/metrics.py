"""Prometheus metrics for `GET /metrics`, on a registry of their own.

Two kinds of source:

- events counted as they happen: chatinfo calls (`UpstreamCalls`, the client's
  observer) and Telegram calls (a request middleware on the bot's session);
- state read when scraped: jobs from the database (storage/job_stats.py, in a worker thread),
  the rate limiters' windows, the unit balance, the runner's queues.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from aiogram import Bot
from aiogram.client.session.middlewares.base import (
    BaseRequestMiddleware,
    NextRequestMiddlewareType,
)
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramConflictError,
    TelegramEntityTooLarge,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.methods import TelegramMethod
from aiogram.methods.base import Response, TelegramType
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from bot.telegram.throttle import Pressure, PressureGauge
from bot.upstream.client import CREATE, POLL, UNITS
from storage.db import DatabaseError
from storage.job_stats import BucketCounts, JobStats, JobStatsReader

if TYPE_CHECKING:
    from bot.jobs.runner import JobRunner
    from bot.upstream.account import Upstream
    from bot.upstream.pool import UpstreamPool

log = logging.getLogger(__name__)
# A `_created` series beside every counter doubles the page and tells nothing a restart
# would not; the setting is process-wide, and this process is the bot.
disable_created_metrics()  # type: ignore[no-untyped-call]

PREFIX = "chatinfo_bot"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ENDPOINTS = (CREATE, POLL, UNITS)
UPSTREAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0)
# Most specific first: TelegramEntityTooLarge is a TelegramNetworkError, and so on.
TELEGRAM_ERROR_KINDS: tuple[tuple[type[TelegramAPIError], str], ...] = (
    (TelegramRetryAfter, "retry_after"),
    (TelegramMigrateToChat, "migrate_to_chat"),
    (TelegramNotFound, "not_found"),
    (TelegramBadRequest, "bad_request"),
    (TelegramForbiddenError, "forbidden"),
    (TelegramUnauthorizedError, "unauthorized"),
    (TelegramConflictError, "conflict"),
    (TelegramEntityTooLarge, "entity_too_large"),
    (TelegramNetworkError, "network"),
    (TelegramServerError, "server_error"),
)


def telegram_error_kind(error: TelegramAPIError) -> str:
    return next((kind for cls, kind in TELEGRAM_ERROR_KINDS if isinstance(error, cls)), "other")


def upstream_status(outcome: int | httpx.HTTPError) -> str:
    """The `status` label: the HTTP status, or what kept the call from getting one."""
    if isinstance(outcome, int):
        return str(outcome)
    if isinstance(outcome, httpx.TimeoutException):
        return "timeout"
    if isinstance(outcome, httpx.NetworkError):
        return "network_error"
    return "http_error"


class StateCollector:
    """Families read at scrape time; `refresh()` reads the database before each scrape."""

    def __init__(self, database: Path, upstream: UpstreamPool, runner: JobRunner) -> None:
        self._reader = JobStatsReader(database)
        self._upstream = upstream
        self._runner = runner
        self._jobs: JobStats | None = None

    async def refresh(self) -> None:
        try:
            self._jobs = await asyncio.to_thread(self._reader.read)
        except DatabaseError as error:
            self._jobs = None  # the job families are left out rather than shown stale
            log.warning("metrics could not read the jobs: %s", error)

    def collect(self) -> Iterable[Metric]:
        yield from self._limits()
        yield from self._balances()
        yield GaugeMetricFamily(f"{PREFIX}_job_tasks",
                                "Jobs the runner is working on in this process.",
                                value=self._runner.active)
        yield GaugeMetricFamily(f"{PREFIX}_queued_jobs",
                                "Jobs waiting for a create_request slot (the fair queue).",
                                value=sum(lane.queue.queued
                                          for lane in self._runner.lanes.values()))
        reconciled = CounterMetricFamily(
            f"{PREFIX}_reconciled_creates", "Failed create_requests the balance settled since "
            "the start: unspent (sent again), spent (its id lost), assumed_spent (the balance "
            "could not tell).", labels=["verdict"])
        for verdict in ("unspent", "spent", "assumed_spent"):
            reconciled.add_metric([verdict], self._runner.reconciled[verdict])
        yield reconciled
        yield GaugeMetricFamily(f"{PREFIX}_polled_jobs",
                                "Jobs waiting for their answer in the poll scheduler.",
                                value=sum(lane.scheduler.pending
                                          for lane in self._runner.lanes.values()))
        if self._jobs is not None:
            yield from _job_families(self._jobs)

    def _keys(self) -> tuple[list[str], list[tuple[list[str], Upstream]]]:
        """The key label, and each key's value of it: with a pool of keys, each key's
        series is labelled by its fingerprint; a single key's are not labelled."""
        if not self._upstream.pooled:
            return [], [([], self._upstream.primary)]
        return ["key"], [([key.fingerprint], key) for key in self._upstream.keys]

    def _balances(self) -> Iterable[Metric]:
        names, keys = self._keys()
        balance = GaugeMetricFamily(f"{PREFIX}_units_balance",
                                    "The API unit balance last reported by chatinfo.",
                                    labels=names)
        for labels, key in keys:
            if key.balance is not None:
                balance.add_metric(labels, key.balance)
        if balance.samples:
            yield balance

    def _limits(self) -> Iterable[Metric]:
        names, keys = self._keys()
        used = GaugeMetricFamily(
            f"{PREFIX}_rate_limit_used",
            "Calls made in the current 60-second window, per chatinfo endpoint "
            "(get_response: the poll budget in use).", labels=[*names, "endpoint"])
        limit = GaugeMetricFamily(f"{PREFIX}_rate_limit", "Calls allowed per 60-second window.",
                                  labels=[*names, "endpoint"])
        for labels, key in keys:
            for endpoint, limiter in key.budgets.items():
                used.add_metric([*labels, endpoint], limiter.in_use())
                limit.add_metric([*labels, endpoint], limiter.limit)
        return used, limit


def _job_families(jobs: JobStats) -> Iterable[Metric]:
    in_progress = GaugeMetricFamily(
        f"{PREFIX}_jobs_in_progress",
        "Unfinished jobs by state: new (queued for create_request), creating, pending "
        "(waiting for the answer), answered (being delivered).", labels=["state"])
    for state, count in jobs.in_progress.items():
        in_progress.add_metric([state], count)
    yield in_progress
    requests = CounterMetricFamily(
        f"{PREFIX}_requests", "Finished requests by mode and outcome (delivered or the "
        "failure kind).", labels=["mode", "outcome"])
    for (mode, outcome), count in sorted(jobs.finished.counts.items()):
        requests.add_metric([mode, outcome], count)
    yield requests
    yield _histogram_family(f"{PREFIX}_answer_lag_seconds",
                            "From the stored answer to Telegram accepting it.",
                            jobs.finished.answer_lag)
    yield _histogram_family(f"{PREFIX}_time_to_answer_seconds",
                            "From the user's request to the delivered answer.",
                            jobs.finished.time_to_answer)


def _histogram_family(name: str, documentation: str, data: BucketCounts) -> Metric:
    # `le` as prometheus_client's own Histogram writes it: 1.0, not 1.
    bounds = [repr(float(bound)) for bound in data.bounds] + ["+Inf"]
    return HistogramMetricFamily(name, documentation, sum_value=data.total,
                                 buckets=list(zip(bounds, data.cumulative, strict=True)))


class PressureCollector:
    """Telegram's pressure (bot/telegram/throttle.py) and what each level left out."""

    def __init__(self, pressure: PressureGauge) -> None:
        self._pressure = pressure

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            f"{PREFIX}_telegram_pressure", "How short Telegram's message budget is now: 0 "
            "normal, 1 no typing or progress edits, 2 new requests answered in one message, "
            "3 new create_requests held.", value=int(self._pressure.level))
        degraded = CounterMetricFamily(
            f"{PREFIX}_telegram_degraded", "What a short Telegram budget left out since the "
            "start, by level: 1 typing actions and progress edits skipped, 2 requests "
            "answered in one message (no placeholder), 3 requests that arrived while new "
            "create_requests were held.", labels=["level"])
        for level in list(Pressure)[1:]:
            degraded.add_metric([str(int(level))], self._pressure.degraded[level])
        yield degraded


class UpstreamCalls:
    """chatinfo HTTP attempts, counted as they happen: `observe` is the client's observer,
    so this exists before the client does; `Metrics` shows it."""

    def __init__(self, *, keyed: bool = False) -> None:
        """`keyed`: a pool of keys, whose calls are labelled by the key's fingerprint
        (`observer`)."""
        keys = ["key"] if keyed else []
        self._calls = Counter(
            f"{PREFIX}_upstream_requests", "chatinfo HTTP attempts by endpoint and status.",
            [*keys, "endpoint", "status"], registry=None)
        self._seconds = Histogram(
            f"{PREFIX}_upstream_request_duration_seconds",
            "chatinfo HTTP attempt latency by endpoint and status.",
            [*keys, "endpoint", "status"], buckets=UPSTREAM_BUCKETS, registry=None)
        self._rate_limited = Counter(
            f"{PREFIX}_upstream_rate_limited", "chatinfo 429 answers by endpoint.",
            [*keys, "endpoint"], registry=None)
        if not keyed:
            for endpoint in ENDPOINTS:
                self._rate_limited.labels(endpoint=endpoint)  # shown as 0 before the first

    def observer(self, key: str) -> Callable[[str, int | httpx.HTTPError, float], None]:
        """The observer of one key's client: its calls labelled `key` (a fingerprint)."""
        for endpoint in ENDPOINTS:
            self._rate_limited.labels(key=key, endpoint=endpoint)  # 0 before the first

        def observe(endpoint: str, outcome: int | httpx.HTTPError, seconds: float) -> None:
            self.observe(endpoint, outcome, seconds, key=key)
        return observe

    def observe(self, endpoint: str, outcome: int | httpx.HTTPError, seconds: float, *,
                key: str | None = None) -> None:
        status = upstream_status(outcome)
        labels = {"endpoint": endpoint} if key is None else {"key": key, "endpoint": endpoint}
        self._calls.labels(**labels, status=status).inc()
        self._seconds.labels(**labels, status=status).observe(seconds)
        if outcome == 429:
            self._rate_limited.labels(**labels).inc()

    def collect(self) -> Iterable[Metric]:
        for metric in (self._calls, self._seconds, self._rate_limited):
            yield from metric.collect()


class TelegramCallMetrics(BaseRequestMiddleware):
    """Counts every Bot API call and each failure by kind (`bot.session.middleware(...)`)."""

    def __init__(self, calls: Counter, errors: Counter) -> None:
        self._calls = calls
        self._errors = errors

    async def __call__(self, make_request: NextRequestMiddlewareType[TelegramType], bot: Bot,
                       method: TelegramMethod[TelegramType]) -> Response[TelegramType]:
        name = method.__api_method__
        self._calls.labels(method=name).inc()
        try:
            return await make_request(bot, method)
        except TelegramAPIError as error:
            self._errors.labels(method=name, kind=telegram_error_kind(error)).inc()
            raise


class Metrics:
    """Everything `/metrics` shows: `upstream_calls` as the chatinfo client counted them,
    the state of `upstream` and `runner`, and the Bot API calls, once `telegram_middleware`
    is on the bot's session. `render()` answers a scrape."""

    def __init__(self, *, database: Path, upstream: UpstreamPool, runner: JobRunner,
                 upstream_calls: UpstreamCalls, update_source: str,
                 loop_lag: Callable[[], float] | None = None,
                 pressure: PressureGauge | None = None) -> None:
        self.registry = CollectorRegistry()
        self._state = StateCollector(database, upstream, runner)
        self.registry.register(self._state)
        self.registry.register(upstream_calls)
        if pressure is not None:
            self.registry.register(PressureCollector(pressure))
        telegram_calls = Counter(f"{PREFIX}_telegram_requests", "Bot API calls by method.",
                                 ["method"], registry=self.registry)
        telegram_errors = Counter(f"{PREFIX}_telegram_errors",
                                  "Bot API calls that failed, by method and kind.",
                                  ["method", "kind"], registry=self.registry)
        self.telegram_middleware = TelegramCallMetrics(telegram_calls, telegram_errors)
        Info(f"{PREFIX}_updates", "How updates reach the bot.",
             registry=self.registry).info({"source": update_source})
        if loop_lag is not None:
            Gauge(f"{PREFIX}_event_loop_lag_seconds",
                  "How late the event loop ran its last heartbeat.",
                  registry=self.registry).set_function(loop_lag)

    async def render(self) -> bytes:
        await self._state.refresh()
        return generate_latest(self.registry)
