"""The command menu (setMyCommands), per language, with admin commands in admins' chats."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError
from aiogram.types import BotCommand, BotCommandScopeChat, BotCommandScopeDefault
from aiogram.utils.i18n import I18n
from aiogram.utils.i18n import gettext as _

from bot.i18n import RUSSIAN_SPEAKING
from bot.telegram import with_retries

log = logging.getLogger(__name__)


def user_commands() -> list[BotCommand]:
    return [
        BotCommand(command="start", description=_("Start and choose a mode")),
        BotCommand(command="mode", description=_("Change the mode")),
        BotCommand(command="language", description=_("Change the language")),
        BotCommand(command="me", description=_("My mode and requests left today")),
        BotCommand(command="history", description=_("History and full answers")),
        BotCommand(command="cancel", description=_("Stop waiting for my requests")),
        BotCommand(command="help", description=_("What I can do")),
    ]


def admin_commands() -> list[BotCommand]:
    return [
        BotCommand(command="units", description=_("Balance, spending, days left")),
        BotCommand(command="stats", description=_("Users, requests, failures")),
        BotCommand(command="user", description=_("A user's card: /user <id>")),
        BotCommand(command="quota", description=_("Daily quota: /quota <id> <n>")),
        BotCommand(command="grant", description=_("Extra requests today: /grant <id> <n>")),
        BotCommand(command="ban", description=_("Ban: /ban <id>")),
        BotCommand(command="unban", description=_("Unban: /unban <id>")),
    ]


def _menus(i18n: I18n, commands: Callable[[], list[BotCommand]],
           ) -> list[tuple[str | None, list[BotCommand]]]:
    """(Telegram language code or None for everyone else, the commands in that language)."""
    def in_locale(locale: str) -> list[BotCommand]:
        with i18n.context(), i18n.use_locale(locale):
            return commands()

    codes = {"en": "en", **{code: "ru" for code in sorted(RUSSIAN_SPEAKING)}}
    menus: list[tuple[str | None, list[BotCommand]]] = [(None, in_locale(i18n.default_locale))]
    menus += [(code, in_locale(locale)) for code, locale in codes.items()]
    return menus


async def set_command_menus(bot: Bot, i18n: I18n, admin_ids: Iterable[int]) -> None:
    """Best effort: a missing menu must not keep the bot from starting."""
    try:
        for language, commands in _menus(i18n, user_commands):
            await with_retries(lambda c=commands, lang=language: bot.set_my_commands(  # type: ignore[misc]
                c, scope=BotCommandScopeDefault(), language_code=lang))
        for admin_id in admin_ids:
            for language, commands in _menus(i18n, lambda: user_commands() + admin_commands()):
                await with_retries(lambda c=commands, lang=language, a=admin_id:  # type: ignore[misc]
                                   bot.set_my_commands(c, scope=BotCommandScopeChat(chat_id=a),
                                                       language_code=lang))
    except TelegramAPIError as error:
        log.warning("could not set the command menu: %s", type(error).__name__)
