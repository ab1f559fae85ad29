"""The languages the bot speaks, one entry each: the /language keyboard, DEFAULT_LOCALE's
check, the choice of a new user's language and the command menus all read this list.

A language here also needs its catalog, `locales/<code>/LC_MESSAGES/messages.po`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Language:
    code: str  # the catalog's locale
    name: str  # in the language itself, so never translated
    flag: str
    # Telegram language codes (a user's app language) whose speakers are best served in it.
    telegram_codes: frozenset[str]

    @property
    def label(self) -> str:
        return f"{self.flag} {self.name}"


LANGUAGES: tuple[Language, ...] = (
    Language("en", "English", "🇬🇧", frozenset({"en"})),
    Language("ru", "Русский", "🇷🇺", frozenset({"ru", "uk", "be", "kk"})),
)
LANGUAGES_BY_CODE: dict[str, Language] = {language.code: language for language in LANGUAGES}
DEFAULT_LOCALE = "en"


def locale_for(language_code: str | None, default: str) -> str:
    """The locale for a Telegram language code ("uk", "en-GB"), before the user chooses one."""
    language = (language_code or "").split("-")[0].lower()
    return next((known.code for known in LANGUAGES if language in known.telegram_codes),
                default)
