"""/language: the user's own choice of language, which wins over Telegram's."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.types import CallbackQuery, Message
from aiogram.utils.i18n import I18n
from aiogram.utils.i18n import gettext as _

from bot.languages import LANGUAGES_BY_CODE
from bot.telegram.commands import Commands
from bot.telegram.i18n import in_locale
from bot.telegram.keyboards import LanguageCallback, languages_keyboard
from storage.users import UserRepo


async def show_languages(message: Message, locale: str) -> None:
    await message.answer(_("Choose your language:"), reply_markup=languages_keyboard(locale))


async def choose_language(query: CallbackQuery, callback_data: LanguageCallback,
                          users: UserRepo, i18n: I18n) -> None:
    await users.set_locale(query.from_user.id, callback_data.code)
    with in_locale(i18n, callback_data.code):  # answer in the language just chosen
        language = LANGUAGES_BY_CODE[callback_data.code]
        text = _("Language: {language}").format(language=language.label)
        await query.answer(text)
        if isinstance(query.message, Message):
            await query.message.edit_text(text, reply_markup=None)


async def unknown_language(query: CallbackQuery) -> None:
    await query.answer(_("This language is not available."), show_alert=True)


def make_router() -> Router:
    router = Router(name="settings")
    router.message.register(show_languages, Commands.language.filter())
    router.callback_query.register(choose_language,
                                   LanguageCallback.filter(F.code.in_(LANGUAGES_BY_CODE)))
    router.callback_query.register(unknown_language, LanguageCallback.filter())
    return router
