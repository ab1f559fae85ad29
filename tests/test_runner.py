"""The job runner resumes each job from the step it reached, and handles failures on purpose."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
from aiogram.methods import (
    AnswerCallbackQuery,
    EditMessageReplyMarkup,
    EditMessageText,
    SendMessage,
)

from bot.telegram.keyboards import RetryCallback
from bot.upstream.client import ChatinfoClient
from bot.upstream.sandbox import Fault
from storage.jobs import JobState
from tests.fakes.telegram_api import callback_update, message_update
from tests.harness import FAST_POLLS, App, AppFactory

PLACEHOLDER = 900


async def add_job(app: App, *, state: JobState = JobState.NEW, content: str = "hello",
                  placeholder: int | None = PLACEHOLDER, user_id: int = 1) -> int:
    await app.db.execute("INSERT OR IGNORE INTO users (id, first_seen, last_seen) VALUES (?, 0, 0)",
                         (user_id,))
    job_id = await app.jobs.add(user_id=user_id, chat_id=user_id, source_message_id=None,
                                locale="en", mode="chat", content=content)
    assert job_id is not None
    if placeholder is not None:
        await app.jobs.set_placeholder(job_id, placeholder)
    if state is not JobState.NEW:
        await app.jobs.end(job_id, state, "set by the test")
    return job_id


async def sent_job(app: App, content: str) -> int:
    """A job whose create_request really went to the fake server and was stored."""
    client = ChatinfoClient(app.chatinfo.base_url, "test-key")
    created = await client.create_request(content, "chat")
    await client.close()
    job_id = await add_job(app, content=content)
    await app.jobs.set_upstream(job_id, created.id, created.units)
    return job_id


async def creating_job(app: App, key: str, content: str) -> int:
    """A job whose create_request is about to be sent with the key of fingerprint `key`."""
    job_id = await add_job(app, content=content)
    await app.jobs.mark_creating(job_id, key=key)
    return job_id


async def state_of(app: App, job_id: int) -> JobState:
    job = await app.jobs.get(job_id)
    assert job is not None
    return job.state


async def test_new_job_without_placeholder_gets_one_then_its_answer(app: App) -> None:
    job_id = await add_job(app, placeholder=None)
    assert await app.runner.resume() == 1
    await app.settle()

    [placeholder] = app.sent(SendMessage)
    assert placeholder.text == "⏳ Got it, one moment…"
    [edit] = app.sent(EditMessageText)
    assert (edit.message_id, edit.text) == (1001, "[chat] hello")
    assert app.chatinfo.calls["create_request"] == 1
    assert await state_of(app, job_id) is JobState.DELIVERED


async def test_job_caught_mid_create_is_not_resent_but_offered_a_retry(app: App) -> None:
    job_id = await add_job(app, state=JobState.CREATING)
    await app.runner.resume()
    await app.settle()

    assert app.chatinfo.calls["create_request"] == 0
    [edit] = app.sent(EditMessageText)
    assert edit.message_id == PLACEHOLDER
    assert edit.text.startswith("⚠️ Something went wrong")
    assert await state_of(app, job_id) is JobState.UNKNOWN

    retry = RetryCallback(job_id=job_id).pack()
    await app.feed(callback_update(2, retry, message_id=PLACEHOLDER))  # someone else's button
    await app.feed(callback_update(1, retry, message_id=PLACEHOLDER))
    await app.feed(callback_update(1, retry, message_id=PLACEHOLDER))  # a second tap
    await app.settle()
    assert app.chatinfo.calls["create_request"] == 1
    assert app.sent(EditMessageText)[-1].text == "[chat] hello"
    [unbuttoned] = app.sent(EditMessageReplyMarkup)
    assert (unbuttoned.message_id, unbuttoned.reply_markup) == (PLACEHOLDER, None)
    assert [(a.text, a.show_alert) for a in app.sent(AnswerCallbackQuery)] == [
        ("This button belongs to someone else's request.", True),
        ("Sending again…", None),
        ("Already sent again; the answer is on its way.", None)]


@pytest.mark.parametrize("reached", [False, True])
async def test_a_job_caught_mid_create_is_sent_again_if_the_balance_shows_it_spent_nothing(
        app: App, reached: bool) -> None:
    client = ChatinfoClient(app.chatinfo.base_url, "test-key")
    earlier = await client.create_request("earlier", "chat")  # reports the balance: 999
    earlier_id = await add_job(app, content="earlier")
    await app.jobs.set_upstream(earlier_id, earlier.id, earlier.units)
    await app.jobs.set_result(earlier_id, "done")
    await app.jobs.mark_delivered(earlier_id, 1)
    if reached:  # the crash came after the server took it: a unit spent, the id lost
        await client.create_request("hello", "chat")
    await client.close()
    job_id = await add_job(app, state=JobState.CREATING)
    # The crash came two minutes before this start, so the server is surely done with the
    # call; the earlier create had its answer before it was sent.
    await app.db.execute("UPDATE jobs SET upstream_at = upstream_at - 200 WHERE id = ?",
                         (earlier_id,))
    await app.db.execute("UPDATE jobs SET updated_at = updated_at - 120 WHERE id = ?",
                         (job_id,))
    await app.db.commit()

    await app.runner.resume()
    await app.settle()
    if reached:
        assert await state_of(app, job_id) is JobState.UNKNOWN
        assert app.chatinfo.calls["create_request"] == 2  # not sent a third time
    else:
        assert await state_of(app, job_id) is JobState.DELIVERED
        assert app.sent(EditMessageText)[-1].text == "[chat] hello"
        assert app.chatinfo.units == 998  # one unit per answer
    assert app.chatinfo.calls["units"] == 1


@pytest.mark.parametrize("spent_late", [False, True])
async def test_a_job_caught_mid_create_just_now_is_settled_once_the_server_is_surely_done(
        app: App, spent_late: bool) -> None:
    """The server may still be working on a call the crash (or a shutdown) abandoned: the
    balance settles it only after FAST_POLLS' 0.3 s, as production's 60."""
    await sent_job(app, "earlier")
    job_id = await add_job(app, state=JobState.CREATING)  # sent a moment ago

    await app.runner.resume()
    if spent_late:  # the server finishes the abandoned call after the start
        client = ChatinfoClient(app.chatinfo.base_url, "test-key")
        await client.create_request("hello", "chat")
        await client.close()
    await app.settle()
    if spent_late:
        assert await state_of(app, job_id) is JobState.UNKNOWN
        assert app.chatinfo.calls["create_request"] == 2  # not sent a third time
        assert app.runner.reconciled == {"spent": 1}
    else:
        assert await state_of(app, job_id) is JobState.DELIVERED
        assert app.sent(EditMessageText)[-1].text == "[chat] hello"
        assert app.chatinfo.units == 998  # one unit per answer
        assert app.runner.reconciled == {"unspent": 1}


async def test_requests_go_on_while_a_failed_create_waits_for_its_verdict(app: App) -> None:
    """Nothing is held while the balance settles a failed create, not even for a slow
    create in flight: the creates sent meanwhile report balances of their own, and those
    already show that the failed one spent nothing."""
    await add_job(app, content="warm-up", user_id=4)
    await app.runner.resume()
    await app.settle()  # the start's probe went through
    app.chatinfo.inject("create_request", Fault.slow(5.0))  # the next: out for 5 s
    app.chatinfo.inject("create_request", Fault.http(500, "oops"))  # then: spent nothing
    slow = await add_job(app, content="slow", user_id=1)
    failed = await add_job(app, content="failed", user_id=2)
    later = await add_job(app, content="later", user_id=3)
    for job_id in (slow, failed, later):
        app.runner.start(job_id)

    async def delivered(job_id: int) -> bool:
        return await state_of(app, job_id) is JobState.DELIVERED

    deadline = time.monotonic() + 4.0  # short of the slow create's 5 s
    while not (await delivered(later) and await delivered(failed)):
        assert time.monotonic() < deadline, "held behind the slow create"
        await asyncio.sleep(0.02)
    assert await state_of(app, slow) is JobState.CREATING
    await app.settle()
    assert await delivered(slow)
    assert app.chatinfo.calls["create_request"] == 5  # the failed one sent once more
    assert app.chatinfo.units == 996  # one unit per answer
    assert app.runner.reconciled == {"unspent": 1}


@pytest.mark.parametrize("reached", [False, True])
async def test_a_restart_settles_a_lost_create_against_the_kept_balance_despite_later_ones(
        make_app: AppFactory, reached: bool) -> None:
    before = await make_app()
    await before.runner.resume()  # reads the balance (1000) and keeps it
    job_id = await add_job(before, state=JobState.CREATING)  # its reply lost at a crash
    if reached:  # the server took it: a unit spent, the id lost
        client = ChatinfoClient(before.chatinfo.base_url, "test-key")
        await client.create_request("hello", "chat")
        await client.close()
    await sent_job(before, "later")  # acknowledged after the lost one was sent
    await before.runner.stop()

    after = await make_app()
    await after.runner.resume()
    await after.settle()
    if reached:
        assert await state_of(after, job_id) is JobState.UNKNOWN
        assert after.chatinfo.calls["create_request"] == 2
        assert after.runner.reconciled == {"spent": 1}
    else:
        assert await state_of(after, job_id) is JobState.DELIVERED
        assert after.chatinfo.units == 998  # "later" and "hello", one unit each
        assert after.runner.reconciled == {"unspent": 1}


async def test_a_restart_tells_apart_two_lost_creates_by_the_balance_between_them(
        make_app: AppFactory) -> None:
    """Two creates lost at a crash, one debit unreported: counting cannot tell whose. A
    create acknowledged between them reported the balance, which shows the first spent
    it (its id is lost) and the second nothing (it is sent again)."""
    before = await make_app()
    await before.runner.resume()  # reads the balance (1000) and keeps it
    first = await add_job(before, content="first")
    await before.jobs.mark_creating(first)
    client = ChatinfoClient(before.chatinfo.base_url, "test-key")
    await client.create_request("first", "chat")  # the server took it; the reply is lost
    await client.close()
    await sent_job(before, "between")  # reports 998: one debit before it unreported
    second = await add_job(before, content="second")
    await before.jobs.mark_creating(second)  # the crash came before it reached the server
    await before.runner.stop()

    after = await make_app()
    await after.runner.resume()
    await after.settle()
    assert await state_of(after, first) is JobState.UNKNOWN
    assert await state_of(after, second) is JobState.DELIVERED
    assert after.runner.reconciled == {"spent": 1, "unspent": 1}
    assert after.chatinfo.units == 997  # first, between, and second sent once


async def test_a_restart_counts_the_failed_creates_taken_as_spent_before_it(
        make_app: AppFactory) -> None:
    """Two units gone without a reported balance: one is the create the run before took
    as spent (its user was told), so the other is the one the crash caught mid-create."""
    before = await make_app()
    await before.runner.resume()  # reads the balance (1000) and keeps it
    client = ChatinfoClient(before.chatinfo.base_url, "test-key")
    key = next(iter(before.runner.lanes))  # the fingerprint of the one key
    earlier = await creating_job(before, key, "earlier")
    await client.create_request("earlier", "chat")  # spent; the reply was lost...
    await before.jobs.end(earlier, JobState.UNKNOWN, "unknown_outcome")  # ...and so judged
    lost = await creating_job(before, key, "lost")
    await client.create_request("lost", "chat")  # spent; then the crash
    await client.close()
    await before.runner.stop()

    after = await make_app()
    await after.runner.resume()
    await after.settle()
    assert await state_of(after, lost) is JobState.UNKNOWN
    # and the one taken as spent before is now shown spent too
    assert after.runner.reconciled == {"spent": 1, "spent_after_assumed": 1}
    assert after.chatinfo.calls["create_request"] == 2  # neither sent again
    await after.runner.stop()
    again = await make_app()
    await again.runner.resume()
    await again.settle()
    assert again.runner.reconciled == {}  # each shown once


async def test_a_failed_create_taken_as_spent_before_a_restart_keeps_its_time_after_it(
        make_app: AppFactory) -> None:
    """Two creates the run before took as spent, done with at their replies, share the
    unit missing before the next balance reported; neither can be the one missing after
    it, which is the create the crash cut off."""
    policy = replace(FAST_POLLS, create_settles_after=30.0, verdict_patience=30.0)
    before = await make_app(policy=policy)
    await before.runner.resume()  # reads the balance (1000) and keeps it
    key = next(iter(before.runner.lanes))
    client = ChatinfoClient(before.chatinfo.base_url, "test-key")
    earlier = await creating_job(before, key, "earlier")
    await client.create_request("earlier", "chat")  # spent (999); its reply was garbled
    await before.jobs.mark_create_failed(earlier, time.time())
    await before.jobs.end(earlier, JobState.UNKNOWN, "unknown_outcome")
    other = await creating_job(before, key, "other")  # a 500 that spent nothing
    await before.jobs.mark_create_failed(other, time.time())
    await before.jobs.end(other, JobState.UNKNOWN, "unknown_outcome")
    between = await creating_job(before, key, "between")
    created = await client.create_request("between", "chat")  # reports 998
    await before.jobs.set_upstream(between, created.id, created.units)
    lost = await creating_job(before, key, "lost")
    await client.create_request("lost", "chat")  # spent (997); then the crash
    await client.close()
    await before.runner.stop()

    after = await make_app(policy=policy)
    await after.runner.resume()
    await after.settle()
    assert after.runner.reconciled == {"spent": 1}  # not assumed
    assert await state_of(after, lost) is JobState.UNKNOWN


async def test_a_failed_create_being_settled_at_a_crash_keeps_its_time_after_it(
        make_app: AppFactory) -> None:
    """A create the API answered with an error was done at its reply. A crash while the
    balance settled it must not stretch its time to a minute after it was sent, where the
    unit of a create the crash cut off would be as much its as that one's."""
    policy = replace(FAST_POLLS, create_settles_after=30.0, verdict_patience=30.0)
    before = await make_app(policy=policy)
    await before.runner.resume()  # reads the balance (1000) and keeps it
    key = next(iter(before.runner.lanes))
    client = ChatinfoClient(before.chatinfo.base_url, "test-key")
    failed = await creating_job(before, key, "failed")
    await before.jobs.mark_create_failed(failed, time.time())  # a 500: nothing spent
    between = await creating_job(before, key, "between")
    created = await client.create_request("between", "chat")  # reports 999
    await before.jobs.set_upstream(between, created.id, created.units)
    lost = await creating_job(before, key, "lost")
    await client.create_request("lost", "chat")  # spent (998); then the crash
    await client.close()
    await before.runner.stop()

    after = await make_app(policy=policy)
    await after.runner.resume()
    await after.settle()
    assert after.runner.reconciled == {"unspent": 1, "spent": 1}
    assert await state_of(after, failed) is JobState.DELIVERED
    assert await state_of(after, lost) is JobState.UNKNOWN


