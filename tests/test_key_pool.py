"""A pool of API keys (CHATINFO_API_KEYS): which key a request goes to, a job keeps its
key across a restart, a key running dry mid-load, and /units per key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiogram.methods import EditMessageText, SendMessage
from prometheus_client.parser import text_string_to_metric_families

from bot.app.run import secrets_of
from bot.config import Settings
from bot.jobs.failures import Failure
from bot.upstream.account import Upstream
from bot.upstream.client import AccessDenied, ChatinfoClient, key_fingerprint
from bot.upstream.pool import UpstreamPool
from bot.upstream.sandbox import NOT_PRESTIGE, FakeChatinfo, Fault
from storage.jobs import JobState
from tests.fakes.telegram_api import message_update
from tests.harness import App, AppFactory, asked, wait_until

ADMIN = 900
A, B = "key-a", "key-b"
FP_A, FP_B = key_fingerprint(A), key_fingerprint(B)
OUT_OF_UNITS = ("😔 The bot has run out of capacity for now. Your request was not sent, so "
                "nothing was counted. Please try again later.")


@pytest.fixture
async def chatinfo() -> AsyncIterator[FakeChatinfo]:
    """Two keys, each its own account (make_app's server)."""
    async with FakeChatinfo({A: "prestige", B: "prestige"}, key_units={A: 100, B: 100},
                            solve_time=0.1) as server:
        yield server


async def pooled(make_app: AppFactory, keys: str = f"{A},{B}", **settings: Any) -> App:
    """The app with the pool `keys` (the first one is also CHATINFO_API_KEY, as an
    operator moving to a pool would leave it), its balances read as at a start."""
    app = await make_app(key=keys.partition(",")[0], chatinfo_api_keys=keys, **settings)
    await app.application.pool.refresh()
    return app


def texts(app: App, to: int) -> list[str]:
    return [m.text for m in app.sent(SendMessage) if m.chat_id == to]


def keys_used(app: App) -> list[str]:
    return [request.key for request in app.chatinfo.requests]


class Alerts:
    """Counts the alerts (their texts need an i18n context, which this test has not)."""

    def __init__(self) -> None:
        self.sent = 0

    async def send(self, text: Any) -> None:
        self.sent += 1


# --- which key a new request goes to ---------------------------------------------------------

async def test_a_pool_picks_the_key_with_room_then_the_most_units() -> None:
    alerts = Alerts()
    keys = [Upstream(ChatinfoClient("http://127.0.0.1:1", key), alerts, 10, name=key)
            for key in ("one", "two", "three")]
    pool = UpstreamPool(keys)
    one, two, three = keys
    try:
        for key, units in zip(keys, (50, 80, 70), strict=True):
            await key.observe(units)
        room = dict.fromkeys(keys, 0.0)
        in_flight = dict.fromkeys(keys, 0)

        assert pool.choose(room.__getitem__, in_flight.__getitem__) is two  # most units
        in_flight[two] = 20  # its queued requests count as spent: 60 left
        assert pool.choose(room.__getitem__, in_flight.__getitem__) is three
        room[three] = 1.5  # its create budget is used up for now
        assert pool.choose(room.__getitem__, in_flight.__getitem__) is two
        await two.learn(AccessDenied("create_request: forbidden (403)", NOT_PRESTIGE))
        assert pool.choose(room.__getitem__, in_flight.__getitem__) is one
        await one.observe(0)  # spent: no new requests
        assert pool.choose(room.__getitem__, in_flight.__getitem__) is three  # waits
        assert not pool.exhausted and pool.others_usable(one)
        await three.observe(0)
        assert pool.exhausted  # every key is spent or refused: users are told
        assert pool.find(key_fingerprint("two")) is two and pool.find("00000000") is None
    finally:
        await pool.close()


async def test_requests_alternate_so_the_balances_drain_evenly(make_app: AppFactory) -> None:
    app = await pooled(make_app)
    app.chatinfo.key_units[A] = 104  # key A has 4 more: it takes the first ones
    for user in range(1, 11):
        await app.feed(message_update(user, f"question {user}"))
    await app.settle()

    assert len(app.sent(EditMessageText)) >= 10
    assert keys_used(app)[:2] == [A, A]
    assert app.chatinfo.key_units == {A: 97, B: 97}
    assert {job.upstream_key for job in await app.jobs.recent(1, 1)} <= {FP_A, FP_B}


async def test_a_key_whose_create_budget_is_used_up_leaves_the_next_to_another(
        make_app: AppFactory) -> None:
    app = await pooled(make_app, client_options={"create_per_min": 2, "window": 3600.0})
    app.chatinfo.key_units[B] = 50  # A has more units, but room for two creates only
    for user in range(1, 4):
        await app.feed(message_update(user, f"question {user}"))
    await app.settle()

    assert sorted(keys_used(app)) == [A, A, B]
    assert app.chatinfo.generated_429s() == 0


# --- a key running dry ---------------------------------------------------------------------

async def test_a_key_running_dry_mid_load_leaves_the_rest_to_the_others(
        make_app: AppFactory) -> None:
    app = await pooled(make_app, admin_ids=str(ADMIN), low_units_threshold=0)
    app.chatinfo.key_units[A] = 3
    app.chatinfo.key_units[B] = 3
    await app.application.pool.refresh()
    app.chatinfo.key_units[A] = 1  # spent elsewhere meanwhile: the bot learns it mid-load
    for user in range(1, 5):
        await app.feed(message_update(user, f"question {user}"))
    await app.settle()

    answers = sorted(asked(e.text.removeprefix("[chat] ")) for e in app.sent(EditMessageText)
                     if e.text.startswith("[chat]"))
    assert answers == [f"question {n}" for n in range(1, 5)]  # nobody turned away
    assert app.chatinfo.key_units == {A: 0, B: 0}
    assert texts(app, to=ADMIN) == [
        f"🔑 Key #1 ({FP_A}): 🛑 Its unit balance is exhausted. New requests go to the "
        "other keys; once every key is empty, users are told the service is out of "
        "capacity.",
        f"🔑 Key #2 ({FP_B}): 🛑 Its unit balance is exhausted. New requests go to the "
        "other keys; once every key is empty, users are told the service is out of "
        "capacity."]

    await app.feed(message_update(5, "one more"))  # every key is empty now
    await app.settle()
    assert texts(app, to=5)[-1] == OUT_OF_UNITS
    assert len(texts(app, to=ADMIN)) == 2  # told once per key


async def test_a_refused_key_is_left_out_and_the_admins_told_once(make_app: AppFactory) -> None:
    app = await pooled(make_app, admin_ids=str(ADMIN), low_units_threshold=0)
    app.chatinfo.key_units[B] = 50  # A would be chosen first
    app.chatinfo.keys[A] = "free"
    for user in range(1, 4):
        await app.feed(message_update(user, f"question {user}"))
    await app.settle()

    assert keys_used(app) == [B, B, B]
    assert texts(app, to=ADMIN) == [
        f"🔑 Key #1 ({FP_A}): 🛑 The API refused it: the API needs the Prestige tariff and "
        "ours is “Бесплатный”. New requests go to the other keys; once none works, users "
        "are told the service is unavailable."]


# --- a job keeps its key -------------------------------------------------------------------

async def sent_and_stopped(make_app: AppFactory) -> tuple[App, int]:
    """A job sent with key B (more units), its answer not yet there, and a deploy."""
    first = await pooled(make_app)
    first.chatinfo.key_units[A] = 50
    await first.application.pool.refresh()
    first.chatinfo.solve_time = 1.0
    await first.feed(message_update(7, "slow question"))
    await wait_until(lambda: bool(first.runner.lanes[FP_B].scheduler.pending), timeout=5,
                     what="the job is pending upstream with key B")
    await first.runner.stop()
    [job] = await first.jobs.recent(7, 1)
    assert (job.state, job.upstream_key) == (JobState.PENDING, FP_B)
    return first, job.id


async def test_a_job_is_polled_with_its_own_key_after_a_restart(make_app: AppFactory) -> None:
    first, job_id = await sent_and_stopped(make_app)
    first.chatinfo.key_units[B] = 10  # A has more units now: new requests would go there

    second = await pooled(make_app)
    assert await second.runner.resume() == 1
    await second.settle()

    # The fake answers an id only to the key that created it: polled with B, not the primary.
    assert second.sent(EditMessageText)[-1].text == "[chat] slow question"
    job = await second.jobs.get(job_id)
    assert job is not None and job.state is JobState.DELIVERED
    assert second.chatinfo.calls["create_request"] == 1


async def test_a_job_whose_key_was_removed_is_ended_honestly(make_app: AppFactory) -> None:
    first, job_id = await sent_and_stopped(make_app)
    polls = first.chatinfo.calls["get_response"]

    second = await pooled(make_app, keys=A)  # the operator dropped key B
    await second.runner.resume()
    await second.settle()

    job = await second.jobs.get(job_id)
    assert job is not None
    assert (job.state, job.error) == (JobState.UNKNOWN, Failure.KEY_REMOVED)
    assert second.sent(EditMessageText)[-1].text == (
        "⚠️ This request was sent with an API key the bot no longer uses, so its answer "
        "cannot be fetched. It was counted; tap the button to send it again.")
    assert second.chatinfo.calls["get_response"] == polls  # not polled with another key


# --- /units ------------------------------------------------------------------------------

async def test_units_shows_each_key_and_the_total(make_app: AppFactory) -> None:
    app = await pooled(make_app, admin_ids=str(ADMIN))
    app.chatinfo.key_units[B] = 41
    await app.application.pool.refresh()
    await app.feed(message_update(3, "question"))  # to A, which has more units
    await app.settle()
    app.chatinfo.keys[B] = "free"

    await app.feed(message_update(ADMIN, "/units"))

    lines = texts(app, to=ADMIN)[-1].splitlines()
    assert lines[:3] == [
        f"🔑 #1 ({FP_A}): 99 units · spent today: 1 · taking requests",
        f"🔑 #2 ({FP_B}): 41 units · spent today: 0 · refused: the API needs the Prestige "
        "tariff and ours is “Бесплатный”",
        "💰 Total: 140 units"]
    assert "Spent today: 1 · last 7 days: 1" in lines


def test_every_key_of_the_pool_is_kept_out_of_the_logs() -> None:
    settings = Settings(bot_token="1:T", chatinfo_api_key="", chatinfo_api_keys="k-one, k-two")

    assert settings.api_keys == ("k-one", "k-two")
    assert {"k-one", "k-two"} <= set(secrets_of(settings))


async def test_metrics_label_each_keys_series_by_its_fingerprint(make_app: AppFactory) -> None:
    app = await pooled(make_app)
    app.chatinfo.key_units[B] = 50
    await app.application.pool.refresh()
    await app.feed(message_update(3, "question"))  # to A
    await app.settle()

    samples: dict[str, dict[frozenset[tuple[str, str]], float]] = {}
    page = (await app.application.metrics.render()).decode()
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value

    def value(name: str, **labels: str) -> float:
        return samples[name][frozenset(labels.items())]

    assert value("chatinfo_bot_units_balance", key=FP_A) == 99
    assert value("chatinfo_bot_units_balance", key=FP_B) == 50
    assert value("chatinfo_bot_upstream_requests_total", key=FP_A, endpoint="create_request",
                 status="200") == 1
    assert value("chatinfo_bot_upstream_rate_limited_total", key=FP_B,
                 endpoint="create_request") == 0
    assert value("chatinfo_bot_rate_limit_used", key=FP_A, endpoint="create_request") == 1
    assert value("chatinfo_bot_rate_limit_used", key=FP_B, endpoint="create_request") == 0
    assert A not in page and B not in page


# --- failed creates are settled against their own key's balance ---------------------------

@pytest.mark.parametrize("spent", [False, True])
async def test_a_failed_create_is_settled_by_its_own_keys_balance(make_app: AppFactory,
                                                                  spent: bool) -> None:
    app = await pooled(make_app)
    app.chatinfo.key_units[B] = 50  # the request goes to A
    await app.runner.resume()  # each key's balance read: the anchors
    app.chatinfo.key_units[B] -= 7  # another program spends on B meanwhile: not A's concern
    app.chatinfo.inject("create_request", Fault.http(500, "Internal Server Error",
                                                     after_effect=spent))
    await app.feed(message_update(3, "question"))
    await app.settle()

    [job] = await app.jobs.recent(3, 1)
    if spent:  # A's balance shows the unit went: not sent again, the user is told
        assert (job.state, app.chatinfo.key_units[A]) == (JobState.UNKNOWN, 99)
        assert app.runner.reconciled == {"spent": 1}
    else:  # A's balance is unchanged: sent again, once
        assert (job.state, app.chatinfo.key_units[A]) == (JobState.DELIVERED, 99)
        assert app.runner.reconciled == {"unspent": 1}
    assert keys_used(app) == [A]


async def test_a_restart_settles_a_create_lost_mid_flight_by_its_keys_balance(
        make_app: AppFactory) -> None:
    first = await pooled(make_app)
    await first.runner.resume()  # keeps each key's balance as its anchor
    await first.feed(message_update(3, "earlier"))  # acknowledged after the anchor, on A
    await first.settle()
    await first.db.execute("INSERT INTO users (id, first_seen, last_seen) VALUES (4, 0, 0)")
    job_id = await first.jobs.add(user_id=4, chat_id=4, source_message_id=None, locale="en",
                                  mode="chat", content="lost")
    assert job_id is not None
    await first.jobs.set_placeholder(job_id, 900)
    await first.jobs.mark_creating(job_id, key=FP_B)  # a crash caught it sending with B
    await first.db.execute("UPDATE jobs SET updated_at = updated_at - 120 WHERE id = ?",
                           (job_id,))
    await first.db.commit()
    await first.runner.stop()
    first.chatinfo.key_units[A] -= 5  # spending elsewhere on the other key: not B's

    second = await pooled(make_app)
    await second.runner.resume()
    await second.settle()

    # B's balance is what its anchor says: the lost create spent nothing, so it is sent
    # again; A's balance moved, but that says nothing about B's creates.
    job = await second.jobs.get(job_id)
    assert job is not None and job.state is JobState.DELIVERED
    assert second.runner.reconciled == {"unspent": 1}
    assert second.chatinfo.created_for("lost")
