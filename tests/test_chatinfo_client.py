"""ChatinfoClient against the fake chatinfo server over real HTTP on 127.0.0.1.

Every test counts what the fake saw, so a retry that should not happen (or one that
should) shows up as a wrong number of calls, not just as a different exception.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from bot.upstream.client import (
    AccessDenied,
    ChatinfoClient,
    ChatinfoError,
    CreatedRequest,
    NotEnoughUnits,
    RateLimited,
    RequestRejected,
    UpstreamUnavailable,
)
from bot.upstream.sandbox import BAD_KEY, NO_UNITS, NOT_PRESTIGE, FakeChatinfo, Fault
from bot.upstream.transport import AiohttpTransport
from tests.harness import wait_until

SECRET = "KEY-very-secret-123"
FREE_KEY = "KEY-free-tariff-456"
ATTEMPTS = 3
SOLVE_TIME = 0.2


@pytest.fixture
async def server() -> AsyncIterator[FakeChatinfo]:
    fake = FakeChatinfo({SECRET: "prestige", FREE_KEY: "free"}, units=1000, solve_time=SOLVE_TIME)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


ClientFactory = Callable[..., ChatinfoClient]


@pytest.fixture
async def make_client(server: FakeChatinfo) -> AsyncIterator[ClientFactory]:
    """Builds clients pointed at the fake (fast retries by default); closes them all after."""
    made: list[ChatinfoClient] = []

    def make(**kwargs: Any) -> ChatinfoClient:
        options: dict[str, Any] = {
            "base_url": server.base_url,
            "api_key": SECRET,
            "attempts": ATTEMPTS,
            "backoff": 0.0,
            "timeout": 5.0,
        }
        options.update(kwargs)
        made.append(ChatinfoClient(**options))
        return made[-1]

    yield make
    for client in made:
        await client.close()


@pytest.fixture
def client(make_client: ClientFactory) -> ChatinfoClient:
    return make_client()


class CountingTransport(httpx.AsyncBaseTransport):
    """Counts the attempts that reach the network layer, delegating to the real transport."""

    def __init__(self) -> None:
        self.calls = 0
        self._inner = AiohttpTransport(httpx.Limits())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def wait_for_answer(client: ChatinfoClient, request_id: int, timeout: float = 5.0) -> str:
    """Poll until the answer is ready or the deadline passes (the deadline fails the test)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (answer := await client.get_response(request_id)) is None:
        if loop.time() >= deadline:
            raise AssertionError(f"no answer within {timeout} s")
        await asyncio.sleep(0.02)
    return answer


# --- the happy path ------------------------------------------------------------------------


async def test_create_request_returns_id_and_units(
    server: FakeChatinfo, client: ChatinfoClient
) -> None:
    first = await client.create_request("hello", "poems")
    second = await client.create_request("again", "chat")
    assert first == CreatedRequest(id=1, units=999)
    assert second == CreatedRequest(id=2, units=998)
    assert server.units == 998
    assert [(r.key, r.mode, r.content) for r in server.requests] == [
        (SECRET, "poems", "hello"),
        (SECRET, "chat", "again"),
    ]
    assert server.statuses["create_request", 200] == 2
    assert server.calls["create_request"] == 2


async def test_long_content_is_sent_whole_and_cut_by_the_server(
    server: FakeChatinfo, client: ChatinfoClient
) -> None:
    # The client sends the content as is; the API (and the fake) cut it to 5000 silently.
    server.solve_time = 0.0
    content = "я" * 5000 + "TAIL"
    created = await client.create_request(content, "text")
    assert created.units == 999
    assert server.requests[0].content == "я" * 5000
    answer = await wait_for_answer(client, created.id)
    assert answer == "[text] " + "я" * 5000  # the tail never reached the model


async def test_get_response_is_none_while_solving_then_the_text(
    server: FakeChatinfo, client: ChatinfoClient
) -> None:
    created = await client.create_request("what is 2+2", "task")
    assert await client.get_response(created.id) is None
    assert server.statuses["get_response", 202] == 1
    answer = await wait_for_answer(client, created.id)
    assert answer == "[task] what is 2+2"
    assert server.statuses["get_response", 200] == 1
    assert server.requests[0].served_at is not None


async def test_units_returns_the_balance(server: FakeChatinfo, client: ChatinfoClient) -> None:
    assert await client.units() == 1000
    await client.create_request("hi", "chat")
    assert await client.units() == 999
    server.units = 7
    assert await client.units() == 7
    assert server.calls["units"] == 3


# --- refusals that must not be retried -----------------------------------------------------