async def test_a_balance_read_while_a_create_went_out_is_not_kept_for_the_next_start(
        app: App) -> None:
    """The read's balance may or may not have that create's debit in it: as an anchor
    for the next start, pinned to when it was sent, it could look like a top-up."""
    app.chatinfo.inject("units", Fault.slow(1.0))
    job_id = await add_job(app)
    resuming = asyncio.create_task(app.runner.resume())  # reads the balance, slowly
    deadline = time.monotonic() + 5
    while app.chatinfo.calls["units"] == 0:
        assert time.monotonic() < deadline, "no balance read"
        await asyncio.sleep(0.01)
    app.runner.start(job_id)  # its create goes out while the read is on its way
    await resuming
    await app.settle()
    assert app.chatinfo.calls["create_request"] == 1
    assert await app.jobs.balance_anchor(key=next(iter(app.runner.lanes))) is None


async def test_pending_job_is_polled_not_created_again(app: App) -> None:
    client = ChatinfoClient(app.chatinfo.base_url, "test-key")
    created = await client.create_request("resumed", "chat")
    await client.close()
    job_id = await add_job(app, content="resumed")
    await app.jobs.mark_creating(job_id)
    await app.jobs.set_upstream(job_id, created.id, created.units)

    await app.runner.resume()
    await app.settle()
    assert app.chatinfo.calls["create_request"] == 1
    assert app.sent(EditMessageText)[-1].text == "[chat] resumed"
    assert await state_of(app, job_id) is JobState.DELIVERED


