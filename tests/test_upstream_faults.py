"""The chatinfo API misbehaving on purpose: every message still ends in exactly one outcome.

A message ends either with its answer delivered, or with the user told plainly. Telling
is allowed only where the bot cannot know better: create_request failed in a way that may
have spent a unit (a retry could spend a second), or the API refused every attempt (429).
Counting at the fake proves the rest: no content is created twice, retries are bounded,
and the rate limits hold even while faults force retries.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from aiogram.methods import EditMessageText, SendMessage
from aiogram.types import InlineKeyboardMarkup

from bot.jobs.failures import Failure
from bot.upstream.client import CREATE, POLL, ChatinfoClient
from bot.upstream.sandbox import (
    NO_UNITS,
    NOT_PRESTIGE,
    FakeChatinfo,
    Fault,
    Served,
    standard_faults,
)
from storage.jobs import Job, JobState
from tests.fakes.telegram_api import message_update
from tests.harness import FAST_POLLS, KEY, SEED_USER, TEST_WINDOW, App, asked, built_app, wait_until

ATTEMPTS = 3  # the client's default
CLIENT_TIMEOUT = 1.0
SLOW_REPLY = 1.5  # beyond CLIENT_TIMEOUT: a slow reply is a timeout to the bot
# A create's outcome is settled by the balance once the fake's slowest reply is done with.
POLICY = replace(FAST_POLLS, create_settles_after=SLOW_REPLY + 0.5)
# Tight limits over a short window, so the run really presses against them.
CREATE_LIMIT, POLL_LIMIT, WINDOW = 20, 20, 1.0
MESSAGES, USERS = 30, 15

ANSWER_PREFIX = "answer to "
TEXTS = {
    Failure.UNKNOWN_OUTCOME: "⚠️ Something went wrong while your request was being sent",
    Failure.BUSY: "⚠️ The AI service is busy right now. Your request was not sent",
    Failure.LOST: "⚠️ The AI service lost this request after it was sent",
    Failure.TIMEOUT: "⌛ No answer came in time.",
}


def answer(mode: str, content: str) -> str:
    return ANSWER_PREFIX + content


def may_have_spent(fault: Fault) -> bool:
    """Whether the bot, seeing this fault on create_request, cannot know if a unit went."""
    return fault.status is None or fault.status >= 500 or fault.status == 200


WAITING = "⏳"  # placeholder and progress edits ("⏳ In the queue …", "⏳ Working on it… 0:15")


@dataclass(frozen=True)
class Ending:
    """What the user finally saw on a job's placeholder."""

    job: Job
    edits: list[EditMessageText]
    extra_messages: list[SendMessage]

    @property
    def final(self) -> EditMessageText:
        """The one edit that is not a progress note, and that nothing overwrote."""
        finals = [edit for edit in self.edits if not (edit.text or "").startswith(WAITING)]
        assert len(finals) == 1, f"job {self.job.id}: {len(finals)} final edits"
        assert self.edits[-1] is finals[0], f"job {self.job.id}: progress after the end"
        return finals[0]

    @property
    def text(self) -> str:
        return self.final.text or ""

    @property
    def offers_retry(self) -> bool:
        markup = self.final.reply_markup
        return isinstance(markup, InlineKeyboardMarkup) and any(
            (button.callback_data or "").startswith("retry:")
            for row in markup.inline_keyboard for button in row)


async def endings(app: App) -> list[Ending]:
    ids = [row[0] for row in await app.db.execute_fetchall(
        "SELECT id FROM jobs WHERE user_id != ? ORDER BY id", (SEED_USER,))]
    result = []
    for job_id in ids:
        job = await app.jobs.get(job_id)
        assert job is not None and job.placeholder_id is not None
        edits = [e for e in app.sent(EditMessageText)
                 if (e.chat_id, e.message_id) == (job.chat_id, job.placeholder_id)]
        extra = [m for m in app.sent(SendMessage) if m.chat_id == job.chat_id
                 and m.reply_parameters is not None
                 and m.reply_parameters.message_id == job.placeholder_id]
        result.append(Ending(job, edits, extra))
    return result


