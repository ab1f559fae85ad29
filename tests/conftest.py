"""The fixtures: the fake chatinfo server, and the bot's Dispatcher on a recording session
(tests/harness.py `built_app`, the one wiring)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from bot.upstream.sandbox import FakeChatinfo
from tests.fakes.mocked_bot import RecordingSession
from tests.harness import App, AppFactory, built_app


@pytest.fixture
async def chatinfo() -> AsyncIterator[FakeChatinfo]:
    async with FakeChatinfo(solve_time=0.1) as server:
        yield server


@pytest.fixture
async def make_app(tmp_path: Path, chatinfo: FakeChatinfo) -> AsyncIterator[AppFactory]:
    """Builds the app, with `built_app`'s options (settings, policy, client_options) as a
    test needs, on a recording session and a database with no history; once or more per
    test (a second app over the same database is a restart). All are stopped at the end."""
    async with AsyncExitStack() as apps:
        async def build(**options: Any) -> App:
            return await apps.enter_async_context(built_app(
                tmp_path, chatinfo, session=RecordingSession(), history=False, **options))

        yield build


@pytest.fixture
async def app(make_app: AppFactory) -> App:
    return await make_app()
