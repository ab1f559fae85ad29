"""The admin console. Only ADMIN_IDS reach it; anyone else falls through to the
unknown-command reply, so nothing reveals that these commands exist."""

from __future__ import annotations

from datetime import datetime

from aiogram import F, Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message
from aiogram.utils.i18n import gettext as _

from bot.chatinfo import ChatinfoError
from bot.quota import QuotaClock
from bot.units import UnitsTracker
from storage.jobs import JobRepo
from storage.quotas import QuotaRepo
from storage.stats import StatsRepo
from storage.users import UserRepo

RECENT_JOBS = 5
PREVIEW_CHARS = 40
MAX_DIGITS = 15  # Telegram ids have at most 52 bits; anything longer is a typo


async def units(message: Message, tracker: UnitsTracker, stats: StatsRepo,
                clock: QuotaClock) -> None:
    try:
        balance: int | None = await tracker.refresh()
        live = ""
    except ChatinfoError:
        balance, live = tracker.balance, _(" (last known; the API did not answer)")
    today = await stats.units_spent_since(clock.day_start())
    week = await stats.units_spent_since(clock.day_start(days_ago=6))
    lines = [
        _("💰 Balance: {units} units{live}").format(units=balance if balance is not None
                                                    else "?", live=live),
        _("Spent today: {today} · last 7 days: {week}").format(today=today, week=week),
        _("Pending jobs: {pending}").format(pending=await stats.pending_jobs()),
    ]
    if not week:
        lines.append(_("No units were spent in the last 7 days."))
    elif balance is not None:
        lines.append(_("At the 7-day average of {rate:.1f} a day, that lasts about {days:.0f} "
                       "days.").format(rate=week / 7, days=balance / (week / 7)))
    await message.answer("\n".join(lines))


async def stats_command(message: Message, stats: StatsRepo, clock: QuotaClock) -> None:
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
            seconds=_("{seconds:.1f} s").format(seconds=median) if median is not None
            else "—"),
    )))


async def set_quota(message: Message, command: CommandObject, users: UserRepo,
                    quotas: QuotaRepo) -> None:
    args = await _user_and_number(message, command, users, _("Usage: /quota <user_id> <n>"))
    if args is not None:
        await quotas.set_quota(*args)
        await message.answer(_("User {user}: daily quota set to {n}.").format(
            user=args[0], n=args[1]))


async def grant(message: Message, command: CommandObject, users: UserRepo, quotas: QuotaRepo,
                clock: QuotaClock) -> None:
    args = await _user_and_number(message, command, users, _("Usage: /grant <user_id> <n>"))
    if args is not None:
        await quotas.grant(args[0], clock.today(), args[1])
        await message.answer(_("User {user}: {n} extra requests for today.").format(
            user=args[0], n=args[1]))


async def ban(message: Message, command: CommandObject, users: UserRepo) -> None:
    user_id = await _user(message, command, users, _("Usage: /ban <user_id>"))
    if user_id is not None:
        await users.set_banned(user_id, True)
        await message.answer(_("User {user} is banned.").format(user=user_id))


async def unban(message: Message, command: CommandObject, users: UserRepo) -> None:
    user_id = await _user(message, command, users, _("Usage: /unban <user_id>"))
    if user_id is not None:
        await users.set_banned(user_id, False)
        await message.answer(_("User {user} is no longer banned.").format(user=user_id))


async def user_card(message: Message, command: CommandObject, users: UserRepo, jobs: JobRepo,
                    quotas: QuotaRepo, clock: QuotaClock) -> None:
    user_id = await _user(message, command, users, _("Usage: /user <user_id>"))
    if user_id is None:
        return
    usage = await quotas.usage(user_id, clock.today())
    lines = [
        _("👤 User {user} · mode: {mode} · language: {locale} · banned: {banned}").format(
            user=user_id, mode=await users.mode(user_id),
            locale=await users.locale(user_id) or "—",
            banned=_("yes") if await users.is_banned(user_id) else _("no")),
        _("Quota: {quota} · used today: {used} · extra today: {granted}").format(
            quota=usage.quota or "∞", used=usage.used, granted=usage.granted),
        _("Last requests:"),
    ]
    for job in await jobs.recent(user_id, RECENT_JOBS):
        when = datetime.fromtimestamp(job.created_at, clock.zone).strftime("%Y-%m-%d %H:%M")
        preview = job.content[:PREVIEW_CHARS].replace("\n", " ")
        lines.append(f"#{job.id} {when} {job.mode} · {job.state} · {preview}")
    await message.answer("\n".join(lines))


async def _user(message: Message, command: CommandObject, users: UserRepo,
                usage: str) -> int | None:
    """The user id in the arguments if it names a known user; otherwise say how to call."""
    numbers = _numbers(command, 1)
    if numbers is None:
        await message.answer(usage)
        return None
    return await _known(message, numbers[0], users)


async def _user_and_number(message: Message, command: CommandObject, users: UserRepo,
                           usage: str) -> tuple[int, int] | None:
    numbers = _numbers(command, 2)
    if numbers is None:
        await message.answer(usage)
        return None
    user_id = await _known(message, numbers[0], users)
    return None if user_id is None else (user_id, numbers[1])


def _numbers(command: CommandObject, count: int) -> list[int] | None:
    """Exactly `count` plain decimal arguments that fit SQLite, or None."""
    parts = (command.args or "").split()
    if len(parts) != count or not all(p.isascii() and p.isdigit() and len(p) <= MAX_DIGITS
                                      for p in parts):
        return None
    return [int(part) for part in parts]


async def _known(message: Message, user_id: int, users: UserRepo) -> int | None:
    if await users.exists(user_id):
        return user_id
    await message.answer(_("No user {user} has talked to the bot.").format(user=user_id))
    return None


def make_router(admin_ids: frozenset[int]) -> Router:
    router = Router(name="admin")
    router.message.filter(F.from_user.id.in_(admin_ids))
    router.message.register(units, Command("units"))
    router.message.register(stats_command, Command("stats"))
    router.message.register(set_quota, Command("quota"))
    router.message.register(grant, Command("grant"))
    router.message.register(ban, Command("ban"))
    router.message.register(unban, Command("unban"))
    router.message.register(user_card, Command("user"))
    return router
