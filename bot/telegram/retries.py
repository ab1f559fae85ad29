"""Telegram calls that survive Telegram's own failures, and what its refusals mean."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_ATTEMPTS = 6
# A Bad Request says what went wrong only in words; these are the ones the bot acts on.
_NOT_MODIFIED = ("not modified",)
# The message to edit was deleted, is too old, or (inline) its id is no longer valid.
_MESSAGE_GONE = ("message_id_invalid", "not found", "can't be edited")
_BAD_ENTITIES = ("entit",)  # "can't parse entities: …"


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


def not_modified(error: TelegramBadRequest) -> bool:
    """The edit would change nothing: what it asks for is shown already."""
    return _says(error, _NOT_MODIFIED)


def message_gone(error: TelegramBadRequest) -> bool:
    """The message to edit is gone, or can no longer be edited."""
    return _says(error, _MESSAGE_GONE)


def entities_rejected(error: TelegramBadRequest) -> bool:
    """Telegram refused the formatting (the entities), not the text."""
    return _says(error, _BAD_ENTITIES)


def _says(error: TelegramBadRequest, phrases: tuple[str, ...]) -> bool:
    text = error.message.lower()
    return any(phrase in text for phrase in phrases)
