"""/mode and the mode buttons."""

from __future__ import annotations

from aiogram import Bot, F, Router
from aiogram.exceptions import TelegramBadRequest
from aiogram.types import CallbackQuery, Message
from aiogram.utils.i18n import gettext as _

from bot.modes import MODES_BY_NAME
from bot.telegram.commands import Commands
from bot.telegram.keyboards import ModeCallback, modes_keyboard
from bot.telegram.retries import not_modified
from storage.users import UserRepo


async def show_modes(message: Message, users: UserRepo) -> None:
    assert message.from_user is not None
    mode = await users.mode(message.from_user.id)
    await message.answer(current_mode_text(mode), reply_markup=modes_keyboard(mode))


async def choose_mode(query: CallbackQuery, callback_data: ModeCallback, users: UserRepo,
                      bot: Bot) -> None:
    """Store the mode and mark it on the keyboard that was pressed, however old it is."""
    await users.set_mode(query.from_user.id, callback_data.name)
    mode = MODES_BY_NAME[callback_data.name]
    await query.answer(_("Mode: {label}").format(label=mode.label))
    pressed = query.message
    try:
        if isinstance(pressed, Message):
            await pressed.edit_text(current_mode_text(mode.name),
                                    reply_markup=modes_keyboard(mode.name))
        elif pressed is not None:  # too old for Telegram to show us, yet it is ours to edit
            await bot.edit_message_text(current_mode_text(mode.name), chat_id=pressed.chat.id,
                                        message_id=pressed.message_id,
                                        reply_markup=modes_keyboard(mode.name))
    except TelegramBadRequest as error:
        if not not_modified(error):  # the same mode tapped twice
            raise


async def unknown_mode(query: CallbackQuery) -> None:
    await query.answer(_("This mode does not exist. Please choose one from the list."),
                       show_alert=True)


def current_mode_text(name: str) -> str:
    mode = MODES_BY_NAME[name]
    return _("Current mode: {emoji} {label}\n{description}\n\nChoose a mode:").format(
        emoji=mode.emoji, label=mode.label, description=mode.description)


def make_router() -> Router:
    router = Router(name="modes")
    router.message.register(show_modes, Commands.mode.filter())
    router.callback_query.register(choose_mode, ModeCallback.filter(F.name.in_(MODES_BY_NAME)))
    router.callback_query.register(unknown_mode, ModeCallback.filter())
    return router
