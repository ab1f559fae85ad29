"""One life cycle for background work: services start in order and stop in reverse, all of
them at the Dispatcher's startup, and the health check asks each one."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from bot.app.wiring import make_application
from bot.config import Settings
from bot.services import Services, Worker
from bot.telegram.i18n import make_i18n
from bot.upstream.sandbox import FakeChatinfo
from storage.db import open_database
from tests.fakes.mocked_bot import mocked_bot
from tests.harness import wait_until


class Recorded:
    """A service that writes down what was asked of it."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log, self.running = name, log, False

    def start(self) -> None:
        self.log.append(f"start {self.name}")
        self.running = True

    async def stop(self) -> None:
        self.log.append(f"stop {self.name}")
        self.running = False

    def alive(self) -> bool:
        return self.running


async def test_services_start_in_order_and_stop_in_reverse_also_nested() -> None:
    log: list[str] = []
    first, inner, last = (Recorded(name, log) for name in ("first", "inner", "last"))
    group = Services(first, Services(inner), last)

    group.start()
    assert group.alive()
    inner.running = False  # one part ended: the group is not whole
    assert not group.alive()
    await group.stop()

    assert log == ["start first", "start inner", "start last",
                   "stop last", "stop inner", "stop first"]


class Crashing(Worker):
    name = "crashing-worker"

    async def _serve(self) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("boom")


async def test_a_worker_that_crashes_is_logged_at_once_and_no_longer_alive(
        caplog: pytest.LogCaptureFixture) -> None:
    worker = Crashing()
    worker.start()
    await wait_until(lambda: not worker.alive(), timeout=2, what="the crash")

    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage() == "crashing-worker stopped unexpectedly"
    await worker.stop()  # stopping a crashed worker is quiet


async def test_the_startup_starts_every_service_before_any_job_and_the_shutdown_stops_them(
        tmp_path: Path, chatinfo: FakeChatinfo) -> None:
    db = await open_database(tmp_path / "bot.sqlite3")
    bot, _ = mocked_bot()
    settings = Settings(bot_token="42:TEST-TOKEN", chatinfo_api_key="test-key",
                        chatinfo_base_url=chatinfo.base_url,
                        database_path=tmp_path / "bot.sqlite3")
    application = make_application(bot, db, make_i18n(), settings)
    dp, workflow = application.dp, {"bot": bot, **application.dp.workflow_data}
    try:
        assert not application.runner.workers.alive()  # nothing starts when built
        assert set((await application.health.run()).values()) != {"ok"}

        await dp.emit_startup(**workflow)
        assert application.runner.workers.alive() and application.upstream.alive()
        assert await application.health.run() == {
            "event_loop": "ok", "database": "ok", "units_refresher": "ok", "job_workers": "ok"}

        await dp.emit_shutdown(**workflow)
        assert not application.services.alive()
        assert not application.runner.workers.alive() and not application.upstream.alive()
    finally:
        await application.services.stop()
        await application.upstream.close()
        await db.close()
