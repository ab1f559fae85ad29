"""Keeping outgoing messages within Telegram's limits, before Telegram has to say 429.

Telegram asks for about 30 messages a second per bot, one a second per chat and 20 a
minute per group. aiolimiter's leaky bucket fits these soft limits: a short burst is
fine, a sustained rate is not. (The upstream's hard per-minute limits need the
stricter sliding window in bot/upstream/limiter.py.)

Work nobody waits for (a broadcast) runs `in_background()`: it gets at most its share of
the per-bot rate, and only what answers leave. A background message goes out only while
the bot's bucket is at most half full, so answers always have half a second's burst at
once and the whole rate when they need it; the background waits while they use it.

When answers alone need more than the rate, the bot degrades before it queues: the
throttle's `pressure` (a `PressureGauge`) turns the seconds of messages waiting for the
per-bot rate into a level, and each level leaves out more of what costs messages (see
`Pressure`). Users then get fewer messages, not later ones.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from enum import IntEnum
from typing import Any

from aiogram import Bot
from aiogram.client.session.middlewares.base import (
    BaseRequestMiddleware,
    NextRequestMiddlewareType,
)
from aiogram.methods import (
    CopyMessage,
    EditMessageReplyMarkup,
    EditMessageText,
    ForwardMessage,
    SendDocument,
    SendMessage,
    SendPhoto,
    TelegramMethod,
)
from aiogram.methods.base import Response, TelegramType
from aiolimiter import AsyncLimiter

from bot.config import TELEGRAM_MESSAGES_PER_SECOND

# What puts or changes a message in a chat; callbacks and chat actions are not limited so.
MESSAGE_METHODS = (SendMessage, EditMessageText, EditMessageReplyMarkup, CopyMessage,
                   ForwardMessage, SendDocument, SendPhoto)
PER_CHAT_PER_SECOND = 1
# "We may allow short bursts that go over this limit" (the Bot FAQ): a user who sends a
# few messages at once does not hold up the answer to the one before them.
PER_CHAT_BURST = 3
PER_GROUP_PER_MINUTE = 20
IDLE_LIMITERS_KEPT = 10_000  # per-chat limiters are forgotten once idle beyond this many
DEFAULT_BACKGROUND_SHARE = 1 / 3

# Seconds of answers' messages waiting for the per-bot rate at which each level starts
# (rising), and below which it ends (falling): apart, so that a level does not flap.
PRESSURE_RISES_AT = (0.1, 0.3, 2.0)
PRESSURE_FALLS_BELOW = (0.03, 0.1, 1.0)

_background: ContextVar[bool] = ContextVar("telegram_background", default=False)


def yielding() -> bool:
    """Whether Bot API calls made here now run `in_background()`."""
    return _background.get()


class Pressure(IntEnum):
    """How short the message budget is. Each level also does what those below it do, but
    for one thing: while new create_requests are held, a new request gets its placeholder
    again (saying that it waits), for nothing else would show that it does."""

    NORMAL = 0
    QUIET = 1  # no "typing…" and no progress edits of placeholders
    ONE_MESSAGE = 2  # a new request gets no placeholder: its answer is a reply to it
    HOLD = 3  # new create_requests wait: an answer bought now would wait for Telegram


class PressureGauge:
    """The current `Pressure`, from the backlog of answers' messages, with hysteresis; and
    how many things each level degraded (`degraded`, for /metrics)."""

    def __init__(self, rises_at: tuple[float, ...] = PRESSURE_RISES_AT,
                 falls_below: tuple[float, ...] = PRESSURE_FALLS_BELOW) -> None:
        assert len(rises_at) == len(falls_below) == len(Pressure) - 1
        assert all(fall < rise for fall, rise in zip(falls_below, rises_at, strict=True))
        self._rises_at = rises_at
        self._falls_below = falls_below
        self.level = Pressure.NORMAL
        self.degraded: Counter[Pressure] = Counter()
        self._creates_may_go = asyncio.Event()  # set while the level is below HOLD
        self._creates_may_go.set()

    def observe(self, backlog: float) -> None:
        """The seconds of messages waiting now: a level starts once the backlog reaches its
        rising mark, and ends only once it falls below its (lower) falling mark."""
        rising = Pressure(sum(backlog >= mark for mark in self._rises_at))
        falling = Pressure(sum(backlog >= mark for mark in self._falls_below))
        if rising > self.level:
            self._set(rising)
        elif falling < self.level:
            self._set(falling)

    def degrade(self, level: Pressure) -> None:
        """Count one thing left out (or held) at `level`."""
        self.degraded[level] += 1

    async def creates_may_go(self) -> None:
        """Wait while the level holds new create_requests."""
        await self._creates_may_go.wait()

    def _set(self, level: Pressure) -> None:
        self.level = level
        if level >= Pressure.HOLD:
            self._creates_may_go.clear()
        else:
            self._creates_may_go.set()


def find_throttle(bot: Bot) -> TelegramThrottle | None:
    """The throttle on the bot's session, if one is there."""
    return next((middleware for middleware in bot.session.middleware
                 if isinstance(middleware, TelegramThrottle)), None)


