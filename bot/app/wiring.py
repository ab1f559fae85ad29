"""Wiring shared by `python -m bot` and the tests: the one place the bot's objects are built."""

from __future__ import annotations

import gc
import logging
from collections.abc import Mapping
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
from bot.jobs.broadcast import Broadcaster
from bot.jobs.conversation import Conversations
from bot.jobs.create_queue import FairQueue
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
from bot.telegram.i18n import UserLocaleMiddleware
from bot.telegram.indicators import WaitingIndicators
from bot.telegram.menus import set_command_menus
from bot.telegram.notify import AdminNotifier
from bot.telegram.throttle import TelegramThrottle
from bot.upstream.account import Upstream
from bot.upstream.client import CREATE, POLL, AttemptObserver, ChatinfoClient
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
                **options: Any) -> ChatinfoClient:
    """The chatinfo client for the configured key; `options` as ChatinfoClient takes them,
    over the settings' rate limits."""
    limits = {"create_per_min": settings.chatinfo_create_per_min,
              "poll_per_min": settings.chatinfo_poll_per_min,
              "units_per_min": settings.chatinfo_units_per_min}
    return ChatinfoClient(str(settings.chatinfo_base_url),
                          settings.chatinfo_api_key.get_secret_value(), observer=observer,
                          **{**limits, **options})


@dataclass(frozen=True)
class Application:
    """The bot, built: the Dispatcher and what runs beside it."""

    dp: Dispatcher
    upstream: Upstream
    runner: JobRunner
    # Started at the Dispatcher's startup in this order, stopped at its shutdown in reverse.
    services: Services
    metrics: Metrics
    health: HealthCheck


def make_application(
    bot: Bot, db: Database, i18n: I18n, settings: Settings, *,
    client: ChatinfoClient | None = None, client_options: Mapping[str, Any] | None = None,
    policy: RunnerPolicy | None = None, sandbox: bool = False,
) -> Application:
    """Every object of the bot, each built once, here.

    `sandbox`: the API is the built-in fake (python -m bot --sandbox); admins are told.

    `client`: one built elsewhere (a test's, a benchmark's) instead of `make_client(settings,
    **client_options)`; the metrics count the chatinfo calls only of a client built here.
    """
    upstream_calls = UpstreamCalls()
    client = client or make_client(settings, upstream_calls.observe, **(client_options or {}))
    users, jobs = UserRepo(db), JobRepo(db)
    quotas = QuotaRepo(db, settings.default_quota)
    clock = QuotaClock(settings.quota_timezone)
    upstream = Upstream(client, AdminNotifier(bot, users, i18n, settings.admin_ids),
                        settings.low_units_threshold)
    policy = policy or RunnerPolicy(max_wait=float(settings.max_wait_seconds))
    delivery = Delivery(bot)
    runner = make_runner(bot, jobs, quotas, upstream, delivery, i18n, policy)
    admission = Admission(jobs, quotas, upstream, clock, settings.max_pending_per_user,
                          late_after=policy.max_wait, database=db)
    broadcasts = BroadcastRepo(db)
    broadcaster = Broadcaster(
        bot, broadcasts, i18n,
        rate=settings.telegram_messages_per_second * settings.broadcast_share,
        audience=settings.allowed_user_ids | settings.admin_ids if settings.allowed_user_ids
        else None)
    heartbeat = Heartbeat()
    services = Services(heartbeat, upstream, runner.service)
    metrics = Metrics(database=settings.database_path, upstream=upstream, runner=runner,
                      upstream_calls=upstream_calls,
                      update_source="webhook" if settings.webhook_url else "polling",
                      loop_lag=lambda: heartbeat.lag)
    bot.session.middleware(metrics.telegram_middleware)
    health = HealthCheck({
        "event_loop": heartbeat.probe,
        "database": db.probe,
        "units_refresher": services_probe([upstream], "units-refresher is not running"),
        "job_workers": services_probe([runner.scheduler, runner.queue],
                                      "the poll scheduler or the create queue has stopped"),
    })
    dp = Dispatcher(users=users, jobs=jobs, quotas=quotas, stats=StatsRepo(db), clock=clock,
                    upstream=upstream, runner=runner, settings=settings,
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
    return Application(dp, upstream, runner, services, metrics, health)


def make_runner(bot: Bot, jobs: JobRepo, quotas: QuotaRepo, upstream: Upstream,
                delivery: Delivery, i18n: I18n, policy: RunnerPolicy) -> JobRunner:
    """The runner, its view and its workers, which share the upstream's create and poll
    budgets."""
    solve_times = SolveTimes(policy.prior)
    runner: JobRunner  # built last: the scheduler and the indicators call back into it

    def settled(job_id: int, outcome: Outcome) -> None:
        runner.start(job_id, outcome)

    def progress_text(job_id: int, locale: str, seconds: float) -> str:
        return runner.progress_text(job_id, locale, seconds)

    scheduler = PollScheduler(upstream.poll, upstream.budget(POLL), solve_times, policy.timing,
                              settled=settled)
    queue = FairQueue(upstream.budget(CREATE))
    indicators = WaitingIndicators(bot, delivery, policy.progress_every, progress_text)
    view = JobView(bot, delivery, indicators, queue, quotas, i18n, max_wait=policy.max_wait,
                   late_wait=policy.late_wait)
    # Each started before what uses it, and stopped after: the scheduler's answers start
    # jobs, and jobs use the queue and the indicators.
    workers = Services(indicators, queue, scheduler)
    runner = JobRunner(jobs, upstream, view, scheduler=scheduler, queue=queue,
                       solve_times=solve_times, workers=workers, policy=policy)
    return runner