async def test_a_cancelled_sent_job_is_still_fetched_after_a_restart_and_kept(app: App,
                                                                              ) -> None:
    job_id = await sent_job(app, "paid for")
    await app.jobs.mark_cancelled(job_id)  # /cancel, then a restart

    await app.runner.resume()
    await app.settle()
    job = await app.jobs.get(job_id)
    assert job is not None and (job.state, job.result) == (JobState.DELIVERED, "[chat] paid for")
    assert app.sent(EditMessageText) == []  # kept for /history, not posted


async def test_answered_job_sends_only_the_parts_not_yet_delivered(app: App) -> None:
    long_answer = "\n\n".join(f"paragraph {n} " + "x" * 1500 for n in range(8))
    job_id = await add_job(app)
    await app.jobs.set_result(job_id, long_answer)
    await app.jobs.set_parts_delivered(job_id, 2)

    await app.runner.resume()
    await app.settle()
    assert app.sent(EditMessageText) == []  # part 1 was already shown on the placeholder
    rest = app.sent(SendMessage)
    assert rest and rest[0].text.startswith("paragraph 4")
    assert all(m.reply_parameters.message_id == PLACEHOLDER for m in rest)
    job = await app.jobs.get(job_id)
    assert job is not None and job.state is JobState.DELIVERED
    assert job.parts_delivered == 2 + len(rest)