async def finish(app: App, jobs: int, timeout: float) -> None:
    """Wait until the `jobs` jobs made by the test have ended, and all that they set off."""
    async def all_ended() -> bool:
        rows = await app.db.execute_fetchall(
            "SELECT count(*) FROM jobs WHERE state IN ('delivered', 'failed', 'unknown') "
            "AND user_id != ?", (SEED_USER,))
        return [tuple(row) for row in rows] == [(jobs,)]

    await app.chatinfo.wait_for(all_ended, timeout=timeout)
    await wait_until(lambda: app.runner.active == 0, timeout=5, what="runner tasks to end")
    # A slow reply the bot gave up on is processed late (and may spend a unit then).
    await wait_until(lambda: app.chatinfo.in_flight == 0, timeout=5, what="slow replies")


@pytest.fixture
async def chaotic_app(tmp_path: Path) -> AsyncIterator[App]:
    """A quarter of all calls fail, of every kind, against tight limits and a short timeout."""
    async with FakeChatinfo(solve_time=0.1, answer=answer, window=WINDOW,
                            limits={CREATE: CREATE_LIMIT, POLL: POLL_LIMIT}) as chatinfo:
        chatinfo.inject_random(standard_faults(SLOW_REPLY), rate=0.25, seed=20240607)
        # The client's window is the fake's, shrunk alike, with a margin for transit time
        # as in production (61 s against 60).
        client = ChatinfoClient(chatinfo.base_url, KEY, backoff=0.01, timeout=CLIENT_TIMEOUT,
                                create_timeout=CLIENT_TIMEOUT,
                                create_per_min=CREATE_LIMIT, poll_per_min=POLL_LIMIT,
                                window=WINDOW * 1.1)
        async with built_app(tmp_path, chatinfo, client=client, policy=POLICY) as app:
            yield app


async def test_every_message_ends_delivered_or_honestly_told(chaotic_app: App) -> None:
    app, chatinfo = chaotic_app, chaotic_app.chatinfo
    for n in range(MESSAGES):
        await app.feed(message_update(100 + n % USERS, f"question {n}"))
    await finish(app, MESSAGES, timeout=40)

    told: dict[str, list[int]] = {}
    for ending in await endings(app):
        job, content = ending.job, ending.job.content
        creates = chatinfo.served_for("create_request", content=content)
        assert creates, f"{content}: never sent"
        *retried, last = creates
        # Sent again only after a call that surely spent nothing: a 429, or a failure the
        # balance showed cost nothing, read once the server was surely done with it.
        assert all(c.fault is not None and not c.fault.after_effect and not c.fault.delay
                   for c in retried), (
            content, [c.fault for c in creates])
        assert len(chatinfo.created_for(content)) <= 1, f"{content} created twice"
        assert ending.extra_messages == [], f"{content}: more messages than the answer"
        if last.fault is not None and may_have_spent(last.fault):
            expected, state = Failure.UNKNOWN_OUTCOME, JobState.UNKNOWN
        elif last.fault is not None:  # 429s until the maximum wait
            expected, state = Failure.BUSY, JobState.FAILED
        else:
            assert job.state is JobState.DELIVERED, f"{content}: {job.state} ({job.error})"
            assert ending.text == ANSWER_PREFIX + content
            continue
        assert (job.state, job.error) == (state, expected), content
        assert ending.text.startswith(TEXTS[expected]), content
        assert ending.offers_retry, content
        told.setdefault(expected, []).append(job.id)

    # Every unit spent is either a delivered answer or a told "not known if it counted".
    for request in chatinfo.requests:
        [job] = [e.job for e in await endings(app) if e.job.content == request.content]
        assert job.state in (JobState.DELIVERED, JobState.UNKNOWN), request.content
    assert chatinfo.generated_429s() == 0, "the bot went over a rate limit"
    assert_polls_bounded(chatinfo)
    # The run must have been rough enough to mean something.
    faults = [call.fault for call in chatinfo.served if call.fault is not None]
    assert len({fault.kind for fault in faults}) >= 6
    assert 0.15 < len(faults) / len(chatinfo.served) < 0.35
    assert told.get(Failure.UNKNOWN_OUTCOME), "no ambiguous create failure was exercised"
    delivered = sum(1 for e in await endings(app) if e.job.state is JobState.DELIVERED)
    assert delivered >= MESSAGES // 2


