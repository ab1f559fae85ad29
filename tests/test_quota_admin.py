"""Quotas, the shared balance, access rules and the admin console, through the Dispatcher."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from typing import Any

import pytest
from aiogram.methods import AnswerCallbackQuery, EditMessageText, SendMessage

import bot.upstream.units
from bot.jobs.admission import QuotaClock
from bot.upstream.account import Upstream
from bot.upstream.sandbox import Fault
from storage.quotas import QuotaRepo
from tests.fakes.telegram_api import callback_update, message_update
from tests.harness import FAST_POLLS, App, AppFactory, asked, wait_until

ADMIN = 900
UNKNOWN_COMMAND = "I don't know this command. Send /help to see what I can do."
QUOTA_USAGE = "Usage: /quota <user_id> <n | unlimited | default>"


def texts(app: App, to: int | None = None) -> list[str]:
    return [m.text for m in app.sent(SendMessage) if to is None or m.chat_id == to]


async def usage_used(app: App, user_id: int) -> int:
    quotas: QuotaRepo = app.dp["quotas"]
    clock: QuotaClock = app.dp["clock"]
    return (await quotas.usage(user_id, clock.today())).used


async def test_fifty_concurrent_messages_spend_exactly_the_quota(make_app: AppFactory) -> None:
    app = await make_app(daily_quota=10, max_pending_per_user=100)
    await app.feed(message_update(1, "/start"))
    await asyncio.gather(*(app.feed(message_update(1, f"q{n}")) for n in range(50)))
    await app.settle()

    assert app.chatinfo.calls["create_request"] == 10
    refusals = [t for t in texts(app) if t.startswith("🚫 You have used all your requests")]
    assert len(refusals) == 40
    assert await usage_used(app, 1) == 10


async def test_over_quota_reply_says_when_it_resets_and_sends_nothing(make_app: AppFactory,
                                                                      ) -> None:
    app = await make_app(daily_quota=1)
    await app.feed(message_update(2, "first"))
    await app.settle()
    await app.feed(message_update(2, "second"))

    assert app.chatinfo.calls["create_request"] == 1
    reply = texts(app)[-1]
    assert reply.startswith("🚫 You have used all your requests for today, so this one was not "
                            "sent. New ones arrive at midnight Moscow time, in ")
    assert re.search(r", in \d+ (hours?|minutes?)( \d+ minutes?)?\.$", reply), reply


async def test_a_request_whose_job_cannot_be_stored_counts_on_no_quota(
        make_app: AppFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The quota is reserved and the job added in one transaction: when the job fails, even
    after its row was written, neither the row nor the reservation is left."""
    app = await make_app(daily_quota=1)
    store = app.jobs.add

    async def store_then_fail(**fields: Any) -> int | None:
        await store(**fields)
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(app.jobs, "add", store_then_fail)
    await app.feed(message_update(2, "first"))

    assert texts(app) == ["😔 Something went wrong. Please try again."]
    assert await usage_used(app, 2) == 0
    assert not await app.db.execute_fetchall("SELECT 1 FROM jobs")

    monkeypatch.undo()
    await app.feed(message_update(2, "again"))  # the day's one request is still there
    await app.settle()
    assert app.chatinfo.calls["create_request"] == 1
    assert await usage_used(app, 2) == 1


async def test_pending_limit_refuses_and_spends_nothing(make_app: AppFactory) -> None:
    app = await make_app(max_pending_per_user=2)
    app.chatinfo.solve_time = 60.0
    for n in range(3):
        await app.feed(message_update(3, f"q{n}"))
    await app.chatinfo.wait_for(lambda: app.chatinfo.calls["create_request"] == 2)

    assert texts(app)[-1].startswith("✋ You already have 2 requests in progress.")
    assert await usage_used(app, 3) == 2


async def test_quota_is_given_back_when_no_unit_was_spent(make_app: AppFactory) -> None:
    app = await make_app(daily_quota=1, policy=replace(FAST_POLLS, max_wait=0.5),
                         client_options={"window": 0.1})
    app.chatinfo.limits["create_request"] = 0  # every create gets a 429 until it gives up
    await app.feed(message_update(4, "busy"))
    await app.settle()
    assert await usage_used(app, 4) == 0

    app.chatinfo.limits["create_request"] = 1500
    await app.feed(message_update(4, "again"))
    await app.settle()
    assert app.sent(EditMessageText)[-1].text == "[chat] again"


async def test_me_shows_mode_requests_left_and_reset(app: App) -> None:
    await app.feed(message_update(5, "hi"))
    await app.settle()
    await app.feed(message_update(5, "/me"))

    mode, quota, left, resets = texts(app)[-1].split("\n")
    assert mode == "Mode: 💬 Chat"
    assert quota == "Your quota: 30 requests a day, the same for everyone."
    assert left == "29 requests left today."
    assert resets.startswith("The quota resets at midnight Moscow time, in ")


