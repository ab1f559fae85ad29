"""Who may use the bot: the whitelist (if any) and bans. Admins always may."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware
from aiogram.types import CallbackQuery, Message, TelegramObject, User
from aiogram.utils.i18n import gettext as _

from storage.users import Profile


class AccessMiddleware(BaseMiddleware):
    """Runs after the locale middleware, which puts the user's profile in `data`."""

    def __init__(self, admin_ids: frozenset[int], allowed_ids: frozenset[int]) -> None:
        self._admin_ids = admin_ids
        self._allowed_ids = allowed_ids

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        user: User | None = data.get("event_from_user")
        profile: Profile | None = data.get("profile")
        if user is None or user.id in self._admin_ids:
            return await handler(event, data)
        if self._allowed_ids and user.id not in self._allowed_ids:
            return await _refuse(event, _("Sorry, this bot is private."))
        if profile is not None and profile.banned:
            return await _refuse(event, _("You cannot use this bot."))
        return await handler(event, data)


async def _refuse(event: TelegramObject, text: str) -> None:
    if isinstance(event, Message):
        await event.answer(text)
    elif isinstance(event, CallbackQuery):
        await event.answer(text, show_alert=True)