async def test_deleted_placeholder_gets_the_answer_as_a_new_message(app: App) -> None:
    app.session.fail_next(EditMessageText, 400, "Bad Request: message to edit not found")
    job_id = await add_job(app)
    await app.runner.resume()
    await app.settle()

    [answer] = app.sent(SendMessage)
    assert answer.text == "[chat] hello"
    assert await state_of(app, job_id) is JobState.DELIVERED


async def test_telegram_retry_after_is_honoured(app: App) -> None:
    app.session.fail_next(EditMessageText, 429, "Too Many Requests: retry after 1", retry_after=1)
    job_id = await add_job(app)
    await app.runner.resume()
    await app.settle()

    first, second = app.sent(EditMessageText)
    assert first.text == second.text == "[chat] hello"
    assert await state_of(app, job_id) is JobState.DELIVERED


async def test_blocked_user_ends_the_job_without_retrying(app: App) -> None:
    app.session.fail_next(EditMessageText, 403, "Forbidden: bot was blocked by the user")
    job_id = await add_job(app)
    await app.runner.resume()
    await app.settle()

    assert len(app.sent(EditMessageText)) == 1
    assert await state_of(app, job_id) is JobState.FAILED


@pytest.mark.parametrize("spent", [False, True])
async def test_a_create_failed_without_the_servers_word_is_settled_by_the_balance_later(
        app: App, spent: bool) -> None:
    app.chatinfo.inject("create_request", Fault.http(504, "<html>gateway timeout</html>",
                                                     after_effect=spent))
    job_id = await add_job(app)
    await app.runner.resume()
    await app.settle()

    *shown, edit = app.sent(EditMessageText)
    checking = [e for e in shown if e.text.startswith("⏳ The AI service did not confirm your")]
    if spent:  # the unit is gone with its id: told at once, never sent twice
        assert checking == []  # the debit was in the balance at once: nothing to wait for
        assert app.chatinfo.calls["create_request"] == 1
        assert await state_of(app, job_id) is JobState.UNKNOWN
        assert edit.reply_markup is not None
    else:  # the server may still spend it: checked again once it is surely done
        assert checking and shown[0] is checking[0]
        assert app.chatinfo.calls["create_request"] == 2
        assert edit.text == "[chat] hello"
        assert app.chatinfo.units == 999
    assert app.runner.reconciled == {"spent" if spent else "unspent": 1}


