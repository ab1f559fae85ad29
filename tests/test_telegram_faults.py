"""Telegram misbehaving on purpose: answers still arrive once, and nothing is spent in vain.

tests/test_runner.py covers a 429 and a "message to edit not found" on the answer's edit,
and a user who blocked the bot before the answer was shown. These cover the rest:
429s on new messages (the placeholder, a later part), "not modified", a user who blocked
the bot before the placeholder or during a long answer, network errors (in process, and
over real sockets with the real bot process), and outages longer than the bot's retries.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import types
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import pytest
from aiogram.exceptions import TelegramBadRequest
from aiogram.methods import EditMessageText, SendMessage

import bot.jobs.runner
import bot.telegram.retries
from bot.telegram.render import render
from bot.upstream.sandbox import FakeChatinfo, Fault
from storage.jobs import JobState
from storage.users import UserRepo
from tests.botprocess import BOT_TOKEN, BotProcess
from tests.fakes.telegram_api import message_update
from tests.harness import (
    SEEDED,
    App,
    FakeTelegram,
    WireSession,
    built_app,
    seed_solve_history,
    wait_until,
)

USER = 31
PLACEHOLDER_ID = 900
PLACEHOLDER = "⏳ Got it, one moment…"
SORRY = "😔 Something went wrong. Please try again."
BLOCKED = "Forbidden: bot was blocked by the user"
NOT_MODIFIED = ("Bad Request: message is not modified: specified new message content and "
                "reply markup are exactly the same as a current content and reply markup of "
                "the message")
LONG = "\n\n".join(f"paragraph {n}: " + " ".join(f"w{n}x{i}" for i in range(200))
                   for n in range(8))  # three messages


def answer(mode: str, content: str) -> str:
    return LONG if content == "long" else f"answer to {content}"


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    """The app on a WireSession (which can drop calls), answering "answer to <content>"."""
    async with (FakeChatinfo(solve_time=0.05, answer=answer) as chatinfo,
                built_app(tmp_path, chatinfo) as wired):
        yield wired


def session(app: App) -> WireSession:
    assert isinstance(app.session, WireSession)
    return app.session


async def resumed_job(app: App, content: str = "hello", *,
                      placeholder: int | None = PLACEHOLDER_ID, start: bool = True) -> int:
    """A job as a restart finds it: stored, maybe with its placeholder, nothing sent yet."""
    await UserRepo(app.db).touch(USER, "en")
    job_id = await app.jobs.add(user_id=USER, chat_id=USER, source_message_id=None,
                                locale="en", mode="chat", content=content)
    assert job_id is not None
    if placeholder is not None:
        await app.jobs.set_placeholder(job_id, placeholder)
    if start:
        await app.runner.resume()
    return job_id


async def settled(app: App) -> None:
    await wait_until(lambda: app.runner.active == 0, timeout=15, what="jobs to finish")


async def state(app: App, job_id: int) -> tuple[JobState, str | None]:
    job = await app.jobs.get(job_id)
    assert job is not None
    return job.state, job.error


def texts(app: App, method: type[SendMessage] | type[EditMessageText]) -> list[str]:
    return [call.text for call in app.sent(method)]


def handler_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if (r.getMessage().startswith("update ") and r.getMessage().endswith(" failed"))
            or "stopped unexpectedly" in r.getMessage()]


async def test_a_429_on_a_later_part_is_waited_out_and_each_part_sent_once(app: App) -> None:
    session(app).fail_next(SendMessage, 429, "Too Many Requests: retry after 1", retry_after=1)
    job_id = await resumed_job(app, "long")
    await settled(app)

    parts = [part.text for part in render(LONG)]
    assert len(parts) >= 3
    assert texts(app, EditMessageText) == parts[:1]
    # The refused second part again after the wait, then the rest, each once.
    assert texts(app, SendMessage) == [parts[1], *parts[1:]]
    assert " ".join(parts).split() == LONG.split()
    assert await state(app, job_id) == (JobState.DELIVERED, None)


async def test_not_modified_on_the_answer_counts_as_delivered(app: App) -> None:
    # Telegram says this when the message already shows the text: an edit that a crash
    # kept the bot from recording. Sending the answer again would show it twice.
    session(app).fail_next(EditMessageText, 400, NOT_MODIFIED)
    job_id = await resumed_job(app)
    await settled(app)

    assert texts(app, EditMessageText) == ["answer to hello"]
    assert texts(app, SendMessage) == []
    assert await state(app, job_id) == (JobState.DELIVERED, None)


async def test_blocked_during_a_long_answer_stops_at_once(app: App) -> None:
    session(app).fail_next(SendMessage, 403, BLOCKED)
    job_id = await resumed_job(app, "long")
    await settled(app)

    assert len(texts(app, SendMessage)) == 1  # the refused second part, nothing after it
    assert await state(app, job_id) == (JobState.FAILED, "blocked")


async def test_blocked_before_the_placeholder_ends_the_job_and_spends_nothing(
        app: App, caplog: pytest.LogCaptureFixture) -> None:
    session(app).fail_next(SendMessage, 403, BLOCKED)
    job_id = await resumed_job(app, placeholder=None)
    await settled(app)

    assert len(app.sent(SendMessage)) == 1
    assert app.chatinfo.calls["create_request"] == 0
    assert handler_failures(caplog) == []
    assert await state(app, job_id) == (JobState.FAILED, "blocked")


async def test_a_429_on_the_placeholder_is_waited_out_not_reported(
        app: App, caplog: pytest.LogCaptureFixture) -> None:
    session(app).fail_next(SendMessage, 429, "Too Many Requests: retry after 1", retry_after=1)
    await app.feed(message_update(USER, "hello"))
    await settled(app)

    assert SORRY not in texts(app, SendMessage)  # "try again" would spend a second unit
    assert handler_failures(caplog) == []
    placeholders = [m.text for m in session(app).delivered(SendMessage)]
    assert placeholders == [PLACEHOLDER]
    assert [m.text for m in session(app).delivered(EditMessageText)] == ["answer to hello"]
    assert app.chatinfo.calls["create_request"] == 1


async def test_a_network_error_on_the_answer_is_retried_once_it_passes(app: App) -> None:
    session(app).fail_network_next(EditMessageText)
    job_id = await resumed_job(app)
    await settled(app)

    assert texts(app, EditMessageText) == ["answer to hello"] * 2  # dropped, then through
    assert texts(app, SendMessage) == []
    assert await state(app, job_id) == (JobState.DELIVERED, None)


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outages in no time: with_retries' back-off (31 s in all) and the runner's pause
    before it goes over a job again (5 s, then longer) take (almost) none."""
    def no_wait(seconds: float) -> Awaitable[None]:
        return asyncio.sleep(0)

    monkeypatch.setattr(bot.telegram.retries, "asyncio", types.SimpleNamespace(sleep=no_wait))
    monkeypatch.setattr(bot.jobs.runner, "TELEGRAM_DOWN_FIRST_PAUSE", 0.05)


