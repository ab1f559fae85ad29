"""Wiring shared by `python -m bot` and the tests: the one place the bot's objects are built."""

from __future__ import annotations

import gc
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiogram.methods
from aiogram import Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import PRODUCTION, TelegramAPIServer
from aiogram.methods.base import Response, TelegramMethod
from aiogram.utils.i18n import I18n

from bot.config import Settings
from bot.jobs.admission import Admission, QuotaClock
from bot.jobs.balance_ledger import BalanceLedger
from bot.jobs.broadcast import Broadcaster
from bot.jobs.conversation import Conversations
from bot.jobs.create_queue import FairQueue
from bot.jobs.lanes import Lane
from bot.jobs.poll_scheduler import PollScheduler
from bot.jobs.runner import JobRunner, Outcome, RunnerPolicy
from bot.jobs.solve_times import SolveTimes
from bot.jobs.submit import Submitter
from bot.jobs.view import JobView
from bot.ops.health import HealthCheck, Heartbeat, services_probe
from bot.ops.metrics import Metrics, UpstreamCalls
from bot.services import Services
from bot.telegram.access import AccessMiddleware
from bot.telegram.delivery import Delivery
from bot.telegram.filters import check_magic_on_the_loop
from bot.telegram.i18n import UserLocaleMiddleware
from bot.telegram.indicators import WaitingIndicators
from bot.telegram.menus import set_command_menus
from bot.telegram.notify import AdminNotifier
from bot.telegram.throttle import PressureGauge, TelegramThrottle, find_throttle
from bot.upstream.account import Upstream
from bot.upstream.client import CREATE, POLL, AttemptObserver, ChatinfoClient, key_fingerprint
from bot.upstream.pool import UpstreamPool
from bot.upstream.units import AdminAlerts
from handlers import get_routers
from handlers.fallback import on_error
from storage.broadcasts import BroadcastRepo
from storage.conversations import ConversationRepo
from storage.db import Database
from storage.jobs import JobRepo
from storage.quotas import QuotaRepo
from storage.stats import StatsRepo
from storage.users import UserRepo

log = logging.getLogger(__name__)


def freeze_startup_objects() -> None:
    """Leave what exists after start-up out of every later garbage collection.

    Mostly aiogram's models, which live as long as the process: a full collection
    would walk them all, about 140 ms each time, several times a minute under load.
    """
    _RESPONSE_MODELS.extend(_response_models())
    gc.collect()
    gc.freeze()


# aiogram parses every Bot API reply as Response[<the method's result type>], and pydantic
# keeps such a class only while something refers to it: otherwise each call builds it
# again, schema and all (8% of the bot's CPU under load). Kept here for good.
_RESPONSE_MODELS: list[type[Response[Any]]] = []


def _response_models() -> list[type[Response[Any]]]:
    models: dict[Any, type[Response[Any]]] = {}
    for name in aiogram.methods.__all__:
        method = getattr(aiogram.methods, name)
        if (isinstance(method, type) and issubclass(method, TelegramMethod)
                and method is not TelegramMethod and method.__returning__ not in models):
            models[method.__returning__] = Response[method.__returning__]  # type: ignore[name-defined]
    return list(models.values())


def make_bot(settings: Settings) -> Bot:
    api = (TelegramAPIServer.from_base(str(settings.telegram_api_url))
           if settings.telegram_api_url else PRODUCTION)
    bot = Bot(settings.bot_token.get_secret_value(), session=AiohttpSession(api=api),
              default=DefaultBotProperties(link_preview_is_disabled=True))
    bot.session.middleware(TelegramThrottle(settings.telegram_messages_per_second))
    return bot


def make_client(settings: Settings, observer: AttemptObserver | None = None,
                key: str | None = None, **options: Any) -> ChatinfoClient:
    """The chatinfo client for `key` (the first configured one by default); `options` as
    ChatinfoClient takes them, over the settings' rate limits."""
    limits = {"create_per_min": settings.chatinfo_create_per_min,
              "poll_per_min": settings.chatinfo_poll_per_min,
              "units_per_min": settings.chatinfo_units_per_min}
    return ChatinfoClient(str(settings.chatinfo_base_url), key or settings.api_keys[0],
                          observer=observer, **{**limits, **options})


