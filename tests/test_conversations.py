"""Conversations that remember, through the real Dispatcher: what is sent upstream."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiogram.methods import SendMessage, SetMyCommands
from aiogram.types import BotCommand

from bot.config import MAX_CONTENT_CHARS
from bot.jobs.conversation import MIN_EXCERPT, compose, cut
from bot.telegram.i18n import make_i18n
from bot.telegram.menus import set_command_menus
from storage.conversations import Turn
from tests.fakes.mocked_bot import BOT_USERNAME
from tests.fakes.telegram_api import (
    callback_update,
    chosen_inline_result_update,
    message_update,
)
from tests.harness import App, AppFactory, asked
from tests.test_answers import document_update, reply_to_bot

ANSWERS = {"My name is Ann and I keep bees.": "Nice to meet you, Ann! Bees are wonderful.",
           "What is my name?": "Your name is Ann.",
           "And what do I keep?": "You keep bees."}
GROUP: dict[str, Any] = {"chat_id": -100, "chat_type": "supergroup"}


def canned(mode: str, content: str) -> str:
    return ANSWERS.get(asked(content), f"[{mode}] {asked(content)}")


def contents(app: App) -> list[str]:
    return [request.content for request in app.chatinfo.requests]


def placeholders(app: App) -> list[str]:
    return [m.text for m in app.sent(SendMessage) if m.text.startswith("⏳")]


async def say(app: App, user_id: int, text: str, **options: Any) -> None:
    """A message, and its answer stored and delivered."""
    await app.feed(message_update(user_id, text, **options))
    await app.settle()


async def backdate(app: App, seconds: float) -> None:
    """Everything so far happened `seconds` earlier."""
    await app.db.execute("UPDATE jobs SET created_at = created_at - ?, answered_at = "
                         "answered_at - ?", (seconds, seconds))
    await app.db.commit()


async def test_a_three_turn_conversation_is_sent_exactly_so(app: App) -> None:
    app.chatinfo.answer = canned
    for text in ANSWERS:
        await say(app, 1, text)

    assert contents(app) == [
        "My name is Ann and I keep bees.",
        "Earlier in this conversation:\n"
        "User: My name is Ann and I keep bees.\n"
        "Assistant: Nice to meet you, Ann! Bees are wonderful.\n"
        "\n"
        "Now: What is my name?",
        "Earlier in this conversation:\n"
        "User: My name is Ann and I keep bees.\n"
        "Assistant: Nice to meet you, Ann! Bees are wonderful.\n"
        "User: What is my name?\n"
        "Assistant: Your name is Ann.\n"
        "\n"
        "Now: And what do I keep?",
    ]
    assert placeholders(app) == ["⏳ Got it, one moment…",
                                 "⏳ Got it, one moment…\n↩️ 2 earlier messages",
                                 "⏳ Got it, one moment…\n↩️ 4 earlier messages"]
    third = await app.jobs.get(3)
    assert third is not None and third.question == "And what do I keep?"  # /history's words


async def test_the_count_of_earlier_messages_is_in_russian_plural_forms(app: App) -> None:
    for text in ("один", "два", "три"):
        await say(app, 2, text, language_code="ru")

    assert placeholders(app)[1:] == ["⏳ Принято, минутку…\n↩️ 2 предыдущих сообщения",
                                     "⏳ Принято, минутку…\n↩️ 4 предыдущих сообщения"]


async def test_at_the_budget_edge_old_turns_are_cut_and_the_new_message_is_whole(
        app: App) -> None:
    sentences = " ".join(f"Sentence {n:03d} of the long answer." for n in range(120))
    long_answers = {"first": sentences, "second": "A shorter answer. " * 80}
    app.chatinfo.answer = lambda mode, content: long_answers.get(asked(content), "ok")
    await say(app, 3, "first")
    await say(app, 3, "second")
    new_message = "a new message, kept whole " * 40
    await say(app, 3, new_message)

    content = contents(app)[-1]
    assert len(content) <= MAX_CONTENT_CHARS
    assert content.endswith("\n\nNow: " + new_message[:MAX_CONTENT_CHARS])
    second_turn = "User: second\nAssistant: " + long_answers["second"] + "\n"
    assert second_turn + "\nNow: " in content  # the newest turn whole
    first_turn = content.removeprefix("Earlier in this conversation:\nUser: first\n"
                                      "Assistant: ").partition("\n" + second_turn)[0]
    assert first_turn.endswith("answer.…") and sentences.startswith(first_turn[:-1])
    # Cut at the last sentence end that fits: one more sentence would not have.
    assert len(content) + len(" Sentence 000 of the long answer.") > MAX_CONTENT_CHARS
    assert placeholders(app)[-1].endswith("↩️ 4 earlier messages")


async def test_a_new_message_that_fills_the_budget_goes_alone(app: App) -> None:
    await say(app, 4, "first")
    almost_full = "y" * (MAX_CONTENT_CHARS - 60)  # room only for a few words of context
    await say(app, 4, almost_full)
    too_long = "z" * (MAX_CONTENT_CHARS + 10)
    await say(app, 4, too_long)

    assert contents(app)[1:] == [almost_full, too_long[:MAX_CONTENT_CHARS]]
    assert placeholders(app) == ["⏳ Got it, one moment…"] * 3
    cut_notice = [m.text for m in app.sent(SendMessage) if m.text.startswith("Your message")]
    assert cut_notice == ["Your message is 5010 characters long; only the first 5000 will be "
                          "processed."]


async def test_a_reply_to_an_older_answer_continues_from_it_not_from_the_latest(
        app: App) -> None:
    app.chatinfo.answer = lambda mode, content: (
        "Bees make honey." if content.endswith("about that.") else canned(mode, content))
    for text in ANSWERS:
        await say(app, 5, text)
    first = await app.jobs.get(1)
    assert first is not None and first.placeholder_id is not None
    await app.feed(reply_to_bot(message_update(5, "Tell me more about that."),
                                ANSWERS["My name is Ann and I keep bees."],
                                message_id=first.placeholder_id))
    await app.settle()
    await say(app, 5, "Thanks!")

    assert contents(app)[3] == ("Nice to meet you, Ann! Bees are wonderful.\n\n"
                                "Tell me more about that.")
    assert placeholders(app)[3] == "⏳ Got it, one moment…"
    # The reply is a turn like any other for the next message: in its own words.
    assert contents(app)[4].endswith(
        "User: Tell me more about that.\n"
        "Assistant: Bees make honey.\n\nNow: Thanks!")


async def test_new_starts_afresh_and_is_in_help_and_the_menus(app: App) -> None:
    await say(app, 6, "first")
    await app.feed(message_update(6, "/new"))
    await say(app, 6, "second")
    await say(app, 6, "third")

    assert contents(app) == ["first", "second",
                             "Earlier in this conversation:\nUser: second\n"
                             "Assistant: [chat] second\n\nNow: third"]
    replies = [m.text for m in app.sent(SendMessage) if m.text.startswith("🆕")]
    assert replies == ["🆕 New conversation: your next message starts afresh, without the "
                       "earlier ones."]
    await set_command_menus(app.bot, make_i18n(), admin_ids=[])
    menus = {(type(call.scope).__name__, call.language_code): call.commands
             for call in app.sent(SetMyCommands)}
    for scope in ("BotCommandScopeDefault", "BotCommandScopeAllGroupChats"):
        assert BotCommand(command="new", description="Start a new conversation") in menus[
            scope, None]
        assert BotCommand(command="new", description="Начать новый разговор") in menus[
            scope, "ru"]
    await app.feed(message_update(6, "/help"))
    help_text = app.sent(SendMessage)[-1].text
    assert "\n/new — Start a new conversation" in help_text
    assert "/new starts afresh; so do a change of mode and 30 minutes of silence" in help_text


async def test_a_change_of_mode_starts_afresh(app: App) -> None:
    await say(app, 7, "first")
    await app.feed(callback_update(7, "mode:code", message_id=1))
    await say(app, 7, "second")
    await app.feed(callback_update(7, "mode:code", message_id=1))  # the same mode again
    await say(app, 7, "third")

    assert contents(app) == ["first", "second",
                             "Earlier in this conversation:\nUser: second\n"
                             "Assistant: [code] second\n\nNow: third"]


async def test_silence_ends_a_conversation(make_app: AppFactory) -> None:
    app = await make_app(conversation_idle_minutes=10)
    await say(app, 8, "first")
    await backdate(app, 9 * 60)
    await say(app, 8, "after nine minutes")
    await backdate(app, 11 * 60)
    await say(app, 8, "after eleven minutes")

    assert contents(app) == [
        "first",
        "Earlier in this conversation:\nUser: first\nAssistant: [chat] first\n\n"
        "Now: after nine minutes",
        "after eleven minutes"]


async def test_a_silence_between_earlier_turns_ends_what_comes_before_it(app: App) -> None:
    await say(app, 9, "last week's topic")
    await backdate(app, 31 * 60)
    await say(app, 9, "a new topic")
    await say(app, 9, "more on it")

    assert "last week" not in contents(app)[2]
    assert contents(app)[2].startswith("Earlier in this conversation:\nUser: a new topic\n")


async def test_a_conversation_survives_a_restart(make_app: AppFactory) -> None:
    first = await make_app()
    first.chatinfo.answer = canned
    await say(first, 10, "My name is Ann and I keep bees.")
    first.chatinfo.solve_time = 1.0
    await first.feed(message_update(10, "What is my name?"))
    await first.chatinfo.wait_for(lambda: first.chatinfo.calls["create_request"] == 2)
    await first.runner.stop()  # a deploy while the second answer is on its way

    second = await make_app()  # a new app over the same database file
    second.chatinfo.solve_time = 0.1
    await second.runner.resume()
    await second.settle()
    await say(second, 10, "And what do I keep?")

    assert contents(second)[-1] == ("Earlier in this conversation:\n"
                                    "User: My name is Ann and I keep bees.\n"
                                    "Assistant: Nice to meet you, Ann! Bees are wonderful.\n"
                                    "User: What is my name?\n"
                                    "Assistant: Your name is Ann.\n"
                                    "\nNow: And what do I keep?")


async def test_in_a_group_each_user_has_their_own_conversation(app: App) -> None:
    mention = f"@{BOT_USERNAME}"
    await say(app, 11, f"{mention} I am Bob", **GROUP)
    await say(app, 11, "a plan nobody addressed to the bot", **GROUP)  # no job, no turn
    await say(app, 12, f"{mention} I am Eve", **GROUP)
    await say(app, 11, "in private")
    await say(app, 11, f"{mention} who am I?", **GROUP)
    await say(app, 12, f"{mention} and me?", **GROUP)

    assert contents(app) == [
        "I am Bob", "I am Eve", "in private",
        "Earlier in this conversation:\nUser: I am Bob\nAssistant: [chat] I am Bob\n\n"
        "Now: who am I?",
        "Earlier in this conversation:\nUser: I am Eve\nAssistant: [chat] I am Eve\n\n"
        "Now: and me?"]


async def test_new_in_a_group_starts_afresh_only_there_and_only_for_its_sender(
        app: App) -> None:
    mention = f"@{BOT_USERNAME}"
    await say(app, 13, f"{mention} group one", **GROUP)
    await say(app, 14, f"{mention} other user", **GROUP)
    await say(app, 13, "private one")
    await app.feed(message_update(13, "/new", **GROUP))
    await say(app, 13, f"{mention} group two", **GROUP)
    await say(app, 14, f"{mention} other again", **GROUP)
    await say(app, 13, "private two")

    assert contents(app)[3] == "group two"
    assert "User: other user" in contents(app)[4]
    assert "User: private one" in contents(app)[5]


async def test_modes_that_work_on_the_text_remember_only_when_turned_on(app: App) -> None:
    await app.feed(callback_update(15, "mode:rewrite", message_id=1))
    await say(app, 15, "one")
    await say(app, 15, "two")
    await app.feed(message_update(15, "/memory"))
    await say(app, 15, "three")
    await app.feed(message_update(15, "/memory"))
    await say(app, 15, "four")
    await app.feed(message_update(15, "/new"))

    assert contents(app) == ["one", "two",
                             "Earlier in this conversation:\nUser: one\nAssistant: [rewrite] one\n"
                             "User: two\nAssistant: [rewrite] two\n\nNow: three", "four"]
    replies = [m.text for m in app.sent(SendMessage) if not m.text.startswith("⏳")]
    assert replies == [
        "🧠 In 🔁 Rewrite mode each message now carries our recent conversation. /new starts "
        "afresh; /memory turns this off.",
        "In 🔁 Rewrite mode each message now stands alone, without the earlier ones. /memory "
        "turns the memory back on.",
        "🆕 New conversation. In 🔁 Rewrite mode each message stands alone anyway; /memory "
        "makes me remember the conversation."]


async def test_only_answered_and_typed_requests_are_turns(app: App) -> None:
    await say(app, 16, "typed")
    await app.feed(callback_update(16, "ans:s:1", message_id=1002))  # ✂️ Shorter: no turn
    await app.settle()
    app.chatinfo.units = 0  # the request fails: no turn
    await say(app, 16, "failed")
    app.chatinfo.units = 100
    await app.dp["upstream"].refresh()
    await say(app, 16, "next")

    assert contents(app)[-1] == ("Earlier in this conversation:\nUser: typed\n"
                                 "Assistant: [chat] typed\n\nNow: next")


async def test_a_file_is_a_turn_in_its_name_and_caption_and_carries_no_context(
        app: App) -> None:
    app.chatinfo.answer = lambda mode, content: "Summary." if "lecture" in content else "ok"
    app.session.files["doc"] = b"The lecture notes."
    await say(app, 19, "hello")
    await app.feed(document_update(19, "doc", "notes.txt", 18, caption="Summarize"))
    await app.settle()
    await say(app, 19, "thanks")

    assert contents(app) == [
        "hello", "Summarize\n\nThe lecture notes.",
        "Earlier in this conversation:\nUser: hello\nAssistant: ok\n"
        "User: 📎 notes.txt Summarize\nAssistant: Summary.\n\nNow: thanks"]


async def test_turns_older_than_30_days_are_never_read_and_old_markers_go(
        make_app: AppFactory) -> None:
    app = await make_app(conversation_idle_minutes=30 * 24 * 60)
    await say(app, 17, "long ago")
    await backdate(app, 31 * 24 * 3600)
    await say(app, 17, "today")
    await app.db.execute("INSERT INTO conversations VALUES (-5, 18, ?)",
                         (time.time() - 31 * 24 * 3600,))
    await app.db.commit()
    await app.feed(message_update(17, "/new"))

    assert contents(app)[-1] == "today"
    rows = await app.db.execute_fetchall("SELECT chat_id, user_id FROM conversations")
    assert [tuple(row) for row in rows] == [(17, 17)]


@pytest.mark.parametrize(("text", "limit", "expected"), [
    ("One. Two three four five six seven.", 20, "One. Two three four…"),
    ("First paragraph here.\n\nSecond one. Goes on.", 35, "First paragraph here.…"),
    ("A first line here\nand one more line here", 25, "A first line here…"),
    ("He said «yes.» Then more words", 17, "He said «yes.»…"),
    ("x" * 30, 10, "x" * 9 + "…"),
])
def test_a_cut_ends_at_a_boundary_with_an_ellipsis(text: str, limit: int, expected: str) -> None:
    assert cut(text, limit) == expected
    assert len(expected) <= limit


def test_an_old_turn_keeps_its_message_and_the_start_of_its_answer() -> None:
    turns = [Turn("q" * 4900, "a" * 4000, 0.0, 1.0)]
    composed = compose("now", turns)
    assert len(composed.content) <= MAX_CONTENT_CHARS
    said = composed.content.split("\n")[1].removeprefix("User: ")
    answer = composed.content.split("\n")[2].removeprefix("Assistant: ")
    assert said.endswith("…") and answer.endswith("…")
    assert min(len(said), len(answer)) >= MIN_EXCERPT
    assert composed.earlier == 2


async def test_a_question_asked_inline_elsewhere_is_not_a_turn_of_the_private_chat(
        app: App) -> None:
    await app.feed(chosen_inline_result_update(1, "ask:chat", "asked in another chat",
                                               inline_message_id="im-1"))
    await app.settle()
    await say(app, 1, "hello")

    assert contents(app) == ["asked in another chat", "hello"]
