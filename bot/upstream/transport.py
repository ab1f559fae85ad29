"""httpx's transport over aiohttp: the chatinfo client keeps httpx's API, aiohttp does the I/O.

A poll of the fake server costs 0.42 ms of CPU this way, 0.81 ms through httpx's own transport
(httpcore, h11, anyio) and 0.22 ms through aiohttp alone; the bot makes some 200 a second.

What matters beyond speed is which failures can have reached the server: the client retries
a create_request only when it surely did not (httpx.ConnectError, ConnectTimeout,
PoolTimeout). aiohttp's exceptions are mapped here so that only failures before a connection
was had become those, and everything after (a dropped connection, a reset, a read timeout, a
garbled reply) becomes an error the client counts as "maybe spent". httpx-aiohttp's map
turns a dropped connection into a ConnectTimeout, hence this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx
from aiohttp.client_proto import ResponseHandler
from aiohttp.connector import Connection

if TYPE_CHECKING:
    from aiohttp.tracing import Trace

# Checked in order, the first match wins: subclasses before their bases.
_ERRORS: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    # Raised only while a connection is being acquired: nothing was sent.
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    # From here on the request may have been sent, whole or in part.
    (asyncio.TimeoutError, httpx.ReadTimeout),  # aiohttp's SocketTimeoutError among them
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),  # a body cut short
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),  # not HTTP we can read
    (aiohttp.ClientError, httpx.ReadError),  # a reset, a broken pipe, ...
    (OSError, httpx.ReadError),
)


def transport_error(error: BaseException) -> httpx.TransportError | None:
    """The httpx error an aiohttp failure amounts to; None for what is not a transport's."""
    for raised, mapped in _ERRORS:
        if isinstance(error, raised):
            return mapped(f"{type(error).__name__}: {error}")
    return None


@contextlib.contextmanager
def _mapped_errors() -> Iterator[None]:
    try:
        yield
    except Exception as error:
        mapped = transport_error(error)
        if mapped is None:
            raise
        raise mapped from error


class _Connector(aiohttp.TCPConnector):
    """aiohttp's pool, leaving out a kept connection the server has hung up on.

    aiohttp learns of a hang-up when its loop next reads the socket; a call that takes the
    connection before that is written into a closed connection and fails as "maybe spent",
    a create_request lost for nothing. One look at the socket, as httpcore takes, closes
    that window.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        # Connections handed out before: only those can have been hung up on while kept. A
        # new one may have bytes waiting that are no hang-up (TLS 1.3 session tickets).
        self._kept: weakref.WeakSet[ResponseHandler] = weakref.WeakSet()

    async def connect(self, req: aiohttp.ClientRequest, traces: list[Trace],
                      timeout: aiohttp.ClientTimeout) -> Connection:
        # Every kept connection may be dead (after a server restart): try each at most once.
        for _ in range(self.limit or 100):
            connection = await super().connect(req, traces, timeout)
            protocol = connection.protocol
            if protocol is None:
                return connection
            if protocol in self._kept and _hung_up(connection):
                connection.close()
                continue
            self._kept.add(protocol)
            return connection
        return await super().connect(req, traces, timeout)


def _hung_up(connection: Connection) -> bool:
    """An idle HTTP/1.1 connection with anything to read has been closed (or broken)."""
    transport = connection.transport
    if transport is None:
        return True
    sock: socket.socket | None = transport.get_extra_info("socket")
    if sock is None:
        return False
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = select.select([sock.fileno()], [], [], 0)  # pragma: no cover - Windows
    return bool(readable)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Sends httpx requests through one aiohttp session and reads each reply whole.

    The replies are small JSON documents, so reading them here keeps every failure inside
    the one mapping above. The session is made at the first request, as aiohttp needs a
    running loop.
    """

    def __init__(self, limits: httpx.Limits) -> None:
        self._limits = limits
        self._session: aiohttp.ClientSession | None = None

    def _open_session(self) -> aiohttp.ClientSession:
        connector = _Connector(
            limit=self._limits.max_connections or 0,
            keepalive_timeout=self._limits.keepalive_expiry or 0,
            # httpx's certificates (certifi), as httpx's own transport would use.
            ssl=httpx.create_ssl_context())
        # httpx decodes the body by its Content-Encoding; aiohttp must pass it as it came.
        return aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._session is None:
            self._session = self._open_session()
        timeout = request.extensions.get("timeout", {})
        with _mapped_errors():
            async with self._session.request(
                    request.method, str(request.url), headers=request.headers.multi_items(),
                    data=request.content or None, allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(
                        total=None, connect=timeout.get("pool"),
                        sock_connect=timeout.get("connect"), sock_read=timeout.get("read")),
            ) as reply:
                content = await reply.read()
        return httpx.Response(reply.status, headers=reply.raw_headers, content=content,
                              request=request)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