@pytest.mark.usefixtures("no_backoff")
async def test_an_outage_longer_than_the_retries_still_ends_in_delivery(app: App) -> None:
    outage = bot.telegram.retries.MAX_ATTEMPTS + 2  # failed calls: more than one round of retries
    session(app).fail_network_next(EditMessageText, times=outage)
    job_id = await resumed_job(app)
    await settled(app)

    assert len(app.sent(EditMessageText)) == outage + 1
    assert [m.text for m in session(app).delivered(EditMessageText)] == ["answer to hello"]
    assert await state(app, job_id) == (JobState.DELIVERED, None)


@pytest.mark.usefixtures("no_backoff")
async def test_a_failure_told_during_an_outage_reaches_the_user_afterwards(app: App) -> None:
    app.chatinfo.inject("create_request", Fault.http(502, after_effect=True))  # unknowable
    outage = bot.telegram.retries.MAX_ATTEMPTS + 2
    session(app).fail_network_next(EditMessageText, times=outage)
    job_id = await resumed_job(app)
    await settled(app)

    assert await state(app, job_id) == (JobState.UNKNOWN, "unknown_outcome")
    told = [m.text or "" for m in session(app).delivered(EditMessageText)]
    assert len(told) == 1 and told[0].startswith("⚠️ Something went wrong")
    job = await app.jobs.get(job_id)
    assert job is not None and job.told


