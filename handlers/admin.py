"""The admin console. Only ADMIN_IDS reach it; anyone else falls through to the
unknown-command reply, so nothing reveals that these commands exist.

User commands take any numeric id, also of someone who has never written: bans and
quotas in advance are how admins deal with a known spammer.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from aiogram import F, Router
from aiogram.filters import CommandObject
from aiogram.types import Message
from aiogram.utils.i18n import gettext as _
from aiogram.utils.i18n import ngettext
from babel.numbers import format_decimal

from bot.config import Settings
from bot.jobs.admission import QuotaClock
from bot.telegram.commands import Commands
from bot.upstream.account import Upstream
from bot.upstream.client import AccessDenied, ChatinfoError, RateLimited, UpstreamUnavailable
from bot.upstream.pool import UpstreamPool
from bot.upstream.units import refusal_reason
from storage.jobs import JobRepo
from storage.quotas import UNLIMITED, QuotaRepo, Usage
from storage.stats import StatsRepo
from storage.users import UserRepo

RECENT_JOBS = 5
PREVIEW_CHARS = 40
MAX_DIGITS = 15  # Telegram ids have at most 52 bits; anything longer is a typo
DAY = 86400.0
AVERAGE_DAYS = 7


async def units(message: Message, upstream: UpstreamPool, stats: StatsRepo,
                clock: QuotaClock, locale: str) -> None:
    lines: list[str] = []
    balance: int | None
    if upstream.pooled:
        spent = await stats.units_spent_by_key_since(clock.day_start())
        for key in upstream.keys:
            lines.append(await key_line(key, spent.get(key.fingerprint, 0)))
        balance = upstream.balance
        lines.append(_("💰 Total: {units}").format(
            units=_("unknown") if balance is None else units_text(balance)))
    else:
        try:
            live = await upstream.primary.refresh()
            balance = live
            lines.append(balance_line(live))
        except ChatinfoError as error:
            balance = upstream.primary.balance
            lines += unanswered_lines(error, balance)
    today = await stats.units_spent_since(clock.day_start())
    week = await stats.units_spent_since(clock.day_start(days_ago=AVERAGE_DAYS - 1))
    lines.append(_("Spent today: {today} · last 7 days: {week}").format(today=today, week=week))
    if unknown := await stats.outcome_unknown_since(clock.day_start(days_ago=AVERAGE_DAYS - 1)):
        lines.append(_("Outcome unknown in 7 days (a unit may have been spent): {count}").format(
            count=unknown))
    lines.append(_("Requests in progress: {pending}").format(pending=await stats.pending_jobs()))
    lines += forecast(week, balance, await stats.first_spent_at(), clock, locale)
    await message.answer("\n".join(lines))


async def key_line(key: Upstream, spent_today: int) -> str:
    """One key of the pool: its fingerprint, its balance (fresh if the API answers), what
    it spent today, and whether it takes requests."""
    try:
        await key.refresh()
        state = _("taking requests") if key.usable else _("out of units")
    except AccessDenied as error:
        state = _("refused: {reason}").format(reason=refusal_reason(error.upstream_error))
    except ChatinfoError:
        state = (_("no answer from the API; last known balance") if key.usable
                 else _("out of units") if key.exhausted else _("refused"))
    balance = _("unknown") if key.balance is None else units_text(key.balance)
    return _("🔑 {key}: {balance} · spent today: {spent} · {state}").format(
        key=key.name, balance=balance, spent=spent_today, state=state)


def units_text(units: int) -> str:
    return ngettext("{units} unit", "{units} units", units).format(units=units)


def balance_line(balance: int) -> str:
    return ngettext("💰 Balance: {units} unit", "💰 Balance: {units} units",
                    balance).format(units=balance)


def unanswered_lines(error: ChatinfoError, balance: int | None) -> list[str]:
    """Why there is no live balance, and the last one known."""
    known = str(balance) if balance is not None else _("unknown")
    if isinstance(error, AccessDenied):
        return [_("🛑 The API refused our key: {reason}.").format(
                    reason=refusal_reason(error.upstream_error)),
                _("Last known balance: {units}").format(units=known)]
    if isinstance(error, RateLimited):
        reason = _("the API is busy (429)")
    elif isinstance(error, UpstreamUnavailable):
        reason = _("the API did not answer")
    else:
        reason = _("the API's answer had no balance")
    return [_("💰 Balance: {units} (last known; {reason})").format(units=known, reason=reason)]


def forecast(week: int, balance: int | None, first_spent: float | None, clock: QuotaClock,
             locale: str) -> list[str]:
    """The daily average over the local days that have data (today and up to 6 before),
    and, once there is a whole day of data, how long the balance lasts at that rate."""
    if not week or first_spent is None:
        return [_("No units were spent in the last 7 days.")]
    today = clock.now().date()
    first_day = max(datetime.fromtimestamp(first_spent, clock.zone).date(),
                    today - timedelta(days=AVERAGE_DAYS - 1))
    days = (today - first_day).days + 1
    rate = week / days
    shown_rate = format_decimal(round(rate, 1), locale=locale)
    lines = [_("Average so far today: {rate} a day.").format(rate=shown_rate) if days == 1
             else ngettext("Average: {rate} a day over the last {days} day.",
                           "Average: {rate} a day over the last {days} days.",
                           days).format(rate=shown_rate, days=days)]
    if balance is not None and clock.now().timestamp() - first_spent >= DAY:
        left = math.floor(balance / rate)
        lines.append(ngettext("At that rate the balance lasts about {days} more day.",
                              "At that rate the balance lasts about {days} more days.",
                              left).format(days=left))
    return lines


async def stats_command(message: Message, stats: StatsRepo, clock: QuotaClock,
                        locale: str) -> None:
    activity = await stats.activity(clock.day_start(), clock.day_start(days_ago=6))
    by_mode = ", ".join(f"{mode}: {n}" for mode, n in activity.requests_by_mode.items())
    failures = ", ".join(f"{kind}: {n}" for kind, n in activity.failures_by_kind.items())
    median = activity.median_answer_seconds
    await message.answer("\n".join((
        _("👥 Users: {users} · active today: {today} · last 7 days: {week}").format(
            users=activity.users, today=activity.active_today, week=activity.active_week),
        _("📨 Requests today: {count}").format(count=sum(activity.requests_by_mode.values()))
        + (f" ({by_mode})" if by_mode else ""),
        _("⚠️ Failures in 7 days: {failures}").format(failures=failures or "0"),
        _("⏱ Median time to answer: {seconds}").format(
            seconds=_("{seconds} s").format(seconds=format_decimal(round(median, 1),
                                                                   locale=locale))
            if median is not None
            else "—"),
    )))


async def set_quota(message: Message, command: CommandObject, users: UserRepo,
                    quotas: QuotaRepo) -> None:
    parts = (command.args or "").split()
    user_id = _number(parts[0]) if len(parts) == 2 else None
    try:
        quota = parse_quota(parts[1] if user_id is not None else "")
    except ValueError:
        await message.answer(_("Usage: /quota <user_id> <n | unlimited | default>"))
        return
    assert user_id is not None
    await users.ensure(user_id)
    await quotas.set_quota(user_id, quota)
    if quota is None:
        text = _("User {user} now has the default daily quota (DAILY_QUOTA).")
    elif quota == UNLIMITED:
        text = _("User {user} now has an unlimited daily quota.")
    elif quota == 0:
        text = _("User {user} is cut off: 0 requests a day.")
    else:
        text = ngettext("User {user} may now send {count} request a day.",
                        "User {user} may now send {count} requests a day.", quota)
    await message.answer(text.format(user=user_id, count=quota))


async def grant(message: Message, command: CommandObject, users: UserRepo, quotas: QuotaRepo,
                clock: QuotaClock) -> None:
    parts = (command.args or "").split()
    user_id, extra = (_number(parts[0]), _number(parts[1])) if len(parts) == 2 else (None, None)
    if user_id is None or not extra:
        await message.answer(_("Usage: /grant <user_id> <n>, with n at least 1"))
        return
    await users.ensure(user_id)
    await quotas.grant(user_id, clock.today(), extra)
    await message.answer(ngettext("User {user}: {count} extra request for today.",
                                  "User {user}: {count} extra requests for today.",
                                  extra).format(user=user_id, count=extra))


async def ban(message: Message, command: CommandObject, users: UserRepo,
              settings: Settings) -> None:
    user_id = await _one_id(message, command, _("Usage: /ban <user_id>"))
    if user_id is None:
        return
    if user_id in settings.admin_ids:
        await message.answer(_("User {user} is an admin, and admins cannot be banned. Remove "
                               "them from ADMIN_IDS first.").format(user=user_id))
        return
    await users.ensure(user_id)
    if not await users.set_banned(user_id, True):
        text = _("User {user} was already banned.")
    elif await users.has_written(user_id):
        text = _("User {user} is banned.")
    else:
        text = _("User {user} is banned. They have not written yet; the ban holds from their "
                 "first message.")
    await message.answer(text.format(user=user_id))


async def unban(message: Message, command: CommandObject, users: UserRepo) -> None:
    user_id = await _one_id(message, command, _("Usage: /unban <user_id>"))
    if user_id is not None:
        unbanned = await users.set_banned(user_id, False)
        await message.answer((_("User {user} is no longer banned.") if unbanned
                              else _("User {user} was not banned.")).format(user=user_id))


async def user_card(message: Message, command: CommandObject, users: UserRepo, jobs: JobRepo,
                    quotas: QuotaRepo, clock: QuotaClock) -> None:
    user_id = await _one_id(message, command, _("Usage: /user <user_id>"))
    if user_id is None:
        return
    if not await users.exists(user_id):
        await message.answer(_("No user {user} has talked to the bot.").format(user=user_id))
        return
    locale, language_code = await users.languages(user_id)
    lines = [
        _("👤 User {user}").format(user=user_id) if await users.has_written(user_id)
        else _("👤 User {user} (has not written yet)").format(user=user_id),
        _("Mode: {mode} · language: {locale} · banned: {banned}").format(
            mode=await users.mode(user_id), locale=locale or language_code or "—",
            banned=_("yes") if await users.is_banned(user_id) else _("no")),
        quota_line(await quotas.usage(user_id, clock.today())),
    ]
    recent = await jobs.recent(user_id, RECENT_JOBS)
    if recent:
        lines.append(_("Last requests:"))
    for job in recent:
        when = datetime.fromtimestamp(job.created_at, clock.zone).strftime("%Y-%m-%d %H:%M")
        preview = (job.question or job.content)[:PREVIEW_CHARS].replace("\n", " ")
        lines.append(f"#{job.id} {when} {job.mode} · {job.state} · {preview}")
    await message.answer("\n".join(lines))


def quota_line(usage: Usage) -> str:
    """The quota in force and where it comes from, as an admin needs to see it."""
    if usage.quota is None:
        quota = (_("unlimited (set with /quota)") if usage.personal
                 else _("unlimited (DAILY_QUOTA=0)"))
    elif usage.personal:
        quota = _("{quota} a day (set with /quota)").format(quota=usage.quota)
    else:
        quota = _("{quota} a day (DAILY_QUOTA)").format(quota=usage.quota)
    return _("Quota: {quota} · used today: {used} · extra today: {granted}").format(
        quota=quota, used=usage.used, granted=usage.granted)


async def _one_id(message: Message, command: CommandObject, usage: str) -> int | None:
    """The one user id in the arguments; otherwise say how to call the command."""
    parts = (command.args or "").split()
    user_id = _number(parts[0]) if len(parts) == 1 else None
    if user_id is None:
        await message.answer(usage)
    return user_id


def parse_quota(word: str) -> int | None:
    """Requests a day, UNLIMITED, or None for "back to DAILY_QUOTA"; ValueError if none."""
    if word.lower() == "default":
        return None
    if word.lower() == "unlimited":
        return UNLIMITED
    if (number := _number(word)) is None:
        raise ValueError(word)
    return number


def _number(text: str) -> int | None:
    """A plain decimal number that fits SQLite, or None."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= MAX_DIGITS else None


def make_router(admin_ids: frozenset[int]) -> Router:
    router = Router(name="admin")
    router.message.filter(F.from_user.id.in_(admin_ids))
    router.message.register(units, Commands.units.filter())
    router.message.register(stats_command, Commands.stats.filter())
    router.message.register(set_quota, Commands.quota.filter())
    router.message.register(grant, Commands.grant.filter())
    router.message.register(ban, Commands.ban.filter())
    router.message.register(unban, Commands.unban.filter())
    router.message.register(user_card, Commands.user.filter())
    return router