@contextmanager
def in_background() -> Iterator[None]:
    """Bot API calls made inside yield to everyone else's (see the module docstring)."""
    token = _background.set(True)
    try:
        yield
    finally:
        _background.reset(token)


class TelegramThrottle(BaseRequestMiddleware):
    def __init__(self, per_bot_per_second: int = TELEGRAM_MESSAGES_PER_SECOND,
                 background_share: float = DEFAULT_BACKGROUND_SHARE,
                 pressure: PressureGauge | None = None) -> None:
        self._bot = AsyncLimiter(per_bot_per_second, 1)
        self._chats: dict[int, AsyncLimiter] = {}
        # One at a time, evenly spaced: a background burst would take answers' room.
        self.background_rate = per_bot_per_second * background_share
        self._background = AsyncLimiter(1, 1 / self.background_rate)
        # Room in the bot's bucket that background messages leave to answers (and at one
        # message a second, none: or the background would never go).
        self._answers_room = min(per_bot_per_second / 2, per_bot_per_second - 1)
        self.pressure = pressure or PressureGauge()
        self._waiting = 0  # foreground messages waiting for the per-bot rate

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        if isinstance(method, MESSAGE_METHODS):
            if _background.get():
                await self._background_turn()
            else:
                await self._foreground_turn(getattr(method, "chat_id", None))
        return await make_request(bot, method)

    async def _foreground_turn(self, chat_id: Any) -> None:
        if isinstance(chat_id, int):
            async with self._chat(chat_id):
                pass
        if self._bot.has_capacity():
            await self._bot.acquire()  # at once: nothing waits
            return
        # Only the per-bot wait is pressure: one busy chat waits alone and slows nobody.
        self._waiting += 1
        self.pressure.observe(self._waiting / self._bot.max_rate)
        try:
            await self._bot.acquire()
        finally:
            self._waiting -= 1
            self.pressure.observe(self._waiting / self._bot.max_rate)

    async def _background_turn(self) -> None:
        """Its share, then a slot answers do not need. No per-chat limiter: a background
        task sends one message to a chat, which cannot keep up a rate there."""
        async with self._background:
            pass
        # The bucket drains with time and no event marks room in it: look again after
        # the time one message takes to drain.
        while not self._bot.has_capacity(self._answers_room + 1):  # noqa: ASYNC110
            await asyncio.sleep(1 / self._bot.max_rate)
        await self._bot.acquire()  # no await between the check and this: it is at once

    def _chat(self, chat_id: int) -> AsyncLimiter:
        limiter = self._chats.get(chat_id)
        if limiter is None:
            if len(self._chats) >= IDLE_LIMITERS_KEPT:
                self._forget_idle()
            # Negative ids are groups and channels.
            limiter = (AsyncLimiter(PER_GROUP_PER_MINUTE, 60) if chat_id < 0
                       else AsyncLimiter(PER_CHAT_BURST, PER_CHAT_BURST / PER_CHAT_PER_SECOND))
            self._chats[chat_id] = limiter
        return limiter

    def _forget_idle(self) -> None:
        for chat_id, limiter in list(self._chats.items()):
            if limiter.has_capacity(limiter.max_rate):
                del self._chats[chat_id]