def assert_polls_bounded(chatinfo: FakeChatinfo) -> None:
    """No polling after the answer came, and at most ATTEMPTS calls per poll interval."""
    polls: dict[int, list[Served]] = {}
    for call in chatinfo.served_for("get_response"):
        assert call.request_id is not None
        polls.setdefault(call.request_id, []).append(call)
    interval = FAST_POLLS.timing.min_gap
    for request_id, calls in polls.items():
        answered = [i for i, c in enumerate(calls) if c.status == 200 and c.fault is None]
        if answered:
            assert answered[0] == len(calls) - 1, f"id {request_id} polled after its answer"
        span = calls[-1].arrived_at - calls[0].arrived_at
        assert len(calls) <= ATTEMPTS * (1 + span / interval), f"id {request_id}: retry storm"


@pytest.mark.parametrize(("fault", "spent", "expected"), [
    (Fault.http(500, "oops"), False, None),  # the balance shows it cost nothing: resent
    (Fault.http(502, after_effect=True), True, Failure.UNKNOWN_OUTCOME),
    (Fault.slow(SLOW_REPLY), True, Failure.UNKNOWN_OUTCOME),
    (Fault.http(502), False, None),  # settled by the balance later: resent
    (Fault.disconnect(), False, None),
    (Fault.disconnect(after_effect=True), True, Failure.UNKNOWN_OUTCOME),
    (Fault.truncated(after_effect=True), True, Failure.UNKNOWN_OUTCOME),
    (Fault.rate_limited(), False, None),  # queued again, sent once the window clears
], ids=lambda value: value.kind if isinstance(value, Fault) else str(value))
async def test_each_create_fault_once(tmp_path: Path, fault: Fault, spent: bool,
                                      expected: Failure | None) -> None:
    async with FakeChatinfo(solve_time=0.05, answer=answer) as chatinfo:
        client = ChatinfoClient(chatinfo.base_url, KEY, backoff=0.01, timeout=CLIENT_TIMEOUT,
                                create_timeout=CLIENT_TIMEOUT,
                                window=TEST_WINDOW)
        async with built_app(tmp_path, chatinfo, client=client, policy=POLICY) as app:
            chatinfo.inject("create_request", fault)
            await app.feed(message_update(7, "the question"))
            await finish(app, 1, timeout=10)
            [ending] = await endings(app)

            assert len(chatinfo.created_for("the question")) == (0 if expected and not spent
                                                                 else 1)
            if expected is None:  # sent again: it surely spent nothing
                assert chatinfo.calls["create_request"] == 2
                first, second = chatinfo.served_for("create_request")
                if fault.status == 429:  # not before the 429'd call left the window
                    assert second.arrived_at - first.arrived_at >= TEST_WINDOW * 0.9
                assert ending.text == ANSWER_PREFIX + "the question"
            else:
                assert chatinfo.calls["create_request"] == 1  # never re-sent by the bot
                assert ending.text.startswith(TEXTS[expected])
                assert ending.offers_retry


async def test_unknown_id_five_times_running_is_lost_and_told(tmp_path: Path) -> None:
    async with (FakeChatinfo(solve_time=0.0, answer=answer) as chatinfo,
                built_app(tmp_path, chatinfo) as app):
        chatinfo.inject("get_response", Fault.not_found(), times=5)
        await app.feed(message_update(8, "forgotten"))
        await finish(app, 1, timeout=10)
        [ending] = await endings(app)

        assert chatinfo.calls["get_response"] == 5  # a 404 is not retried by the client
        assert (ending.job.state, ending.job.error) == (JobState.FAILED, Failure.LOST)
        assert ending.text.startswith(TEXTS[Failure.LOST])
        assert ending.offers_retry


