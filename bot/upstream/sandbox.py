"""A fake chatinfo.ru GPT API that follows the published spec, for tests and trying the bot.

Run it on its own with `python -m bot.upstream.sandbox`, then point CHATINFO_BASE_URL at it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import logging
import random
import signal
import time
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from bot.config import MAX_CONTENT_CHARS, RATE_LIMITS
from bot.modes import MODES_BY_NAME
from bot.upstream.client import CREATE_TIMEOUT

logger = logging.getLogger(__name__)

ENDPOINTS = ("create_request", "get_response", "units")
WINDOW = 60.0
IN_FLIGHT = -1  # Served.status of a call still being answered
BAD_KEY = "Неверный ключ API"
NOT_PRESTIGE = "Использовать API можно только на тарифе Престиж. Ваш тариф: Бесплатный."
NO_UNITS = "Недостаточно API Units для создания запроса. Купить еще: https://chatinfo.ru/prices"
NOT_FOUND = "Запрос не найден"
# Copied from the spec as is: the missing and trailing commas make it invalid JSON, and
# clients have to survive exactly that.
TOO_MANY_BODY = (
    '{\n  \t"success": false\n\t"error": "Кажется, вы отправляете запросы слишком часто.'
    ' Обновите страницу, чтобы продолжить",\n}'
)


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour. `delay` comes first; then `drop` or `status`/`body` replace
    the reply. A pure delay still answers normally, just late (enough for a client timeout).
    `after_effect` processes the call first (create_request spends a unit and makes an id),
    so the client cannot tell whether its request went through."""

    status: int | None = None
    body: str = ""
    content_type: str = "text/html"
    delay: float = 0.0
    drop: bool = False
    after_effect: bool = False

    @classmethod
    def http(
        cls,
        status: int = 502,
        body: str = "<html><body>Bad Gateway</body></html>",
        *,
        after_effect: bool = False,
    ) -> Fault:
        return cls(status=status, body=body, after_effect=after_effect)

    @classmethod
    def truncated(cls, *, after_effect: bool = False) -> Fault:
        return cls(
            status=200,
            body='{"success": true, "units',
            content_type="application/json",
            after_effect=after_effect,
        )

    @classmethod
    def slow(cls, delay: float, *, after_effect: bool = False) -> Fault:
        return cls(delay=delay, after_effect=after_effect)

    @classmethod
    def disconnect(cls, *, after_effect: bool = False) -> Fault:
        return cls(drop=True, after_effect=after_effect)

    @classmethod
    def rate_limited(cls) -> Fault:
        """A 429 with the spec's invalid-JSON body, as if another client had used the window."""
        return cls(status=429, body=TOO_MANY_BODY, content_type="application/json")

    @classmethod
    def not_found(cls) -> Fault:
        """The 404 an unknown id gets, for an id the server does know (a flaky lookup)."""
        body = json.dumps({"success": False, "error": NOT_FOUND}, ensure_ascii=False)
        return cls(status=404, body=body, content_type="application/json")

    @property
    def kind(self) -> str:
        """A short name for reports: "drop", "slow", "http 502", "truncated" ..."""
        if self.drop:
            name = "drop"
        elif self.status == 200:
            name = "truncated"
        elif self.status is not None:
            name = f"http {self.status}"
        else:
            name = "slow"
        return f"{name} (spent)" if self.after_effect else name


def standard_faults(slow_delay: float, hung_create: float | None = None
                    ) -> dict[str, list[Fault]]:
    """Every kind of misbehaviour per endpoint, for random injection.

    `slow_delay` should exceed the client's read timeout of polls so a slow reply is a
    timeout; a create is waited for longer. `hung_create`, beyond that, is a create the
    client gives up on, processed after it: it spends a unit unseen.
    """
    transient = [Fault.http(500, "Internal Server Error"), Fault.http(502), Fault.slow(slow_delay),
                 Fault.disconnect(), Fault.truncated(), Fault.rate_limited()]
    hung = [] if hung_create is None else [Fault.slow(hung_create)]
    return {
        "create_request": [*transient, *hung, Fault.http(502, after_effect=True),
                           Fault.disconnect(after_effect=True), Fault.truncated(after_effect=True)],
        "get_response": [*transient, Fault.not_found()],
        "units": [Fault.http(502), Fault.disconnect(), Fault.rate_limited()],
    }


