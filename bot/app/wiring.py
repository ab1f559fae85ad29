"""Wiring shared by `python -m bot` and the tests: one Dispatcher with its dependencies."""

from __future__ import annotations

import gc
import logging

from aiogram import Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import PRODUCTION, TelegramAPIServer
from aiogram.utils.i18n import I18n

from bot.config import Settings
from bot.jobs.admission import Admission, QuotaClock
from bot.jobs.broadcast import Broadcaster
from bot.jobs.conversation import Conversations
from bot.jobs.runner import JobRunner, RunnerPolicy
from bot.jobs.submit import Submitter
from bot.telegram.access import AccessMiddleware
from bot.telegram.i18n import UserLocaleMiddleware
from bot.telegram.menus import set_command_menus
from bot.telegram.notify import AdminNotifier
from bot.telegram.throttle import TelegramThrottle
from bot.upstream.client import ChatinfoClient
from bot.upstream.units import UnitsTracker
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
    gc.collect()
    gc.freeze()


def make_bot(settings: Settings) -> Bot:
    api = (TelegramAPIServer.from_base(str(settings.telegram_api_url))
           if settings.telegram_api_url else PRODUCTION)
    bot = Bot(settings.bot_token.get_secret_value(), session=AiohttpSession(api=api),
              default=DefaultBotProperties(link_preview_is_disabled=True))
    bot.session.middleware(TelegramThrottle(settings.telegram_messages_per_second,
                                            settings.broadcast_share))
    return bot


def make_client(settings: Settings) -> ChatinfoClient:
    return ChatinfoClient(
        str(settings.chatinfo_base_url), settings.chatinfo_api_key.get_secret_value(),
        create_per_min=settings.chatinfo_create_per_min,
        poll_per_min=settings.chatinfo_poll_per_min,
        units_per_min=settings.chatinfo_units_per_min,
    )


def make_dispatcher(
    bot: Bot, db: Database, client: ChatinfoClient, i18n: I18n,
    settings: Settings, *, policy: RunnerPolicy | None = None, sandbox: bool = False,
) -> Dispatcher:
    """`sandbox`: the API is the built-in fake (python -m bot --sandbox); admins are told."""
    users, jobs = UserRepo(db), JobRepo(db)
    quotas = QuotaRepo(db, settings.default_quota)
    clock = QuotaClock(settings.quota_timezone)
    tracker = UnitsTracker(client, AdminNotifier(bot, users, i18n, settings.admin_ids),
                           settings.low_units_threshold)
    policy = policy or RunnerPolicy(max_wait=float(settings.max_wait_seconds))
    runner = JobRunner(bot, client, jobs, i18n, quotas=quotas, units=tracker, policy=policy)
    admission = Admission(jobs, quotas, tracker, clock, settings.max_pending_per_user,
                          late_after=policy.max_wait, database=db)
    broadcasts = BroadcastRepo(db)
    broadcaster = Broadcaster(
        bot, broadcasts, i18n,
        rate=settings.telegram_messages_per_second * settings.broadcast_share,
        audience=settings.allowed_user_ids | settings.admin_ids if settings.allowed_user_ids
        else None)
    dp = Dispatcher(users=users, jobs=jobs, quotas=quotas, stats=StatsRepo(db), clock=clock,
                    tracker=tracker, runner=runner, client=client, settings=settings,
                    submitter=Submitter(admission, jobs, runner, clock),
                    conversations=Conversations(ConversationRepo(db),
                                                settings.conversation_idle_minutes),
                    delivery=runner.delivery, i18n=i18n, broadcasts=broadcasts,
                    broadcaster=broadcaster, sandbox=sandbox)
    UserLocaleMiddleware(i18n, users).setup(dp)
    access = AccessMiddleware(settings.admin_ids, settings.allowed_user_ids)
    dp.message.outer_middleware(access)
    dp.callback_query.outer_middleware(access)
    dp.inline_query.outer_middleware(access)
    dp.chosen_inline_result.outer_middleware(access)
    dp.include_routers(*get_routers(settings.admin_ids))
    dp.errors.register(on_error)
    dp.startup.register(_on_startup)
    dp.shutdown.register(_on_shutdown)
    return dp


async def _on_startup(bot: Bot, runner: JobRunner, tracker: UnitsTracker, i18n: I18n,
                      settings: Settings, broadcaster: Broadcaster) -> None:
    await runner.resume()
    await broadcaster.resume()
    tracker.start()
    await set_command_menus(bot, i18n, settings.admin_ids)


async def _on_shutdown(runner: JobRunner, tracker: UnitsTracker,
                       broadcaster: Broadcaster) -> None:
    await broadcaster.stop()
    await tracker.stop()
    await runner.stop()
