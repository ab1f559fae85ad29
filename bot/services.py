"""Background work with one life cycle.

Every worker the bot runs beside its handlers (the loop heartbeat, the units refresher,
the poll scheduler, the create queue, the waiting indicators) is a `Service`. They are
listed once, in `bot/app/wiring.py`, and started together at start-up in that order, each
after those it may use, and stopped in reverse. The health check asks each one whether
it is alive.
"""

from __future__ import annotations

import asyncio
import logging
from typing import ClassVar, Protocol

log = logging.getLogger(__name__)


class Service(Protocol):
    def start(self) -> None:
        """Begin working, in a task of its own; a service already running is left so."""

    async def stop(self) -> None:
        """Stop working, and return once stopped; a stopped service is left so."""

    def alive(self) -> bool:
        """Whether it is working: started, and not ended since by a stop or a crash."""


class Worker:
    """A service whose work is one coroutine, `_serve`, run in a task named `name`.

    A crash is logged when it happens (not when the task is next awaited), and leaves the
    worker not alive: the health check then says so.
    """

    name: ClassVar[str] = "worker"
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if not self.alive():
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _serve(self) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        try:
            await self._serve()
        except Exception:
            log.exception("%s stopped unexpectedly", self.name)


class Services:
    """Services started in the order given and stopped in reverse, so each may rely on
    those before it while it runs. A group is itself a service: groups nest."""

    def __init__(self, *services: Service) -> None:
        self._services = services

    def start(self) -> None:
        for service in self._services:
            service.start()

    async def stop(self) -> None:
        for service in reversed(self._services):
            await service.stop()

    def alive(self) -> bool:
        return all(service.alive() for service in self._services)