async def test_no_units_is_not_enough_units_without_retry(
    server: FakeChatinfo, client: ChatinfoClient
) -> None:
    server.units = 0
    with pytest.raises(NotEnoughUnits) as caught:
        await client.create_request("hi", "chat")
    assert caught.value.upstream_error == NO_UNITS
    assert server.calls["create_request"] == 1
    assert server.statuses["create_request", 403] == 1
    assert server.requests == []


async def test_free_tariff_is_access_denied(
    server: FakeChatinfo, make_client: ClientFactory
) -> None:
    free = make_client(api_key=FREE_KEY)
    with pytest.raises(AccessDenied) as on_create:
        await free.create_request("hi", "chat")
    assert not isinstance(on_create.value, NotEnoughUnits)
    assert on_create.value.upstream_error == NOT_PRESTIGE
    with pytest.raises(AccessDenied) as on_units:
        await free.units()
    assert on_units.value.upstream_error == NOT_PRESTIGE
    assert server.calls["create_request"] == 1
    assert server.calls["units"] == 1
    assert server.units == 1000


async def test_unknown_key_is_access_denied(
    server: FakeChatinfo, make_client: ClientFactory
) -> None:
    stranger = make_client(api_key="KEY-nobody-knows")
    with pytest.raises(AccessDenied) as on_create:
        await stranger.create_request("hi", "chat")
    assert on_create.value.upstream_error == BAD_KEY
    with pytest.raises(AccessDenied) as on_units:
        await stranger.units()
    assert on_units.value.upstream_error == BAD_KEY
    assert server.calls["create_request"] == 1
    assert server.calls["units"] == 1


async def test_unknown_id_is_request_rejected_404(
    server: FakeChatinfo, client: ChatinfoClient
) -> None:
    with pytest.raises(RequestRejected) as caught:
        await client.get_response(424242)
    assert caught.value.status == 404
    assert caught.value.upstream_error is not None
    assert server.calls["get_response"] == 1


# --- 429 -----------------------------------------------------------------------------------


async def test_a_create_429_is_raised_at_once_for_the_queue_to_wait_out(
        make_client: ClientFactory) -> None:
    async with FakeChatinfo({SECRET: "prestige"}, limits={"create_request": 1}) as server:
        client = make_client(base_url=server.base_url, backoff=0.001)
        assert (await client.create_request("first", "chat")).units == 999
        with pytest.raises(RateLimited):  # the spec's invalid-JSON 429 body is not parsed
            await client.create_request("second", "chat")
        assert server.statuses["create_request", 429] == 1
        assert server.calls["create_request"] == 2
        assert server.units == 999  # rejected calls spend nothing
        assert len(server.requests) == 1


# --- create_request failures that may have spent a unit: never retried ---------------------


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(Fault.http(500, "Internal Server Error"), id="500"),
        pytest.param(Fault.http(502), id="502"),
        pytest.param(Fault.disconnect(), id="dropped-connection"),
        pytest.param(Fault.truncated(), id="truncated-200"),
    ],
)
async def test_create_failure_is_not_retried(
    server: FakeChatinfo, client: ChatinfoClient, fault: Fault
) -> None:
    server.inject("create_request", fault)
    with pytest.raises(UpstreamUnavailable) as caught:
        await client.create_request("hi", "chat")
    assert caught.value.maybe_spent is True
    assert server.calls["create_request"] == 1
    # The fault was consumed and the next call goes through normally.
    assert (await client.create_request("hi", "chat")).id == 1


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(Fault.http(502, after_effect=True), id="502"),
        pytest.param(Fault.truncated(after_effect=True), id="truncated-200"),
        pytest.param(Fault.disconnect(after_effect=True), id="dropped-connection"),
    ],
)
async def test_create_that_spent_a_unit_is_not_retried(
    server: FakeChatinfo, client: ChatinfoClient, fault: Fault
) -> None:
    server.inject("create_request", fault)
    with pytest.raises(UpstreamUnavailable) as caught:
        await client.create_request("hi", "chat")
    assert caught.value.maybe_spent is True
    assert server.calls["create_request"] == 1
    assert server.units == 999  # exactly one unit gone, not two
    assert len(server.requests) == 1


async def test_create_read_timeout_is_not_retried(
    server: FakeChatinfo, make_client: ClientFactory
) -> None:
    client = make_client(create_timeout=0.2)
    server.inject("create_request", Fault.slow(1.5))
    with pytest.raises(UpstreamUnavailable) as caught:
        await client.create_request("hi", "chat")
    assert caught.value.maybe_spent is True
    assert caught.value.finished is False  # the server may yet debit it
    assert server.calls["create_request"] == 1


