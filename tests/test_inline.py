"""Inline mode through the real Dispatcher: `@bot question` in any chat, answered in place."""

from __future__ import annotations

from dataclasses import replace

import pytest
from aiogram.methods import AnswerInlineQuery, EditMessageText, SendChatAction, SendMessage
from aiogram.types import InlineKeyboardMarkup, InlineQueryResultArticle

from bot.jobs.admission import QuotaClock
from bot.telegram.render import CUT_MARK, TELEGRAM_LIMIT, render, utf16_length
from bot.upstream.sandbox import Fault
from storage.jobs import JobState
from storage.quotas import QuotaRepo
from storage.users import UserRepo
from tests.fakes.mocked_bot import BOT_USERNAME
from tests.fakes.telegram_api import (
    chosen_inline_result_update,
    inline_query_update,
    message_update,
)
from tests.harness import FAST_POLLS, App, AppFactory, wait_until
from tests.test_answers import long_markdown

USER = 7
PLACEHOLDER = "⏳ Got it, one moment…"


def offered(app: App) -> list[InlineQueryResultArticle]:
    """The results of the last inline query answered."""
    results = app.sent(AnswerInlineQuery)[-1].results
    articles = [result for result in results if isinstance(result, InlineQueryResultArticle)]
    assert len(articles) == len(results)
    return articles


def inline_edits(app: App, inline_message_id: str) -> list[EditMessageText]:
    return [edit for edit in app.sent(EditMessageText)
            if edit.inline_message_id == inline_message_id]


def urls(markup: object) -> list[str | None]:
    assert isinstance(markup, InlineKeyboardMarkup)
    return [button.url for row in markup.inline_keyboard for button in row]


async def used_today(app: App, user_id: int) -> int:
    quotas: QuotaRepo = app.dp["quotas"]
    clock: QuotaClock = app.dp["clock"]
    return (await quotas.usage(user_id, clock.today())).used


async def test_the_dispatcher_asks_telegram_for_inline_updates(app: App) -> None:
    assert {"inline_query", "chosen_inline_result"} <= set(app.dp.resolve_used_update_types())


async def test_a_typed_query_is_offered_modes_and_spends_nothing(app: App) -> None:
    await app.feed(message_update(USER, "/start"))
    await app.feed(inline_query_update(USER, "what is a black hole"))

    [answer] = app.sent(AnswerInlineQuery)
    assert answer.is_personal and answer.cache_time is not None and answer.cache_time <= 5
    results = offered(app)
    assert [r.id for r in results] == ["ask:chat", "ask:shorter", "ask:rewrite"]
    assert [r.title for r in results] == ["Ask in 💬 Chat", "✂️ Shorten", "🔁 Rewrite"]
    for result in results:  # a keyboard, or Telegram would not name the posted message
        assert result.input_message_content.message_text == PLACEHOLDER  # type: ignore[union-attr]
        assert urls(result.reply_markup) == [f"https://t.me/{BOT_USERNAME}"]
    assert await app.jobs.recent(USER, 10) == []
    assert app.chatinfo.calls["create_request"] == 0 and await used_today(app, USER) == 0


async def test_the_users_own_mode_comes_first(app: App) -> None:
    await app.dp["users"].touch(USER, "en")
    await app.dp["users"].set_mode(USER, "poems")
    await app.feed(inline_query_update(USER, "a cat"))

    results = offered(app)
    assert [r.id for r in results] == ["ask:poems", "ask:chat", "ask:shorter", "ask:rewrite"]
    assert results[0].title == "Ask in 🎭 Poems"


async def test_a_chosen_result_becomes_a_job_and_its_placeholder_the_answer(app: App) -> None:
    await app.feed(inline_query_update(USER, "  a cat on the roof "))
    await app.feed(chosen_inline_result_update(USER, "ask:shorter", "  a cat on the roof ",
                                               inline_message_id="im-1"))
    await app.settle()

    [edit] = inline_edits(app, "im-1")
    assert edit.text == "[shorter] a cat on the roof"
    assert edit.chat_id is None and edit.message_id is None and edit.reply_markup is None
    [job] = await app.jobs.recent(USER, 10)
    assert (job.state, job.mode, job.content) == (JobState.DELIVERED, "shorter",
                                                  "a cat on the roof")
    assert (job.inline_message_id, job.chat_id, job.placeholder_id) == ("im-1", USER, None)
    assert await used_today(app, USER) == 1
    # Nothing went to a chat: no placeholder, no "typing…" in the user's private chat.
    assert app.sent(SendMessage) == [] and app.sent(SendChatAction) == []

    # Telegram reports the same choice again (after a crash of ours): still one job.
    await app.feed(chosen_inline_result_update(USER, "ask:shorter", "a cat on the roof",
                                               inline_message_id="im-1"))
    await app.settle()
    assert len(await app.jobs.recent(USER, 10)) == 1 and app.chatinfo.calls["create_request"] == 1


