"""Handlers through the real Dispatcher, asserting the exact Bot API calls that go out."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import pytest
from aiogram.methods import AnswerCallbackQuery, EditMessageText, SendMessage
from aiogram.types import InlineKeyboardMarkup

from bot.modes import MODES
from storage.jobs import JobState
from storage.users import UserRepo
from tests.fakes.telegram_api import callback_update, message_update, photo_update, sticker_update
from tests.harness import FAST_POLLS, App, AppFactory, wait_until


def buttons(markup: object) -> list[tuple[str, str | None]]:
    assert isinstance(markup, InlineKeyboardMarkup)
    return [(b.text, b.callback_data) for row in markup.inline_keyboard for b in row]


async def test_start_in_english_shows_all_modes_with_chat_marked(app: App) -> None:
    await app.feed(message_update(1, "/start", language_code="en"))

    [reply] = app.sent(SendMessage)
    assert reply.chat_id == 1
    assert reply.text.startswith("👋 Hi!")
    keyboard = buttons(reply.reply_markup)
    assert len(keyboard) == len(MODES)
    assert keyboard[0] == ("✅ 💬 Chat", "mode:chat")
    assert [data for _, data in keyboard] == [f"mode:{mode.name}" for mode in MODES]
    assert sum(text.startswith("✅") for text, _ in keyboard) == 1


async def test_start_in_russian(app: App) -> None:
    await app.feed(message_update(2, "/start", language_code="ru"))

    [reply] = app.sent(SendMessage)
    assert reply.text.startswith("👋 Привет!")
    assert ("🎭 Стихи", "mode:poems") in buttons(reply.reply_markup)


async def test_tapping_a_mode_stores_it_and_marks_it(app: App) -> None:
    await app.feed(message_update(3, "/start"))
    await app.feed(callback_update(3, "mode:poems", message_id=1001))

    [ack] = app.sent(AnswerCallbackQuery)
    assert ack.text == "Mode: Poems"
    [edit] = app.sent(EditMessageText)
    assert edit.message_id == 1001
    assert edit.text.startswith("Current mode: 🎭 Poems")
    assert ("✅ 🎭 Poems", "mode:poems") in buttons(edit.reply_markup)
    assert await UserRepo(app.db).mode(3) == "poems"

    await app.feed(message_update(3, "/mode"))
    assert ("✅ 🎭 Poems", "mode:poems") in buttons(app.sent(SendMessage)[-1].reply_markup)


async def test_forged_mode_is_refused_and_changes_nothing(app: App) -> None:
    await app.feed(message_update(4, "/start"))
    for data in ("mode:hack", "mode:", "zzz", "retry:abc", "mode:poems:extra"):
        await app.feed(callback_update(4, data, message_id=1001))

    answers = app.sent(AnswerCallbackQuery)
    assert len(answers) == 5
    assert all(answer.show_alert for answer in answers)
    assert answers[0].text == "This mode does not exist. Please choose one from the list."
    assert app.sent(EditMessageText) == []
    assert await UserRepo(app.db).mode(4) == "chat"


async def test_text_becomes_one_request_and_the_placeholder_becomes_the_answer(app: App) -> None:
    await app.feed(message_update(5, "/start"))
    await app.feed(callback_update(5, "mode:poems", message_id=1001))
    await app.feed(message_update(5, "a cat on the roof"))

    placeholder = app.sent(SendMessage)[-1]
    assert placeholder.text == "⏳ Got it, one moment…"
    await app.settle()
    answer = app.sent(EditMessageText)[-1]
    assert answer.text == "[poems] a cat on the roof"
    assert answer.message_id == 1002  # the placeholder's id
    assert app.chatinfo.calls["create_request"] == 1
    [request] = app.chatinfo.requests
    assert (request.mode, request.content) == ("poems", "a cat on the roof")


async def test_the_same_update_twice_makes_one_request(app: App) -> None:
    update = message_update(6, "hello", message_id=77)
    await app.feed(update)
    await app.feed(update)
    await app.settle()

    assert app.chatinfo.calls["create_request"] == 1
    assert len([m for m in app.sent(SendMessage) if m.text == "⏳ Got it, one moment…"]) == 1


async def test_text_over_5000_characters_is_cut_and_the_user_told(app: App) -> None:
    await app.feed(message_update(7, "x" * 6000))
    await app.settle()

    notice = app.sent(SendMessage)[0]
    assert notice.text == ("Your message is 6000 characters long; only the first 5000 will "
                           "be processed.")
    assert len(app.chatinfo.requests[0].content) == 5000


async def test_stickers_and_photos_are_told_what_the_bot_accepts(app: App) -> None:
    await app.feed(sticker_update(8))
    await app.feed(photo_update(8, language_code="ru"))

    english, russian = app.sent(SendMessage)
    assert english.text.startswith("I understand only text messages.")
    assert russian.text.startswith("Я понимаю только текстовые сообщения.")
    assert app.chatinfo.calls["create_request"] == 0


async def test_unknown_command_gets_a_hint(app: App) -> None:
    await app.feed(message_update(9, "/frobnicate now"))

    [reply] = app.sent(SendMessage)
    assert reply.text == "I don't know this command. Send /help to see what I can do."


async def test_no_units_ends_the_job_with_a_clear_message(app: App) -> None:
    app.chatinfo.units = 0
    await app.feed(message_update(10, "hello"))
    await app.settle()

    [edit] = app.sent(EditMessageText)
    assert edit.text == ("😔 The bot has run out of capacity for now. Your request was not sent, "
                         "so nothing was counted. Please try again later.")
    assert edit.reply_markup is None
    [job] = [await app.jobs.get(1)]
    assert job is not None and job.state is JobState.FAILED


async def test_tariff_refusal_is_told_in_the_users_language_never_raw(app: App) -> None:
    app.chatinfo.keys["test-key"] = "free"
    await app.feed(message_update(12, "привет", language_code="ru"))
    await app.settle()

    [edit] = app.sent(EditMessageText)
    assert edit.text == ("😔 Сервис сейчас недоступен, админы уже знают. Запрос не отправлен и не "
                         "засчитан. Попробуйте позже.")
    assert "Престиж" not in edit.text


async def test_a_429_storm_keeps_the_request_queued_until_it_can_be_sent(
        make_app: AppFactory) -> None:
    window = 0.3  # the client's rate window, as the server's 60 s would be
    app = await make_app(client_options={"window": window})
    app.chatinfo.limits["create_request"] = 0  # another program uses up the key's budget
    started = time.monotonic()
    await app.feed(message_update(13, "hello"))
    await app.chatinfo.wait_for(lambda: app.chatinfo.statuses["create_request", 429] >= 4)
    storm = time.monotonic() - started

    [job] = await app.jobs.recent(13, 1)
    assert job.state is JobState.NEW  # nothing was sent that counted
    shown = [e.text for e in app.sent(EditMessageText)]
    assert any(text.startswith("⏳ The AI service asked us to slow down") for text in shown)
    assert not any(text.startswith("⚠️") for text in shown)  # the user is not told to retry
    # One probe per window: the queue waits for the oldest call to leave it, then probes.
    assert app.chatinfo.statuses["create_request", 429] <= storm / window + 2

    app.chatinfo.limits["create_request"] = 1500  # the storm passes
    await app.settle()
    assert app.sent(EditMessageText)[-1].text == "[chat] hello"
    assert app.chatinfo.units == 999  # one unit for one answer


async def test_a_429_storm_longer_than_the_maximum_wait_ends_the_job(
        make_app: AppFactory) -> None:
    app = await make_app(policy=replace(FAST_POLLS, max_wait=0.5),
                         client_options={"window": 0.1})
    app.chatinfo.limits["create_request"] = 0
    await app.feed(message_update(14, "hello"))
    await app.settle()

    [edit] = [e for e in app.sent(EditMessageText) if e.text.startswith("⚠️")]
    assert edit.text.startswith("⚠️ The AI service is busy right now. Your request was not sent")
    assert buttons(edit.reply_markup) == [("🔄 Send again", "retry:1")]
    assert app.chatinfo.units == 1000


async def test_failed_handler_is_logged_and_the_user_told(app: App) -> None:
    app.session.fail_next(SendMessage, 400, "Bad Request: something odd")
    await app.feed(message_update(11, "/start"))

    failed, apology = app.sent(SendMessage)
    assert failed.text.startswith("👋 Hi!")
    assert apology.text == "😔 Something went wrong. Please try again."


WAITING_IN_QUEUE = ("⏳ In the queue", "⏳ Next in the queue")


async def test_the_maximum_wait_ends_a_request_still_waiting_for_its_turn_unspent(
        make_app: AppFactory) -> None:
    app = await make_app(policy=replace(FAST_POLLS, max_wait=1.0),
                         client_options={"create_per_min": 1, "window": 5.0})
    await app.feed(message_update(47, "first"))
    await app.feed(message_update(48, "second"))  # its turn would come after 5 s
    await app.settle()

    [job] = await app.jobs.recent(48, 1)
    assert (job.state, job.error, job.upstream_id) == (JobState.FAILED, "busy", None)
    assert app.chatinfo.calls["create_request"] == 1 and app.chatinfo.units == 999


async def test_the_queue_tells_each_user_their_place_until_the_request_is_sent(
        make_app: AppFactory) -> None:
    app = await make_app(policy=replace(FAST_POLLS, progress_every=0.2),
                         client_options={"create_per_min": 1, "window": 0.5})
    await asyncio.gather(*(app.feed(message_update(user, f"question {user}"))
                           for user in range(40, 46)))
    await app.settle()

    placeholders = {user: (await app.jobs.recent(user, 1))[0].placeholder_id
                    for user in range(40, 46)}
    shown = {user: [e.text for e in app.sent(EditMessageText)
                    if (e.chat_id, e.message_id) == (user, placeholders[user])]
             for user in range(40, 46)}
    assert all(shown[user][-1] == f"[chat] question {user}" for user in shown)
    # The last in line waited about 2.5 s, its place recomputed at each progress tick (0.5 s
    # here); it was "working" only for the moment after its request was sent.
    last = shown[max(shown, key=lambda user: len(shown[user]))]
    queued = [t for t in last if t.startswith(WAITING_IN_QUEUE)]
    working = [t for t in last if t.startswith("⏳ Working on it")]
    assert len(queued) >= 3 and len(working) <= 3, last
    places = [int(t.split(": ")[1].split()[0]) for t in queued if ": " in t]
    assert places == sorted(places, reverse=True) and len(set(places)) > 1, queued
    assert last.index(queued[-1]) < min((last.index(t) for t in working), default=len(last))
    first_places = [next(e.text for e in app.sent(EditMessageText)
                         if e.chat_id == user and e.text.startswith(WAITING_IN_QUEUE))
                    for user in range(42, 46)]  # the first two wait under a second
    assert len(set(first_places)) > 1, first_places  # not "0 ahead" for everyone
    assert "1 request ahead" in " ".join(first_places)


async def test_a_queued_placeholder_says_working_once_its_request_was_acknowledged(
        make_app: AppFactory) -> None:
    # No progress tick in the test's time: every edit here is one the queue's state made.
    app = await make_app(policy=replace(FAST_POLLS, progress_every=60.0),
                         client_options={"create_per_min": 1, "window": 2.0})
    app.chatinfo.solve_time = 1.0
    shown: list[tuple[str, int]] = []  # each text of the queued placeholder, and the units
    make_request = app.session.make_request  # create_request had spent when it was sent

    async def recording(bot: Any, method: Any, timeout: int | None = None) -> Any:
        if isinstance(method, (SendMessage, EditMessageText)) and method.chat_id == 51:
            shown.append((method.text or "", len(app.chatinfo.created_for("second"))))
        return await make_request(bot, method, timeout)

    app.session.make_request = recording  # type: ignore[method-assign]
    await app.feed(message_update(50, "first"))
    await wait_until(lambda: bool(app.chatinfo.created_for("first")), timeout=5.0,
                     what="the first request sent")
    await app.feed(message_update(51, "second"))  # its turn comes 2 s later
    await app.settle()

    texts = [text for text, _ in shown]
    assert texts[0] == "⏳ Got it, one moment…"  # true whether it waits or not
    assert texts[1].startswith("⏳ Next in the queue, about 2 seconds")
    # "Working" at once when its create_request was acknowledged, not at the next tick.
    assert texts[2].startswith("⏳ Working on it… 0:0") and texts[3] == "[chat] second"
    assert all(created == 1 for text, created in shown if "Working" in text)
    assert [created for _, created in shown[:2]] == [0, 0]


async def test_filters_are_checked_on_the_loop_not_in_threads(
        make_app: AppFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # aiogram runs a filter that is not async in a worker thread: 160 µs of CPU a check,
    # and a text message passes some six `F` filters on its way to its handler.
    threaded: list[object] = []
    real_to_thread = asyncio.to_thread

    async def to_thread(func: Any, /, *args: Any, **kwargs: Any) -> Any:
        threaded.append(func)
        return await real_to_thread(func, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", to_thread)
    app = await make_app(admin_ids="77")
    await app.feed(message_update(5, "a cat on the roof"))
    await app.feed(message_update(5, "/frobnicate now"))
    await app.feed(message_update(77, "/units"))

    sent = [m.text for m in app.sent(SendMessage)]
    assert sent[:2] == ["⏳ Got it, one moment…",
                        "I don't know this command. Send /help to see what I can do."]
    assert len(sent) == 3 and "don't know" not in sent[2]  # the admin's /units was answered
    assert threaded == []