@pytest.mark.parametrize(("error", "failure", "said"), [
    ({"error": NOT_PRESTIGE}, Failure.ACCESS_DENIED, "😔 The service is unavailable right now"),
    ({"error": NO_UNITS, "units": 0}, Failure.NO_UNITS, "😔 The bot has run out of capacity"),
])
async def test_a_403_while_polling_ends_the_job_and_tells_the_user(
        tmp_path: Path, error: dict[str, object], failure: Failure, said: str) -> None:
    body = json.dumps({"success": False, **error}, ensure_ascii=False)
    async with (FakeChatinfo(solve_time=0.0, answer=answer) as chatinfo,
                built_app(tmp_path, chatinfo) as app):
        chatinfo.inject("get_response", Fault(status=403, body=body,
                                              content_type="application/json"))
        await app.feed(message_update(10, "asked as the key was revoked"))
        await finish(app, 1, timeout=10)
        [ending] = await endings(app)

        assert chatinfo.calls["get_response"] == 1  # a 403 is final, not retried
        assert (ending.job.state, ending.job.error) == (JobState.FAILED, failure)
        assert ending.text.startswith(said)
        assert not ending.offers_retry  # a retry would meet the same refusal


async def test_a_404_run_broken_by_an_answer_does_not_count(tmp_path: Path) -> None:
    async with (FakeChatinfo(solve_time=0.0, answer=answer) as chatinfo,
                built_app(tmp_path, chatinfo) as app):
        chatinfo.inject("get_response", Fault.not_found(), times=4)
        await app.feed(message_update(9, "flaky lookup"))
        await finish(app, 1, timeout=10)
        [ending] = await endings(app)

        assert ending.job.state is JobState.DELIVERED
        assert ending.text == ANSWER_PREFIX + "flaky lookup"


MAX_WAIT = 1.5


async def test_polls_failing_until_max_wait_end_with_the_timeout_message(
        tmp_path: Path) -> None:
    # tests/test_runner.py covers an answer that is never ready; here every poll fails,
    # which must end the same way: told, retry offered, the spent unit not given back.
    policy = replace(FAST_POLLS, max_wait=MAX_WAIT)
    async with (FakeChatinfo(solve_time=0.0, answer=answer) as chatinfo,
                built_app(tmp_path, chatinfo, policy=policy) as app):
        chatinfo.inject("get_response", Fault.http(503, "down"), times=10_000)
        await app.feed(message_update(10, "never answered"))
        await finish(app, 1, timeout=10)
        [ending] = await endings(app)

        assert (ending.job.state, ending.job.error) == (JobState.FAILED, Failure.TIMEOUT)
        assert ending.text.startswith(TEXTS[Failure.TIMEOUT])
        assert ending.offers_retry
        assert len(chatinfo.requests) == 1
        used = await app.db.execute_fetchall("SELECT used FROM usage WHERE user_id = 10")
        assert [tuple(row) for row in used] == [(1,)]  # the spent unit is not given back
        polls = chatinfo.calls["get_response"]
        assert 0 < polls <= ATTEMPTS * (1 + MAX_WAIT / FAST_POLLS.timing.min_gap)


async def test_a_failed_create_the_balance_shows_spent_nothing_is_sent_again(
        tmp_path: Path) -> None:
    async with FakeChatinfo(solve_time=0.05, answer=answer) as chatinfo:
        client = ChatinfoClient(chatinfo.base_url, KEY, backoff=0.01, window=TEST_WINDOW)
        async with built_app(tmp_path, chatinfo, client=client, policy=POLICY) as app:
            await app.feed(message_update(9, "first"))
            await finish(app, 1, timeout=10)
            units_before = chatinfo.calls["units"]
            chatinfo.inject("create_request", Fault.http(500, "oops"))  # never processed
            await app.feed(message_update(9, "second"))
            await finish(app, 2, timeout=10)
            endings_ = await endings(app)

    assert [asked(e.text.removeprefix(ANSWER_PREFIX)) for e in endings_] == ["first", "second"]
    assert chatinfo.calls["create_request"] == 3 and chatinfo.units == 998  # one per answer
    assert chatinfo.calls["units"] == units_before + 1  # the balance asked once, after it


@pytest.mark.parametrize("fault", [Fault.http(502, after_effect=True),
                                   Fault.truncated(after_effect=True)],
                         ids=lambda fault: fault.kind)
