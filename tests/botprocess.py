"""Running `python -m bot` as a subprocess against the fakes, as an operator would."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BOT_TOKEN = "123456:E2E-TOKEN-do-not-leak"


class BotProcess:
    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.database = workdir / "data" / "bot.sqlite3"
        # Run outside the repository so a developer's own .env cannot leak in.
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("CHATINFO_", "BOT_"))},
            "PYTHONPATH": str(REPO), "BOT_TOKEN": BOT_TOKEN, "DATABASE_PATH": str(self.database),
            "LOG_LEVEL": "INFO", **env,
        }
        self.process: asyncio.subprocess.Process | None = None
        self.stderr = b""

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", cwd=self.workdir, env=self.env,
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
