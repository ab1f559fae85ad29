"""Whatever a user (or a modified client) sends, no handler fails and every update gets a
sensible reply or is ignored on purpose.

Hypothesis drives the real Dispatcher: each test builds one app, and hypothesis runs in a
worker thread handing every example to the app's event loop, so shrinking still works
and the examples share one set of fixtures. A failed update shows as the dispatcher's
error handler logging "update N failed"; a job task dying shows as "stopped unexpectedly".
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiogram.methods import AnswerCallbackQuery, EditMessageText, GetMe, SendMessage
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bot.telegram.commands import names
from bot.telegram.render import render
from bot.upstream.sandbox import FakeChatinfo
from storage.jobs import JobState
from tests.fakes.telegram_api import callback_update, message_update
from tests.harness import SEED_USER, App, built_app, wait_until

T = TypeVar("T")
ADMIN = 900
EXAMPLES = settings(max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

# Pieces that break naive text handling, mixed into arbitrary text.
TRICKY = [
    "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff",  # zero-width
    "\u200e", "\u200f", "\u202a", "\u202b", "\u202d", "\u202e", "\u2066", "\u2067", "\u2069",
    "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇷🇺", "👍🏽", "1️⃣", "🧑🏿‍💻", "𝕳𝖊𝖑𝖑𝖔", "ﷺ", "Z̷̢̛͎a̶l̴g̵o̸",
    "<b>", "</b>", "<a href='x'>", "&amp;", "&lt;", "<script>", "<tg-spoiler>",
    "*", "**", "_", "__", "`", "```", "[", "](", ")", "~", "||", ">", "#", "+", "-", "=", "|",
    "{", "}", ".", "!", "\\", "\n", "\n\n", "\t", "\r\n", " ", "@", "/", "%s", "{0}", "{user}",
]
hostile_text = st.lists(st.one_of(st.sampled_from(TRICKY), st.text(max_size=12)),
                        max_size=40).map("".join)


def on_loop(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` on the app's loop from hypothesis' worker thread."""
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=30)


def failures(caplog: pytest.LogCaptureFixture, since: int = 0) -> list[str]:
    """Errors logged (a failed update, a job task that died) among records[since:]."""
    return [record.getMessage() for record in caplog.records[since:]
            if record.levelno >= logging.ERROR
            or "stopped unexpectedly" in record.getMessage()]


class Probe:
    """Feeds one update and reports what went out because of it."""

    def __init__(self, app: App, caplog: pytest.LogCaptureFixture) -> None:
        self.app, self.caplog = app, caplog

    async def feed(self, update: dict[str, Any]) -> list[Any]:
        sent, logged = len(self.app.session.requests), len(self.caplog.records)
        await self.app.feed(update)
        assert failures(self.caplog, logged) == [], f"{update}: {failures(self.caplog, logged)}"
        return self.app.session.requests[sent:]


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    async with (FakeChatinfo(solve_time=0.0) as chatinfo,
                built_app(tmp_path, chatinfo, admin_ids=str(ADMIN), daily_quota=0) as wired):
        yield wired


async def explore(check: Callable[[], None]) -> None:
    await asyncio.to_thread(check)


async def test_any_text_is_answered_or_refused_and_no_job_is_left_hanging(
        app: App, caplog: pytest.LogCaptureFixture) -> None:
    probe, loop, users = Probe(app, caplog), asyncio.get_running_loop(), itertools.count(10_000)

    async def send(text: str) -> None:
        user = next(users)  # a fresh user: no quota or pending limit in the way
        out = await probe.feed(message_update(user, text))
        replies = [m for m in out if isinstance(m, SendMessage) and m.chat_id == user]
        assert replies, f"no reply to {text!r}"

    @EXAMPLES
    @given(text=hostile_text)
    @example(text="")
    @example(text=" ")
    @example(text="\u200b")
    @example(text="\u202e\u2066")
    @example(text="<b>unclosed")
    @example(text="*_`[](")
    @example(text="/")
    @example(text="/start@some_other_bot")
    @example(text="/grant 1 2")  # an admin command from a non-admin
    @example(text="x" * 100_000)
    def check(text: str) -> None:
        on_loop(loop, send(text))

    await explore(check)
    await wait_until(lambda: app.runner.active == 0, timeout=30, what="every job to end")
    jobs = await app.db.execute_fetchall("SELECT id, state FROM jobs WHERE user_id != ?",
                                         (SEED_USER,))
    assert jobs, "no example made a job: the strategy is broken"
    assert {row[1] for row in jobs} <= {JobState.DELIVERED, JobState.FAILED}
    assert failures(caplog) == []
    for edit in app.sent(EditMessageText):
        assert edit.text, "an empty edit: Telegram refuses those"


async def test_group_chatter_not_addressed_to_the_bot_is_ignored(
        app: App, caplog: pytest.LogCaptureFixture) -> None:
    probe, loop = Probe(app, caplog), asyncio.get_running_loop()
    group = -100_500

    async def chatter(text: str) -> None:
        out = await probe.feed(message_update(ADMIN + 2, text, chat_id=group,
                                              chat_type="supergroup"))
        said = [m for m in out if not isinstance(m, GetMe)]  # who am I: not a reply
        assert said == [], f"{text!r} in a group drew {said}"

    @EXAMPLES
    @given(text=hostile_text.filter(lambda t: "@" not in t and not t.startswith("/")))
    @example(text="hello everyone")
    def check(text: str) -> None:
        on_loop(loop, chatter(text))

    await explore(check)
    assert app.chatinfo.calls["create_request"] == 0