async def test_a_restart_between_the_choice_and_the_answer_still_edits_it(
        make_app: AppFactory) -> None:
    first = await make_app()
    first.chatinfo.solve_time = 1.5
    await first.feed(chosen_inline_result_update(USER, "ask:chat", "slow question",
                                                 inline_message_id="im-restart"))
    await first.chatinfo.wait_for(lambda: first.chatinfo.calls["create_request"] == 1)
    await wait_until(lambda: bool(first.runner.scheduler.pending), timeout=5,
                     what="the job is pending upstream")
    await first.runner.stop()  # a deploy before the answer came
    assert inline_edits(first, "im-restart") == []

    second = await make_app()
    assert await second.runner.resume() == 1
    await second.settle()
    [edit] = inline_edits(second, "im-restart")
    assert edit.text == "[chat] slow question"
    assert second.chatinfo.calls["create_request"] == 1  # polled, not asked again
    [job] = await second.jobs.recent(USER, 10)
    assert job.state is JobState.DELIVERED


async def test_over_quota_the_placeholder_says_so_and_nothing_is_sent(
        make_app: AppFactory) -> None:
    app = await make_app(daily_quota=1)
    for n in (1, 2):
        await app.feed(chosen_inline_result_update(USER, "ask:chat", f"question {n}",
                                                   inline_message_id=f"im-q{n}"))
    await app.settle()

    assert [e.text for e in inline_edits(app, "im-q1")] == ["[chat] question 1"]
    [refused] = inline_edits(app, "im-q2")
    assert (refused.text or "").startswith(
        "🚫 You have used all your requests for today, so this one was not sent.")
    assert refused.reply_markup is None
    assert app.chatinfo.calls["create_request"] == 1 and await used_today(app, USER) == 1
    assert len(await app.jobs.recent(USER, 10)) == 1


async def test_a_long_answer_is_cut_with_a_link_to_all_of_it_in_private(app: App) -> None:
    answer = long_markdown()
    app.chatinfo.answer = lambda mode, content: answer
    await app.feed(chosen_inline_result_update(USER, "ask:chat", "write a lot",
                                               inline_message_id="im-long"))
    await app.settle()

    [edit] = inline_edits(app, "im-long")
    assert edit.text is not None
    whole = render(answer)
    assert len(whole) > 2 and utf16_length(edit.text) <= TELEGRAM_LIMIT
    assert edit.text.endswith(CUT_MARK)
    first = edit.text.removesuffix(CUT_MARK)
    assert whole[0].text.startswith(first) and "**" not in first  # cut at a boundary, rendered
    assert all(e.offset + e.length <= utf16_length(first) for e in edit.entities or [])
    assert urls(edit.reply_markup) == [f"https://t.me/{BOT_USERNAME}?start=answer-1"]
    [job] = await app.jobs.recent(USER, 10)
    assert (job.state, job.parts_delivered) == (JobState.DELIVERED, 1)

    # The button opens the private chat with the link's /start: the owner gets it all ...
    await app.feed(message_update(USER, "/start answer-1"))
    assert [m.text for m in app.sent(SendMessage)] == [part.text for part in whole]
    # ... anyone else who taps it in that chat gets nothing of it.
    await app.feed(message_update(USER + 1, "/start answer-1"))
    assert app.sent(SendMessage)[-1].text == "Only the one who asked can open this answer."
    assert app.sent(SendMessage)[-1].chat_id == USER + 1
    await app.feed(message_update(USER, "/start answer-99"))
    assert app.sent(SendMessage)[-1].text == "This link is no longer valid."


async def test_a_short_answer_has_no_buttons_that_could_not_work_inline(app: App) -> None:
    app.chatinfo.answer = lambda mode, content: "**Short** answer."
    await app.feed(chosen_inline_result_update(USER, "ask:chat", "q", inline_message_id="im-s"))
    await app.settle()

    [edit] = inline_edits(app, "im-s")
    assert edit.text == "Short answer." and edit.reply_markup is None
    assert [e.type for e in edit.entities or []] == ["bold"]


async def test_a_deleted_inline_message_ends_the_job_with_the_answer_kept(app: App) -> None:
    app.session.fail_next(EditMessageText, 400, "Bad Request: MESSAGE_ID_INVALID")
    await app.feed(chosen_inline_result_update(USER, "ask:chat", "q", inline_message_id="im-x"))
    await app.settle()

    assert len(inline_edits(app, "im-x")) == 1 and app.sent(SendMessage) == []
    [job] = await app.jobs.recent(USER, 10)
    assert (job.state, job.result) == (JobState.DELIVERED, "[chat] q")  # for /history


