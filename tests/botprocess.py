"""Running `python -m bot` as a subprocess against the fakes, as an operator would."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import sys
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
BOT_TOKEN = "123456:E2E-TOKEN-do-not-leak"
# Seconds a started bot may take to serve: importing aiogram and the handlers costs about
# 4.5 s of CPU, and the suite runs several bot processes at once on two cores.
STARTUP_TIMEOUT = 60.0
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


def free_port() -> int:
    """A port nothing listens on now (several bots run at once, each needs its own)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class BotProcess:
    def __init__(self, workdir: Path, env: dict[str, str], args: tuple[str, ...] = ()) -> None:
        """`args` after `python -m bot`, e.g. ("--sandbox",)."""
        self.workdir = workdir
        self.args = args
        self.database = workdir / "data" / "bot.sqlite3"
        self.port = free_port()
        self.web_url = f"http://127.0.0.1:{self.port}"
        # Run outside the repository so a developer's own .env cannot leak in.
        self.env = {
            **{k: v for k, v in os.environ.items()
               if not k.startswith(("CHATINFO_", "BOT_", "WEB_", "WEBHOOK_", "LOG_"))},
            "PYTHONPATH": str(REPO), "BOT_TOKEN": BOT_TOKEN, "DATABASE_PATH": str(self.database),
            "LOG_LEVEL": "INFO", "WEB_HOST": "127.0.0.1", "WEB_PORT": str(self.port), **env,
        }
        self.process: asyncio.subprocess.Process | None = None
        self.stderr = b""
        self.launcher: list[str] = []  # e.g. a profiler that runs the command it is given

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.launcher, sys.executable, "-m", "bot", *self.args, cwd=self.workdir, env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )

    async def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 15.0) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(sig)
        _, stderr = await asyncio.wait_for(self.process.communicate(), timeout)
        self.stderr += stderr
        code = self.process.returncode
        assert code is not None
        return code

    def count_jobs(self, state: str) -> int:
        if not self.database.exists():
            return 0
        with sqlite3.connect(self.database, timeout=5) as db:
            try:
                row = db.execute("SELECT count(*) FROM jobs WHERE state = ?", (state,)).fetchone()
            except sqlite3.OperationalError:  # the schema is not there yet
                return 0
        return int(row[0])

    async def get(self, path: str) -> tuple[int, str]:
        """GET from the bot's web server: the status and the body."""
        async with aiohttp.ClientSession() as session, session.get(self.web_url + path) as reply:
            return reply.status, await reply.text()

    async def post_update(self, path: str, update: dict[str, Any], secret: str | None) -> int:
        """POST an update to the bot's webhook as Telegram would; the status it answers."""
        headers = {SECRET_HEADER: secret} if secret is not None else {}
        async with aiohttp.ClientSession() as session, session.post(
                self.web_url + path, json=update, headers=headers) as reply:
            return reply.status
