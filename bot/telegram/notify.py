"""Messages to the admins about what only they can fix, each in the admin's language:
the one they chose with /language, else the one their Telegram app uses."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError
from aiogram.utils.i18n import I18n

from bot.languages import locale_for
from bot.telegram.i18n import in_locale
from bot.telegram.retries import with_retries
from storage.users import UserRepo

log = logging.getLogger(__name__)


class AdminNotifier:
    def __init__(self, bot: Bot, users: UserRepo, i18n: I18n, admin_ids: Iterable[int]) -> None:
        self._bot = bot
        self._users = users
        self._i18n = i18n
        self._admin_ids = tuple(admin_ids)

    async def send(self, text: Callable[[], str]) -> None:
        """`text` builds the message in whatever locale is current when it is called."""
        for admin_id in self._admin_ids:
            chosen, telegram_language = await self._users.languages(admin_id)
            locale = chosen or locale_for(telegram_language, self._i18n.default_locale)
            with in_locale(self._i18n, locale):
                message = text()
            try:
                await with_retries(lambda a=admin_id, m=message:  # type: ignore[misc]
                                   self._bot.send_message(a, m))
            except TelegramAPIError as error:  # an admin who never started the bot, say
                log.warning("could not alert admin %s: %s", admin_id, type(error).__name__)