@pytest.mark.parametrize("ending", ["lost", "timeout"])
async def test_a_failure_edits_the_placeholder_into_an_honest_text_without_buttons(
        make_app: AppFactory, ending: str) -> None:
    if ending == "lost":
        app = await make_app()
        app.chatinfo.inject("get_response", Fault.not_found(), times=5)
        said = ("⚠️ The AI service lost this request after it was sent, so it was counted. "
                f"To send it again, ask @{BOT_USERNAME} again.")
    else:
        app = await make_app(policy=replace(FAST_POLLS, max_wait=0.5))
        app.chatinfo.solve_time = 30.0
        said = ("⌛ No answer came in time. The request was sent, so it was counted; to send "
                f"it again, ask @{BOT_USERNAME} again.")
    await app.feed(chosen_inline_result_update(USER, "ask:chat", "doomed",
                                               inline_message_id="im-fail"))
    await app.settle()

    *late, edit = inline_edits(app, "im-fail")
    if ending == "timeout":  # told it is late first, then (FAST_POLLS' late wait) timed out
        [notice] = late
        assert (notice.text or "").startswith("⏳ No answer yet after 1 second.")
    assert (edit.text, edit.reply_markup) == (said, None)
    [job] = await app.jobs.recent(USER, 10)
    assert job.state is JobState.FAILED and job.told


@pytest.mark.parametrize(("who", "reason"), [("banned", "You cannot use this bot."),
                                             ("not allowed", "Sorry, this bot is private.")])
async def test_a_refused_user_gets_one_not_available_result_and_spends_nothing(
        make_app: AppFactory, who: str, reason: str) -> None:
    app = await make_app(allowed_user_ids=frozenset({1}) if who == "not allowed" else
                         frozenset())
    users: UserRepo = app.dp["users"]
    await users.ensure(USER)
    await users.set_banned(USER, who == "banned")

    await app.feed(inline_query_update(USER, "let me in"))
    [result] = offered(app)
    assert (result.title, result.description) == ("Not available", reason)
    assert result.reply_markup is None
    # Choosing an "ask" result anyway (an old cached one) is dropped before any handler.
    await app.feed(chosen_inline_result_update(USER, "ask:chat", "let me in",
                                               inline_message_id="im-banned"))
    await app.settle()
    assert app.sent(EditMessageText) == [] and await app.jobs.recent(USER, 10) == []
    assert app.chatinfo.calls["create_request"] == 0 and await used_today(app, USER) == 0


async def test_empty_and_too_long_queries_get_a_hint_and_choosing_it_asks_nothing(
        app: App) -> None:
    await app.feed(inline_query_update(USER, "   "))
    [empty] = offered(app)
    assert empty.id == "hint:empty" and f"@{BOT_USERNAME}" in (empty.description or "")

    long_query = "why " * 64  # 256 characters: Telegram's most, so it may have been cut
    await app.feed(inline_query_update(USER, long_query))
    [too_long] = offered(app)
    assert too_long.title == "Too long for inline mode"
    assert too_long.description == (
        "A question asked inline must be shorter than 256 characters. Send longer text in "
        "our private chat (up to 5000 characters).")
    button = app.sent(AnswerInlineQuery)[-1].button
    assert button is not None and button.start_parameter == "inline"

    for result_id, query in (("hint:empty", ""), ("hint:long", long_query),
                             ("ask:chat", long_query), ("ask:nonsense", "hi")):
        await app.feed(chosen_inline_result_update(USER, result_id, query,
                                                   inline_message_id=f"im-{result_id}"))
    await app.settle()
    assert app.sent(EditMessageText) == [] and await app.jobs.recent(USER, 10) == []
    assert app.chatinfo.calls["create_request"] == 0 and await used_today(app, USER) == 0


async def test_a_chosen_result_without_its_message_id_spends_nothing(app: App) -> None:
    # Telegram names the posted message only for a result with a keyboard.
    await app.feed(chosen_inline_result_update(USER, "ask:chat", "hi"))
    await app.settle()
    assert await app.jobs.recent(USER, 10) == [] and await used_today(app, USER) == 0


async def test_russian_users_get_russian_results(app: App) -> None:
    await app.feed(inline_query_update(USER, "кот", language_code="ru"))
    assert offered(app)[0].title == "Спросить в режиме 💬 Чат"


async def test_help_tells_about_inline_mode_once_it_is_turned_on(app: App) -> None:
    await app.feed(message_update(USER, "/help"))
    assert (f"<b>In any chat</b>\nType @{BOT_USERNAME} and your question, then choose how I "
            "should answer") in app.sent(SendMessage)[-1].text
