"""The chatinfo.ru GPT API client: three endpoints, typed results, one exception per failure.

The key travels only in request bodies, which are never logged; exception messages
name the endpoint and the kind of failure, never the key or the body we sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from bot.config import RATE_LIMITS
from bot.upstream.limiter import SlidingWindowLimiter
from bot.upstream.transport import AiohttpTransport

log = logging.getLogger(__name__)

CREATE, POLL, UNITS = "create_request", "get_response", "units"
# The connection pool. The scheduler spends the poll budget a few calls at a time (5 in
# any 20 ms); more at once come when the server is slow, and those may open more
# connections. aiohttp keeps the idle ones (taking one costs the same however many there
# are) until they have been idle for httpx's keep-alive expiry, 5 s.
MAX_CONNECTIONS = 64
# Our clock and the server's disagree by transit time; a second of slack keeps a burst
# sent at the edge of our window from landing inside the server's.
WINDOW_SECONDS = 61.0

# Told about every HTTP attempt: the endpoint, the HTTP status or the httpx error that
# stopped it, and the seconds it took (for metrics).
AttemptObserver = Callable[[str, int | httpx.HTTPError, float], None]


class ChatinfoError(Exception):
    """Base of every failure; `upstream_error` keeps the server's own (Russian) text."""

    def __init__(self, message: str, upstream_error: str | None = None) -> None:
        super().__init__(message)
        self.upstream_error = upstream_error


class NotEnoughUnits(ChatinfoError):
    """403 with units 0: the shared balance is spent."""


class AccessDenied(ChatinfoError):
    """403 otherwise: the tariff is not Prestige or the key was rejected."""


class RateLimited(ChatinfoError):
    """429, whose body is not valid JSON. The call did not count."""


class RequestRejected(ChatinfoError):
    """The server answered but refused this request (an unknown id, a bad body)."""

    def __init__(self, message: str, status: int, upstream_error: str | None = None) -> None:
        super().__init__(message, upstream_error)
        self.status = status


class UpstreamUnavailable(ChatinfoError):
    """5xx, timeout, connection failure or an unparsable body.

    `maybe_spent` is True when the call may have reached the server: for
    create_request that means a unit may be gone and an automatic retry could spend
    another one.
    """

    def __init__(self, message: str, *, maybe_spent: bool, connected: bool = True,
                 finished: bool = False) -> None:
        super().__init__(message)
        self.maybe_spent = maybe_spent
        self.connected = connected  # False: the server could not be reached at all
        # True: the server (or its gateway) replied or closed the connection, so it is done
        # with the call; after a timeout (ours, or a gateway's 504) it may still be working.
        self.finished = finished


@dataclass(frozen=True)
class CreatedRequest:
    id: int
    units: int | None


CONNECT_TIMEOUT = 5.0
# Well short of the minute in which the server may still debit a create nobody answered
# (`RunnerPolicy.create_settles_after`).
CREATE_TIMEOUT = 45.0