async def test_a_failed_create_the_balance_shows_spent_is_told_and_not_resent(
        tmp_path: Path, fault: Fault) -> None:
    async with FakeChatinfo(solve_time=0.05, answer=answer) as chatinfo:
        client = ChatinfoClient(chatinfo.base_url, KEY, backoff=0.01, window=TEST_WINDOW)
        async with built_app(tmp_path, chatinfo, client=client, policy=POLICY) as app:
            await app.feed(message_update(9, "first"))
            await finish(app, 1, timeout=10)
            chatinfo.inject("create_request", fault)  # processed: a unit spent, the id lost
            await app.feed(message_update(9, "second"))
            await finish(app, 2, timeout=10)
            last = (await endings(app))[-1]

    assert last.text.startswith(TEXTS[Failure.UNKNOWN_OUTCOME]) and last.offers_retry
    assert chatinfo.calls["create_request"] == 2 and chatinfo.units == 998


async def test_a_top_up_during_a_failed_create_is_taken_as_spent(tmp_path: Path) -> None:
    async with FakeChatinfo(solve_time=0.05, answer=answer) as chatinfo:
        client = ChatinfoClient(chatinfo.base_url, KEY, backoff=0.01, window=TEST_WINDOW)
        async with built_app(tmp_path, chatinfo, client=client, policy=POLICY) as app:
            await app.feed(message_update(9, "first"))
            await finish(app, 1, timeout=10)
            chatinfo.units += 500  # the operator tops up meanwhile: the balance cannot tell
            chatinfo.inject("create_request", Fault.http(500, "oops"))
            await app.feed(message_update(9, "second"))
            await finish(app, 2, timeout=10)
            last = (await endings(app))[-1]

    assert last.text.startswith(TEXTS[Failure.UNKNOWN_OUTCOME])
    assert chatinfo.calls["create_request"] == 2  # never risk a second unit


async def test_a_message_delivered_again_after_a_restart_is_answered_once(
        tmp_path: Path) -> None:
    update = message_update(9, "only once", message_id=4242)
    async with FakeChatinfo(solve_time=0.05, answer=answer) as chatinfo:
        async with built_app(tmp_path, chatinfo, history=False) as app:
            await app.feed(update)
            await finish(app, 1, timeout=10)
        # The bot restarts before Telegram learns the update was handled, and sends it again.
        async with built_app(tmp_path, chatinfo, history=False) as app:
            await app.runner.resume()
            await app.feed(update)
            await app.settle()
            assert app.sent(SendMessage) == []  # no second placeholder, no reply at all

    assert chatinfo.calls["create_request"] == 1 and chatinfo.units == 999


async def test_a_key_limited_below_its_documented_rate_is_learned_and_admins_told(
        tmp_path: Path) -> None:
    window = 1.0
    async with FakeChatinfo(solve_time=0.05, answer=answer, window=window,
                            limits={CREATE: 3}) as chatinfo:  # the documented 1500 is not so
        client = ChatinfoClient(chatinfo.base_url, KEY, backoff=0.01, window=window * 1.1)
        async with built_app(tmp_path, chatinfo, client=client, admin_ids="900") as app:
            for n in range(12):
                await app.feed(message_update(200 + n, f"limited {n}"))
            await finish(app, 12, timeout=40)
            limiter = client.limiters[CREATE]
            alerts = [m.text for m in app.sent(SendMessage) if m.chat_id == 900]
            texts = [e.text for e in await endings(app)]

    assert all(text.startswith(ANSWER_PREFIX) for text in texts)  # none failed
    assert chatinfo.units == 1000 - 12  # one unit per answer
    assert limiter.limit < limiter.configured  # learned, climbing back
    # The first burst meets 429s (nine of twelve sent at once); after that the bot keeps
    # near the server's real rate instead of meeting a 429 per request.
    assert chatinfo.statuses[CREATE, 429] <= 9 + 6
    [alert] = alerts
    learned = re.match(r"⚠️ The API answers 429 below its documented rate: create_request now "
                       r"gets (\d+) calls? a minute instead of 1500\.", alert)
    assert learned is not None and int(learned[1]) < 10, alert  # about the server's 3
    assert alert.endswith(" calls a minute instead of 1500. Is another program using the key?")