async def test_with_the_units_budget_used_up_the_creates_after_a_failed_one_tell(
        make_app: AppFactory) -> None:
    """A 429 storm used up the units budget: no read can settle the failed create, but
    the create sent after it reports the balance, which shows it spent nothing."""
    app = await make_app(client_options={"units_per_min": 1, "window": 3600.0})
    app.chatinfo.inject("create_request", Fault.http(500, "oops"))
    failed = await add_job(app, content="failed")
    after = await add_job(app, content="after", user_id=2)
    await app.runner.resume()  # reads the balance: the window's one units call
    await app.settle()
    assert await state_of(app, failed) is JobState.DELIVERED
    assert await state_of(app, after) is JobState.DELIVERED
    assert app.runner.reconciled == {"unspent": 1}
    assert app.chatinfo.calls["units"] == 1 and app.chatinfo.units == 998


async def test_poll_errors_are_waited_out(app: App) -> None:
    app.chatinfo.inject("get_response", Fault.http(500, "oops"), times=4)
    job_id = await add_job(app)
    await app.runner.resume()
    await app.settle()

    assert app.sent(EditMessageText)[-1].text == "[chat] hello"
    assert await state_of(app, job_id) is JobState.DELIVERED


async def test_job_without_answer_in_time_is_awaited_late_then_fails_with_a_message(
        app: App) -> None:
    app.chatinfo.solve_time = 3600.0
    job_id = await add_job(app)
    await app.db.execute("UPDATE jobs SET created_at = created_at - 29.8 WHERE id = ?", (job_id,))
    await app.db.commit()
    await app.runner.resume()
    await app.settle()

    *progress, late, edit = app.sent(EditMessageText)
    # Its first progress edit was due at once: "sending" while the create was on its way,
    # "working" only once it was acknowledged.
    assert all(p.text.startswith(("⏳ Sending your request…", "⏳ Working on it… 0:"))
               for p in progress)
    assert late.text.startswith("⏳ No answer yet after 30 seconds. The request was sent, so it "
                                "was counted, and its answer will still appear here")
    assert late.reply_markup is None
    assert edit.text.startswith("⌛ No answer came in time.")
    assert await state_of(app, job_id) is JobState.FAILED