def make_pool(settings: Settings, alerts: AdminAlerts, upstream_calls: UpstreamCalls, *,
              client: ChatinfoClient | Sequence[ChatinfoClient] | None = None,
              client_options: Mapping[str, Any] | None = None) -> UpstreamPool:
    """One `Upstream` per configured key (or per `client`, built elsewhere); with several,
    the alerts name each "#n (fingerprint)", and the metrics label its calls."""
    if client is not None:
        clients = [client] if isinstance(client, ChatinfoClient) else list(client)
        return UpstreamPool([
            Upstream(made, alerts, settings.low_units_threshold,
                     name=f"#{number} ({made.fingerprint})" if len(clients) > 1 else None)
            for number, made in enumerate(clients, start=1)])
    keys = settings.api_keys
    upstreams = []
    for number, key in enumerate(keys, start=1):
        observer = (upstream_calls.observer(key_fingerprint(key)) if len(keys) > 1
                    else upstream_calls.observe)
        made = make_client(settings, observer, key, **(client_options or {}))
        name = f"#{number} ({made.fingerprint})" if len(keys) > 1 else None
        upstreams.append(Upstream(made, alerts, settings.low_units_threshold, name=name))
    return UpstreamPool(upstreams)


@dataclass(frozen=True)
class Application:
    """The bot, built: the Dispatcher and what runs beside it."""

    dp: Dispatcher
    upstream: Upstream  # the primary key's account (the only one, unless keys are pooled)
    runner: JobRunner
    # Started at the Dispatcher's startup in this order, stopped at its shutdown in reverse.
    services: Services
    metrics: Metrics
    health: HealthCheck
    pool: UpstreamPool  # every key's account; `close()` it after the services stop


def make_application(
    bot: Bot, db: Database, i18n: I18n, settings: Settings, *,
    client: ChatinfoClient | Sequence[ChatinfoClient] | None = None,
    client_options: Mapping[str, Any] | None = None,
    policy: RunnerPolicy | None = None, sandbox: bool = False,
) -> Application:
    """Every object of the bot, each built once, here.

    `sandbox`: the API is the built-in fake (python -m bot --sandbox); admins are told.

    `client`: one built elsewhere (a test's, a benchmark's) instead of one per configured
    key, `make_client(settings, key=..., **client_options)`; the metrics count the chatinfo
    calls only of clients built here.
    """
    upstream_calls = UpstreamCalls(keyed=client is None and len(settings.api_keys) > 1)
    users, jobs = UserRepo(db), JobRepo(db)
    quotas = QuotaRepo(db, settings.default_quota)
    clock = QuotaClock(settings.quota_timezone)
    pool = make_pool(settings, AdminNotifier(bot, users, i18n, settings.admin_ids),
                         upstream_calls, client=client, client_options=client_options)
    policy = policy or RunnerPolicy(max_wait=float(settings.max_wait_seconds))
    throttle = find_throttle(bot)
    # Without a throttle (tests), nothing measures Telegram's pressure: it stays normal.
    pressure = throttle.pressure if throttle is not None else PressureGauge()
    delivery = Delivery(bot, pressure)
    runner = make_runner(bot, jobs, quotas, pool, delivery, i18n, policy)
    admission = Admission(jobs, quotas, pool, clock, settings.max_pending_per_user,
                          late_after=policy.max_wait, database=db)
    broadcasts = BroadcastRepo(db)
    broadcaster = Broadcaster(
        bot, broadcasts, i18n,
        rate=settings.telegram_messages_per_second * settings.broadcast_share,
        audience=settings.allowed_user_ids | settings.admin_ids if settings.allowed_user_ids
        else None)
    heartbeat = Heartbeat()
    services = Services(heartbeat, pool, runner.service)
    metrics = Metrics(database=settings.database_path, upstream=pool, runner=runner,
                      upstream_calls=upstream_calls,
                      update_source="webhook" if settings.webhook_url else "polling",
                      loop_lag=lambda: heartbeat.lag, pressure=pressure)
    bot.session.middleware(metrics.telegram_middleware)
    health = HealthCheck({
        "event_loop": heartbeat.probe,
        "database": db.probe,
        "units_refresher": services_probe([pool], "units-refresher is not running"),
        "job_workers": services_probe([worker for lane in runner.lanes.values()
                                       for worker in (lane.scheduler, lane.queue)],
                                      "the poll scheduler or the create queue has stopped"),
    })
    dp = Dispatcher(users=users, jobs=jobs, quotas=quotas, stats=StatsRepo(db), clock=clock,
                    upstream=pool, runner=runner, settings=settings,
                    submitter=Submitter(admission, jobs, runner, clock),
                    conversations=Conversations(ConversationRepo(db),
                                                settings.conversation_idle_minutes),
                    delivery=delivery, i18n=i18n, broadcasts=broadcasts,
                    broadcaster=broadcaster, sandbox=sandbox)
    UserLocaleMiddleware(i18n, users).setup(dp)
    access = AccessMiddleware(settings.admin_ids, settings.allowed_user_ids)
    dp.message.outer_middleware(access)
    dp.callback_query.outer_middleware(access)
    dp.inline_query.outer_middleware(access)
    dp.chosen_inline_result.outer_middleware(access)
    dp.include_routers(*get_routers(settings.admin_ids))
    check_magic_on_the_loop(dp)
    dp.errors.register(on_error)

    async def on_startup() -> None:
        services.start()
        await runner.resume()
        await broadcaster.resume()
        await set_command_menus(bot, i18n, settings.admin_ids)

    async def on_shutdown() -> None:
        await broadcaster.stop()
        await services.stop()  # the runner first: its jobs stay in SQLite

    dp.startup.register(on_startup)
    dp.shutdown.register(on_shutdown)
    return Application(dp, pool.primary, runner, services, metrics, health, pool)


