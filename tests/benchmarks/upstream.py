"""The fake chatinfo server in its own process, with the benchmark's solve times.

Its own process, so the CPU and memory the benchmark reports are the bot's, not the
fake's. Solve times are a pure function of (seed, mode, content), so both variants of a
run face exactly the same answers at the same delays.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import multiprocessing
import random
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection

from bot.upstream.sandbox import FakeChatinfo

# Seconds a short request of each mode takes; each 200 characters add as much again. With
# the load benchmark's texts (median 100 characters, a long tail) this gives the issue's
# heavy tail: a median of about 8 s and a p99 of about 90 s.
MODE_BASE = {
    "chat": 3.5, "answer": 3.5, "shorter": 2.8, "names": 2.1, "task": 5.6, "text": 9.8,
    "poems": 4.2, "books_list": 4.9, "song_text": 4.9, "summary": 3.5, "paper": 24.5,
    "report": 21.0, "originality": 7.0, "rewrite": 5.6, "essay": 14.0, "plan": 8.4,
    "post": 4.2, "code": 7.0, "synopsis": 6.3, "story": 12.6, "article": 17.5,
    "continue": 7.0,
}
NOISE_SIGMA = 0.1  # log-normal spread of one mode and length around its typical time


def solve_seconds(seed: int, mode: str, content: str, noise_sigma: float = NOISE_SIGMA,
                  scale: float = 1.0) -> float:
    digest = hashlib.blake2b(f"{seed}:{mode}:{content}".encode(), digest_size=8).digest()
    noise = random.Random(digest).gauss(0.0, noise_sigma)
    return scale * MODE_BASE.get(mode, 8.0) * (1 + len(content) / 200) * math.exp(noise)


@dataclass(frozen=True)
class Record:
    id: int
    tag: str  # the content's first word: the benchmarks number every message "#n"
    ready_at: float  # time.monotonic(), the same clock in every process on this machine
    created_at: float
    first_polled_at: float | None = None
    found_at: float | None = None  # when the first poll after ready_at arrived


def per_key_text(per_key: dict[str, tuple[int, int]]) -> str:
    """"bench-key: 250 created, 0×429 · bench-key-2: ..." for the tables."""
    return " · ".join(f"{key}: {created} created, {limited}×429"
                      for key, (created, limited) in per_key.items())


def bench_keys(count: int) -> list[str]:
    """The benchmark's API keys: bench-key, then bench-key-2 and on for a pool."""
    return ["bench-key", *(f"bench-key-{n}" for n in range(2, count + 1))]


def _serve(seed: int, noise: float, scale: float, limits: dict[str, int], keys: int,
           conn: Connection) -> None:
    async def main() -> None:
        names = bench_keys(keys)
        # A pool's keys are accounts of their own: a balance and rate windows each.
        server = FakeChatinfo(keys=dict.fromkeys(names, "prestige"), units=10**9,
                              key_units=dict.fromkeys(names, 10**9) if keys > 1 else None,
                              limits=limits,
                              solve_time=lambda mode, content: solve_seconds(
                                  seed, mode, content, noise, scale))
        conn.send(await server.start())
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, conn.recv)  # the parent asks for the records
        polls: Counter[int] = Counter()
        first_polls: dict[int, float] = {}
        found: dict[int, float] = {}
        ready = {r.id: r.ready_at for r in server.requests}
        for call in server.served:
            if call.endpoint == "get_response" and call.request_id is not None:
                polls[call.request_id] += 1
                first_polls.setdefault(call.request_id, call.arrived_at)
                if call.arrived_at >= ready.get(call.request_id, float("inf")):
                    found.setdefault(call.request_id, call.arrived_at)
        per_key = {key: (sum(1 for r in server.requests if r.key == key),
                         server.generated_429s(key)) for key in names}
        conn.send(([Record(r.id, r.content.split(" ", 1)[0], r.ready_at, r.created_at,
                           first_polls.get(r.id), found.get(r.id))
                    for r in server.requests], dict(server.statuses), polls, per_key))
        await server.stop()

    asyncio.run(main())


class UpstreamProcess:
    def __init__(self, seed: int, noise: float = NOISE_SIGMA, scale: float = 1.0,
                 limits: dict[str, int] | None = None, keys: int = 1) -> None:
        self._conn, child = multiprocessing.Pipe()
        self._process = multiprocessing.get_context("fork").Process(
            target=_serve, args=(seed, noise, scale, limits or {}, keys, child), daemon=True)

        # After `finish`: per key, the creates it served and the 429s its limits produced.
        self.per_key: dict[str, tuple[int, int]] = {}

    def start(self) -> str:
        self._process.start()
        url: str = self._conn.recv()
        return url

    def finish(self) -> tuple[list[Record], dict[tuple[str, int], int], Counter[int]]:
        """Every request made, the status counts, and get_response calls per request."""
        self._conn.send("records")
        records, statuses, polls, self.per_key = self._conn.recv()
        self._process.join(timeout=10)
        return records, statuses, polls
