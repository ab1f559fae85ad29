"""A Bot whose session records every method and answers like Telegram would.

aiogram's own `tests/mocked_bot.py` idea: results and errors go through the real
`check_response`, so TelegramRetryAfter and TelegramBadRequest are raised exactly
as in production.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, TypeVar

from aiogram import Bot
from aiogram.client.session.base import BaseSession
from aiogram.methods import (
    CopyMessage,
    EditMessageText,
    GetFile,
    GetMe,
    SendMessage,
    TelegramMethod,
)
from aiogram.methods.base import TelegramType

M = TypeVar("M", bound=TelegramMethod[Any])
BOT_ID = 42
BOT_USERNAME = "chatinfo_test_bot"


@dataclass
class _Error:
    method: type[TelegramMethod[Any]]
    code: int
    description: str
    retry_after: int | None


class RecordingSession(BaseSession):
    def __init__(self, *, keep_requests: bool = True) -> None:
        super().__init__()
        self.requests: list[TelegramMethod[Any]] = []
        self._keep_requests = keep_requests  # a long benchmark keeps its own small record
        self._errors: list[_Error] = []
        self._next_message_id = 1000
        self.files: dict[str, bytes] = {}  # file_id -> content, served by getFile + download

    def fail_next(self, method: type[TelegramMethod[Any]], code: int, description: str,
                  retry_after: int | None = None) -> None:
        self._errors.append(_Error(method, code, description, retry_after))

    def sent(self, method: type[M]) -> list[M]:
        return [request for request in self.requests if isinstance(request, method)]

    async def make_request(self, bot: Bot, method: TelegramMethod[TelegramType],
                           timeout: int | None = None) -> TelegramType:
        if self._keep_requests:
            self.requests.append(method)
        error = next((e for e in self._errors if isinstance(method, e.method)), None)
        if error is not None:
            self._errors.remove(error)
            body: dict[str, Any] = {"ok": False, "error_code": error.code,
                                    "description": error.description}
            if error.retry_after is not None:
                body["parameters"] = {"retry_after": error.retry_after}
            self.check_response(bot, method, error.code, json.dumps(body))
        body = {"ok": True, "result": self._result(method)}
        response = self.check_response(bot, method, 200, json.dumps(body))
        return response.result  # type: ignore[return-value]

    def _result(self, method: TelegramMethod[Any]) -> Any:
        if isinstance(method, SendMessage | CopyMessage):
            return self._new_message(method)
        if isinstance(method, EditMessageText):
            if method.inline_message_id is not None:
                return True  # Telegram answers an inline message's edit with True
            return self._message(method.chat_id, method.message_id, method.text)
        if isinstance(method, GetMe):
            return {"id": BOT_ID, "is_bot": True, "first_name": "Bot", "username": BOT_USERNAME,
                    "supports_inline_queries": True}
        if isinstance(method, GetFile):
            return {"file_id": method.file_id, "file_unique_id": method.file_id,
                    "file_size": len(self.files[method.file_id]),
                    "file_path": f"documents/{method.file_id}"}
        return True

    def _new_message(self, method: SendMessage | CopyMessage) -> dict[str, Any]:
        self._next_message_id += 1
        if isinstance(method, CopyMessage):  # Telegram answers a copy with its id only
            return {"message_id": self._next_message_id}
        return self._message(method.chat_id, self._next_message_id, method.text)

    @staticmethod
    def _message(chat_id: Any, message_id: Any, text: str | None) -> dict[str, Any]:
        return {"message_id": message_id, "date": int(time.time()), "text": text,
                "chat": {"id": chat_id, "type": "private"},
                "from": {"id": BOT_ID, "is_bot": True, "first_name": "Bot"}}

    async def close(self) -> None:
        pass

    async def stream_content(self, url: str, headers: dict[str, Any] | None = None,
                             timeout: int = 30, chunk_size: int = 65536,
                             raise_for_status: bool = True) -> AsyncGenerator[bytes, None]:
        yield self.files[url.rsplit("/", 1)[-1]]


def mocked_bot() -> tuple[Bot, RecordingSession]:
    session = RecordingSession()
    return Bot(f"{BOT_ID}:TEST-TOKEN", session=session), session
