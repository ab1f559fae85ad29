"""Callback data factories and keyboards, as pure functions of their input."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from aiogram.filters.callback_data import CallbackData
from aiogram.types import InlineKeyboardMarkup
from aiogram.utils.i18n import gettext as _
from aiogram.utils.keyboard import InlineKeyboardBuilder
from pydantic import Field

from bot.languages import LANGUAGES
from bot.modes import MODES

MODE_COLUMNS = 2


# SQLite's integers stop at 2**63 - 1; a forged bigger id must fail to parse, not to query.
JobId = Annotated[int, Field(ge=1, lt=2**63)]


class ModeCallback(CallbackData, prefix="mode"):
    name: str  # the API's own mode name, e.g. "poems"


class LanguageCallback(CallbackData, prefix="lang"):
    code: str


class RetryCallback(CallbackData, prefix="retry"):
    job_id: JobId


class AnswerAction(StrEnum):
    REGENERATE = "r"
    CONTINUE = "c"
    SHORTER = "s"


class AnswerCallback(CallbackData, prefix="ans"):
    action: AnswerAction
    job_id: JobId


class HistoryCallback(CallbackData, prefix="hist"):
    job_id: JobId


def modes_keyboard(current: str) -> InlineKeyboardMarkup:
    builder = InlineKeyboardBuilder()
    for mode in MODES:
        mark = "✅ " if mode.name == current else ""
        builder.button(
            text=f"{mark}{mode.emoji} {mode.label}",
            callback_data=ModeCallback(name=mode.name),
        )
    builder.adjust(MODE_COLUMNS)
    return builder.as_markup()


def retry_keyboard(job_id: int) -> InlineKeyboardMarkup:
    builder = InlineKeyboardBuilder()
    builder.button(text=_("🔄 Send again"), callback_data=RetryCallback(job_id=job_id))
    return builder.as_markup()


def languages_keyboard(current: str) -> InlineKeyboardMarkup:
    builder = InlineKeyboardBuilder()
    for language in LANGUAGES:
        mark = "✅ " if language.code == current else ""
        builder.button(text=f"{mark}{language.label}",
                       callback_data=LanguageCallback(code=language.code))
    return builder.as_markup()


def answer_keyboard(job_id: int) -> InlineKeyboardMarkup:
    builder = InlineKeyboardBuilder()
    for action, label in ((AnswerAction.REGENERATE, _("🔄 Again")),
                          (AnswerAction.CONTINUE, _("➡️ Continue")),
                          (AnswerAction.SHORTER, _("✂️ Shorter"))):
        builder.button(text=label, callback_data=AnswerCallback(action=action, job_id=job_id))
    return builder.as_markup()


def history_keyboard(job_ids: list[int]) -> InlineKeyboardMarkup:
    builder = InlineKeyboardBuilder()
    for job_id in job_ids:
        builder.button(text=_("📄 #{job}").format(job=job_id),
                       callback_data=HistoryCallback(job_id=job_id))
    builder.adjust(5)
    return builder.as_markup()


def full_answer_keyboard(link: str) -> InlineKeyboardMarkup:
    """Under an inline answer cut to fit: opens the private chat, which shows all of it."""
    builder = InlineKeyboardBuilder()
    builder.button(text=_("📄 Full answer in private chat"), url=link)
    return builder.as_markup()


def open_bot_keyboard(link: str) -> InlineKeyboardMarkup:
    """Under an inline placeholder. Telegram reports which message a chosen inline result
    became (its inline_message_id, which the answer edits) only if it has a keyboard."""
    builder = InlineKeyboardBuilder()
    builder.button(text=_("🤖 Open the bot"), url=link)
    return builder.as_markup()
