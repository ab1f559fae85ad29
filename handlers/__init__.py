"""aiogram routers, one module per feature; the privacy rule goes first, the fallback last.

The inline router comes before start's: its `/start answer-<job>` links are not greetings.

Routers are built per Dispatcher (an aiogram router can belong to only one).
"""

from __future__ import annotations

from aiogram import Router

from handlers import (
    account,
    admin,
    answers,
    broadcast,
    chat,
    fallback,
    inline,
    language,
    memory,
    mode_choice,
    private,
    start,
)


def get_routers(admin_ids: frozenset[int]) -> list[Router]:
    return [private.make_router(admin_ids), inline.make_router(), start.make_router(),
            mode_choice.make_router(), memory.make_router(), language.make_router(),
            account.make_router(), admin.make_router(admin_ids),
            broadcast.make_router(admin_ids), answers.make_router(),
            chat.make_router(), fallback.make_router()]
