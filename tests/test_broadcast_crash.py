"""A broadcast to 200 users survives a SIGKILL halfway: the real bot process (`python -m bot`)
against the fake Bot API and the fake chatinfo server, killed, then started again.

Twenty of the users have blocked the bot. Two scenarios, one after the other:

- `killed`: the test SIGKILLs the bot while its 101st copy is on the way (the fake holds
  it unanswered, and never acts on it once its caller is gone). Every reachable user
  gets exactly one copy.
- `in_window`: the bot kills itself (bot/jobs/crashpoints.py) right after Telegram accepted
  its 100th copy and before that was recorded: the one crash window the Bot API leaves.
  That user gets it twice, as README says; everyone else once.
"""

from __future__ import annotations

import asyncio
import signal
import time
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from bot.jobs import crashpoints
from bot.upstream.sandbox import FakeChatinfo
from storage.db import open_database
from storage.users import UserRepo
from tests.botprocess import BOT_TOKEN, BotProcess
from tests.fakes.telegram_api import Call, FakeTelegramAPI, callback_update, message_update

pytestmark = pytest.mark.asyncio(loop_scope="module")

API_KEY = "broadcast-test-key"
ADMIN = 501
USERS = range(10_001, 10_200)  # with the admin, 200 recipients
BLOCKED = frozenset(USERS[4::10])  # 20 of them blocked the bot, unknown to it yet
REACHABLE = frozenset({ADMIN, *USERS}) - BLOCKED
ANNOUNCEMENT_ID = 777  # the admin's message that is copied
HALFWAY = 100
DEADLINE = 60.0  # generous: two scenarios share two cores
FINISHED = "📣 Broadcast finished."


@dataclass
class Run:
    scenario: str
    first_exit: int | None = None
    copies: dict[int, int] = field(default_factory=dict)  # chat -> copies delivered
    tried: dict[int, int] = field(default_factory=dict)  # chat -> copyMessage calls
    held: int | None = None  # whose copy was on its way at the kill
    report: str = ""
    next_preview: str = ""
    seconds: float = 0.0  # from the admin's "Send" to the final report, the kill included
    stderr: str = ""
    problem: str | None = None

    def check_driven(self) -> None:
        assert self.problem is None, f"{self.scenario}: {self.problem}\n{self.stderr[-3000:]}"
        assert self.first_exit == -signal.SIGKILL


async def seed_users(database: Path) -> None:
    """Users who have written to the bot before (the admin too)."""
    database.parent.mkdir(parents=True, exist_ok=True)
    db = await open_database(database)
    try:
        users = UserRepo(db)
        for user_id in (ADMIN, *USERS):
            await users.touch(user_id, "en")
    finally:
        await db.close()


def sent_texts(telegram: FakeTelegramAPI, method: str) -> list[Call]:
    return [c for c in telegram.calls_of(method) if not c.failed and c.params["chat_id"] == ADMIN]


async def compose(telegram: FakeTelegramAPI, message_id: int) -> Call:
    """/broadcast and the announcement from the admin: the confirmation with its buttons."""
    asked = len(sent_texts(telegram, "sendMessage"))
    telegram.push_update(message_update(ADMIN, "/broadcast"))
    await telegram.wait_for(lambda: len(sent_texts(telegram, "sendMessage")) == asked + 1,
                            DEADLINE)
    telegram.push_update(message_update(ADMIN, "New modes are here!", message_id=message_id))
    await telegram.wait_for(lambda: len(sent_texts(telegram, "sendMessage")) == asked + 2,
                            DEADLINE)
    return sent_texts(telegram, "sendMessage")[-1]


def final_report(telegram: FakeTelegramAPI) -> str | None:
    return next((str(c.params["text"]) for c in sent_texts(telegram, "editMessageText")
                 if str(c.params["text"]).startswith(FINISHED)), None)