async def test_a_failed_create_no_balance_tells_of_in_time_is_taken_as_spent(
        tmp_path: Path) -> None:
    async with FakeChatinfo(solve_time=0.05, answer=answer) as chatinfo:
        client = ChatinfoClient(chatinfo.base_url, KEY, backoff=0.01, window=TEST_WINDOW)
        async with built_app(tmp_path, chatinfo, client=client, policy=POLICY) as app:
            await app.feed(message_update(9, "first"))
            await finish(app, 1, timeout=10)
            chatinfo.inject("create_request", Fault.http(500, "oops"))  # spent nothing...
            # ...but nobody can tell: no read gets through within the patience
            chatinfo.inject("units", Fault.http(502), times=1000)
            await app.feed(message_update(9, "second"))
            await finish(app, 2, timeout=10)
            last = (await endings(app))[-1]

    assert last.text.startswith(TEXTS[Failure.UNKNOWN_OUTCOME]) and last.offers_retry
    assert chatinfo.calls["create_request"] == 2  # never risk a second unit


async def test_a_failed_create_without_reply_the_balance_shows_spent_is_decided_at_once(
        tmp_path: Path) -> None:
    # Its window is long, but the debit is already in the balance: no need to wait for it.
    policy = replace(POLICY, create_settles_after=30.0)
    async with FakeChatinfo(solve_time=0.05, answer=answer) as chatinfo:
        client = ChatinfoClient(chatinfo.base_url, KEY, backoff=0.01, window=TEST_WINDOW)
        async with built_app(tmp_path, chatinfo, client=client, policy=policy) as app:
            await app.feed(message_update(9, "first"))
            await finish(app, 1, timeout=10)
            chatinfo.inject("create_request", Fault.http(504, after_effect=True))
            await app.feed(message_update(10, "second"))
            await finish(app, 2, timeout=5)  # well before its 30 s
            last = (await endings(app))[-1]
            reconciled = dict(app.runner.reconciled)

    assert last.text.startswith(TEXTS[Failure.UNKNOWN_OUTCOME]) and last.offers_retry
    assert [e.text for e in last.edits if (e.text or "").startswith(WAITING)] == []  # no "checking"
    assert len(chatinfo.created_for("second")) == 1 and chatinfo.calls["create_request"] == 2
    assert reconciled == {"spent": 1}


@pytest.mark.parametrize(("fault", "done_at_once"), [
    (Fault.http(504), False),  # a gateway gave up waiting: the server may still debit it
    (Fault.disconnect(), True),  # the server closed the connection: done with it
    (Fault.http(502), True),  # the gateway saw the server fail: done with it
], ids=lambda value: value.kind if isinstance(value, Fault) else str(value))
async def test_a_failed_create_is_sent_again_only_once_its_server_is_done(
        tmp_path: Path, fault: Fault, done_at_once: bool) -> None:
    # The balance is unchanged at once; while the server may still be working on the call,
    # a debit may yet come, so it is sent again only after its window.
    async with FakeChatinfo(solve_time=0.05, answer=answer) as chatinfo:
        client = ChatinfoClient(chatinfo.base_url, KEY, backoff=0.01, window=TEST_WINDOW)
        async with built_app(tmp_path, chatinfo, client=client, policy=POLICY) as app:
            await app.feed(message_update(9, "first"))
            await finish(app, 1, timeout=10)
            units_before = chatinfo.calls["units"]
            chatinfo.inject("create_request", fault)  # nothing spent
            await app.feed(message_update(10, "second"))
            await finish(app, 2, timeout=10)
            last = (await endings(app))[-1]
            reconciled = dict(app.runner.reconciled)

    assert last.text == ANSWER_PREFIX + "second"
    failed, again = chatinfo.served_for("create_request", content="second")
    waited = again.arrived_at - failed.arrived_at
    if done_at_once:
        assert waited < POLICY.create_settles_after / 2
        assert chatinfo.calls["units"] == units_before + 1
    else:
        assert waited >= POLICY.create_settles_after
        assert chatinfo.calls["units"] == units_before + 2  # at once, and once it was done
    assert reconciled == {"unspent": 1} and chatinfo.units == 998


