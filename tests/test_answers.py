"""Answers that read well: formatting, long answers, buttons, follow-ups, files, groups."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

from aiogram.methods import AnswerCallbackQuery, EditMessageText, SendMessage
from aiogram.types import InlineKeyboardMarkup

from bot.telegram.render import TELEGRAM_LIMIT, render, utf16_length
from bot.upstream.sandbox import Fault
from storage.jobs import JobState
from tests.fakes.mocked_bot import BOT_ID, BOT_USERNAME
from tests.fakes.telegram_api import callback_update, message_update
from tests.harness import FAST_POLLS, App, AppFactory


def long_markdown() -> str:
    sections = []
    for n in range(14):
        sections.append(f"## Section {n}\n\nSome **bold** text and `inline code` " + "lorem " * 60)
        sections.append(f"```python\ndef f{n}(x):\n" + "    x += 1\n" * 25 + "    return x\n```")
    return "\n\n".join(sections)


def buttons(markup: object) -> list[str | None]:
    assert isinstance(markup, InlineKeyboardMarkup)
    return [b.callback_data for row in markup.inline_keyboard for b in row]


def reply_to_bot(update: dict[str, Any], text: str, message_id: int = 1002) -> dict[str, Any]:
    update["message"]["reply_to_message"] = {
        "message_id": message_id, "date": int(time.time()), "text": text,
        "chat": update["message"]["chat"],
        "from": {"id": BOT_ID, "is_bot": True, "first_name": "Bot", "username": BOT_USERNAME},
    }
    return update


def document_update(user_id: int, file_id: str, name: str, size: int,
                    caption: str | None = None) -> dict[str, Any]:
    update = message_update(user_id, "x")
    del update["message"]["text"]
    update["message"]["document"] = {"file_id": file_id, "file_unique_id": file_id,
                                     "file_name": name, "file_size": size}
    if caption:
        update["message"]["caption"] = caption
    return update


async def test_long_markdown_answer_arrives_complete_in_well_formed_parts(app: App) -> None:
    answer = long_markdown()
    assert len(answer) > 9000
    app.chatinfo.answer = lambda mode, content: answer
    await app.feed(message_update(1, "write a lot"))
    await app.settle()

    placeholder = app.sent(SendMessage)[0]
    [first] = app.sent(EditMessageText)
    rest = app.sent(SendMessage)[1:]
    assert len(rest) >= 2
    parts = [first, *rest]
    expected = render(answer)
    assert [p.text for p in parts] == [p.text for p in expected]
    assert all(utf16_length(p.text) <= TELEGRAM_LIMIT for p in parts)
    assert all(m.reply_parameters.message_id == 1001 for m in rest)  # replies to the placeholder
    assert placeholder.text == "⏳ Got it, one moment…"
    for part in parts:
        assert "**" not in part.text
        for entity in part.entities or []:
            assert entity.offset >= 0 and entity.offset + entity.length <= utf16_length(part.text)
    assert sum(e.type == "pre" for p in parts for e in p.entities or []) >= 14
    assert buttons(parts[-1].reply_markup) == ["ans:r:1", "ans:c:1", "ans:s:1"]
    assert all(p.reply_markup is None for p in parts[:-1])


async def test_entities_rejected_by_telegram_fall_back_to_plain_text(app: App) -> None:
    app.chatinfo.answer = lambda mode, content: "**bold** answer"
    app.session.fail_next(EditMessageText, 400, "Bad Request: can't parse entities: oops")
    await app.feed(message_update(2, "hi"))
    await app.settle()

    rejected, plain = app.sent(EditMessageText)
    assert rejected.entities and rejected.text == plain.text == "bold answer"
    assert plain.entities is None


async def test_answer_buttons_ask_again_continue_and_shorten(app: App) -> None:
    await app.feed(message_update(3, "/start"))
    await app.feed(callback_update(3, "mode:poems", message_id=1001))
    await app.feed(message_update(3, "a cat"))
    await app.settle()
    for action in ("r", "c", "s"):
        await app.feed(callback_update(3, f"ans:{action}:1", message_id=1002))
    await app.settle()

    sent = [(r.mode, r.content) for r in app.chatinfo.requests]
    assert sent == [("poems", "a cat"), ("poems", "a cat"), ("continue", "[poems] a cat"),
                    ("shorter", "[poems] a cat")]
    assert [a.text for a in app.sent(AnswerCallbackQuery)][-3:] == ["Sending…"] * 3
    jobs = [await app.jobs.get(n) for n in (2, 3, 4)]
    assert all(j is not None and j.state is JobState.DELIVERED and j.reply_to == 1002
               for j in jobs)


async def test_buttons_of_someone_else_or_unknown_jobs_are_refused(app: App) -> None:
    await app.feed(message_update(4, "mine"))
    await app.settle()
    await app.feed(callback_update(5, "ans:r:1", message_id=1002))
    await app.feed(callback_update(4, "ans:r:999", message_id=1002))
    await app.feed(callback_update(4, "ans:x:1", message_id=1002))

    answers = [(a.text, a.show_alert) for a in app.sent(AnswerCallbackQuery)]
    assert answers == [("This button belongs to someone else's request.", True),
                       ("This button is no longer valid.", True),
                       ("This button is no longer valid.", True)]
    assert app.chatinfo.calls["create_request"] == 1


async def test_reply_to_an_answer_sends_it_as_context(app: App) -> None:
    await app.feed(reply_to_bot(message_update(6, "make it shorter"), "The long answer."))
    await app.settle()

    assert app.chatinfo.requests[0].content == "The long answer.\n\nmake it shorter"


async def test_follow_up_context_is_trimmed_to_the_budget_and_the_user_told(app: App) -> None:
    request = "explain point 3 " * 100  # 1600 characters
    await app.feed(reply_to_bot(message_update(7, request), "c" * 4500))
    await app.settle()

    content = app.chatinfo.requests[0].content
    assert len(content) == 5000 and content.endswith(request)
    assert content.startswith("c" * 3398 + "\n\n")
    assert app.sent(SendMessage)[0].text == (
        "The message you replied to was shortened to its first 3398 characters to fit the "
        "5000-character limit.")


async def test_cp1251_document_becomes_the_content_after_its_caption(app: App) -> None:
    text = "Привет, это конспект лекции.\n" * 10
    app.session.files["doc1"] = text.encode("cp1251")
    await app.feed(document_update(8, "doc1", "lecture.txt", 290, caption="Сократи"))
    await app.settle()

    assert app.chatinfo.requests[0].content == "Сократи\n\n" + text


async def test_long_document_is_cut_and_the_user_told(app: App) -> None:
    app.session.files["doc2"] = ("й" * 7000).encode("utf-8")
    await app.feed(document_update(9, "doc2", "notes.md", 14000))
    await app.settle()

    assert app.sent(SendMessage)[0].text == (
        "The file and caption have 7000 characters; only the first 5000 will be processed.")
    assert app.chatinfo.requests[0].content == "й" * 5000


async def test_a_caption_less_file_that_decodes_to_nothing_is_not_sent(app: App) -> None:
    app.session.files["doc3"] = "\ufeff \r\n\u200b\n".encode()
    await app.feed(document_update(9, "doc3", "empty.txt", 12))

    assert app.sent(SendMessage)[0].text.startswith("✋ There is nothing to send")
    assert app.chatinfo.calls["create_request"] == 0


async def test_other_files_are_refused_clearly(app: App) -> None:
    await app.feed(document_update(10, "pic", "photo.jpg", 1000))
    await app.feed(document_update(10, "big", "huge.txt", 2 * 1024 * 1024))

    assert [m.text for m in app.sent(SendMessage)] == [
        "I can read .txt and .md files up to 1 MB. Please send the text as such a file or as "
        "a message."] * 2
    assert app.chatinfo.calls["create_request"] == 0


async def test_groups_answer_mentions_and_replies_only(app: App) -> None:
    group = {"chat_id": -100, "chat_type": "supergroup"}
    await app.feed(message_update(11, "just chatting", **group))  # type: ignore[arg-type]
    await app.feed(message_update(11, "/unknown", **group))  # type: ignore[arg-type]
    ignored = len(app.session.requests)
    mention = message_update(11, f"@{BOT_USERNAME} write a haiku", message_id=500,
                             **group)  # type: ignore[arg-type]
    await app.feed(mention)
    await app.feed(reply_to_bot(message_update(12, "and a limerick", **group),  # type: ignore[arg-type]
                                "[chat] write a haiku"))
    await app.settle()

    assert ignored == 1  # only getMe, to learn the bot's username
    contents = [r.content for r in app.chatinfo.requests]
    assert contents == ["write a haiku", "[chat] write a haiku\n\nand a limerick"]
    placeholder = app.sent(SendMessage)[0]
    assert (placeholder.chat_id, placeholder.reply_parameters.message_id) == (-100, 500)


async def test_history_lists_requests_and_shows_a_full_answer_again(app: App) -> None:
    await app.feed(message_update(13, "first question"))
    await app.settle()
    await app.feed(message_update(13, "/history"))

    listing = app.sent(SendMessage)[-1]
    assert listing.text.startswith("Your last requests:\n#1 ✅ ")
    assert listing.text.endswith("💬 first question")
    assert buttons(listing.reply_markup) == ["hist:1"]

    await app.feed(callback_update(13, "hist:1", message_id=listing_id(app)))
    assert app.sent(SendMessage)[-1].text == "[chat] first question"
    await app.feed(callback_update(14, "hist:1", message_id=listing_id(app)))
    assert app.sent(AnswerCallbackQuery)[-1].text == (
        "This button belongs to someone else's request.")


def listing_id(app: App) -> int:
    return 1000 + len(app.sent(SendMessage))


async def test_cancel_stops_what_was_not_sent_and_keeps_paid_answers(
        make_app: AppFactory) -> None:
    app = await make_app(max_pending_per_user=2,
                         client_options={"create_per_min": 1, "window": 30.0})
    app.chatinfo.solve_time = 1.0
    await app.feed(message_update(15, "sent one"))
    await app.chatinfo.wait_for(lambda: app.chatinfo.calls["create_request"] == 1)
    await app.feed(message_update(15, "queued one"))  # waits 30 s for the create budget
    await app.feed(message_update(15, "/cancel"))

    assert app.sent(SendMessage)[-1].text == (
        "Stopped 1 request before it was sent, so it was not counted.\n"
        "1 request had already been sent and was counted: its answer will be kept in "
        "/history.")
    await app.settle()
    sent, queued = sorted(await app.jobs.recent(15, 2), key=lambda job: job.id)
    assert (queued.state, queued.error) == (JobState.FAILED, "cancelled")
    assert (sent.state, sent.cancelled, sent.result) == (
        JobState.DELIVERED, True, "[chat] sent one")  # fetched and kept, not posted
    edits = {e.message_id: e.text for e in app.sent(EditMessageText)}
    assert edits[sent.placeholder_id] == (
        "✖️ Stopped waiting. The request had already been sent, so it was counted; its "
        "answer will be kept in /history.")
    assert edits[queued.placeholder_id] == (
        "✖️ Cancelled before it was sent, so nothing was counted.")
    assert app.chatinfo.calls["create_request"] == 1 and app.chatinfo.units == 999

    await app.feed(message_update(15, "/history"))
    history = app.sent(SendMessage)[-1]
    assert f"#{sent.id} ✖️" in history.text
    assert history.text.split("\n")[2].endswith("sent one · cancelled, answer kept")
    assert f"hist:{sent.id}" in str(history.reply_markup)
    await app.feed(message_update(15, "/cancel"))
    assert app.sent(SendMessage)[-1].text == "You have no requests in progress."
    await app.feed(message_update(15, "a new one"))  # a kept answer blocks nothing
    assert app.sent(SendMessage)[-1].text.startswith("⏳")


async def test_placeholder_shows_how_long_the_job_has_waited(make_app: AppFactory) -> None:
    app = await make_app(policy=replace(FAST_POLLS, progress_every=0.3))
    app.chatinfo.solve_time = 1.0
    await app.feed(message_update(16, "wait for it"))
    await app.settle()

    *progress, answer = app.sent(EditMessageText)
    assert progress and all(p.text.startswith("⏳ Working on it… 0:0") for p in progress)
    assert answer.text == "[chat] wait for it"


async def test_a_follow_up_that_fills_the_budget_leaves_the_context_out(app: App) -> None:
    request = "r" * 5000
    await app.feed(reply_to_bot(message_update(17, request), "the earlier answer"))
    await app.settle()

    assert app.chatinfo.requests[0].content == request
    assert app.sent(SendMessage)[0].text == (
        "The message you replied to was left out: your text alone fills the 5000-character "
        "limit.")


async def test_a_failed_notice_still_lets_the_job_run_once(app: App) -> None:
    app.session.fail_next(SendMessage, 502, "Bad Gateway")  # the "only 5000" notice
    await app.feed(message_update(18, "x" * 6000))
    await app.settle()

    assert app.chatinfo.calls["create_request"] == 1
    job = await app.jobs.get(1)
    assert job is not None and job.state is JobState.DELIVERED
    assert job.result == "[chat] " + "x" * 5000


async def test_a_double_tap_on_an_answer_button_spends_one_unit(app: App) -> None:
    await app.feed(message_update(30, "a question"))
    await app.settle()
    [job] = await app.jobs.recent(30, 1)
    app.chatinfo.solve_time = 1.0
    tap = callback_update(30, f"ans:r:{job.id}", message_id=job.placeholder_id or 0)
    await asyncio.gather(app.feed(tap), app.feed({**tap}))
    await app.feed(callback_update(30, f"ans:c:{job.id}", message_id=job.placeholder_id or 0))

    toasts = [a.text for a in app.sent(AnswerCallbackQuery)]
    assert sorted(toasts) == sorted(["Sending…", "Sending…",
                                     "Already on its way: the answer to this button has not "
                                     "come yet."])
    await app.settle()
    assert app.chatinfo.calls["create_request"] == 3  # the question, 🔄 once, and ➡️

    await app.feed(callback_update(30, f"ans:r:{job.id}", message_id=job.placeholder_id or 0))
    await app.settle()  # the first 🔄 was answered: pressing again is a new, meant request
    assert app.chatinfo.calls["create_request"] == 4


async def test_a_double_tap_on_send_again_sends_once(app: App) -> None:
    app.chatinfo.inject("create_request", Fault.http(502, after_effect=True))  # spent; id lost
    await app.feed(message_update(31, "try me"))
    await app.settle()
    [job] = await app.jobs.recent(31, 1)
    assert job.state is JobState.UNKNOWN
    tap = callback_update(31, f"retry:{job.id}", message_id=job.placeholder_id or 0)
    await asyncio.gather(app.feed(tap), app.feed({**tap}))
    await app.settle()

    toasts = sorted(a.text for a in app.sent(AnswerCallbackQuery))
    assert toasts == ["Already sent again; the answer is on its way.", "Sending again…"]
    assert app.chatinfo.calls["create_request"] == 2  # the failed one, and one retry
    assert [r.content for r in app.chatinfo.requests] == ["try me", "try me"]