async def test_an_answer_after_the_maximum_wait_is_still_delivered(
        make_app: AppFactory) -> None:
    app = await make_app(policy=replace(FAST_POLLS, max_wait=0.5, late_wait=5.0),
                         max_pending_per_user=1)
    app.chatinfo.solve_time = lambda mode, content: 1.5 if content == "slow one" else 0.1
    await app.feed(message_update(1, "slow one"))
    await app.chatinfo.wait_for(lambda: any(text.startswith("⏳ No answer yet after 1 second")
                                            for text in edit_texts(app)))
    await app.feed(message_update(1, "meanwhile"))  # a late request holds nobody up
    await app.settle()

    edits = edit_texts(app)
    assert "[chat] slow one" in edits
    assert any(text.startswith("[chat] ") and text.endswith("meanwhile") for text in edits)
    assert not any(text.startswith("⌛ No answer came in time.") for text in edits)
    assert [job.state for job in await app.jobs.recent(1, 2)] == [JobState.DELIVERED] * 2
    assert app.chatinfo.units == 998  # two units, two answers


def edit_texts(app: App) -> list[str]:
    return [edit.text for edit in app.sent(EditMessageText)]


async def test_stop_lets_a_create_in_flight_store_its_id(app: App) -> None:
    app.chatinfo.inject("create_request", Fault.slow(0.5))
    job_id = await add_job(app)
    app.runner.start(job_id)
    await app.chatinfo.wait_for(lambda: app.chatinfo.calls["create_request"] == 1)
    await app.runner.stop()

    job = await app.jobs.get(job_id)
    assert job is not None and job.state is JobState.PENDING and job.upstream_id is not None


async def test_a_pending_job_older_than_the_wait_gets_one_look_before_it_expires(
        app: App) -> None:
    client = ChatinfoClient(app.chatinfo.base_url, "test-key")
    created = await client.create_request("after a long downtime", "chat")
    await client.close()
    job_id = await add_job(app, content="after a long downtime")
    await app.jobs.set_upstream(job_id, created.id, created.units)
    await app.db.execute("UPDATE jobs SET created_at = created_at - 3600, "
                         "upstream_at = upstream_at - 3600 WHERE id = ?", (job_id,))
    await app.db.commit()
    ready_at = app.chatinfo.requests[-1].ready_at  # the answer waits, as after a downtime
    await app.chatinfo.wait_for(lambda: app.chatinfo.clock() >= ready_at)

    await app.runner.resume()
    await app.settle()
    assert app.sent(EditMessageText)[-1].text == "[chat] after a long downtime"
    assert await state_of(app, job_id) is JobState.DELIVERED


async def test_cancel_leaves_an_answer_on_its_way_alone(app: App) -> None:
    job_id = await add_job(app)
    await app.jobs.set_result(job_id, "paid for and on its way")

    assert await app.runner.cancel(user_id=1) == (0, 0)
    assert await state_of(app, job_id) is JobState.ANSWERED


async def test_cancel_while_the_balance_settles_a_failed_create_takes_it_as_spent(
        make_app: AppFactory) -> None:
    """Its unit may be gone: never sent again, its user told it may have counted."""
    app = await make_app(policy=replace(FAST_POLLS, create_settles_after=30.0))
    app.chatinfo.inject("create_request", Fault.http(504))  # a gateway gave up: it may still come
    job_id = await add_job(app)
    await app.runner.resume()
    deadline = time.monotonic() + 5
    while not any(e.text.startswith("⏳ The AI service did not confirm your")
                  for e in app.sent(EditMessageText)):
        assert time.monotonic() < deadline, "never shown as being checked"
        await asyncio.sleep(0.02)

    await app.runner.cancel(user_id=1)
    await app.settle()
    assert await state_of(app, job_id) is JobState.UNKNOWN
    assert app.runner.reconciled == {"assumed_spent": 1}
    assert app.chatinfo.calls["create_request"] == 1