async def test_a_late_debit_after_an_unchanged_balance_is_still_seen(tmp_path: Path) -> None:
    # The reply is lost at the client's timeout and the server spends the unit later: the
    # first look sees nothing spent, and must not send it again on that.
    async with FakeChatinfo(solve_time=0.05, answer=answer) as chatinfo:
        client = ChatinfoClient(chatinfo.base_url, KEY, backoff=0.01, timeout=CLIENT_TIMEOUT,
                                create_timeout=CLIENT_TIMEOUT,
                                window=TEST_WINDOW)
        async with built_app(tmp_path, chatinfo, client=client, policy=POLICY) as app:
            await app.feed(message_update(9, "first"))
            await finish(app, 1, timeout=10)
            units_before = chatinfo.calls["units"]
            chatinfo.inject("create_request", Fault.slow(SLOW_REPLY))  # spends as it replies
            await app.feed(message_update(10, "second"))
            await finish(app, 2, timeout=10)
            last = (await endings(app))[-1]
            reconciled = dict(app.runner.reconciled)

    assert last.text.startswith(TEXTS[Failure.UNKNOWN_OUTCOME])
    assert chatinfo.calls["create_request"] == 2 and len(chatinfo.created_for("second")) == 1
    assert chatinfo.calls["units"] == units_before + 2
    assert reconciled == {"spent": 1}


async def test_a_failed_create_decided_at_once_leaves_no_doubt_over_the_next_one(
        tmp_path: Path) -> None:
    # Two failed creates without reply, one after the other, each within the other's
    # window (from different users: each content is just its message). Had the first
    # (spent) waited for its window, its debit would be in the balance that settles the
    # second (which spent nothing): the two could not be told apart, and both would be
    # taken as spent.
    policy = replace(POLICY, create_settles_after=4.0)
    async with FakeChatinfo(solve_time=0.05, answer=answer) as chatinfo:
        client = ChatinfoClient(chatinfo.base_url, KEY, backoff=0.01, window=TEST_WINDOW)
        async with built_app(tmp_path, chatinfo, client=client, policy=policy) as app:
            await app.feed(message_update(9, "first"))
            await finish(app, 1, timeout=10)
            chatinfo.inject("create_request", Fault.http(504, after_effect=True))
            await app.feed(message_update(10, "second"))
            await finish(app, 2, timeout=3)
            chatinfo.inject("create_request", Fault.http(504))  # nothing spent
            await app.feed(message_update(11, "third"))
            await finish(app, 3, timeout=15)
            second, third = (await endings(app))[1:]
            reconciled = dict(app.runner.reconciled)

    assert second.text.startswith(TEXTS[Failure.UNKNOWN_OUTCOME])
    assert third.text == ANSWER_PREFIX + "third"
    assert [len(chatinfo.created_for(text)) for text in ("second", "third")] == [1, 1]
    assert chatinfo.calls["create_request"] == 4 and chatinfo.units == 997
    assert reconciled == {"spent": 1, "unspent": 1}


async def test_the_balance_is_read_between_two_failed_creates_in_a_row(tmp_path: Path) -> None:
    """The second create goes only once the balance after the first failed one is read:
    with no balance between them, the one unit missing could be either's."""
    policy = replace(POLICY, creates_in_flight=1)
    async with FakeChatinfo(solve_time=0.05, answer=answer) as chatinfo:
        client = ChatinfoClient(chatinfo.base_url, KEY, backoff=0.01, window=TEST_WINDOW)
        async with built_app(tmp_path, chatinfo, client=client, policy=policy) as app:
            await app.feed(message_update(9, "first"))
            await finish(app, 1, timeout=10)
            chatinfo.inject("create_request", Fault.http(500, "oops"))  # nothing spent
            chatinfo.inject("create_request", Fault.http(502, after_effect=True))  # spent
            await asyncio.gather(app.feed(message_update(10, "second")),
                                 app.feed(message_update(11, "third")))
            await finish(app, 3, timeout=15)
            second, third = (await endings(app))[1:]
            reconciled = dict(app.runner.reconciled)

    assert second.text == ANSWER_PREFIX + "second"  # sent again: it had spent nothing
    assert third.text.startswith(TEXTS[Failure.UNKNOWN_OUTCOME])
    assert reconciled == {"unspent": 1, "spent": 1}
    assert chatinfo.units == 997  # first, third's lost one, and second sent again
