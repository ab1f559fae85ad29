"""The fake chatinfo server, exercised over real HTTP the way the bot's client talks to it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from bot.upstream.sandbox import NO_UNITS, NOT_PRESTIGE, FakeChatinfo, Fault

KEY = "test-key"


@pytest.fixture
async def server() -> AsyncIterator[FakeChatinfo]:
    async with FakeChatinfo({KEY: "prestige", "free-key": "free"}, solve_time=0.05) as fake:
        yield fake


@pytest.fixture
async def client(server: FakeChatinfo) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=2.0) as http:
        yield http


async def call(client: httpx.AsyncClient, endpoint: str, **body: Any) -> httpx.Response:
    # Like the spec's sample: a JSON string with no JSON content type.
    return await client.post(f"/api/gpt/{endpoint}", content=json.dumps({"key": KEY, **body}))


async def test_create_spends_a_unit(server: FakeChatinfo, client: httpx.AsyncClient) -> None:
    first = await call(client, "create_request", content="hi", mode="poems")
    second = await call(client, "create_request", content="hi")
    assert first.status_code == second.status_code == 200
    assert first.json() == {"success": True, "units": 999, "id": 1}
    assert second.json()["units"] == 998
    assert (await call(client, "units")).json() == {"success": True, "units": 998}
    assert [(r.mode, r.content) for r in server.requests] == [("poems", "hi"), ("chat", "hi")]
    assert server.statuses["create_request", 200] == 2


async def test_solving_then_result(server: FakeChatinfo, client: httpx.AsyncClient) -> None:
    request_id = (await call(client, "create_request", content="hi", mode="task")).json()["id"]
    pending = await call(client, "get_response", id=request_id)
    assert pending.status_code == 202
    assert pending.json() == {"success": False, "solving": True}
    last: list[httpx.Response] = []

    async def ready() -> bool:
        last[:] = [await call(client, "get_response", id=request_id)]
        return last[0].status_code == 200

    await server.wait_for(ready, timeout=2.0)
    assert last[0].json() == {"success": True, "solving": False, "result": "[task] hi"}
    assert server.requests[0].served_at is not None


async def test_no_units(server: FakeChatinfo, client: httpx.AsyncClient) -> None:
    server.units = 0
    reply = await call(client, "create_request", content="hi")
    assert reply.status_code == 403
    assert reply.json() == {"success": False, "units": 0, "error": NO_UNITS}
    assert server.requests == []


async def test_free_tariff_and_unknown_key(client: httpx.AsyncClient) -> None:
    free = await client.post("/api/gpt/units", json={"key": "free-key"})
    assert free.status_code == 403
    assert free.json() == {"success": False, "error": NOT_PRESTIGE}
    unknown = await client.post("/api/gpt/units", json={"key": "nope"})
    assert unknown.status_code == 403
    assert unknown.json()["success"] is False


async def test_rate_limit_body_is_not_json() -> None:
    now = [0.0]
    async with (
        FakeChatinfo(limits={"units": 2}, clock=lambda: now[0]) as server,
        httpx.AsyncClient(base_url=server.base_url) as client,
    ):
        assert [(await call(client, "units")).status_code for _ in range(3)] == [200, 200, 429]
        limited = await call(client, "units")
        assert limited.status_code == 429
        assert limited.headers["content-type"].startswith("application/json")
        with pytest.raises(json.JSONDecodeError):
            json.loads(limited.text)
        now[0] = 60.0  # the window slides past the two accepted calls
        assert (await call(client, "units")).status_code == 200


async def test_long_content_is_cut(server: FakeChatinfo, client: httpx.AsyncClient) -> None:
    reply = await call(client, "create_request", content="я" * 6000, mode="text")
    assert reply.status_code == 200
    assert server.requests[0].content == "я" * 5000


async def test_bad_requests(client: httpx.AsyncClient) -> None:
    assert (await call(client, "get_response", id=42)).status_code == 404
    assert (await client.post("/api/gpt/units", content=b"[1]")).status_code == 400
    assert (await client.post("/api/gpt/units", content=b"{oops")).status_code == 400


async def test_faults(server: FakeChatinfo, client: httpx.AsyncClient) -> None:
    server.inject("create_request", Fault.http(502), times=2)
    server.inject("create_request", Fault.truncated(after_effect=True))
    server.inject("create_request", Fault.disconnect())
    for _ in range(2):
        reply = await call(client, "create_request", content="hi")
        assert reply.status_code == 502
        assert "Bad Gateway" in reply.text
    assert server.units == 1000
    truncated = await call(client, "create_request", content="hi")
    assert truncated.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        truncated.json()
    assert server.units == 999  # the ambiguous failure did spend a unit
    assert len(server.requests) == 1
    with pytest.raises(httpx.RemoteProtocolError):
        await call(client, "create_request", content="hi")
    assert (await call(client, "create_request", content="hi")).status_code == 200
    assert server.calls["create_request"] == 5
    assert server.statuses["create_request", 0] == 1


async def test_slow_fault_times_out_client(server: FakeChatinfo, client: httpx.AsyncClient) -> None:
    server.inject("units", Fault.slow(0.3))
    with pytest.raises(httpx.ReadTimeout):
        # Only the wait for the reply is short: a busy machine may take longer to connect.
        await client.post("/api/gpt/units", json={"key": KEY},
                          timeout=httpx.Timeout(5.0, read=0.05))
    await server.wait_for(lambda: server.statuses["units", 200] == 1, timeout=2.0)