@dataclass(frozen=True)
class Served:
    """One HTTP call as the fake saw it, in arrival order."""

    endpoint: str
    status: int  # 0: the connection was dropped without a reply; IN_FLIGHT: not answered yet
    fault: Fault | None
    random_fault: bool  # drawn by inject_random rather than queued by inject
    content: str | None  # create_request's content as sent (before the 5000 cut)
    request_id: int | None  # get_response's id
    arrived_at: float  # on the fake's clock
    key: str | None = None  # the API key it carried


@dataclass
class FakeRequest:
    id: int
    key: str
    mode: str
    content: str
    result: str
    created_at: float
    ready_at: float
    served_at: float | None = None  # first 200 with the result


class _RejectError(Exception):
    def __init__(self, status: int, error: str, *, raw_body: bool = False, **extra: Any) -> None:
        super().__init__(error)
        self.response = (
            web.Response(status=status, text=error, content_type="application/json")
            if raw_body
            else web.json_response({"success": False, **extra, "error": error}, status=status)
        )


class FakeChatinfo:
    def __init__(
        self,
        keys: Mapping[str, str] | None = None,
        *,
        units: int = 1000,
        key_units: Mapping[str, int] | None = None,
        solve_time: Callable[[str, str], float] | float = 2.0,
        answer: Callable[[str, str], str] | None = None,
        limits: Mapping[str, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        window: float = WINDOW,
    ) -> None:
        self.keys = dict(keys if keys is not None else {"test-key": "prestige"})
        self.units = units  # one account behind every key, like one subscription,
        # except the keys with an account of their own (a pool of keys): key -> balance
        self.key_units = dict(key_units or {})
        self.solve_time = solve_time
        self.answer = answer or (lambda mode, content: f"[{mode}] {content}")
        self.limits = {**RATE_LIMITS, **(limits or {})}
        self.clock = clock
        self.window = window  # seconds over which `limits` count; tests may shrink it
        self.calls: Counter[str] = Counter()  # every HTTP call, faults included
        self.statuses: Counter[tuple[str, int]] = Counter()  # status 0 = dropped connection
        self.served: list[Served] = []  # every HTTP call in arrival order, faults included
        self.requests: list[FakeRequest] = []
        self._by_id: dict[int, FakeRequest] = {}
        self._next_id = 1
        self._faults: dict[str, deque[Fault]] = defaultdict(deque)
        self._rate_limited_until: dict[str, float] = {}  # endpoint -> clock() of the end
        self._random_faults: Mapping[str, Sequence[Fault]] = {}
        self._random_rate = 0.0
        self._random = {name: random.Random(f"0/{name}") for name in ENDPOINTS}
        self._windows: dict[tuple[str, str], deque[float]] = defaultdict(deque)
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    def units_of(self, key: str) -> int:
        """The balance behind `key`: its own, or the shared account's."""
        return self.key_units.get(key, self.units)

    def inject(self, endpoint: str, fault: Fault, times: int = 1) -> None:
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}")
        self._faults[endpoint].extend([fault] * times)

    def rate_limit_for(self, endpoint: str, seconds: float) -> None:
        """Answer every call to `endpoint` with the spec's 429 for `seconds`, as when
        another program on the key uses up the window (counted as injected faults)."""
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}")
        self._rate_limited_until[endpoint] = self.clock() + seconds

    def inject_random(
        self, faults: Mapping[str, Sequence[Fault]], rate: float, *, seed: int = 0
    ) -> None:
        """From now on each call fails with probability `rate`, with a fault drawn uniformly
        from its endpoint's list (endpoints not listed never fail). Queued `inject` faults
        go first. Each endpoint draws from its own generator seeded from `seed`, so the
        faults create_request sees repeat whatever the polling around it does.
        `rate=0` turns random faults off."""
        unknown = set(faults) - set(ENDPOINTS)
        if unknown:
            raise ValueError(f"unknown endpoints {sorted(unknown)}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        self._random_faults = {name: tuple(kinds) for name, kinds in faults.items() if kinds}
        self._random_rate = rate
        self._random = {name: random.Random(f"{seed}/{name}") for name in ENDPOINTS}

    def created_for(self, content: str) -> list[FakeRequest]:
        """The requests (each one spent unit) made for `content`."""
        sent = content[:MAX_CONTENT_CHARS]
        return [request for request in self.requests if request.content == sent]

    def served_for(self, endpoint: str, *, content: str | None = None,
                   request_id: int | None = None) -> list[Served]:
        return [call for call in self.served if call.endpoint == endpoint
                and (content is None or call.content == content)
                and (request_id is None or call.request_id == request_id)]

    @property
    def in_flight(self) -> int:
        """Calls still being answered (a slow fault holds its call past the client's timeout)."""
        return sum(1 for call in self.served if call.status == IN_FLIGHT)

    def generated_429s(self, key: str | None = None) -> int:
        """429s the fake's own rate limits produced (injected ones do not count), to calls
        with `key` if given."""
        return sum(1 for call in self.served if call.status == 429 and call.fault is None
                   and (key is None or call.key == key))

    async def wait_for(
        self,
        predicate: Callable[[], bool | Awaitable[bool]],
        timeout: float = 10.0,
    ) -> None:
        """Poll `predicate` (sync or async) every 20 ms on the real clock."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await _truth(predicate()):
            if loop.time() >= deadline:
                raise AssertionError(f"condition not met within {timeout} s")
            await asyncio.sleep(0.02)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application()
        for name in ENDPOINTS:
            app.router.add_post(f"/api/gpt/{name}", self._endpoint(name))
        # Short grace period: a handler stuck in an injected delay must not hold up stop().
        self._runner = web.AppRunner(app, shutdown_timeout=0.1, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self.base_url = f"http://{bound_host}:{bound_port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _endpoint(self, name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            self.calls[name] += 1
            # A real server counts a call against its rate limit when it arrives, not when
            # it finishes; a delayed reply must not shift the stamp into a later window.
            arrived = self.clock()
            # Read before any injected delay, so a client that times out mid-delay
            # does not turn into a read error here.
            raw = await request.read()
            fault, drawn = self._next_fault(name)
            index = len(self.served)
            content, request_id, key = _identify(raw)
            self.served.append(Served(name, IN_FLIGHT, fault, drawn, content, request_id,
                                      arrived, key))
            response = await self._respond(name, raw, fault, arrived)
            status = 0 if response is None else response.status
            self.statuses[name, status] += 1
            self.served[index] = replace(self.served[index], status=status)
            if response is None:
                # The client sees the socket close with no reply; what we return goes nowhere.
                if request.transport is not None:
                    request.transport.abort()
                return web.Response(status=499)
            logger.debug("%s -> %d", name, response.status)
            return response

        return handle

    def _next_fault(self, name: str) -> tuple[Fault | None, bool]:
        """The fault for this call, and whether it was drawn at random."""
        if self._faults[name]:
            return self._faults[name].popleft(), False
        if self.clock() < self._rate_limited_until.get(name, 0.0):
            return Fault.rate_limited(), False
        kinds = self._random_faults.get(name)
        draw = self._random[name]
        # Draw for every call, faulted or not, so one seed gives one sequence of draws.
        if kinds and draw.random() < self._random_rate:
            return draw.choice(kinds), True
        return None, False

    async def _respond(
        self, name: str, raw: bytes, fault: Fault | None, arrived: float
    ) -> web.Response | None:
        if fault is None:
            return self._process(name, raw, arrived)
        processed = self._process(name, raw, arrived) if fault.after_effect else None
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.drop:
            return None
        if fault.status is not None:
            return web.Response(
                status=fault.status, text=fault.body, content_type=fault.content_type
            )
        return processed if processed is not None else self._process(name, raw, arrived)

    def _process(self, name: str, raw: bytes, arrived: float) -> web.Response:
        try:
            key, body = self._admit(name, raw, arrived)
            if name == "create_request":
                return self._create(key, body)
            if name == "get_response":
                return self._get(key, body)
            return web.json_response({"success": True, "units": self.units_of(key)})
        except _RejectError as exc:
            return exc.response

    def _admit(self, name: str, raw: bytes, arrived: float) -> tuple[str, dict[str, Any]]:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            raise _RejectError(400, "Тело запроса должно быть JSON-объектом")
        key = body.get("key")
        tariff = self.keys.get(key) if isinstance(key, str) else None
        if not isinstance(key, str) or tariff is None:
            raise _RejectError(403, BAD_KEY)
        if tariff != "prestige":
            raise _RejectError(403, NOT_PRESTIGE)
        # Sliding window of the calls it let through: a client hammering through its 429s
        # is not locked out for longer than the spec's per-minute limit implies. Calls
        # refused later (no units) did pass it, so they count.
        window = self._windows[key, name]
        while window and window[0] <= arrived - self.window:
            window.popleft()
        if len(window) >= self.limits[name]:
            raise _RejectError(429, TOO_MANY_BODY, raw_body=True)
        window.append(arrived)
        return key, body

    def _create(self, key: str, body: dict[str, Any]) -> web.Response:
        content, mode = body.get("content"), body.get("mode")
        if not isinstance(content, str):
            raise _RejectError(400, "content must be a string")
        # The spec lists modes (the bot's registry holds the same list) but not what
        # happens to others; we answer as "chat" rather than invent an error text the real
        # server may not have.
        if not isinstance(mode, str) or mode not in MODES_BY_NAME:
            mode = "chat"
        if self.units_of(key) <= 0:
            raise _RejectError(403, NO_UNITS, units=0)
        content = content[:MAX_CONTENT_CHARS]  # the spec cuts silently, so do we
        if key in self.key_units:
            self.key_units[key] -= 1
        else:
            self.units -= 1
        now = self.clock()
        solve = self.solve_time(mode, content) if callable(self.solve_time) else self.solve_time
        record = FakeRequest(
            self._next_id,
            key,
            mode,
            content,
            self.answer(mode, content),
            created_at=now,
            ready_at=now + solve,
        )
        self._next_id += 1
        self.requests.append(record)
        self._by_id[record.id] = record
        return web.json_response({"success": True, "units": self.units_of(key),
                                  "id": record.id})

    def _get(self, key: str, body: dict[str, Any]) -> web.Response:
        request_id = body.get("id")
        if not isinstance(request_id, int) or isinstance(request_id, bool):
            raise _RejectError(400, "id must be an integer")
        record = self._by_id.get(request_id)
        # The spec has no error for an unknown id; a 404 with an error text is what the
        # client's generic "error" branch would expect. Another key's id is unknown too.
        if record is None or record.key != key:
            raise _RejectError(404, NOT_FOUND)
        now = self.clock()
        if now < record.ready_at:
            return web.json_response({"success": False, "solving": True}, status=202)
        if record.served_at is None:
            record.served_at = now
        return web.json_response({"success": True, "solving": False, "result": record.result})


def _identify(raw: bytes) -> tuple[str | None, int | None, str | None]:
    """The content (create_request) or id (get_response) a call carried, and its key, for
    the journal."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None, None, None
    if not isinstance(body, dict):
        return None, None, None
    content, request_id, key = body.get("content"), body.get("id"), body.get("key")
    return (content if isinstance(content, str) else None,
            request_id if isinstance(request_id, int) and not isinstance(request_id, bool)
            else None,
            key if isinstance(key, str) else None)


async def _truth(value: bool | Awaitable[bool]) -> bool:
    return await value if inspect.isawaitable(value) else value


async def _serve(args: argparse.Namespace) -> None:
    keys = args.key or ["test-key"]
    server = FakeChatinfo(dict.fromkeys(keys, "prestige"), units=args.units,
                          key_units=dict.fromkeys(keys, args.units) if len(keys) > 1 else None,
                          solve_time=args.solve_time)
    if args.fault_rate:
        server.inject_random(standard_faults(args.slow_delay, CREATE_TIMEOUT + 5),
                             args.fault_rate, seed=args.seed)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Windows has no add_signal_handler; Ctrl-C arrives as KeyboardInterrupt there.
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    url = await server.start(args.host, args.port)
    try:
        print(f"Fake chatinfo listening on {url} - use API key(s) {', '.join(keys)}",
              flush=True)
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake chatinfo.ru GPT API for trying the bot.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--units", type=int, default=1000)
    parser.add_argument("--solve-time", type=float, default=3.0, help="seconds per answer")
    parser.add_argument("--key", action="append",
                        help="a valid Prestige key (default test-key); repeat it for a pool "
                             "of keys, each with --units of its own")
    parser.add_argument("--fault-rate", type=float, default=0.0,
                        help="share of calls that fail at random (0 to 1), of every kind")
    parser.add_argument("--slow-delay", type=float, default=25.0,
                        help="seconds a 'slow' fault holds its reply (beyond the bot's timeout)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random faults")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logger.setLevel(logging.DEBUG)  # someone trying the bot by hand wants to see each call
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
