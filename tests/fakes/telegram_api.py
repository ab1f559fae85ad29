"""A fake Telegram Bot API server for end-to-end tests of the bot.

Start it, point the bot at it with ``TELEGRAM_API_URL``, push updates in and
assert on the recorded calls::

    async with FakeTelegramAPI() as tg:
        tg.push_update(message_update(1, "/start"))
        [call] = await tg.wait_calls("sendMessage", 1)

Users in ``blocked`` have blocked the bot: a message to them gets Telegram's 403.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

from aiohttp import web

JSON = dict[str, Any]

_COMPLEX_KEYS = frozenset({
    "reply_markup", "entities", "allowed_updates", "commands", "scope", "link_preview_options",
    "reply_parameters", "caption_entities", "media", "results", "button",
})  # fmt: skip
_INT_KEYS = frozenset(
    {"chat_id", "message_id", "offset", "limit", "timeout", "user_id", "from_chat_id"}
)
_TRUE_METHODS = (
    "answerCallbackQuery", "answerInlineQuery", "sendChatAction", "setMyCommands",
    "deleteMyCommands", "deleteWebhook", "setWebhook", "close", "logOut",
)  # fmt: skip
_KNOWN_METHODS = {
    name.lower(): name
    for name in (*_TRUE_METHODS, "getMe", "getUpdates", "sendMessage", "editMessageText",
                 "editMessageReplyMarkup", "deleteMessage", "getMyCommands", "copyMessage")
}  # fmt: skip
BLOCKED = "Forbidden: bot was blocked by the user"
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are "
    "exactly the same as a current content and reply markup of the message"
)


@dataclass
class Call:
    method: str
    params: JSON
    token: str
    at: float
    failed: bool = False
    result: Any = None  # what the fake answered, if it succeeded


@dataclass
class _Fault:
    method: str  # lower-case
    times: int
    status: int = 0
    description: str = ""
    retry_after: int | None = None
    chat_id: int | None = None
    disconnect: bool = False


@dataclass
class _Hold:
    method: str  # lower-case
    passing: int  # calls still let through before the hold begins
    released: asyncio.Event


class _ApiError(Exception):
    def __init__(self, status: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.status, self.description, self.retry_after = status, description, retry_after


def _decode(key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    parsers: tuple[Callable[[str], Any], ...] = ()
    if key in _COMPLEX_KEYS:
        parsers = (json.loads,)
    elif key in _INT_KEYS:
        parsers = (int, float) if key == "timeout" else (int,)
    for parse in parsers:
        try:
            return parse(value)
        except ValueError:
            pass
    return value


class FakeTelegramAPI:
    """Bot API stand-in recording every call; see the module docstring for usage."""

    def __init__(self, valid_token: str | None = None) -> None:
        self.valid_token = valid_token
        self.calls: list[Call] = []
        self.messages: dict[tuple[int, int], JSON] = {}
        # Messages posted through inline mode, by inline_message_id: what each was edited into.
        self.inline_messages: dict[str, JSON] = {}
        self.updates: list[JSON] = []
        self.blocked: set[int] = set()  # users who blocked the bot
        self.held: list[Call] = []  # calls waiting for `release` (see `hold`)
        self._held_requests: list[web.Request] = []
        self.base_url = ""
        self._faults: list[_Fault] = []
        self._hold: _Hold | None = None
        self._next_update_id = 1
        self._next_message_id: dict[int, int] = {}
        # Replaced on every push so each long poll waiting on the old one wakes up exactly once.
        self._changed = asyncio.Event()
        self._stopping = False
        self._runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> str:
        self._stopping = False
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        # Long polls end as soon as _stopping is set, so a short grace period is plenty.
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def stop(self) -> None:
        self._stopping = True
        self._wake()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeTelegramAPI:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- test controls -----------------------------------------------------------------------

    def push_update(self, update: JSON) -> JSON:
        update = dict(update)
        if "update_id" not in update:
            update["update_id"] = self._next_update_id
        self._next_update_id = max(self._next_update_id, int(update["update_id"]) + 1)
        self.updates.append(update)
        self._wake()
        return update

    def inject(
        self,
        method: str,
        *,
        status: int,
        description: str,
        retry_after: int | None = None,
        times: int = 1,
        chat_id: int | None = None,
    ) -> None:
        self._faults.append(
            _Fault(method.lower(), times, status, description, retry_after, chat_id)
        )

    def hold(self, method: str, *, after: int) -> None:
        """Calls of `method` after the next `after` wait, unanswered, until `release`: the
        bot sent them and Telegram has not acted on them yet. One whose connection is gone
        by then (the bot was killed) is never acted on."""
        self._hold = _Hold(method.lower(), after, asyncio.Event())

    def abandoned(self) -> int:
        """Held calls whose caller is gone (killed, or gave up waiting)."""
        return sum(1 for request in self._held_requests if not _connected(request))

    def release(self) -> None:
        if self._hold is not None:
            self._hold.released.set()
            self._hold = None

    def inject_disconnect(self, method: str, times: int = 1) -> None:
        self._faults.append(_Fault(method.lower(), times, disconnect=True))

    def calls_of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method.lower() == method.lower()]

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 10.0,
    ) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                seen = ", ".join(c.method + (" (failed)" if c.failed else "") for c in self.calls)
                raise AssertionError(f"condition not met within {timeout}s; calls: [{seen}]")
            await asyncio.sleep(0.02)

    async def wait_calls(
        self,
        method: str,
        count: int,
        timeout: float = 10.0,
    ) -> list[Call]:
        def ok() -> list[Call]:
            return [c for c in self.calls_of(method) if not c.failed]

        try:
            await self.wait_for(lambda: len(ok()) >= count, timeout)
        except AssertionError as e:
            raise AssertionError(f"expected {count} x {method}, got {len(ok())}; {e}") from None
        return ok()

    # -- HTTP ---------------------------------------------------------------------------------

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        token, raw_method = request.match_info["token"], request.match_info["method"]
        call = Call(
            _KNOWN_METHODS.get(raw_method.lower(), raw_method),
            await self._read_params(request),
            token,
            time.time(),
        )
        self.calls.append(call)
        try:
            if self.valid_token is not None and token != self.valid_token:
                raise _ApiError(401, "Unauthorized")
            fault = self._take_fault(call)
            if fault is not None and fault.disconnect:
                call.failed = True
                if request.transport is not None:
                    request.transport.close()
                # Nothing can be written any more; the client sees the connection drop.
                return web.Response()
            if fault is not None:
                raise _ApiError(fault.status, fault.description, fault.retry_after)
            if not await self._held_then_wanted(call, request):
                call.failed = True
                return web.Response()  # nobody is left to read it
            result = call.result = await self._dispatch(call)
        except _ApiError as e:
            call.failed = True
            body: JSON = {"ok": False, "error_code": e.status, "description": e.description}
            if e.retry_after is not None:
                body["parameters"] = {"retry_after": e.retry_after}
            return web.json_response(body, status=e.status)
        return web.json_response({"ok": True, "result": result})

    @staticmethod
    async def _read_params(request: web.Request) -> JSON:
        params: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            params.update(await request.json())
        elif request.can_read_body:
            for key, value in (await request.post()).items():
                # Uploaded files are only recorded by name; no test needs their bytes.
                params[key] = value.filename if isinstance(value, web.FileField) else value
        return {key: _decode(key, value) for key, value in params.items()}

    async def _held_then_wanted(self, call: Call, request: web.Request) -> bool:
        """Wait while `hold` holds the call; whether its caller still waits for the answer."""
        hold = self._hold
        if hold is None or hold.method != call.method.lower():
            return True
        if hold.passing > 0:
            hold.passing -= 1
            return True
        self.held.append(call)
        self._held_requests.append(request)
        await hold.released.wait()
        return _connected(request)

    def _take_fault(self, call: Call) -> _Fault | None:
        for fault in self._faults:
            if fault.method == call.method.lower() and (
                fault.chat_id is None or fault.chat_id == call.params.get("chat_id")
            ):
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    async def _dispatch(self, call: Call) -> Any:
        if call.method in _TRUE_METHODS:
            return True
        if call.method == "getUpdates":
            return await self._get_updates(call.params)
        handlers: dict[str, Callable[[Call], Any]] = {
            "getMe": lambda c: self.bot_user(c.token),
            "getMyCommands": lambda c: [],
            "sendMessage": self._send_message,
            "editMessageText": self._edit_message_text,
            "editMessageReplyMarkup": self._edit_reply_markup,
            "deleteMessage": self._delete_message,
            "copyMessage": self._copy_message,
        }
        if handler := handlers.get(call.method):
            return handler(call)
        raise _ApiError(404, "Not Found: method not found")

    @staticmethod
    def bot_user(token: str) -> JSON:
        prefix = token.split(":", 1)[0]
        bot_id = int(prefix) if prefix.isdigit() else 42
        return {"id": bot_id, "is_bot": True, "first_name": "FakeBot", "username": "fake_bot"}

    async def _get_updates(self, p: JSON) -> list[JSON]:
        offset, limit = int(p.get("offset", 0)), int(p.get("limit", 100))
        if offset > 0:
            # Telegram treats an offset as confirmation of every earlier update.
            self.updates = [u for u in self.updates if u["update_id"] >= offset]
        deadline = time.monotonic() + float(p.get("timeout", 0))
        while not self.updates and not self._stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                break
        return self.updates[:limit]

    def _new_message_id(self, chat_id: int) -> int:
        if chat_id in self.blocked:
            raise _ApiError(403, BLOCKED)
        message_id = self._next_message_id.get(chat_id, 1000)
        self._next_message_id[chat_id] = message_id + 1
        return message_id

    def _send_message(self, call: Call) -> JSON:
        chat_id = int(call.params["chat_id"])
        message_id = self._new_message_id(chat_id)
        message = {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": _chat(chat_id),
            "from": self.bot_user(call.token),
            "text": call.params.get("text", ""),
        }
        if markup := _inline_markup(call.params):
            message["reply_markup"] = markup
        self.messages[(chat_id, message_id)] = message
        return message

    def _copy_message(self, call: Call) -> JSON:
        """Any message may be copied (the fake does not keep the users' own messages)."""
        chat_id = int(call.params["chat_id"])
        message_id = self._new_message_id(chat_id)
        self.messages[(chat_id, message_id)] = {
            "message_id": message_id, "date": int(time.time()), "chat": _chat(chat_id),
            "copy_of": (int(call.params["from_chat_id"]), int(call.params["message_id"]))}
        return {"message_id": message_id}

    def copies_of(self, from_chat_id: int, message_id: int) -> dict[int, int]:
        """How many copies of that message each chat got."""
        counts: dict[int, int] = {}
        for (chat_id, _), message in self.messages.items():
            if message.get("copy_of") == (from_chat_id, message_id):
                counts[chat_id] = counts.get(chat_id, 0) + 1
        return counts

    def _edit_message_text(self, call: Call) -> JSON | bool:
        if (inline_id := call.params.get("inline_message_id")) is not None:
            # Any id is taken as a message a user posted from the bot's inline results.
            self.inline_messages[str(inline_id)] = {
                "text": call.params.get("text", ""), "reply_markup": _inline_markup(call.params)}
            return True
        message = self.messages.get(_key(call.params))
        if message is None:
            raise _ApiError(400, "Bad Request: message to edit not found")
        text, markup = call.params.get("text", ""), _inline_markup(call.params)
        if text == message["text"] and markup == message.get("reply_markup"):
            raise _ApiError(400, NOT_MODIFIED)
        message["text"] = text
        # Like Telegram, an edit without reply_markup removes the inline keyboard.
        message.pop("reply_markup", None)
        if markup:
            message["reply_markup"] = markup
        message["edit_date"] = int(time.time())
        return message

    def _edit_reply_markup(self, call: Call) -> JSON:
        message = self.messages.get(_key(call.params))
        if message is None:
            raise _ApiError(400, "Bad Request: message to edit not found")
        message.pop("reply_markup", None)
        if isinstance(markup := call.params.get("reply_markup"), dict):
            message["reply_markup"] = markup
        return message

    def _delete_message(self, call: Call) -> bool:
        if self.messages.pop(_key(call.params), None) is None:
            raise _ApiError(400, "Bad Request: message to delete not found")
        return True


def _connected(request: web.Request) -> bool:
    return request.transport is not None and not request.transport.is_closing()


def _key(p: JSON) -> tuple[int, int]:
    try:
        return int(p["chat_id"]), int(p["message_id"])
    except (KeyError, ValueError):
        return 0, 0


def _chat(chat_id: int, chat_type: str | None = None, first_name: str = "Ann") -> JSON:
    chat_type = chat_type or ("private" if chat_id > 0 else "supergroup")
    if chat_type == "private":
        return {"id": chat_id, "type": chat_type, "first_name": first_name}
    return {"id": chat_id, "type": chat_type, "title": "Test Group"}


def _inline_markup(p: JSON) -> JSON | None:
    markup = p.get("reply_markup")
    return markup if isinstance(markup, dict) and "inline_keyboard" in markup else None


# -- update builders ---------------------------------------------------------------------------

_message_ids = itertools.count(1)
_callback_ids = itertools.count(1)
_inline_ids = itertools.count(1)


class MessageOpts(TypedDict, total=False):
    """Optional keywords of the message builders; defaults in brackets."""

    chat_id: int | None  # [user_id]
    message_id: int | None  # [global counter from 1]
    language_code: str  # ["en"]
    first_name: str  # ["Ann"]
    chat_type: str  # ["private"]


def _user(user_id: int, first_name: str = "Ann", lang: str = "en") -> JSON:
    return {"id": user_id, "is_bot": False, "first_name": first_name, "language_code": lang}


def _message(user_id: int, opts: MessageOpts, content: JSON) -> JSON:
    first_name = opts.get("first_name", "Ann")
    chat_id = opts.get("chat_id") or user_id
    return {
        "message_id": opts.get("message_id") or next(_message_ids),
        "date": int(time.time()),
        "chat": _chat(chat_id, opts.get("chat_type", "private"), first_name),
        "from": _user(user_id, first_name, opts.get("language_code", "en")),
        **content,
    }


def message_update(user_id: int, text: str, **opts: Unpack[MessageOpts]) -> JSON:
    content: JSON = {"text": text}
    if text.startswith("/"):
        # Real clients always mark commands with an entity; handlers may rely on it.
        length = len(text.split(maxsplit=1)[0])
        content["entities"] = [{"type": "bot_command", "offset": 0, "length": length}]
    return {"message": _message(user_id, opts, content)}


def sticker_update(user_id: int, *, emoji: str = "🙂", **opts: Unpack[MessageOpts]) -> JSON:
    sticker = {
        "file_id": "sticker-file-id", "file_unique_id": "sticker-unique", "type": "regular",
        "width": 512, "height": 512, "is_animated": False, "is_video": False, "emoji": emoji,
    }  # fmt: skip
    return {"message": _message(user_id, opts, {"sticker": sticker})}


def photo_update(user_id: int, *, caption: str | None = None, **opts: Unpack[MessageOpts]) -> JSON:
    photo = [
        {"file_id": f"photo-{size}", "file_unique_id": f"photo-u-{size}", "width": size,
         "height": size, "file_size": size * 100}
        for size in (90, 320, 1280)
    ]  # fmt: skip
    content: JSON = {"photo": photo}
    if caption is not None:
        content["caption"] = caption
    return {"message": _message(user_id, opts, content)}


def callback_update(
    user_id: int,
    data: str,
    *,
    message_id: int,
    chat_id: int | None = None,
    language_code: str = "en",
    message_text: str = "…",
    bot_id: int = 42,
) -> JSON:
    chat_id = user_id if chat_id is None else chat_id
    return {
        "callback_query": {
            "id": f"cbq-{next(_callback_ids)}",
            "from": _user(user_id, lang=language_code),
            "chat_instance": f"ci-{chat_id}",
            "data": data,
            "message": {
                "message_id": message_id,
                "date": int(time.time()),
                "chat": _chat(chat_id),
                "from": FakeTelegramAPI.bot_user(f"{bot_id}:x"),
                "text": message_text,
            },
        }
    }


def inline_query_update(user_id: int, query: str, *, language_code: str = "en") -> JSON:
    """`@bot query` being typed in some chat."""
    return {"inline_query": {"id": f"iq-{next(_inline_ids)}",
                             "from": _user(user_id, lang=language_code), "query": query,
                             "offset": "", "chat_type": "supergroup"}}


def chosen_inline_result_update(user_id: int, result_id: str, query: str, *,
                                inline_message_id: str | None = None,
                                language_code: str = "en") -> JSON:
    """The user chose a result; Telegram names the message it became only if the result
    had an inline keyboard (pass None for one that had not)."""
    chosen: JSON = {"result_id": result_id, "from": _user(user_id, lang=language_code),
                    "query": query}
    if inline_message_id is not None:
        chosen["inline_message_id"] = inline_message_id
    return {"chosen_inline_result": chosen}
