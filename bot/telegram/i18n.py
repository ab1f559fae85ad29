"""Translations straight from the `.po` catalogs, and the choice of a user's language.

Catalogs are compiled at start, so a fresh clone needs no `pybabel compile`
step and a compiled file can never be stale.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiogram.types import TelegramObject, User
from aiogram.utils.i18n import I18n, I18nMiddleware
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from bot.languages import DEFAULT_LOCALE, locale_for
from storage.users import UserRepo

LOCALES_PATH = Path(__file__).resolve().parents[2] / "locales"
DOMAIN = "messages"


def make_i18n(default_locale: str = DEFAULT_LOCALE) -> I18n:
    """An I18n loaded from catalogs compiled in a scratch folder that is gone afterwards."""
    with tempfile.TemporaryDirectory(prefix="chatinfo-bot-locales-") as scratch:
        for po_path in sorted(LOCALES_PATH.glob(f"*/LC_MESSAGES/{DOMAIN}.po")):
            locale = po_path.parent.parent.name
            with po_path.open("rb") as po_file:
                catalog = read_po(po_file, locale=locale)
            mo_path = Path(scratch, locale, "LC_MESSAGES", f"{DOMAIN}.mo")
            mo_path.parent.mkdir(parents=True)
            with mo_path.open("wb") as mo_file:
                write_mo(mo_file, catalog)
        # I18n reads every catalog in its constructor, so the folder may go.
        return I18n(path=scratch, default_locale=default_locale, domain=DOMAIN)


@contextmanager
def in_locale(i18n: I18n, locale: str) -> Iterator[None]:
    """Translate in `locale` here, also outside the handling of an update (a job, an alert,
    the menus at start), where no middleware has made `i18n` the current one."""
    with i18n.context(), i18n.use_locale(locale):
        yield


class UserLocaleMiddleware(I18nMiddleware):
    """Records each user on contact and picks their language: their choice, else Telegram's."""

    def __init__(self, i18n: I18n, users: UserRepo) -> None:
        super().__init__(i18n)
        self._users = users

    async def get_locale(self, event: TelegramObject, data: dict[str, Any]) -> str:
        user: User | None = data.get("event_from_user")
        if user is None:
            return self.i18n.default_locale
        profile = await self._users.touch(user.id, user.language_code)
        locale = profile.locale or locale_for(user.language_code, self.i18n.default_locale)
        data["profile"] = profile
        data["locale"] = locale
        return locale
