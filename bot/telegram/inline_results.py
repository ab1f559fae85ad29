"""What inline mode offers (`@bot question` typed in any chat): the results, as pure functions.

Offering results costs nothing: a job is admitted (and a unit spent) only when Telegram
reports a chosen result. An "ask" result posts the "⏳" placeholder on the user's behalf;
its id names the mode, and the question comes back with the chosen result, so nothing
is stored for a query that is only typed.
"""

from __future__ import annotations

from aiogram.types import (
    InlineQueryResultArticle,
    InlineQueryResultsButton,
    InputTextMessageContent,
)
from aiogram.utils.i18n import gettext as _

from bot.config import MAX_CONTENT_CHARS
from bot.modes import MODES_BY_NAME, Mode
from bot.telegram.keyboards import open_bot_keyboard
from bot.telegram.wording import placeholder_text

# Telegram sends at most 256 characters of an inline query, so a query that long may have
# been cut: answering a cut question would spend a unit on something nobody asked.
INLINE_QUERY_LIMIT = 256
# Offered after the user's own mode: what people most often want in someone else's chat.
EXTRA_MODES = ("chat", "shorter", "rewrite")
# Results depend on the user (their mode, language, access): personal, and kept briefly.
CACHE_SECONDS = 5
ASK_PREFIX = "ask:"
# /start payload of the button above the hints: opens the private chat, where /start greets.
PRIVATE_CHAT_PAYLOAD = "inline"


def inline_modes(current: str) -> list[Mode]:
    """The user's mode first, then the others worth offering."""
    names = dict.fromkeys((current, *EXTRA_MODES))
    return [MODES_BY_NAME[name] for name in names if name in MODES_BY_NAME]


def ask_result(mode: Mode, *, current: bool, bot_link: str) -> InlineQueryResultArticle:
    label = f"{mode.emoji} {mode.label}"
    return InlineQueryResultArticle(
        id=ASK_PREFIX + mode.name,
        title=_("Ask in {mode}").format(mode=label) if current else label,
        description=str(mode.description),
        input_message_content=InputTextMessageContent(message_text=placeholder_text()),
        reply_markup=open_bot_keyboard(bot_link))


def mode_of_result(result_id: str) -> str | None:
    """The mode a chosen "ask" result asks in; None for a hint."""
    if not result_id.startswith(ASK_PREFIX):
        return None
    name = result_id.removeprefix(ASK_PREFIX)
    return name if name in MODES_BY_NAME else None


def hint_result(kind: str, title: str, text: str) -> InlineQueryResultArticle:
    """A result that only explains; choosing it posts `text` and asks nothing."""
    return InlineQueryResultArticle(
        id=f"hint:{kind}", title=title, description=text,
        input_message_content=InputTextMessageContent(message_text=text))


def empty_query_hint(bot_username: str) -> InlineQueryResultArticle:
    return hint_result("empty", _("Type your question after my name"), _(
        "Type @{bot} and your question in any chat, then choose how I should answer; the "
        "answer replaces the ⏳ message.").format(bot=bot_username))


def too_long_hint() -> InlineQueryResultArticle:
    return hint_result("long", _("Too long for inline mode"), _(
        "A question asked inline must be shorter than {inline} characters. Send longer text "
        "in our private chat (up to {limit} characters).").format(
            inline=INLINE_QUERY_LIMIT, limit=MAX_CONTENT_CHARS))


def not_available_result(reason: str) -> InlineQueryResultArticle:
    return hint_result("unavailable", _("Not available"), reason)


def private_chat_button() -> InlineQueryResultsButton:
    return InlineQueryResultsButton(text=_("Ask in our private chat"),
                                    start_parameter=PRIVATE_CHAT_PAYLOAD)
