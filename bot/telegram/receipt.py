"""Confirming an update to Telegram only once what it asked for is stored.

The offset of a getUpdates call tells Telegram to forget every update before it, and
aiogram asks again as soon as it has handed the last updates to their handlers: a crash
before a handler stored its request would lose the message. So an update counts as
"unsecured" from when it is handed out until its handling says its request is stored
(`secured`) or ends. While any is, getUpdates asks from the oldest of them instead
(`HandedOut`): Telegram keeps them and sends them again, which are left out before aiogram
sees them. After a crash they come again, and a second copy of a message is ignored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from typing import Any, cast

from aiogram import Bot
from aiogram.client.session.middlewares.base import (
    BaseRequestMiddleware,
    NextRequestMiddlewareType,
)
from aiogram.methods import GetUpdates, TelegramMethod
from aiogram.methods.base import Response, TelegramType
from aiogram.types import Update

log = logging.getLogger(__name__)

# aiogram asks for more before the handlers of the last updates have run; they store
# their requests within milliseconds, so getUpdates gives them this long first. Asking
# again meanwhile would fetch and parse the same updates again.
SECURE_GRACE = 0.1
# While an update is unsecured, getUpdates cannot wait for new ones (Telegram has the
# unsecured ones to send at once): it asks again after this, or as soon as one is secured.
ASK_AGAIN_AFTER = 0.25
# A handler this long without storing anything is not waited for any more: its update is
# confirmed (a bug, or a reply that Telegram holds up; nothing of it is stored anyway).
GIVE_UP_AFTER = 60.0

_on_secured: ContextVar[Callable[[], None] | None] = ContextVar("update_secured", default=None)


@contextmanager
def receipt(on_secured: Callable[[], None]) -> Iterator[None]:
    """Handle an update inside: `secured()` within calls `on_secured`."""
    token = _on_secured.set(on_secured)
    try:
        yield
    finally:
        _on_secured.reset(token)


def secured() -> None:
    """What the update being handled asked for is stored: losing the process now loses
    nothing of it."""
    if (on_secured := _on_secured.get()) is not None:
        on_secured()


class HandedOut(BaseRequestMiddleware):
    """A session middleware: getUpdates confirms no update still unsecured."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._unsecured: dict[int, float] = {}  # update id -> when it was handed out
        self._secured = asyncio.Event()  # set when one is secured
        self._all_secured = asyncio.Event()
        self._all_secured.set()

    def handled(self, update_id: int | None) -> None:
        """The update's request is stored, or its handling is over."""
        if update_id is not None and self._unsecured.pop(update_id, None) is not None:
            self._secured.set()
            if not self._unsecured:
                self._all_secured.set()

    async def __call__(self, make_request: NextRequestMiddlewareType[TelegramType], bot: Bot,
                       method: TelegramMethod[TelegramType]) -> Response[TelegramType]:
        if not isinstance(method, GetUpdates):
            return await make_request(bot, method)
        self._give_up_on_stuck()
        await _wait(self._all_secured, SECURE_GRACE)
        oldest = min(self._unsecured, default=None)
        if oldest is None or method.offset is None or oldest >= method.offset:
            updates = await self._ask(make_request, bot, method)
        else:
            self._secured.clear()
            again = method.model_copy(update={"offset": oldest, "timeout": 0})
            updates = [update for update in await self._ask(make_request, bot, again)
                       if update.update_id >= method.offset]
            if not updates:  # only those already handed out: a moment before the next ask
                await _wait(self._secured, ASK_AGAIN_AFTER)
        now = self._clock()
        self._unsecured.update((update.update_id, now) for update in updates)
        if self._unsecured:
            self._all_secured.clear()
        return cast(Response[TelegramType], updates)

    @staticmethod
    async def _ask(make_request: NextRequestMiddlewareType[Any], bot: Bot,
                   method: GetUpdates) -> list[Update]:
        # Typed as the Response, what comes back is the method's result: the updates.
        updates: Any = await make_request(bot, method)
        return [update for update in updates if isinstance(update, Update)]

    def _give_up_on_stuck(self) -> None:
        cutoff = self._clock() - GIVE_UP_AFTER
        stuck = [update_id for update_id, at in self._unsecured.items() if at < cutoff]
        for update_id in stuck:
            self.handled(update_id)
        if stuck:
            log.warning("%d update(s) handled for over %.0f s without storing a request are "
                        "confirmed to Telegram", len(stuck), GIVE_UP_AFTER)


async def _wait(event: asyncio.Event, timeout: float) -> None:
    with suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
