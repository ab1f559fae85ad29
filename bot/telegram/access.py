"""Who may use the bot: the whitelist (if any) and bans. Admins always may.

A refusal must not make the bot noisy: in a group, what is not addressed to the bot gets
no reply from anyone, and a refused user hears it at most once an hour there; a flood in
the private chat gets one refusal a minute, so it cannot use up the bot's sending budget.
Inline mode offers a refused user one "not available" result, and a result they choose
anyway is dropped: nothing is admitted or spent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware, Bot
from aiogram.enums import ChatType
from aiogram.types import CallbackQuery, InlineQuery, Message, TelegramObject, User
from aiogram.utils.i18n import gettext as _

from bot.telegram.filters import addressed_to
from bot.telegram.inline_results import CACHE_SECONDS, not_available_result
from storage.users import Profile

log = logging.getLogger(__name__)

GROUP_REFUSAL_EVERY = 3600.0  # seconds between two refusals to one user in one group
PRIVATE_REFUSAL_EVERY = 60.0  # and in their private chat


class AccessMiddleware(BaseMiddleware):
    """Runs after the locale middleware, which puts the user's profile in `data`. Without
    it nothing is known of a ban, so every update from a user is refused (admins' too: a
    wiring mistake must show at once, not only to those who are not admins)."""

    def __init__(self, admin_ids: frozenset[int], allowed_ids: frozenset[int]) -> None:
        self._admin_ids = admin_ids
        self._allowed_ids = allowed_ids
        self._refused_at: dict[tuple[int, int], float] = {}  # (chat, user) -> when

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        user: User | None = data.get("event_from_user")
        profile: Profile | None = data.get("profile")
        if user is None:
            return await handler(event, data)
        if profile is None:  # the profile middleware did not run: nothing is known
            log.error("no profile for user %s; refusing the update", user.id)
            return None
        if user.id in self._admin_ids:
            return await handler(event, data)
        if self._allowed_ids and user.id not in self._allowed_ids:
            return await self._refuse(event, data["bot"], _("Sorry, this bot is private."))
        if profile.banned:
            return await self._refuse(event, data["bot"], _("You cannot use this bot."))
        return await handler(event, data)

    async def _refuse(self, event: TelegramObject, bot: Bot, text: str) -> None:
        if isinstance(event, CallbackQuery):
            await event.answer(text, show_alert=True)  # only the tapper sees it
        elif isinstance(event, InlineQuery):  # a chosen result is dropped: nothing is spent
            await event.answer([not_available_result(text)], cache_time=CACHE_SECONDS,
                               is_personal=True)
        elif isinstance(event, Message) and await self._may_refuse_in(event, bot):
            await event.reply(text)

    async def _may_refuse_in(self, message: Message, bot: Bot) -> bool:
        private = message.chat.type == ChatType.PRIVATE
        if message.from_user is None or not addressed_to(message, await bot.me()):
            return False
        now = time.monotonic()
        self._forget_before(now - GROUP_REFUSAL_EVERY)
        key = (message.chat.id, message.from_user.id)
        every = PRIVATE_REFUSAL_EVERY if private else GROUP_REFUSAL_EVERY
        if now - self._refused_at.get(key, -every) < every:
            return False
        self._refused_at.pop(key, None)  # re-inserted last: the dict stays in time order
        self._refused_at[key] = now
        return True

    def _forget_before(self, moment: float) -> None:
        # Insertion order is time order, so the stale entries are at the front.
        while self._refused_at:
            key, when = next(iter(self._refused_at.items()))
            if when >= moment:
                return
            del self._refused_at[key]