async def test_whitelist_refuses_others_politely_but_not_admins(make_app: AppFactory) -> None:
    app = await make_app(allowed_user_ids="6", admin_ids=str(ADMIN))
    await app.feed(message_update(7, "hello"))
    await app.feed(callback_update(7, "mode:poems", message_id=1))
    await app.feed(message_update(6, "/start"))
    await app.feed(message_update(ADMIN, "/start"))

    assert texts(app, to=7) == ["Sorry, this bot is private."]
    assert app.sent(AnswerCallbackQuery)[0].text == "Sorry, this bot is private."
    assert texts(app, to=6)[0].startswith("👋 Hi!")
    assert texts(app, to=ADMIN)[0].startswith("👋 Hi!")
    assert app.chatinfo.calls["create_request"] == 0


async def test_admin_commands_look_unknown_to_everyone_else(make_app: AppFactory) -> None:
    app = await make_app(admin_ids=str(ADMIN))
    for command in ("/units", "/stats", "/quota 1 5", "/grant 1 1", "/ban 1", "/unban 1",
                    "/user 1"):
        await app.feed(message_update(8, command))

    assert texts(app) == [UNKNOWN_COMMAND] * 7
    assert app.chatinfo.calls["units"] == 0


async def test_ban_and_unban(make_app: AppFactory) -> None:
    app = await make_app(admin_ids=str(ADMIN))
    await app.feed(message_update(9, "/start"))
    await app.feed(message_update(ADMIN, "/ban 9"))
    await app.feed(message_update(9, "spend a unit please"))
    await app.feed(message_update(ADMIN, "/unban 9"))
    await app.feed(message_update(9, "now"))
    await app.settle()

    assert texts(app, to=ADMIN) == ["User 9 is banned.", "User 9 is no longer banned."]
    assert texts(app, to=9)[1] == "You cannot use this bot."
    assert [r.content for r in app.chatinfo.requests] == ["now"]


async def test_quota_and_grant_change_what_a_user_may_send(make_app: AppFactory) -> None:
    app = await make_app(admin_ids=str(ADMIN), daily_quota=30)
    await app.feed(message_update(10, "/start"))
    await app.feed(message_update(ADMIN, "/quota 10 1"))
    await app.feed(message_update(10, "one"))
    await app.feed(message_update(10, "two"))
    await app.settle()
    await app.feed(message_update(ADMIN, "/grant 10 1"))
    await app.feed(message_update(10, "three"))
    await app.settle()

    assert texts(app, to=ADMIN) == ["User 10 may now send 1 request a day.",
                                    "User 10: 1 extra request for today."]
    assert [asked(r.content) for r in app.chatinfo.requests] == ["one", "three"]


async def test_bad_admin_arguments_get_a_usage_line(make_app: AppFactory) -> None:
    app = await make_app(admin_ids=str(ADMIN))
    for command in ("/quota abc", "/quota 1", "/ban", "/grant 1 x", "/user ²",
                    "/quota 99999999999999999999 1", "/ban 12345", "/user -1"):
        await app.feed(message_update(ADMIN, command))

    assert texts(app) == [
        QUOTA_USAGE, QUOTA_USAGE, "Usage: /ban <user_id>",
        "Usage: /grant <user_id> <n>, with n at least 1", "Usage: /user <user_id>", QUOTA_USAGE,
        "User 12345 is banned. They have not written yet; the ban holds from their first "
        "message.", "Usage: /user <user_id>",
    ]


async def test_units_stats_and_user_card(make_app: AppFactory) -> None:
    app = await make_app(admin_ids=str(ADMIN))
    app.chatinfo.units = 500
    await app.feed(message_update(11, "/start"))
    await app.feed(callback_update(11, "mode:poems", message_id=1001))
    await app.feed(message_update(11, "a poem"))
    await app.feed(message_update(12, "a chat"))
    await app.settle()
    units_calls = app.chatinfo.calls["units"]

    await app.feed(message_update(ADMIN, "/units"))
    assert app.chatinfo.calls["units"] == units_calls + 1  # a fresh balance, not the cache
    balance, spent, pending, burn = texts(app, to=ADMIN)[-1].split("\n")
    assert balance == "💰 Balance: 498 units"
    assert spent == "Spent today: 2 · last 7 days: 2"
    assert pending == "Requests in progress: 0"
    assert burn == "Average so far today: 2 a day."  # under a day of data: no forecast yet

    await app.feed(message_update(ADMIN, "/stats"))
    users, requests, failures, median = texts(app, to=ADMIN)[-1].split("\n")
    assert users == "👥 Users: 3 · active today: 2 · last 7 days: 2"
    assert requests == "📨 Requests today: 2 (chat: 1, poems: 1)"
    assert failures == "⚠️ Failures in 7 days: 0"
    assert median.startswith("⏱ Median time to answer: ") and median.endswith(" s")

    await app.feed(message_update(ADMIN, "/user 11"))
    card = texts(app, to=ADMIN)[-1].split("\n")
    assert card[0] == "👤 User 11"
    assert card[1] == "Mode: poems · language: en · banned: no"
    assert card[2] == "Quota: 30 a day (DAILY_QUOTA) · used today: 1 · extra today: 0"
    assert card[4].endswith("poems · delivered · a poem")


