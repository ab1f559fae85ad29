"""The command menu (setMyCommands), per language: the private chat's, the groups' (no
command that answers only in private) and, in admins' chats, the admin commands too."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError
from aiogram.types import (
    BotCommand,
    BotCommandScopeAllGroupChats,
    BotCommandScopeChat,
    BotCommandScopeDefault,
)
from aiogram.utils.i18n import I18n

from bot.languages import LANGUAGES
from bot.telegram.commands import COMMANDS
from bot.telegram.i18n import in_locale
from bot.telegram.retries import with_retries

log = logging.getLogger(__name__)


def _commands(*, admin: bool, groups: bool = False) -> list[BotCommand]:
    """The menu: user commands (in groups only those answered there), plus admin ones."""
    return [BotCommand(command=c.name, description=str(c.description)) for c in COMMANDS
            if (admin or not c.admin) and not (groups and c.private)]


def user_commands() -> list[BotCommand]:
    return _commands(admin=False)


def group_commands() -> list[BotCommand]:
    return _commands(admin=False, groups=True)


def admin_commands() -> list[BotCommand]:
    return _commands(admin=True)


def _menus(i18n: I18n, commands: Callable[[], list[BotCommand]],
           ) -> list[tuple[str | None, list[BotCommand]]]:
    """(Telegram language code or None for everyone else, the commands in that language)."""
    def translated(locale: str) -> list[BotCommand]:
        with in_locale(i18n, locale):
            return commands()

    codes = {code: language.code for language in LANGUAGES
             for code in sorted(language.telegram_codes)}
    menus: list[tuple[str | None, list[BotCommand]]] = [(None, translated(i18n.default_locale))]
    menus += [(code, translated(locale)) for code, locale in codes.items()]
    return menus


async def set_command_menus(bot: Bot, i18n: I18n, admin_ids: Iterable[int]) -> None:
    """Best effort: a missing menu must not keep the bot from starting."""
    try:
        for language, commands in _menus(i18n, user_commands):
            await with_retries(lambda c=commands, lang=language: bot.set_my_commands(  # type: ignore[misc]
                c, scope=BotCommandScopeDefault(), language_code=lang))
        for language, commands in _menus(i18n, group_commands):
            await with_retries(lambda c=commands, lang=language: bot.set_my_commands(  # type: ignore[misc]
                c, scope=BotCommandScopeAllGroupChats(), language_code=lang))
        for admin_id in admin_ids:
            for language, commands in _menus(i18n, admin_commands):
                await with_retries(lambda c=commands, lang=language, a=admin_id:  # type: ignore[misc]
                                   bot.set_my_commands(c, scope=BotCommandScopeChat(chat_id=a),
                                                       language_code=lang))
    except TelegramAPIError as error:
        log.warning("could not set the command menu: %s", type(error).__name__)
