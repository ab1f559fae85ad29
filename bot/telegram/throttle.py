"""Keeping outgoing messages within Telegram's limits, before Telegram has to say 429.

Telegram asks for about 30 messages a second per bot, one a second per chat and 20 a
minute per group. aiolimiter's leaky bucket fits these soft limits: a short burst is
fine, a sustained rate is not. (The upstream's hard per-minute limits need the
stricter sliding window in bot/upstream/limiter.py.)
"""

from __future__ import annotations

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
PER_GROUP_PER_MINUTE = 20
IDLE_LIMITERS_KEPT = 10_000  # per-chat limiters are forgotten once idle beyond this many


class TelegramThrottle(BaseRequestMiddleware):
    def __init__(self, per_bot_per_second: int = TELEGRAM_MESSAGES_PER_SECOND) -> None:
        self._bot = AsyncLimiter(per_bot_per_second, 1)
        self._chats: dict[int, AsyncLimiter] = {}

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        if isinstance(method, MESSAGE_METHODS):
            chat_id: Any = getattr(method, "chat_id", None)
            if isinstance(chat_id, int):
                async with self._chat(chat_id):
                    pass
            async with self._bot:
                pass
        return await make_request(bot, method)

    def _chat(self, chat_id: int) -> AsyncLimiter:
        limiter = self._chats.get(chat_id)
        if limiter is None:
            if len(self._chats) >= IDLE_LIMITERS_KEPT:
                self._forget_idle()
            # Negative ids are groups and channels.
            limiter = (AsyncLimiter(PER_GROUP_PER_MINUTE, 60) if chat_id < 0
                       else AsyncLimiter(PER_CHAT_PER_SECOND, 1))
            self._chats[chat_id] = limiter
        return limiter

    def _forget_idle(self) -> None:
        for chat_id, limiter in list(self._chats.items()):
            if limiter.has_capacity(limiter.max_rate):
                del self._chats[chat_id]