async def test_any_callback_data_is_answered_once(app: App,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    probe, loop = Probe(app, caplog), asyncio.get_running_loop()

    async def tap(data: str) -> None:
        out = await probe.feed(callback_update(ADMIN + 1, data, message_id=1000))
        answers = [m for m in out if isinstance(m, AnswerCallbackQuery)]
        assert len(answers) == 1, f"{data!r}: {len(answers)} answers"

    numbers = st.one_of(st.integers(), st.text(max_size=25), st.just("9" * 30))
    structured = st.builds(lambda prefix, parts: ":".join([prefix, *map(str, parts)]),
                           st.sampled_from(["mode", "lang", "retry", "ans", "hist", "", "x"]),
                           st.lists(numbers, max_size=3))

    @EXAMPLES
    @given(data=st.one_of(structured, st.text(max_size=80),
                          st.binary(max_size=64).map(lambda b: b.decode("latin-1"))))
    # Regression: ids beyond SQLite's 64-bit integers used to raise OverflowError.
    @example(data="retry:99999999999999999999999")
    @example(data="ans:r:9223372036854775808")
    @example(data="hist:-9223372036854775809")
    @example(data="retry:9223372036854775807")  # the largest that fits: simply unknown
    @example(data="mode:poems")
    @example(data="lang:xx")
    @example(data="ans:r:-1")
    @example(data="x" * 200)
    def check(data: str) -> None:
        on_loop(loop, tap(data))

    await explore(check)


ADMIN_COMMANDS = [f"/{name}" for name in names(admin=True)]
USER_COMMANDS = [f"/{name}" for name in names(admin=False)]


async def test_commands_with_any_arguments_get_one_reply(app: App,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    probe, loop = Probe(app, caplog), asyncio.get_running_loop()
    await app.feed(message_update(ADMIN + 1, "/start"))  # a user the admin commands can name
    argument = st.one_of(st.integers().map(str), st.sampled_from(
        [str(ADMIN), str(ADMIN + 1), "9" * 15, "9" * 16, "-1", "0", "１２", "²", "1e3", "0x10"]),
        st.text(max_size=10))

    async def command(text: str) -> None:
        out = await probe.feed(message_update(ADMIN, text))
        replies = [m for m in out if isinstance(m, SendMessage) and m.chat_id == ADMIN]
        assert len(replies) == 1, f"{text!r}: {len(replies)} replies"

    @EXAMPLES
    @given(name=st.sampled_from(ADMIN_COMMANDS + USER_COMMANDS),
           arguments=st.lists(argument, max_size=3),
           separator=st.sampled_from([" ", "  ", "\n", "\t"]))
    @example(name="/quota", arguments=[str(ADMIN + 1), "9" * 15], separator=" ")
    @example(name="/grant", arguments=[str(ADMIN + 1), "9" * 15], separator=" ")
    @example(name="/ban", arguments=[str(ADMIN)], separator=" ")
    @example(name="/user", arguments=["99999999999999999999"], separator=" ")
    def check(name: str, arguments: list[str], separator: str) -> None:
        on_loop(loop, command(separator.join([name, *arguments])))

    await explore(check)


async def test_a_lone_surrogate_neither_fails_the_update_nor_leaks_a_reservation(
        app: App, caplog: pytest.LogCaptureFixture) -> None:
    # A JSON "\\ud800" escape decodes to a lone surrogate, which UTF-8 (so SQLite and the
    # Bot API) refuses. Whether the bot refuses the message or cleans it, the update must
    # not fail, and a quota reservation must not outlive a job that was never stored.
    await app.feed(message_update(20, "hi \ud800 there"))
    await wait_until(lambda: app.runner.active == 0, timeout=10, what="jobs to end")

    assert failures(caplog) == []
    assert [m for m in app.sent(SendMessage) if m.chat_id == 20], "the user heard nothing"
    jobs = list(await app.db.execute_fetchall("SELECT state FROM jobs WHERE user_id = 20"))
    assert {row[0] for row in jobs} <= {JobState.DELIVERED, JobState.FAILED}
    used = await app.db.execute_fetchall(
        "SELECT coalesce(sum(used), 0) FROM usage WHERE user_id = 20")
    assert [tuple(row) for row in used] == [(len(jobs),)]
    await app.feed(message_update(21, "a normal message after it"))
    await wait_until(lambda: app.runner.active == 0, timeout=10, what="jobs to end")
    assert failures(caplog) == []
    assert app.sent(EditMessageText)[-1].text == "[chat] a normal message after it"


@pytest.mark.parametrize("answer", ["Generic List<String> in Java", "Use the <div> tag.",
                                    "Mail <me@example.com>", "Write <b>bold</b> in HTML."])
def test_answers_that_mention_tags_arrive_whole(answer: str) -> None:
    assert "".join(part.text for part in render(answer)) == answer
