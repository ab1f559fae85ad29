"""`GET /healthz`: is the event loop turning, does the database answer, are the
background workers alive? Each check is a probe that raises when the answer is no."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress

from bot.jobs.runner import JobRunner

Probe = Callable[[], Awaitable[None]]
OK = "ok"
PROBE_TIMEOUT = 2.0
# UnitsTracker.start() names its task so; the units refresher is the bot's one
# long-lived background worker besides the update intake.
UNITS_REFRESHER_TASK = "units-refresher"


class Unhealthy(Exception):
    """What a probe found wrong, in a few words."""


class Heartbeat:
    """A task that ticks every `interval`. A tick that comes late shows as `lag`; no tick
    for `stale_after` seconds means the loop was blocked or the ticker is gone."""

    def __init__(self, interval: float = 1.0, stale_after: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._stale_after = stale_after
        self._clock = clock
        self.lag = 0.0
        self._last_tick = clock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._last_tick = self._clock()
        self._task = asyncio.create_task(self._tick_forever(), name="loop-heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task

    async def probe(self) -> None:
        if self._task is None or self._task.done():
            raise Unhealthy("heartbeat not running")
        silent = self._clock() - self._last_tick
        if silent > self._stale_after:
            raise Unhealthy(f"no heartbeat for {silent:.1f}s")

    async def _tick_forever(self) -> None:
        while True:
            before = self._clock()
            await asyncio.sleep(self._interval)
            self._last_tick = self._clock()
            self.lag = max(0.0, self._last_tick - before - self._interval)


def task_probe(name: str) -> Probe:
    """The background task of this name is running."""

    async def probe() -> None:
        if not any(task.get_name() == name and not task.done() for task in asyncio.all_tasks()):
            raise Unhealthy(f"{name} is not running")

    return probe


def workers_probe(runner: JobRunner) -> Probe:
    """The job runner's poll scheduler and create queue are alive (once started)."""

    async def probe() -> None:
        if not runner.workers_alive:
            raise Unhealthy("the poll scheduler or the create queue has stopped")

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