async def test_low_balance_alerts_admins_once_per_crossing(make_app: AppFactory) -> None:
    app = await make_app(admin_ids=str(ADMIN), low_units_threshold=100)
    app.chatinfo.units = 101
    for n in range(3):
        await app.feed(message_update(13, f"q{n}"))
        await app.settle()

    alerts = [t for t in texts(app, to=ADMIN) if "balance is low" in t]
    assert alerts == ["⚠️ The API unit balance is low: 99 units left."]


async def test_empty_balance_refuses_without_calling_and_alerts_once(make_app: AppFactory,
                                                                     ) -> None:
    app = await make_app(admin_ids=str(ADMIN))
    app.chatinfo.units = 1
    for n in range(3):
        await app.feed(message_update(14, f"q{n}"))
        await app.settle()

    assert app.chatinfo.calls["create_request"] == 1
    refusal = ("😔 The bot has run out of capacity for now. Your request was not sent, so "
               "nothing was counted. Please try again later.")
    assert texts(app, to=14)[-2:] == [refusal, refusal]
    assert [t for t in texts(app, to=ADMIN)] == [
        "🛑 The API unit balance is exhausted. Users are told the service is out of capacity "
        "until it is topped up."]

    app.chatinfo.units = 50  # the operator topped up; the next refresh notices
    tracker: Upstream = app.dp["upstream"]
    assert await tracker.refresh() == 50
    await app.feed(message_update(14, "after top-up"))
    await app.settle()
    answer = app.sent(EditMessageText)[-1].text.removeprefix("[chat] ")
    assert asked(answer) == "after top-up"


async def test_rejected_key_alerts_admins_once_and_users_see_unavailable(make_app: AppFactory,
                                                                         ) -> None:
    app = await make_app(admin_ids=str(ADMIN))
    app.chatinfo.keys["test-key"] = "free"
    for n in range(2):
        await app.feed(message_update(15, f"q{n}"))
        await app.settle()

    assert [e.text for e in app.sent(EditMessageText)] == [
        "😔 The service is unavailable right now; the admins have been told. Your request "
        "was not sent, so nothing was counted. Please try again later."] * 2
    assert texts(app, to=ADMIN) == [
        "🛑 The API refused our key: the API needs the Prestige tariff and ours is “Бесплатный”. "
        "Users are told the service is unavailable until this is fixed."]
    assert await usage_used(app, 15) == 0


async def test_a_top_up_is_seen_within_the_empty_refresh_and_admins_told(
        make_app: AppFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bot.upstream.units, "REFRESH_WHEN_EMPTY", 0.2)
    monkeypatch.setattr(bot.upstream.units, "REFRESH_EVERY", 3600.0)
    app = await make_app(admin_ids=str(ADMIN))
    tracker: Upstream = app.dp["upstream"]
    app.chatinfo.units = 1
    tracker.start()
    try:
        await wait_until(lambda: tracker.balance == 1, timeout=5, what="the first refresh")
        await app.feed(message_update(16, "the last unit"))  # the balance runs out here
        await app.settle()
        await app.feed(message_update(16, "refused"))
        app.chatinfo.units = 40  # the operator tops up; nobody calls /units
        await wait_until(lambda: tracker.balance == 40, timeout=5, what="the top-up noticed")
        await app.feed(message_update(16, "served again"))
        await app.settle()
    finally:
        await tracker.stop()

    assert [asked(r.content) for r in app.chatinfo.requests] == ["the last unit",
                                                                 "served again"]
    assert texts(app, to=ADMIN)[-1] == (
        "✅ The API units are back: 40 units. Users are served again.")
    assert len([t for t in texts(app, to=ADMIN) if "exhausted" in t]) == 1


async def test_a_failure_still_counts_after_send_again_and_unknown_outcomes_show(
        make_app: AppFactory) -> None:
    app = await make_app(admin_ids=str(ADMIN))
    app.chatinfo.inject("create_request", Fault.http(500, after_effect=True))  # spent, id lost
    await app.feed(message_update(17, "lost reply"))
    await app.settle()
    [job] = await app.jobs.recent(17, 1)
    await app.feed(callback_update(17, f"retry:{job.id}", message_id=job.placeholder_id or 0))
    await app.settle()
    await app.feed(message_update(ADMIN, "/stats"))
    await app.feed(message_update(ADMIN, "/units"))

    stats, units = texts(app, to=ADMIN)[-2:]
    assert "⚠️ Failures in 7 days: unknown_outcome: 1" in stats.split("\n")
    assert "Outcome unknown in 7 days (a unit may have been spent): 1" in units.split("\n")
    assert app.chatinfo.units == 998  # the lost reply's unit and the retry's
