"""aiogram routers, one module per feature; the fallback router goes last."""

from __future__ import annotations

from aiogram import Router

from handlers import chat, fallback, modes, start


def get_routers() -> list[Router]:
    return [start.router, modes.router, chat.router, fallback.router]