async def test_a_key_refused_while_polling_alerts_the_admins(make_app: AppFactory) -> None:
    app = await make_app(admin_ids="900")
    client = ChatinfoClient(app.chatinfo.base_url, "test-key")
    created = await client.create_request("hello", "chat")
    await client.close()
    job_id = await add_job(app)
    await app.jobs.set_upstream(job_id, created.id, created.units)
    app.chatinfo.keys["test-key"] = "free"

    await app.runner.resume()
    await app.settle()
    assert await state_of(app, job_id) is JobState.FAILED
    alerts = [m.text for m in app.sent(SendMessage) if m.chat_id == 900]
    assert alerts == [
        "🛑 The API refused our key: the API needs the Prestige tariff and ours is “Бесплатный”. "
        "Users are told the service is unavailable until this is fixed."]


# --- a step that raises (a bug, the database) is tried again, then the job ends ----------

QUICK_RETRIES = replace(FAST_POLLS, step_attempts=4, step_retry_pause=0.01)


def failing(method: Callable[..., Awaitable[Any]], times: int | None) -> Callable[..., Any]:
    """`method`, raising the first `times` times it is called (None: every time)."""
    calls = 0

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if times is None or calls <= times:
            raise sqlite3.OperationalError("database is locked")
        return await method(*args, **kwargs)

    return flaky


async def used_today(app: App, user_id: int) -> int:
    rows = await app.db.execute_fetchall("SELECT used FROM usage WHERE user_id = ?", (user_id,))
    return sum(row[0] for row in rows)


async def test_a_step_that_raises_a_few_times_is_tried_again_and_the_answer_delivered(
        make_app: AppFactory, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    app = await make_app(policy=QUICK_RETRIES)
    monkeypatch.setattr(app.jobs, "set_result", failing(app.jobs.set_result, times=3))

    await app.feed(message_update(1, "hello"))
    await app.settle()

    [job] = await app.jobs.recent(1, 1)
    assert job.state is JobState.DELIVERED
    assert edit_texts(app)[-1] == "[chat] hello"
    assert app.chatinfo.calls["create_request"] == 1  # gone over again, not sent again
    assert await used_today(app, 1) == 1
    retries = [r.getMessage() for r in caplog.records if "its step failed" in r.getMessage()]
    attempts = [found[1] for m in retries if (found := re.search(r"\((\d) of 4\)", m))]
    assert attempts == ["1", "2", "3"]


async def test_a_sent_job_whose_step_always_raises_ends_failed_and_keeps_its_count(
        make_app: AppFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    app = await make_app(policy=QUICK_RETRIES)
    monkeypatch.setattr(app.jobs, "set_result", failing(app.jobs.set_result, times=None))

    await app.feed(message_update(1, "hello"))
    await app.settle()

    [job] = await app.jobs.recent(1, 1)
    assert (job.state, job.error, job.told) == (JobState.FAILED, "internal", True)
    [ending] = [edit for edit in app.sent(EditMessageText) if edit.text.startswith("⚠️")]
    assert ending.text == ("⚠️ Something went wrong on our side after your request was sent, "
                           "so it was counted. Tap the button to send it again.")
    assert ending.reply_markup is not None  # the retry button
    assert await used_today(app, 1) == 1  # its unit was spent: the quota is not given back


async def test_a_job_whose_step_always_raises_before_sending_ends_failed_and_gives_back(
        make_app: AppFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    app = await make_app(policy=QUICK_RETRIES)
    monkeypatch.setattr(app.jobs, "mark_creating", failing(app.jobs.mark_creating, times=None))

    await app.feed(message_update(1, "hello"))
    await app.settle()

    [job] = await app.jobs.recent(1, 1)
    assert (job.state, job.error, job.told) == (JobState.FAILED, "internal", True)
    assert edit_texts(app)[-1] == (
        "⚠️ Something went wrong on our side, so your request could not be handled. It was "
        "not sent, so nothing was counted. Tap the button to try again.")
    assert app.chatinfo.calls["create_request"] == 0
    assert await used_today(app, 1) == 0  # never sent: the quota is given back