async def broadcast_and_crash(scenario: str, workdir: Path) -> Run:
    run = Run(scenario)
    async with (FakeChatinfo({API_KEY: "prestige"}) as chatinfo,
                FakeTelegramAPI(valid_token=BOT_TOKEN) as telegram):
        telegram.blocked |= BLOCKED
        env = {"CHATINFO_API_KEY": API_KEY, "CHATINFO_BASE_URL": chatinfo.base_url,
               "TELEGRAM_API_URL": telegram.base_url, "ADMIN_IDS": str(ADMIN),
               # A broadcast's third of it: 100 copies a second.
               "TELEGRAM_MESSAGES_PER_SECOND": "300"}
        if scenario == "in_window":
            env |= {"BOT_CRASH_AT": crashpoints.BROADCAST_AFTER_COPY,
                    "BOT_CRASH_AFTER": str(HALFWAY), "BOT_CRASH_MARKER": str(workdir / "crashed")}
        first, second = BotProcess(workdir, env), BotProcess(workdir, env)
        await seed_users(first.database)
        try:
            await first.start()
            confirm = await compose(telegram, ANNOUNCEMENT_ID)
            [[send, _]] = confirm.params["reply_markup"]["inline_keyboard"]
            if scenario == "killed":  # the preview, then HALFWAY copies go through
                telegram.hold("copyMessage", after=1 + HALFWAY)
            started = time.monotonic()
            telegram.push_update(callback_update(ADMIN, send["callback_data"],
                                                 message_id=confirm.result["message_id"]))
            if scenario == "killed":
                await telegram.wait_for(lambda: len(telegram.held) == 1, DEADLINE)
                run.held = int(telegram.held[0].params["chat_id"])
                await first.stop(signal.SIGKILL)
                await telegram.wait_for(lambda: telegram.abandoned() == 1, DEADLINE)
                telegram.release()
            else:
                await asyncio.wait_for(first.process.wait(), DEADLINE)  # type: ignore[union-attr]
                await first.stop()  # collects its output
            run.first_exit = first.process.returncode  # type: ignore[union-attr]

            await second.start()
            await telegram.wait_for(lambda: final_report(telegram) is not None, DEADLINE)
            run.seconds = time.monotonic() - started
            run.report = final_report(telegram) or ""
            # The next broadcast knows whom to skip.
            run.next_preview = str((await compose(telegram, ANNOUNCEMENT_ID + 1)).params["text"])
        except Exception:
            run.problem = traceback.format_exc()
        finally:
            for bot in (first, second):
                if bot.process is not None and bot.process.returncode is None:
                    await bot.stop(signal.SIGTERM if bot is second else signal.SIGKILL)
            run.stderr = (first.stderr + second.stderr).decode(errors="replace")
        run.copies = telegram.copies_of(ADMIN, ANNOUNCEMENT_ID)
        run.copies[ADMIN] -= 1  # the admin's preview
        for call in telegram.calls_of("copyMessage"):
            chat = int(call.params["chat_id"])
            run.tried[chat] = run.tried.get(chat, 0) + 1
    return run


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runs(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, Run]]:
    # One after the other: bot processes starting at once on a busy machine (the suite
    # runs a file per core) make every start slow, here and in the other file.
    done = {}
    for name in ("killed", "in_window"):
        done[name] = await broadcast_and_crash(name, tmp_path_factory.mktemp(name))
        print(f"{name}: {done[name].seconds:.1f} s from Send to the final report")
    yield done


REPORT = ("📣 Broadcast finished.\n✅ Sent to 180 users\n🚫 20 users have blocked the bot\n"
          "⚠️ Could not be sent to 0 users")


async def test_a_sigkill_halfway_leaves_every_reachable_user_exactly_one_copy(
        runs: dict[str, Run]) -> None:
    run = runs["killed"]
    run.check_driven()
    assert {chat: n for chat, n in run.copies.items() if n} == dict.fromkeys(REACHABLE, 1)
    assert run.report == REPORT
    # The copy on its way at the kill was never acted on, and was sent again after it.
    assert run.held is not None and run.held in REACHABLE
    # The admin's three: the preview, the copy, and the next broadcast's preview.
    expected: dict[int, int] = {ADMIN: 3, **dict.fromkeys(USERS, 1), run.held: 2}
    assert run.tried == expected


async def test_users_who_blocked_the_bot_are_tried_once_and_skipped_next_time(
        runs: dict[str, Run]) -> None:
    for run in runs.values():
        run.check_driven()
        assert all(run.copies.get(chat, 0) == 0 for chat in BLOCKED)
        assert all(run.tried[chat] == 1 for chat in BLOCKED)
        assert run.next_preview.startswith("☝️ This is how it looks. It goes to 180 users.")


async def test_a_crash_between_the_copy_and_its_record_sends_that_one_copy_twice(
        runs: dict[str, Run]) -> None:
    run = runs["in_window"]
    run.check_driven()
    twice = [chat for chat, n in run.copies.items() if n == 2]
    assert len(twice) == 1
    assert {chat: n for chat, n in run.copies.items() if n and chat not in twice} == (
        dict.fromkeys(REACHABLE - set(twice), 1))
    assert run.report == REPORT  # one recipient, counted once
    assert "may see it twice" in run.stderr


async def test_no_traceback_in_either_life(runs: dict[str, Run]) -> None:
    for run in runs.values():
        assert "Traceback" not in run.stderr, f"{run.scenario}:\n{run.stderr[-3000:]}"
