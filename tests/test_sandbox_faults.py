"""The fake chatinfo server's fault machinery: random faults, the call journal, windows."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from bot.upstream.sandbox import NOT_FOUND, FakeChatinfo, Fault, standard_faults

KEY = "test-key"


@pytest.fixture
async def server() -> AsyncIterator[FakeChatinfo]:
    async with FakeChatinfo(solve_time=0.0) as fake:
        yield fake


@pytest.fixture
async def client(server: FakeChatinfo) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=2.0) as http:
        yield http


async def call(client: httpx.AsyncClient, endpoint: str, **body: Any) -> int:
    """The status, or 0 when the server dropped the connection."""
    try:
        reply = await client.post(f"/api/gpt/{endpoint}", json={"key": KEY, **body})
    except httpx.RemoteProtocolError:
        return 0
    return reply.status_code


async def test_random_faults_follow_the_seed(server: FakeChatinfo,
                                             client: httpx.AsyncClient) -> None:
    kinds = {"units": [Fault.http(502), Fault.rate_limited(), Fault.disconnect()]}

    async def statuses(seed: int) -> list[int]:
        server.inject_random(kinds, rate=0.5, seed=seed)
        return [await call(client, "units") for _ in range(40)]

    first, again, other = await statuses(1), await statuses(1), await statuses(2)
    assert first == again != other
    assert set(first) == {200, 502, 429, 0}
    assert 10 <= sum(status != 200 for status in first) <= 30
    server.inject_random({}, rate=0.0)
    assert {await call(client, "units") for _ in range(10)} == {200}


async def test_each_endpoint_draws_on_its_own(server: FakeChatinfo,
                                              client: httpx.AsyncClient) -> None:
    faults = {"units": [Fault.http(502)], "create_request": [Fault.http(500)]}
    server.inject_random(faults, rate=0.5, seed=3)
    alone = [await call(client, "units") for _ in range(20)]
    server.inject_random(faults, rate=0.5, seed=3)
    mixed = []
    for n in range(20):
        mixed.append(await call(client, "units"))
        await call(client, "create_request", content=f"c{n}", mode="chat")  # draws too
    assert alone == mixed


async def test_queued_faults_come_first_and_the_journal_records_every_call(
        server: FakeChatinfo, client: httpx.AsyncClient) -> None:
    server.inject_random({"create_request": [Fault.http(500)]}, rate=1.0)
    server.inject("create_request", Fault.truncated(after_effect=True))
    assert await call(client, "create_request", content="first", mode="chat") == 200
    assert await call(client, "create_request", content="second", mode="chat") == 500
    assert await call(client, "get_response", id=1) == 200

    truncated, failed, polled = server.served
    assert (truncated.fault, truncated.random_fault) == (Fault.truncated(after_effect=True),
                                                         False)
    assert (failed.status, failed.random_fault, failed.content) == (500, True, "second")
    assert (polled.endpoint, polled.request_id, polled.fault) == ("get_response", 1, None)
    assert [r.content for r in server.created_for("first")] == ["first"]  # spent, unseen
    assert server.created_for("second") == []
    assert server.served_for("create_request", content="second") == [failed]


async def test_a_slow_call_is_in_flight_until_it_answers(server: FakeChatinfo) -> None:
    server.inject("units", Fault.slow(0.3))
    async with httpx.AsyncClient(base_url=server.base_url, timeout=0.05) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            await impatient.post("/api/gpt/units", json={"key": KEY})
    assert server.in_flight == 1
    await server.wait_for(lambda: server.in_flight == 0, timeout=2)
    assert server.served[0].status == 200


async def test_limits_count_arrivals_in_a_window_of_any_length() -> None:
    now = [0.0]
    async with (FakeChatinfo(limits={"units": 2}, window=0.5, clock=lambda: now[0]) as server,
                httpx.AsyncClient(base_url=server.base_url, timeout=2.0) as client):
        server.inject("units", Fault.slow(0.2))
        slow = asyncio.create_task(call(client, "units"))
        await server.wait_for(lambda: server.in_flight == 1)
        now[0] = 0.6  # the window the slow call arrived in is over before it is answered
        assert await slow == 200
        # Stamped on arrival, it no longer counts: two more fit, the third does not.
        assert [await call(client, "units") for _ in range(3)] == [200, 200, 429]
        assert server.generated_429s() == 1
        server.inject("units", Fault.rate_limited())
        assert await call(client, "units") == 429
        assert server.generated_429s() == 1  # an injected 429 is not the limit's


def test_fault_kinds_and_bodies() -> None:
    assert [f.kind for f in standard_faults(1.0)["create_request"]] == [
        "http 500", "http 502", "slow", "drop", "truncated", "http 429",
        "http 502 (spent)", "drop (spent)", "truncated (spent)"]
    with pytest.raises(json.JSONDecodeError):
        json.loads(Fault.rate_limited().body)
    assert json.loads(Fault.not_found().body) == {"success": False, "error": NOT_FOUND}
    with pytest.raises(ValueError, match="unknown endpoints"):
        FakeChatinfo().inject_random({"nope": [Fault.http()]}, rate=0.1)
    with pytest.raises(ValueError, match="rate"):
        FakeChatinfo().inject_random({}, rate=1.5)