async def test_a_slow_create_is_waited_for_longer_than_a_poll(
    server: FakeChatinfo, make_client: ClientFactory
) -> None:
    client = make_client(timeout=0.2, create_timeout=5.0)
    server.inject("create_request", Fault.slow(0.5))
    assert (await client.create_request("hi", "chat")).id == 1
    server.inject("get_response", Fault.slow(0.5), times=ATTEMPTS)
    with pytest.raises(UpstreamUnavailable):
        await client.get_response(1)


@pytest.mark.parametrize(("status", "finished"), [(500, True), (502, True), (503, True),
                                                  (504, False)])
async def test_only_a_gateway_timeout_leaves_a_create_maybe_still_processed(
    server: FakeChatinfo, client: ChatinfoClient, status: int, finished: bool
) -> None:
    server.inject("create_request", Fault.http(status))
    with pytest.raises(UpstreamUnavailable) as caught:
        await client.create_request("hi", "chat")
    assert caught.value.finished is finished


async def test_connection_refused_is_retried_attempts_times() -> None:
    transport = CountingTransport()
    client = ChatinfoClient(
        f"http://127.0.0.1:{free_port()}",
        SECRET,
        attempts=ATTEMPTS,
        backoff=0.0,
        transport=transport,
    )
    try:
        with pytest.raises(UpstreamUnavailable) as caught:
            await client.create_request("hi", "chat")
    finally:
        await client.close()
    assert caught.value.maybe_spent is False  # never left us: no unit can be gone
    assert caught.value.connected is False
    assert transport.calls == ATTEMPTS


# --- what the transport makes of a server that misbehaves after reading the request --------

