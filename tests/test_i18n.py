"""The catalogs: complete in both languages, in step with the code, and used per user."""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest
from aiogram.methods import AnswerCallbackQuery, EditMessageText, SendMessage, SetMyCommands
from aiogram.types import BotCommandScopeChat, BotCommandScopeDefault
from babel.messages.catalog import Catalog
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.pofile import read_po
from pydantic import ValidationError

from bot.config import Settings, describe_problems
from bot.languages import LANGUAGES, locale_for
from bot.modes import MODES
from bot.telegram.i18n import LOCALES_PATH, make_i18n
from bot.telegram.menus import set_command_menus
from storage.users import UserRepo
from tests.botprocess import REPO
from tests.fakes.mocked_bot import mocked_bot
from tests.fakes.telegram_api import callback_update, message_update
from tests.harness import App

LOCALES = tuple(language.code for language in LANGUAGES)


def catalog(locale: str) -> Catalog:
    path = LOCALES_PATH / locale / "LC_MESSAGES" / "messages.po"
    with path.open("rb") as po_file:
        return read_po(po_file, locale=locale)


def fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


def forms(string: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """A catalog entry's translations: one, or one per plural form."""
    return (string or "",) if isinstance(string, str | None) else tuple(string)


def ids_in_code() -> set[str]:
    keywords = {**DEFAULT_KEYWORDS, "__": None}
    found = set()
    for folder in ("bot", "handlers", "storage"):
        for _, _, message, _, _ in extract_from_dir(REPO / folder, keywords=keywords):
            found.add(message if isinstance(message, str) else message[0])
    return found


@pytest.mark.parametrize("locale", LOCALES)
def test_every_message_is_translated_with_the_same_placeholders(locale: str) -> None:
    messages = [m for m in catalog(locale) if m.id]
    assert messages
    for message in messages:
        ids = (message.id,) if isinstance(message.id, str) else tuple(message.id)
        assert not message.fuzzy, f"{locale}: fuzzy translation for {ids[0]!r}"
        for translation in forms(message.string):
            assert translation.strip(), f"{locale}: no translation for {ids[0]!r}"
            assert fields(translation) == fields(ids[-1]), f"{locale}: {ids[0]!r}"


@pytest.mark.parametrize("locale", LOCALES)
def test_plural_entries_have_every_form_the_language_has(locale: str) -> None:
    po = catalog(locale)
    assert po.plural_forms == {"en": "nplurals=2; plural=(n != 1);",
                               "ru": RUSSIAN_PLURALS}[locale]
    plurals = [m for m in po if m.id and not isinstance(m.id, str)]
    assert plurals, "counts go through ngettext"
    for message in plurals:
        assert len(forms(message.string)) == po.num_plurals, f"{locale}: {message.id[0]!r}"


def test_counts_in_sentences_go_through_ngettext() -> None:
    """A message whose count comes before a noun ("{count} requests") has plural forms."""
    # ({limit} in "{limit} characters" is the constant 5000, the same form in both.)
    counted = re.compile(
        r"\{(count|units|days|ahead|length|kept|left|pending|limit)\b[^}]*\} (?!char)[a-z]")
    singular_only = {m.id for m in catalog("en") if isinstance(m.id, str) and m.id}
    offenders = sorted(i for i in singular_only if counted.search(i))
    assert offenders == [], "use ngettext for these"


RUSSIAN_PLURALS = ("nplurals=3; plural=(n%10==1 && n%100!=11 ? 0 : n%10>=2 && n%10<=4 && "
                   "(n%100<10 || n%100>=20) ? 1 : 2);")


@pytest.mark.parametrize("locale", LOCALES)
def test_catalogs_hold_exactly_the_strings_in_the_code(locale: str) -> None:
    in_catalog = {m.id if isinstance(m.id, str) else m.id[0] for m in catalog(locale) if m.id}
    in_code = ids_in_code()
    assert in_code - in_catalog == set(), "run pybabel extract/update (README, Translations)"
    assert in_catalog - in_code == set(), "the catalog holds strings the code no longer uses"


@pytest.mark.parametrize(("code", "locale"), [
    ("ru", "ru"), ("uk", "ru"), ("be", "ru"), ("kk", "ru"), ("en", "en"), ("en-GB", "en"),
    ("de", "en"), (None, "en"), ("pt-br", "en"),
])
def test_telegram_language_picks_the_locale(code: str | None, locale: str) -> None:
    assert locale_for(code, "en") == locale


def test_default_locale_serves_other_languages() -> None:
    assert locale_for("de", "ru") == "ru"
    assert locale_for("en", "ru") == "en"


def test_default_locale_must_be_a_language_the_bot_speaks() -> None:
    def settings(locale: str) -> Settings:
        return Settings(bot_token="1:T", chatinfo_api_key="k", default_locale=locale)

    assert settings("ru").default_locale == "ru"
    with pytest.raises(ValidationError) as caught:
        settings("de")
    assert describe_problems(caught.value) == ["DEFAULT_LOCALE: must be one of en, ru"]


async def test_language_choice_wins_over_telegrams(app: App) -> None:
    await app.feed(message_update(20, "/language", language_code="en"))
    [menu] = app.sent(SendMessage)
    assert menu.text == "Choose your language:"
    assert [b.callback_data for row in menu.reply_markup.inline_keyboard for b in row] == [
        "lang:en", "lang:ru"]

    await app.feed(callback_update(20, "lang:ru", message_id=1001, language_code="en"))
    [ack] = app.sent(AnswerCallbackQuery)
    assert ack.text == "Язык: 🇷🇺 Русский"
    assert app.sent(EditMessageText)[0].text == "Язык: 🇷🇺 Русский"
    assert await UserRepo(app.db).locale(20) == "ru"

    await app.feed(message_update(20, "/start", language_code="en"))
    assert app.sent(SendMessage)[-1].text.startswith("👋 Привет!")


async def test_forged_language_changes_nothing(app: App) -> None:
    await app.feed(callback_update(21, "lang:xx", message_id=1001, language_code="ru"))

    [ack] = app.sent(AnswerCallbackQuery)
    assert (ack.text, ack.show_alert) == ("Этот язык недоступен.", True)
    assert await UserRepo(app.db).locale(21) is None


def test_translations_folder_is_the_repositorys() -> None:
    assert Path(LOCALES_PATH) == REPO / "locales"


async def test_command_menus_per_language_and_for_admins() -> None:
    bot, session = mocked_bot()
    await set_command_menus(bot, make_i18n(), admin_ids=[77])

    calls = session.sent(SetMyCommands)
    everyone = {c.language_code: c for c in calls if isinstance(c.scope, BotCommandScopeDefault)}
    assert set(everyone) == {None, "en", "ru", "uk", "be", "kk"}
    assert everyone["uk"].commands[0].description == "Начать и выбрать режим"
    assert everyone[None].commands[0].description == "Start and choose a mode"
    admins = [c for c in calls if isinstance(c.scope, BotCommandScopeChat)]
    assert {c.scope.chat_id for c in admins} == {77}  # type: ignore[union-attr]
    assert {c.language_code for c in admins} == set(everyone)


async def test_mode_keyboard_is_wholly_translated(app: App) -> None:
    await app.feed(message_update(22, "/mode", language_code="en"))
    await app.feed(message_update(23, "/mode", language_code="ru"))

    english, russian = (
        [b.text for row in m.reply_markup.inline_keyboard for b in row]
        for m in app.sent(SendMessage))
    assert len(english) == len(russian) == len(MODES)
    assert all(en != ru for en, ru in zip(english, russian, strict=True))
    assert app.sent(SendMessage)[1].text.startswith("Текущий режим: 💬 Чат")
