"""/start greets and shows the mode keyboard; /help tells everything the user can do."""

from __future__ import annotations

import html

from aiogram import Bot, Router
from aiogram.enums import ChatType
from aiogram.filters import CommandStart
from aiogram.types import Message
from aiogram.utils.i18n import gettext as _

from bot.config import MAX_CONTENT_CHARS, Settings
from bot.jobs.admission import QuotaClock
from bot.modes import MODES
from bot.telegram.commands import COMMANDS, Commands, names
from bot.telegram.keyboards import modes_keyboard
from bot.telegram.wording import duration_text
from handlers.account import quota_lines
from storage.quotas import QuotaRepo, Usage
from storage.users import UserRepo


async def greet(message: Message, users: UserRepo) -> None:
    assert message.from_user is not None
    mode = await users.mode(message.from_user.id)
    await message.answer(greeting_text(), reply_markup=modes_keyboard(mode))


def greeting_text() -> str:
    return _(
        "👋 Hi! I answer with GPT-4o through chatinfo.ru.\n\n"
        "Choose a mode below, then send me your text. I reply at once with ⏳ and turn "
        "that message into the answer when it is ready.\n\n"
        "I understand text messages of up to {limit} characters.\n"
        "/help — everything I can do"
    ).format(limit=MAX_CONTENT_CHARS)


async def show_help(message: Message, bot: Bot, quotas: QuotaRepo, clock: QuotaClock,
                    settings: Settings) -> None:
    assert message.from_user is not None
    private = message.chat.type == ChatType.PRIVATE
    # A quota an admin set for this user is theirs to know, not the group's.
    usage = (await quotas.usage(message.from_user.id, clock.today()) if private
             else Usage(quotas.default, 0, 0, personal=False))
    quota = quota_lines(usage)[0]
    if usage.quota:
        quota += " " + _("The count starts again at midnight {zone}; /me shows what is "
                         "left.").format(zone=clock.zone_name())
    me = await bot.me()
    sections = [
        _("I answer with GPT-4o through chatinfo.ru. Send me a text and I reply at once with "
          "⏳, then turn that message into the answer."),
        "\n".join((_("<b>Commands</b>"), *command_lines(admin=False))),
        _("<b>Following up</b>\nReply to one of my answers to ask about it: the answer goes "
          "along as context. Under each answer: 🔄 ask again, ➡️ continue, ✂️ shorter."),
        conversations_text(settings.conversation_idle_minutes),
        _("<b>Limits</b>\nUp to {limit} characters a request; longer text is cut, and I say "
          "so. You can also send a .txt or .md file (up to 1 MB): its caption is the "
          "instruction.").format(limit=MAX_CONTENT_CHARS) + "\n" + html.escape(quota, quote=False),
        _("<b>In groups</b>\nMention me (@{bot}) or reply to my message; everyone in the "
          "group sees the answer, and only you can press its buttons. {commands} answer "
          "only in our private chat.").format(
              bot=me.username or "",
              commands=", ".join(f"/{name}" for name in names(admin=False, private=True))),
    ]
    if me.supports_inline_queries:  # the operator turned inline mode on in @BotFather
        sections.append(_("<b>In any chat</b>\nType @{bot} and your question, then choose how "
                          "I should answer: the ⏳ message I post for you turns into the "
                          "answer. It counts as one of your requests.").format(
                              bot=me.username or ""))
    if private and message.from_user.id in settings.admin_ids:
        sections.append("\n".join((_("<b>Admin commands</b>"), *command_lines(admin=True))))
    await message.answer("\n\n".join(sections), parse_mode="HTML")


def conversations_text(idle_minutes: int) -> str:
    modes = ", ".join(f"{mode.emoji} {mode.label}" for mode in MODES if mode.remembers)
    return _("<b>Conversations</b>\nThese modes remember our conversation: {modes}. Each "
             "message carries the recent messages and answers, as much as fits in {limit} "
             "characters. /new starts afresh; so do a change of mode and {silence} of "
             "silence. /memory turns the memory on or off in the current mode.").format(
                 modes=modes, limit=MAX_CONTENT_CHARS, silence=duration_text(idle_minutes * 60))


def command_lines(*, admin: bool) -> list[str]:
    return [" ".join(filter(None, (f"/{c.name}", html.escape(c.args, quote=False), "—",
                                   html.escape(str(c.description), quote=False))))
            for c in COMMANDS if c.admin == admin]


def make_router() -> Router:
    router = Router(name="start")
    router.message.register(greet, CommandStart())
    router.message.register(show_help, Commands.help.filter())
    return router