Behaviour = Callable[[asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A TCP server that reads one HTTP request head per connection, then does `behaviour`."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.requests = 0
        self.connections = 0
        self.closed = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while not reader.at_eof():
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                self.requests += 1
                await self.behaviour(writer)
                if writer.is_closing():
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
        finally:
            await writer.wait_closed()
            self.closed += 1


async def hang_up(writer: asyncio.StreamWriter) -> None:
    writer.close()


async def reset(writer: asyncio.StreamWriter) -> None:
    # SO_LINGER 0: the close sends RST, the client sees "connection reset by peer".
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               struct.pack("ii", 1, 0))
    writer.close()


async def not_http(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HELLO THERE\r\n\r\n")
    writer.close()


async def body_cut_short(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{\"success\": true, \"id")
    writer.close()


@pytest.mark.parametrize("behaviour", [hang_up, reset, not_http, body_cut_short])
async def test_a_create_the_server_read_may_be_spent_and_is_not_retried(
        behaviour: Behaviour) -> None:
    async with RawServer(behaviour) as base_url:
        client = ChatinfoClient(base_url, SECRET, attempts=ATTEMPTS, backoff=0.0)
        try:
            with pytest.raises(UpstreamUnavailable) as caught:
                await client.create_request("hi", "chat")
        finally:
            await client.close()
    assert caught.value.maybe_spent is True
    assert caught.value.connected is True
    assert caught.value.finished is True  # the server closed it: done with it


async def test_waiting_for_a_connection_is_not_sent(server: FakeChatinfo) -> None:
    # One connection, busy with a slow call: the next call's wait for it times out, and
    # that call never left us.
    transport = AiohttpTransport(httpx.Limits(max_connections=1))
    async with httpx.AsyncClient(base_url=server.base_url, transport=transport,
                                 timeout=httpx.Timeout(5.0, pool=0.2)) as http:
        server.inject("units", Fault.slow(1.0))
        slow = asyncio.create_task(http.post("/api/gpt/units", json={"key": SECRET}))
        await wait_until(lambda: server.calls["units"] == 1, timeout=5.0, what="the slow call")
        with pytest.raises(httpx.ConnectTimeout):
            await http.post("/api/gpt/units", json={"key": SECRET})
        assert (await slow).status_code == 200
    assert server.calls["units"] == 1


async def keep_alive_then_hang_up(writer: asyncio.StreamWriter) -> None:
    body = b'{"units": 5}'
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    writer.close()  # as a server does with an idle connection, but at once


async def test_a_connection_the_server_closed_is_not_reused() -> None:
    server = RawServer(keep_alive_then_hang_up)
    async with server as base_url:
        client = ChatinfoClient(base_url, SECRET, attempts=1)
        try:
            assert await client.units() == 5
            await wait_until(lambda: server.closed == 1, timeout=5.0, what="the hang-up")
            assert await client.units() == 5  # a new connection, not a failure
        finally:
            await client.close()
    assert (server.requests, server.connections) == (2, 2)


# --- get_response is free and idempotent: retried ------------------------------------------


async def test_get_response_retries_a_500(server: FakeChatinfo, client: ChatinfoClient) -> None:
    server.solve_time = 0.0
    created = await client.create_request("hi", "answer")
    server.inject("get_response", Fault.http(500, "oops"))
    assert await client.get_response(created.id) == "[answer] hi"
    assert server.calls["get_response"] == 2
    assert server.statuses["get_response", 500] == 1
    assert server.statuses["get_response", 200] == 1


async def test_get_response_gives_up_after_attempts(
    server: FakeChatinfo, client: ChatinfoClient
) -> None:
    server.solve_time = 0.0
    created = await client.create_request("hi", "chat")
    server.inject("get_response", Fault.http(502), times=ATTEMPTS)
    with pytest.raises(UpstreamUnavailable) as caught:
        await client.get_response(created.id)
    assert caught.value.maybe_spent is False  # a free call: nothing can have been spent
    assert server.calls["get_response"] == ATTEMPTS


# --- the rate limiter sits in front of each endpoint ---------------------------------------


async def test_limiter_is_per_endpoint(server: FakeChatinfo, make_client: ClientFactory) -> None:
    client = make_client(create_per_min=3, units_per_min=50)
    for _ in range(3):
        await client.create_request("hi", "chat")
    assert client.limiters["create_request"].in_use() == 3
    assert client.limiters["create_request"].delay() > 50
    # Other endpoints have their own windows and are not held up.
    assert client.limiters["units"].delay() == 0
    assert await client.units() == 997
    # The fourth create waits for the window instead of going out.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.create_request("hi", "chat"), timeout=0.2)
    assert server.calls["create_request"] == 3


# --- the key never leaks -------------------------------------------------------------------


async def test_key_never_leaks(
    server: FakeChatinfo, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server.solve_time = 0.0
    client = make_client()
    impatient = make_client(create_timeout=0.2)
    errors: list[ChatinfoError] = []

    async def expect_error(call: Awaitable[Any]) -> None:
        try:
            await call
        except ChatinfoError as error:
            errors.append(error)
        else:
            raise AssertionError("expected a ChatinfoError")

    created = await client.create_request("hi", "chat")
    assert await wait_for_answer(client, created.id) == "[chat] hi"
    assert await client.units() == 999
    await expect_error(client.get_response(987654))  # 404
    server.inject("get_response", Fault.http(500))
    assert await client.get_response(created.id) == "[chat] hi"  # a logged retry
    for fault in (Fault.http(502), Fault.disconnect(), Fault.truncated()):
        server.inject("create_request", fault)
        await expect_error(client.create_request("hi", "chat"))
    server.inject("create_request", Fault.slow(1.0))
    await expect_error(impatient.create_request("hi", "chat"))  # read timeout
    server.inject("units", Fault.http(503), times=ATTEMPTS)
    await expect_error(client.units())
    server.units = 0
    await expect_error(client.create_request("hi", "chat"))  # 403 no units
    server.limits["units"] = 0
    await expect_error(client.units())  # 429 x attempts
    refused = make_client(base_url=f"http://127.0.0.1:{free_port()}")
    await expect_error(refused.create_request("hi", "chat"))

    assert server.requests[0].key == SECRET  # it was sent, so it could have leaked
    kinds = {type(error) for error in errors}
    assert kinds == {RequestRejected, UpstreamUnavailable, NotEnoughUnits, RateLimited}
    for error in errors:
        assert SECRET not in str(error)
        assert SECRET not in repr(error)
        assert SECRET not in "".join(traceback.format_exception(error))
        assert SECRET not in repr(error.__context__)
        assert SECRET not in str(error.upstream_error)
    client_records = [r for r in caplog.records if r.name == "bot.upstream.client"]
    assert any(r.levelno == logging.DEBUG for r in client_records)
    assert any(r.levelno == logging.WARNING for r in client_records)
    for record in caplog.records:
        assert SECRET not in record.getMessage(), record.name
        assert SECRET not in repr(record.args), record.name
        assert SECRET not in (record.exc_text or ""), record.name
    assert SECRET not in caplog.text


async def test_a_new_connection_with_bytes_waiting_is_used() -> None:
    # Bytes waiting on a connection just made are no hang-up (TLS 1.3 sends its session
    # tickets unasked); only a connection kept from an earlier call is looked at.
    async def answer_unasked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = b'{"units": 5}'
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    connections = 0

    async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await answer_unasked(reader, writer)

    server = await asyncio.start_server(counted, "127.0.0.1", 0)
    client = ChatinfoClient(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", SECRET,
                            attempts=1)
    try:
        assert await client.units() == 5
    finally:
        await client.close()
        server.close()
    assert connections == 1
