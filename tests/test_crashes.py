"""SIGKILL at every step of a job, then a restart: the job still ends exactly right.

The real bot process (`python -m bot`) runs against the fake chatinfo server and the fake
Bot API server. `BOT_CRASH_AT` makes it kill itself at one named point (bot/jobs/crashpoints.py);
the restart runs with the marker file present, so it passes the point. Every crash point
is a scenario of two bot starts; the five run side by side (one start costs ~2.5 s of
CPU), and each test below judges one scenario from what the fakes recorded.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bot.jobs import crashpoints
from bot.telegram.render import render
from bot.upstream.sandbox import FakeChatinfo
from tests.botprocess import BOT_TOKEN, BotProcess
from tests.fakes.telegram_api import Call, FakeTelegramAPI, callback_update, message_update
from tests.harness import FakeTelegram, seed_solve_history

pytestmark = pytest.mark.asyncio(loop_scope="module")

API_KEY = "crash-test-key"
USER = 4242
QUESTION = "why is the sky blue"
LONG_QUESTION = "tell me everything"
PLACEHOLDER = "⏳ Got it, one moment…"
UNKNOWN_OUTCOME = "⚠️ Something went wrong while your request was being sent"
DEADLINE = 90.0  # generous: five scenarios share two cores with the rest of the suite
SOLVE_TIME = {crashpoints.WHILE_POLLING: 4.0}  # still solving at the first poll (by 2.1 s)
QUICK_SOLVE = 0.2


def long_answer() -> str:
    """About 9000 characters in paragraphs: several Telegram messages."""
    return "\n\n".join(f"paragraph {n}: " + " ".join(f"word{n}x{i}" for i in range(150))
                       for n in range(6))


def answer(mode: str, content: str) -> str:
    return long_answer() if content == LONG_QUESTION else f"answer to {content}"


@dataclass
class CrashRun:
    """What a crash-and-restart scenario left behind, for the tests to judge."""

    point: str
    question: str
    first_exit: int | None = None
    marker: str | None = None
    calls_before_restart: int = 0
    creates_before_retry: int | None = None
    telegram_calls: list[Call] = field(default_factory=list)
    creates: int = 0
    polls: int = 0
    spent_for_question: int = 0
    jobs: list[dict[str, Any]] = field(default_factory=list)
    problem: str | None = None  # the scenario could not be driven to its end
    stderr: str = ""

    def ok(self, method: str, since: int = 0, until: int | None = None) -> list[Call]:
        """Successful calls of `method` among the recorded calls [since:until]."""
        return [c for c in self.telegram_calls[since:until]
                if c.method == method and not c.failed]

    def texts(self, method: str, since: int = 0, until: int | None = None) -> list[str]:
        return [str(c.params.get("text", "")) for c in self.ok(method, since, until)]

    def check_driven(self) -> None:
        assert self.problem is None, f"{self.point}: {self.problem}\n{self.stderr[-3000:]}"
        assert self.first_exit == -signal.SIGKILL, f"first bot exited with {self.first_exit}"
        assert self.marker == self.point  # it died where the test meant it to


def job_rows(database: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(database) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM jobs WHERE user_id = ? ORDER BY id", (USER,))
        return [dict(row) for row in rows]


def jobs_in(database: Path, *states: str) -> int:
    return sum(1 for row in job_rows(database) if row["state"] in states)


async def exit_code(bot: BotProcess, timeout: float) -> int:
    """Wait for the process to end by itself (reading its pipes so it cannot block)."""
    assert bot.process is not None
    _, stderr = await asyncio.wait_for(bot.process.communicate(), timeout)
    bot.stderr += stderr
    code = bot.process.returncode
    assert code is not None
    return code


async def crash_and_recover(point: str, workdir: Path) -> CrashRun:
    question = LONG_QUESTION if point == crashpoints.BETWEEN_PARTS else QUESTION
    run = CrashRun(point, question)
    solve = SOLVE_TIME.get(point, QUICK_SOLVE)
    async with (FakeChatinfo({API_KEY: "prestige"}, solve_time=solve, answer=answer) as chatinfo,
                FakeTelegram(valid_token=BOT_TOKEN) as telegram):
        env = {"CHATINFO_API_KEY": API_KEY, "CHATINFO_BASE_URL": chatinfo.base_url,
               "TELEGRAM_API_URL": telegram.base_url, "BOT_CRASH_AT": point,
               "BOT_CRASH_MARKER": str(workdir / "crashed")}
        first, second = BotProcess(workdir, env), BotProcess(workdir, env)
        database = first.database
        await seed_solve_history(database)
        try:
            await first.start()
            telegram.push_update(message_update(USER, question))
            run.first_exit = await exit_code(first, DEADLINE)
            run.marker = (workdir / "crashed").read_text()
            run.calls_before_restart = len(telegram.calls)

            await second.start()
            if point == crashpoints.AFTER_CREATE:
                await telegram.wait_for(lambda: told_unknown(telegram) is not None, DEADLINE)
                run.creates_before_retry = chatinfo.calls["create_request"]
                await tap_retry(telegram)
            await telegram.wait_for(lambda: jobs_in(database, "delivered") == 1, DEADLINE)
        except Exception:
            run.problem = traceback.format_exc()
        finally:
            for bot in (first, second):
                if bot.process is not None and bot.process.returncode is None:
                    await bot.stop(signal.SIGTERM if bot is second else signal.SIGKILL)
            run.stderr = (first.stderr + second.stderr).decode(errors="replace")
        run.telegram_calls = list(telegram.calls)
        run.creates, run.polls = chatinfo.calls["create_request"], chatinfo.calls["get_response"]
        run.spent_for_question = len(chatinfo.created_for(question))
        run.jobs = job_rows(database)
    return run


def told_unknown(telegram: FakeTelegramAPI) -> Call | None:
    """The edit that told the user the outcome is unknown, once Telegram accepted it."""
    return next((c for c in telegram.calls_of("editMessageText") if not c.failed
                 and str(c.params.get("text", "")).startswith(UNKNOWN_OUTCOME)), None)


async def tap_retry(telegram: FakeTelegramAPI) -> None:
    """Press the retry button the bot put under its "something went wrong" message."""
    told = told_unknown(telegram)
    assert told is not None
    [[button]] = told.params["reply_markup"]["inline_keyboard"]
    telegram.push_update(callback_update(USER, button["callback_data"],
                                         message_id=told.params["message_id"]))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runs(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, CrashRun]]:
    points = crashpoints.POINTS
    done = await asyncio.gather(*(crash_and_recover(point, tmp_path_factory.mktemp(point))
                                  for point in points))
    yield dict(zip(points, done, strict=True))


def assert_answered_once(run: CrashRun, expected_answer: str) -> None:
    """One placeholder, the answer on it, and the rest of a long answer once each."""
    run.check_driven()
    assert run.texts("sendMessage").count(PLACEHOLDER) == 1
    parts = [part.text for part in render(expected_answer)]
    assert run.texts("editMessageText").count(parts[0]) == 1
    later_parts = [t for t in run.texts("sendMessage") if t != PLACEHOLDER]
    assert later_parts == parts[1:]
    delivered = [row for row in run.jobs if row["content"] == run.question]
    assert [(row["state"], row["parts_delivered"]) for row in delivered] == [
        ("delivered", len(parts))]
    assert (run.creates, run.spent_for_question) == (1, 1)  # one unit, never a second


@pytest.mark.parametrize("point", [crashpoints.BEFORE_ADMISSION, crashpoints.BEFORE_CREATE,
                                   crashpoints.WHILE_POLLING, crashpoints.AFTER_RESULT])
async def test_the_restart_delivers_the_answer_exactly_once(runs: dict[str, CrashRun],
                                                            point: str) -> None:
    assert_answered_once(runs[point], f"answer to {QUESTION}")


async def test_a_crash_while_polling_resumes_polling_not_creating(
        runs: dict[str, CrashRun]) -> None:
    run = runs[crashpoints.WHILE_POLLING]
    run.check_driven()
    assert run.polls >= 2  # the 202 that preceded the crash, then the answer after it
    assert run.creates == 1


async def test_a_crash_between_parts_sends_only_the_missing_parts(
        runs: dict[str, CrashRun]) -> None:
    run = runs[crashpoints.BETWEEN_PARTS]
    assert_answered_once(run, long_answer())
    parts = [part.text for part in render(long_answer())]
    assert len(parts) >= 3
    before = run.calls_before_restart
    # Before the crash: the first part on the placeholder and nothing more.
    assert run.texts("editMessageText", until=before) == [parts[0]]
    assert run.texts("sendMessage", until=before) == [PLACEHOLDER]
    # After it: the rest, each once, and the first part not even attempted again.
    assert [c for c in run.telegram_calls[before:] if c.method == "editMessageText"] == []
    assert [t for t in run.texts("sendMessage", since=before)] == parts[1:]
    assert " ".join(parts).split() == long_answer().split()  # the parts make the whole


async def test_a_crash_after_create_tells_the_user_and_spends_nothing_more(
        runs: dict[str, CrashRun]) -> None:
    run = runs[crashpoints.AFTER_CREATE]
    run.check_driven()
    assert run.creates_before_retry == 1  # the id was lost; the bot did not send again
    told = [c for c in run.ok("editMessageText")
            if str(c.params["text"]).startswith(UNKNOWN_OUTCOME)]
    assert len(told) == 1
    [[button]] = told[0].params["reply_markup"]["inline_keyboard"]
    assert button["callback_data"] == f"retry:{run.jobs[0]['id']}"
    # The user chose to send it again: a second unit, spent knowingly, and the answer.
    assert [row["state"] for row in run.jobs] == ["retried", "delivered"]
    assert run.creates == 2
    assert run.texts("editMessageText").count(f"answer to {QUESTION}") == 1
    assert run.texts("sendMessage").count(PLACEHOLDER) == 2  # the retry's own placeholder


async def test_no_traceback_in_either_life(runs: dict[str, CrashRun]) -> None:
    for run in runs.values():
        assert "Traceback" not in run.stderr, f"{run.point}:\n{run.stderr[-3000:]}"
