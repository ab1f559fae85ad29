"""Telegram calls that survive Telegram's own failures, and the "typing" indicator."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import TypeVar

from aiogram import Bot
from aiogram.enums import ChatAction
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_ATTEMPTS = 6
TYPING_EVERY = 4.5  # Telegram shows "typing" for 5 s after each action


async def with_retries(call: Callable[[], Awaitable[T]], *, attempts: int = MAX_ATTEMPTS) -> T:
    """Run a Bot API call, waiting out 429s and retrying network and server errors.

    Other errors (bad request, forbidden) are the caller's to handle.
    """
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except TelegramRetryAfter as error:
            if attempt == attempts:
                raise
            log.warning("telegram asked to wait %ss", error.retry_after)
            await asyncio.sleep(error.retry_after)
        except (TelegramNetworkError, TelegramServerError) as error:
            if attempt == attempts:
                raise
            log.warning("telegram call failed (%s), attempt %d", type(error).__name__, attempt)
            await asyncio.sleep(min(2.0 ** (attempt - 1), 30.0))
    raise AssertionError("unreachable")  # pragma: no cover


class Typing:
    """One "typing" loop per chat while any of its jobs waits, however many there are."""

    def __init__(self, bot: Bot) -> None:
        self._bot = bot
        self._waiting: Counter[int] = Counter()
        self._loops: dict[int, asyncio.Task[None]] = {}

    @asynccontextmanager
    async def during(self, chat_id: int) -> AsyncIterator[None]:
        self._waiting[chat_id] += 1
        if chat_id not in self._loops:
            self._loops[chat_id] = asyncio.create_task(self._loop(chat_id))
        try:
            yield
        finally:
            self._waiting[chat_id] -= 1
            if self._waiting[chat_id] <= 0:
                del self._waiting[chat_id]
                loop = self._loops.pop(chat_id)
                loop.cancel()
                with suppress(asyncio.CancelledError):
                    await loop

    async def _loop(self, chat_id: int) -> None:
        while True:
            try:
                await self._bot.send_chat_action(chat_id=chat_id, action=ChatAction.TYPING)
            except TelegramAPIError as error:
                # Cosmetic: a failed "typing" must never disturb the job itself.
                log.debug("typing in chat %s failed: %s", chat_id, type(error).__name__)
            await asyncio.sleep(TYPING_EVERY)
