"""Telegram calls that survive Telegram's own failures."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiogram.exceptions import (
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_ATTEMPTS = 6


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