async def test_an_ending_never_shown_before_a_crash_is_shown_at_the_next_start(app: App) -> None:
    job_id = await resumed_job(app, start=False)
    await app.jobs.end(job_id, JobState.UNKNOWN, "unknown_outcome")  # then the bot died

    assert await app.runner.resume() == 1
    await settled(app)
    [told] = [m.text or "" for m in session(app).delivered(EditMessageText)]
    assert told.startswith("⚠️ Something went wrong")
    job = await app.jobs.get(job_id)
    assert job is not None and job.told and app.chatinfo.calls["create_request"] == 0


async def test_dropped_connections_to_the_bot_api_over_real_sockets(tmp_path: Path) -> None:
    """The real bot process: aiohttp's own errors, not a stand-in exception."""
    async with (FakeChatinfo({"net-key": "prestige"}, solve_time=0.2, answer=answer) as chatinfo,
                FakeTelegram(valid_token=BOT_TOKEN) as telegram):
        process = BotProcess(tmp_path, {"CHATINFO_API_KEY": "net-key",
                                        "CHATINFO_BASE_URL": chatinfo.base_url,
                                        "TELEGRAM_API_URL": telegram.base_url})
        await seed_solve_history(process.database)
        await process.start()
        try:
            await telegram.wait_calls("getUpdates", 1, timeout=20)
            telegram.inject_disconnect("getUpdates")  # the long poll dies mid-wait
            telegram.inject_disconnect("editMessageText")  # and so does the answer
            telegram.push_update(message_update(USER, "over the wire"))
            await telegram.wait_for(lambda: process.count_jobs("delivered") == 1 + SEEDED,
                                    timeout=30)
        finally:
            code = await process.stop(signal.SIGTERM)

    assert code == 0
    edits = [c for c in telegram.calls_of("editMessageText")
             if c.params.get("text") == "answer to over the wire"]
    assert [c.failed for c in edits] == [True, False]
    placeholders = [c for c in telegram.calls_of("sendMessage") if not c.failed]
    assert [c.params["text"] for c in placeholders] == [PLACEHOLDER]
    assert chatinfo.calls["create_request"] == 1
    log = process.stderr.decode()
    assert "Traceback" not in log


def test_the_failure_detector_notices_a_failed_update(caplog: pytest.LogCaptureFixture) -> None:
    """The tests above rely on `handler_failures` seeing what on_error logs."""
    caplog.set_level(logging.ERROR)
    logging.getLogger("handlers.fallback").error("update 7 failed")
    assert handler_failures(caplog) == ["update 7 failed"]


@pytest.mark.parametrize(("description", "meaning"), [
    (NOT_MODIFIED, "not modified"),
    ("Bad Request: message to edit not found", "gone"),
    ("Bad Request: message can't be edited", "gone"),
    ("Bad Request: MESSAGE_ID_INVALID", "gone"),
    ("Bad Request: can't parse entities: unclosed start tag at byte offset 3", "entities"),
    ("Bad Request: message text is empty", None),
])
def test_telegrams_refusals_are_read_in_one_place(description: str, meaning: str | None) -> None:
    error = TelegramBadRequest(method=EditMessageText(text="x"), message=description)

    assert bot.telegram.retries.not_modified(error) == (meaning == "not modified")
    assert bot.telegram.retries.message_gone(error) == (meaning == "gone")
    assert bot.telegram.retries.entities_rejected(error) == (meaning == "entities")