def make_runner(bot: Bot, jobs: JobRepo, quotas: QuotaRepo, pool: UpstreamPool,
                delivery: Delivery, i18n: I18n, policy: RunnerPolicy) -> JobRunner:
    """The runner, its view and its workers: per key, a lane with a create queue and a
    poll scheduler that share out the key's create and poll budgets."""
    solve_times = SolveTimes(policy.prior)
    runner: JobRunner  # built last: the scheduler and the indicators call back into it

    def settled(job_id: int, outcome: Outcome) -> None:
        runner.start(job_id, outcome)

    def progress_text(job_id: int, locale: str, seconds: float) -> str:
        return runner.progress_text(job_id, locale, seconds)

    def lane(upstream: Upstream) -> Lane:
        ledger = BalanceLedger()
        queue = FairQueue(upstream.budget(CREATE), policy.creates_in_flight,
                          pressure=delivery.pressure, careful=ledger.unsettled,
                          careful_in_flight=policy.careful_creates_in_flight,
                          slow_after=policy.slow_create_after,
                          lift_after=policy.careful_backlog_seconds)
        return Lane(upstream, queue, PollScheduler(upstream.poll, upstream.budget(POLL),
                                                   solve_times, policy.timing, settled=settled),
                    ledger)

    lanes = [lane(upstream) for upstream in pool.keys]
    indicators = WaitingIndicators(bot, delivery, policy.progress_every, progress_text)
    view = JobView(bot, delivery, indicators, [lane.queue for lane in lanes], quotas, i18n,
                   max_wait=policy.max_wait, late_wait=policy.late_wait)
    # Each started before what uses it, and stopped after: the schedulers' answers start
    # jobs, and jobs use the queues and the indicators.
    workers = Services(indicators, *(lane.queue for lane in lanes),
                       *(lane.scheduler for lane in lanes))
    runner = JobRunner(jobs, pool, view, lanes=lanes, solve_times=solve_times,
                       workers=workers, policy=policy)
    return runner