# These httpx errors happen before the request leaves us, so the server cannot have
# counted it: the only failures besides 429 where retrying create_request is safe.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class ChatinfoClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        create_per_min: int = RATE_LIMITS[CREATE],
        poll_per_min: int = RATE_LIMITS[POLL],
        units_per_min: int = RATE_LIMITS[UNITS],
        attempts: int = 3,
        backoff: float = 0.5,
        timeout: float = 20.0,
        create_timeout: float = CREATE_TIMEOUT,
        window: float = WINDOW_SECONDS,
        transport: httpx.AsyncBaseTransport | None = None,
        observer: AttemptObserver | None = None,
    ) -> None:
        self._key = api_key
        self._observer = observer
        # The limiter stamps a call before it gets a connection; a pool as large as the
        # poll scheduler's concurrency (64) keeps calls from queueing here and reaching
        # the server later than stamped.
        limits = httpx.Limits(max_connections=MAX_CONNECTIONS)
        base = base_url.rstrip("/") + "/api/gpt/"
        # Whole URLs, parsed once: a relative one is parsed and joined on every call.
        self._urls = {endpoint: httpx.URL(base + endpoint) for endpoint in (CREATE, POLL, UNITS)}
        # A create answered late is still an answer; one given up on may have spent a unit
        # nobody can tell from the balance for a minute. Polls are free to try again.
        self._timeouts = {endpoint: httpx.Timeout(timeout, connect=CONNECT_TIMEOUT)
                          for endpoint in (POLL, UNITS)}
        self._timeouts[CREATE] = httpx.Timeout(create_timeout, connect=CONNECT_TIMEOUT)
        self._http = httpx.AsyncClient(
            transport=transport or AiohttpTransport(limits),
            headers={"User-Agent": "chatinfo-telegram-bot"},
        )
        self.limiters = {
            CREATE: SlidingWindowLimiter(create_per_min, window),
            POLL: SlidingWindowLimiter(poll_per_min, window),
            UNITS: SlidingWindowLimiter(units_per_min, window),
        }
        self._attempts = attempts
        self._backoff = backoff

    @property
    def fingerprint(self) -> str:
        """The key's short, one-way name for logs, /units and the metrics."""
        return key_fingerprint(self._key)

    async def close(self) -> None:
        await self._http.aclose()

    async def create_request(self, content: str, mode: str, *,
                             slot_taken: bool = False) -> CreatedRequest:
        """`slot_taken`: the caller already acquired the first attempt's rate-limit slot."""
        body = await self._call(CREATE, {"content": content, "mode": mode}, idempotent=False,
                                slot_taken=slot_taken)
        request_id = body.get("id")
        if body.get("success") is True and not isinstance(request_id, int):
            # It says it worked, so a unit went; without a usable id the answer is lost.
            raise UpstreamUnavailable(f"{CREATE}: success without a usable id",
                                      maybe_spent=True, finished=True)
        if body.get("success") is not True or not isinstance(request_id, int):
            raise _rejected(CREATE, 200, body)
        return CreatedRequest(id=request_id, units=_int_or_none(body.get("units")))

    async def get_response(self, request_id: int, *, slot_taken: bool = False) -> str | None:
        """The answer, or None while the request is still being solved (202)."""
        body = await self._call(POLL, {"id": request_id}, idempotent=True,
                                slot_taken=slot_taken)
        if body.get("solving") is True:
            return None
        result = body.get("result")
        if body.get("success") is not True or not isinstance(result, str):
            raise _rejected(POLL, 200, body)
        return result

    async def units(self) -> int:
        body = await self._call(UNITS, {}, idempotent=True)
        units = _int_or_none(body.get("units"))
        if units is None:
            raise _rejected(UNITS, 200, body)
        return units

    async def _call(self, endpoint: str, payload: dict[str, Any], *, idempotent: bool,
                    slot_taken: bool = False) -> Any:
        """One logical call: bounded retries, each attempt inside the rate limit.

        Retries happen only where the call surely did not count (not sent), plus any
        failure of the free, idempotent endpoints; a 429 on create_request is the caller's
        to wait out.
        """
        for attempt in range(1, self._attempts + 1):
            try:
                if not (slot_taken and attempt == 1):
                    await self.limiters[endpoint].acquire()
                return await self._attempt(endpoint, payload, sent_is_safe=idempotent)
            except (RateLimited, UpstreamUnavailable) as error:
                if isinstance(error, RateLimited):
                    self._learn_limit(endpoint)
                    # A create's 429 goes back to the create queue, which waits out the
                    # server's window; a quick retry here would only meet another 429.
                    retry = idempotent
                else:
                    retry = idempotent or not error.maybe_spent
                if not retry or attempt == self._attempts:
                    raise
                log.warning("chatinfo %s attempt %d failed (%s)", endpoint, attempt, error)
                await asyncio.sleep(self._backoff * 2 ** (attempt - 1))
        raise AssertionError("unreachable")  # pragma: no cover

    def _learn_limit(self, endpoint: str) -> None:
        limiter = self.limiters[endpoint]
        if limiter.rate_limited():
            log.warning("chatinfo %s: 429s below our limit; now %d calls a window instead of "
                        "%d, climbing back while 429s stay rare", endpoint, limiter.limit,
                        limiter.configured)

    async def _attempt(self, endpoint: str, payload: dict[str, Any], *, sent_is_safe: bool) -> Any:
        started = time.monotonic()
        try:
            response = await self._http.post(self._urls[endpoint],
                                             json={**payload, "key": self._key},
                                             timeout=self._timeouts[endpoint])
        except _NOT_SENT as error:
            self._observe(endpoint, error, started)
            raise UpstreamUnavailable(f"{endpoint}: cannot connect ({type(error).__name__})",
                                      maybe_spent=False, connected=False) from None
        except httpx.HTTPError as error:
            self._observe(endpoint, error, started)
            raise UpstreamUnavailable(
                f"{endpoint}: {type(error).__name__}", maybe_spent=not sent_is_safe,
                finished=not isinstance(error, httpx.TimeoutException)) from None
        elapsed = self._observe(endpoint, response.status_code, started)
        if response.status_code != 429:
            self.limiters[endpoint].answered()  # 429s are counted where they are learned
        log.debug("chatinfo %s -> %d in %.3fs", endpoint, response.status_code, elapsed)
        return _interpret(endpoint, response, maybe_spent=not sent_is_safe)

    def _observe(self, endpoint: str, outcome: int | httpx.HTTPError, started: float) -> float:
        elapsed = time.monotonic() - started
        if self._observer is not None:
            self._observer(endpoint, outcome, elapsed)
        return elapsed


def _interpret(endpoint: str, response: httpx.Response, *, maybe_spent: bool) -> Any:
    status = response.status_code
    if status == 429:  # its body is not valid JSON, by the spec: do not parse it
        raise RateLimited(f"{endpoint}: rate limited (429)")
    if status >= 500:
        # Only a gateway's timeout (504) can come back while the server behind it still
        # works on the call; any other 5xx ends it.
        raise UpstreamUnavailable(f"{endpoint}: server error {status}", maybe_spent=maybe_spent,
                                  finished=status != 504)
    try:
        body = response.json()
    except ValueError:
        body = None
    if status == 403:
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(body, dict) and body.get("units") == 0:
            raise NotEnoughUnits(f"{endpoint}: not enough units (403)", error)
        raise AccessDenied(f"{endpoint}: access denied (403)", error)
    if status == 202 and not isinstance(body, dict):
        return {"solving": True}  # the status alone says "still solving"
    if not isinstance(body, dict):
        raise UpstreamUnavailable(f"{endpoint}: unparsable body (HTTP {status})",
                                  maybe_spent=maybe_spent, finished=True)
    if status not in (200, 202):
        raise _rejected(endpoint, status, body)
    return body


def _rejected(endpoint: str, status: int, body: dict[str, Any]) -> RequestRejected:
    error = body.get("error")
    return RequestRejected(f"{endpoint}: rejected (HTTP {status})", status,
                           error if isinstance(error, str) else None)


def key_fingerprint(key: str) -> str:
    """8 hex digits of the key's SHA-256: tells keys apart, gives nothing of them away."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None
