"""`GET /healthz`: is the event loop turning, does the database answer, are the
background workers alive? Each check is a probe that raises when the answer is no."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

from bot.services import Service, Worker

Probe = Callable[[], Awaitable[None]]
OK = "ok"
PROBE_TIMEOUT = 2.0


class Unhealthy(Exception):
    """What a probe found wrong, in a few words."""


class Heartbeat(Worker):
    """A task that ticks every `interval`. A tick that comes late shows as `lag`; no tick
    for `stale_after` seconds means the loop was blocked or the ticker is gone."""

    name = "loop-heartbeat"

    def __init__(self, interval: float = 1.0, stale_after: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._stale_after = stale_after
        self._clock = clock
        self.lag = 0.0
        self._last_tick = clock()

    def start(self) -> None:
        if not self.alive():
            self._last_tick = self._clock()
        super().start()

    async def probe(self) -> None:
        if not self.alive():
            raise Unhealthy("heartbeat not running")
        silent = self._clock() - self._last_tick
        if silent > self._stale_after:
            raise Unhealthy(f"no heartbeat for {silent:.1f}s")

    async def _serve(self) -> None:
        while True:
            before = self._clock()
            await asyncio.sleep(self._interval)
            self._last_tick = self._clock()
            self.lag = max(0.0, self._last_tick - before - self._interval)


def services_probe(services: Iterable[Service], unhealthy: str) -> Probe:
    """Each of these services is alive; else the verdict is `unhealthy`."""
    asked = tuple(services)

    async def probe() -> None:
        if not all(service.alive() for service in asked):
            raise Unhealthy(unhealthy)

    return probe


class HealthCheck:
    def __init__(self, probes: Mapping[str, Probe], timeout: float = PROBE_TIMEOUT) -> None:
        self.probes = dict(probes)
        self._timeout = timeout

    async def run(self) -> dict[str, str]:
        """Each probe's verdict: "ok" or what is wrong."""
        names = list(self.probes)
        verdicts = await asyncio.gather(*(self._verdict(self.probes[name]) for name in names))
        return dict(zip(names, verdicts, strict=True))

    async def _verdict(self, probe: Probe) -> str:
        try:
            async with asyncio.timeout(self._timeout):
                await probe()
        except TimeoutError:
            return f"no answer within {self._timeout:g}s"
        except Exception as error:  # any failure is the verdict, not a crash of /healthz
            return str(error) or type(error).__name__
        return OK


def is_healthy(verdicts: Mapping[str, str]) -> bool:
    return all(verdict == OK for verdict in verdicts.values())
