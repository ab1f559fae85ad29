"""Inline mode: `@bot question` in any chat becomes a job when a result is chosen.

A typed query only gets results (nothing is stored or spent); the chosen result's message
is the placeholder, edited by its inline_message_id. A cut answer's button opens the
private chat with `/start answer-<job>`, which shows the whole answer to its owner.
"""

from __future__ import annotations

import logging

from aiogram import Bot, F, Router
from aiogram.enums import ChatType
from aiogram.filters import CommandObject, CommandStart
from aiogram.types import (
    ChosenInlineResult,
    InlineQuery,
    InlineQueryResultsButton,
    InlineQueryResultUnion,
    Message,
)
from aiogram.utils.i18n import gettext as _

from bot.jobs.submit import Submitter, is_blank
from bot.telegram.commands import answer_from_payload
from bot.telegram.delivery import Delivery
from bot.telegram.inline_results import (
    CACHE_SECONDS,
    INLINE_QUERY_LIMIT,
    ask_result,
    empty_query_hint,
    inline_modes,
    mode_of_result,
    private_chat_button,
    too_long_hint,
)
from bot.telegram.render import Part, render
from storage.jobs import JobRepo
from storage.users import UserRepo

log = logging.getLogger(__name__)


async def offer(query: InlineQuery, bot: Bot, users: UserRepo) -> None:
    username = (await bot.me()).username or ""
    if is_blank(query.query):
        await answer(query, [empty_query_hint(username)])
    elif not fits_inline(query.query):
        await answer(query, [too_long_hint()], button=private_chat_button())
    else:
        current = await users.mode(query.from_user.id)
        await answer(query, [ask_result(mode, current=mode.name == current,
                                        bot_link=f"https://t.me/{username}")
                             for mode in inline_modes(current)])


async def answer(query: InlineQuery, results: list[InlineQueryResultUnion],
                 button: InlineQueryResultsButton | None = None) -> None:
    # Personal: the results follow the user's mode and language, never another's.
    await query.answer(results, cache_time=CACHE_SECONDS, is_personal=True, button=button)


def fits_inline(query: str) -> bool:
    return len(query) < INLINE_QUERY_LIMIT


async def ask_chosen(chosen: ChosenInlineResult, submitter: Submitter, delivery: Delivery,
                     locale: str) -> None:
    """The one moment inline mode spends: the user chose to ask."""
    mode = mode_of_result(chosen.result_id)
    if mode is None or is_blank(chosen.query) or not fits_inline(chosen.query):
        return  # a hint was chosen: it asked nothing
    if chosen.inline_message_id is None:
        # Only a result with a keyboard reports its message; ours all have one.
        log.warning("chosen inline result %r came without an inline_message_id; not asked",
                    chosen.result_id)
        return
    refusal = await submitter.submit_inline(
        user_id=chosen.from_user.id, inline_message_id=chosen.inline_message_id,
        question=chosen.query.strip(), mode=mode, locale=locale)
    if refusal is not None:
        await delivery.show_inline(chosen.inline_message_id,
                                   Part(submitter.refusal_text(refusal)))


async def show_full_answer(message: Message, command: CommandObject, jobs: JobRepo,
                           delivery: Delivery) -> None:
    """`/start answer-<job>` from the button under a cut inline answer: all of it, in parts,
    to the one who asked (anyone in that chat can tap the button)."""
    assert message.from_user is not None
    job_id = answer_from_payload(command.args or "")
    job = await jobs.get(job_id) if job_id is not None else None
    if job is None or job.result is None:
        await message.answer(_("This link is no longer valid."))
        return
    if job.user_id != message.from_user.id:
        await message.answer(_("Only the one who asked can open this answer."))
        return
    for part in render(job.result):
        await delivery.post(message.chat.id, part)


def make_router() -> Router:
    router = Router(name="inline")
    router.inline_query.register(offer)
    router.chosen_inline_result.register(ask_chosen)
    router.message.register(
        show_full_answer, F.chat.type == ChatType.PRIVATE,
        CommandStart(deep_link=True, magic=F.args.func(answer_from_payload)))
    return router
