"""/me: the user's mode, what is left of today's quota, and when it resets."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command
from aiogram.types import Message
from aiogram.utils.i18n import gettext as _

from bot.modes import MODES_BY_NAME
from bot.quota import QuotaClock
from bot.submit import until
from storage.quotas import QuotaRepo
from storage.users import UserRepo


async def show_me(message: Message, users: UserRepo, quotas: QuotaRepo,
                  clock: QuotaClock) -> None:
    assert message.from_user is not None
    mode = MODES_BY_NAME[await users.mode(message.from_user.id)]
    usage = await quotas.usage(message.from_user.id, clock.today())
    if usage.left is None:
        left = _("Requests today: unlimited")
    else:
        left = _("Requests left today: {left} of {total}").format(
            left=usage.left, total=usage.quota + usage.granted)
    resets = _("The quota resets at midnight ({zone}), in {wait}.").format(
        zone=clock.zone.key, wait=until(clock.next_reset(), clock))
    await message.answer("\n".join((
        _("Mode: {emoji} {label}").format(emoji=mode.emoji, label=mode.label), left, resets)))


def make_router() -> Router:
    router = Router(name="account")
    router.message.register(show_me, Command("me"))
    return router
