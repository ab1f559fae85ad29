"""Degrading before queueing when Telegram's message budget is short (issue 14).

The levels come from the seconds of messages waiting for the per-bot rate; here they are
set on the gauge directly, so each test pins what one level leaves out, with no timing.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from aiogram import Bot
from aiogram.client.session.middlewares.base import NextRequestMiddlewareType
from aiogram.methods import EditMessageText, SendChatAction, SendMessage, TelegramMethod
from aiogram.methods.base import Response, TelegramType

from bot.telegram.delivery import Delivery
from bot.telegram.throttle import (
    PRESSURE_FALLS_BELOW,
    PRESSURE_RISES_AT,
    Pressure,
    PressureGauge,
    TelegramThrottle,
    in_background,
    yielding,
)
from storage.jobs import JobState
from tests.fakes.telegram_api import callback_update, message_update
from tests.harness import App, AppFactory, wait_until

# Backlog seconds that put a gauge with the default marks at each level.
AT_LEVEL = {Pressure.NORMAL: 0.0, Pressure.QUIET: PRESSURE_RISES_AT[0],
            Pressure.ONE_MESSAGE: PRESSURE_RISES_AT[1], Pressure.HOLD: PRESSURE_RISES_AT[2]}
# Below HOLD's rising mark and above its falling one: a level once reached stays.
STILL_HOLDING = (PRESSURE_FALLS_BELOW[2] + PRESSURE_RISES_AT[2]) / 2
HELD_TEXT = ("⏳ Got it. Many answers are being sent right now, so your request waits its "
             "turn; nothing is spent yet.")


def pressure_of(app: App) -> PressureGauge:
    delivery: Delivery = app.dp["delivery"]
    return delivery.pressure


def press(app: App, level: Pressure) -> PressureGauge:
    gauge = pressure_of(app)
    gauge.observe(AT_LEVEL[level])
    assert gauge.level is level
    return gauge


# --- the gauge -------------------------------------------------------------------------


def test_levels_rise_with_the_backlog_and_fall_only_below_their_lower_marks() -> None:
    gauge = PressureGauge(rises_at=(1.0, 2.0, 3.0), falls_below=(0.5, 1.5, 2.5))
    seen = []
    for backlog in (0.9, 1.0, 1.9, 2.0, 1.6, 1.4, 0.6, 3.1, 2.6, 2.4, 0.4, 2.1):
        gauge.observe(backlog)
        seen.append(int(gauge.level))
    # Up at each rising mark; down only below the falling mark of the level it is at
    # (several at once when the backlog drops far); up past several at once too.
    assert seen == [0, 1, 1, 2, 2, 1, 1, 3, 3, 2, 0, 2]


async def test_creates_may_go_waits_while_the_level_holds_them() -> None:
    gauge = PressureGauge()
    gauge.observe(AT_LEVEL[Pressure.HOLD])
    waiting = asyncio.create_task(gauge.creates_may_go())
    await asyncio.sleep(0)
    assert not waiting.done()
    gauge.observe(STILL_HOLDING)
    await asyncio.sleep(0)
    assert not waiting.done()
    gauge.observe(0.0)
    await asyncio.wait_for(waiting, 1.0)


async def test_the_throttle_turns_messages_waiting_for_the_bot_rate_into_pressure() -> None:
    # Low marks: a short burst reaches every level, so the test takes about a second.
    gauge = PressureGauge(rises_at=(0.02, 0.05, 0.1), falls_below=(0.01, 0.03, 0.06))
    throttle = TelegramThrottle(per_bot_per_second=100, pressure=gauge)
    levels: list[Pressure] = []

    async def make_request(bot: Bot, method: TelegramMethod[TelegramType],
                           timeout: int | None = None) -> Response[TelegramType]:
        levels.append(gauge.level)
        return cast(Response[TelegramType], None)

    def send(chat_id: int) -> Any:
        return throttle(make_request, cast(Bot, None), SendMessage(chat_id=chat_id, text="x"))

    async def broadcast(chat_id: int) -> None:
        with in_background():
            await send(chat_id)

    # A broadcast waits without pressing: its messages go only where answers leave room.
    await asyncio.gather(*(broadcast(10_000 + n) for n in range(30)))
    assert set(levels) == {Pressure.NORMAL}
    await asyncio.sleep(0.5)  # the bucket drains
    levels.clear()
    # A burst of 100, and 100 wait: a second of backlog, ten times the HOLD mark, so that
    # HOLD is reached even if a loaded machine stalls the burst while the bucket drains.
    await asyncio.gather(*(send(1000 + n) for n in range(200)))
    assert set(levels[:100]) == {Pressure.NORMAL}  # within the bucket's burst none waits
    assert Pressure.HOLD in levels[100:]
    assert gauge.level is Pressure.NORMAL  # all sent: nothing waits any more
    assert gauge.degraded == {}  # the throttle measures; what is left out is counted by users


# --- the degrade order, through the Dispatcher -----------------------------------------


async def test_normal_pressure_shows_typing_a_placeholder_and_edits_it(app: App) -> None:
    await app.feed(message_update(1, "hello", message_id=500))
    await app.settle()
    placeholder, = app.sent(SendMessage)
    assert placeholder.text == "⏳ Got it, one moment…"
    assert app.sent(EditMessageText)[-1].text == "[chat] hello"
    assert app.sent(SendChatAction)  # typing while it waited
    assert pressure_of(app).degraded == {}


async def test_level_1_leaves_out_typing_and_progress_edits_and_keeps_the_placeholder(
        app: App) -> None:
    gauge = press(app, Pressure.QUIET)
    await app.feed(message_update(1, "hello", message_id=500))
    await app.settle()
    placeholder, = app.sent(SendMessage)
    assert placeholder.text == "⏳ Got it, one moment…"
    job = await app.jobs.get(1)
    assert job is not None and job.placeholder_id is not None
    [answer] = app.sent(EditMessageText)  # the answer alone: no progress edit before it
    assert (answer.message_id, answer.text) == (job.placeholder_id, "[chat] hello")
    assert app.sent(SendChatAction) == []
    assert gauge.degraded[Pressure.QUIET] >= 1  # at least the typing of the chat

    delivery: Delivery = app.dp["delivery"]
    await delivery.progress(1, job.placeholder_id, "⏳ Working on it… 0:15")
    assert len(app.sent(EditMessageText)) == 1  # a progress edit is skipped, not queued
    assert gauge.degraded[Pressure.QUIET] >= 2


async def test_level_2_answers_in_one_message_replying_to_the_users(app: App) -> None:
    gauge = press(app, Pressure.ONE_MESSAGE)
    await app.feed(message_update(1, "hello", message_id=500))
    await app.settle()
    [answer] = app.sent(SendMessage)  # no placeholder: the answer is the one message
    assert answer.text == "[chat] hello"
    assert answer.reply_parameters.message_id == 500
    assert answer.reply_markup is not None  # its buttons, as on an edited placeholder
    assert app.sent(EditMessageText) == [] and app.sent(SendChatAction) == []
    job = await app.jobs.get(1)
    assert job is not None and job.state is JobState.DELIVERED and job.placeholder_id is None
    assert gauge.degraded[Pressure.ONE_MESSAGE] == 1


async def test_level_2_button_jobs_get_no_placeholder_from_the_runner_either(
        app: App) -> None:
    await app.feed(message_update(5, "first", message_id=500))
    await app.settle()
    sent_before = len(app.sent(SendMessage))
    gauge = press(app, Pressure.ONE_MESSAGE)
    await app.feed(callback_update(5, "ans:r:1", message_id=1002))  # 🔄 under the answer
    await app.settle()
    [answer] = app.sent(SendMessage)[sent_before:]
    assert answer.text == "[chat] first"
    assert gauge.degraded[Pressure.ONE_MESSAGE] == 1


async def test_level_2_still_posts_a_placeholder_for_a_request_that_must_wait(
        app: App) -> None:
    """A job that waits for its create_request is shown waiting, and where: the progress
    edits that would say so are left out under pressure, so the placeholder says it."""
    gauge = press(app, Pressure.ONE_MESSAGE)
    app.runner.queue.pause()  # the key's creates must wait: nothing is granted
    await app.feed(message_update(1, "hello", message_id=500))
    [placeholder] = app.sent(SendMessage)
    assert placeholder.text.startswith("⏳ The AI service asked us to slow down")
    app.runner.queue.resume()
    await app.settle()
    assert app.sent(EditMessageText)[-1].text == "[chat] hello"
    assert gauge.degraded[Pressure.ONE_MESSAGE] == 0


async def test_level_3_holds_new_create_requests_with_the_job_visibly_queued(
        app: App) -> None:
    yielded: list[bool] = []

    async def note_yielding(make_request: NextRequestMiddlewareType[TelegramType], bot: Bot,
                            method: TelegramMethod[TelegramType]) -> Response[TelegramType]:
        yielded.append(yielding())
        return await make_request(bot, method)

    app.bot.session.middleware(note_yielding)
    gauge = press(app, Pressure.HOLD)
    await app.feed(message_update(1, "hello", message_id=500))
    [placeholder] = app.sent(SendMessage)
    assert placeholder.text == HELD_TEXT
    # Behind the answers whose backlog holds the creates: it takes only the room they leave.
    assert yielded == [True]
    await wait_until(lambda: app.runner.queue.queued == 1, timeout=5.0,
                     what="the job waits in the create queue")
    await asyncio.sleep(0.2)  # room for a create that should not come
    assert app.chatinfo.calls["create_request"] == 0
    assert app.sent(SendChatAction) == []  # what level 1 leaves out stays out
    job = await app.jobs.get(1)
    assert job is not None and job.state is JobState.NEW
    assert gauge.degraded[Pressure.HOLD] == 1

    gauge.observe(STILL_HOLDING)
    await asyncio.sleep(0.2)
    assert app.chatinfo.calls["create_request"] == 0
    gauge.observe(0.0)
    await app.settle()
    assert app.chatinfo.calls["create_request"] == 1
    assert app.sent(EditMessageText)[-1].text == "[chat] hello"  # on the held placeholder
    assert not any(yielded[1:])  # the answer, and all after the hold, go first as always


async def test_a_one_message_job_resumed_after_a_restart_is_answered_as_a_new_reply(
        make_app: AppFactory) -> None:
    first = await make_app()
    first.chatinfo.solve_time = 1.0
    press(first, Pressure.ONE_MESSAGE)
    await first.feed(message_update(1, "hello", message_id=500))
    await wait_until(lambda: first.chatinfo.calls["create_request"] == 1, timeout=5.0,
                     what="the request is sent")
    await first.runner.stop()  # the process ends; the job stays pending in SQLite
    job = await first.jobs.get(1)
    assert job is not None and job.state is JobState.PENDING and job.placeholder_id is None

    second = await make_app()
    assert await second.runner.resume() == 1
    await second.settle()
    [answer] = second.sent(SendMessage)
    assert (answer.text, answer.reply_parameters.message_id) == ("[chat] hello", 500)
    assert first.sent(SendMessage) == [] and second.sent(EditMessageText) == []


async def test_metrics_show_the_pressure_and_what_each_level_left_out(app: App) -> None:
    press(app, Pressure.ONE_MESSAGE)
    await app.feed(message_update(1, "hello", message_id=500))
    await app.settle()
    page = (await app.application.metrics.render()).decode()
    assert "chatinfo_bot_telegram_pressure 2.0" in page
    assert 'chatinfo_bot_telegram_degraded_total{level="2"} 1.0' in page
    assert 'chatinfo_bot_telegram_degraded_total{level="3"} 0.0' in page
