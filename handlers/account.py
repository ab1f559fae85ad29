"""/me: the user's mode, their daily quota and where it comes from, and when it resets."""

from __future__ import annotations

from aiogram import Router
from aiogram.types import Message
from aiogram.utils.i18n import gettext as _
from aiogram.utils.i18n import ngettext

from bot.jobs.admission import QuotaClock
from bot.jobs.submit import until
from bot.modes import MODES_BY_NAME
from bot.telegram.commands import Commands
from storage.quotas import QuotaRepo, Usage
from storage.users import UserRepo


async def show_me(message: Message, users: UserRepo, quotas: QuotaRepo,
                  clock: QuotaClock) -> None:
    assert message.from_user is not None
    mode = MODES_BY_NAME[await users.mode(message.from_user.id)]
    usage = await quotas.usage(message.from_user.id, clock.today())
    lines = [_("Mode: {emoji} {label}").format(emoji=mode.emoji, label=mode.label),
             *quota_lines(usage)]
    if usage.left is not None and usage.quota:
        lines.append(_("The quota resets at midnight {zone}, in {wait}.").format(
            zone=clock.zone_name(), wait=until(clock.next_reset(), clock)))
    await message.answer("\n".join(lines))


def quota_lines(usage: Usage) -> list[str]:
    """The quota in force, where it comes from, and what is left of it today."""
    if usage.quota is None:
        return [_("Your quota: unlimited, set for you by an admin.") if usage.personal
                else _("Your quota: unlimited, the same for everyone.")]
    if usage.quota == 0:
        lines = [_("Your quota: 0. An admin has stopped your requests.")]
    elif usage.personal:
        lines = [ngettext("Your quota: {count} request a day, set for you by an admin.",
                          "Your quota: {count} requests a day, set for you by an admin.",
                          usage.quota).format(count=usage.quota)]
    else:
        lines = [ngettext("Your quota: {count} request a day, the same for everyone.",
                          "Your quota: {count} requests a day, the same for everyone.",
                          usage.quota).format(count=usage.quota)]
    if usage.granted:
        lines.append(ngettext("An admin gave you {count} extra request for today.",
                              "An admin gave you {count} extra requests for today.",
                              usage.granted).format(count=usage.granted))
    left = usage.left or 0
    lines.append(ngettext("{count} request left today.", "{count} requests left today.",
                          left).format(count=left))
    return lines


def make_router() -> Router:
    router = Router(name="account")
    router.message.register(show_me, Commands.me.filter())
    return router
