"""/start and /help: the greeting and the mode keyboard."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command, CommandStart
from aiogram.types import Message
from aiogram.utils.i18n import gettext as _

from bot.keyboards import modes_keyboard
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
        "I understand text messages of up to 5000 characters.\n"
        "/mode — change the mode"
    )


def make_router() -> Router:
    router = Router(name="start")
    router.message.register(greet, CommandStart())
    router.message.register(greet, Command("help"))
    return router
