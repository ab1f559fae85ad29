"""What people actually do, through the real Dispatcher: private data stays private in
groups, admin commands mean what they say, /help tells everything, and texts read as a
native speaker would write them (every count through ngettext)."""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiogram import Dispatcher
from aiogram.methods import (
    AnswerCallbackQuery,
    EditMessageText,
    SendMessage,
)
from aiogram.types import InlineKeyboardMarkup, Message, Update

from bot.jobs.admission import QuotaClock, Refusal
from bot.jobs.submit import refusal_text, until
from bot.telegram.access import AccessMiddleware
from bot.telegram.commands import COMMANDS_BY_NAME
from bot.telegram.i18n import make_i18n
from storage.jobs import JobRepo
from storage.users import Profile
from tests.botprocess import REPO
from tests.fakes.mocked_bot import BOT_USERNAME, mocked_bot
from tests.fakes.telegram_api import callback_update, message_update
from tests.harness import App, AppFactory, wait_until

ADMIN = 900
GROUP = -100
BOT_LINK = f"https://t.me/{BOT_USERNAME}?start="


def texts(app: App, to: int | None = None) -> list[str]:
    return [m.text for m in app.sent(SendMessage) if to is None or m.chat_id == to]


def in_group(user_id: int, text: str, **opts: Any) -> dict[str, Any]:
    return message_update(user_id, text, chat_id=GROUP, chat_type="supergroup", **opts)


def link_of(markup: object) -> str | None:
    assert isinstance(markup, InlineKeyboardMarkup)
    return markup.inline_keyboard[0][0].url


def history_buttons(app: App) -> list[str]:
    [markup] = [m.reply_markup for m in app.sent(SendMessage)
                if m.text.startswith("Your last requests:")][-1:]
    assert isinstance(markup, InlineKeyboardMarkup)
    return [str(b.callback_data) for row in markup.inline_keyboard for b in row]


# -- privacy -----------------------------------------------------------------------------------

async def test_personal_commands_in_a_group_point_to_the_private_chat(make_app: AppFactory,
                                                                       ) -> None:
    app = await make_app(admin_ids=str(ADMIN))
    await app.feed(message_update(1, "my password is hunter2"))
    await app.settle()
    before = len(app.sent(SendMessage))

    for command in ("/history", "/me", f"/cancel@{BOT_USERNAME}"):
        await app.feed(in_group(1, command))

    replies = app.sent(SendMessage)[before:]
    assert [r.chat_id for r in replies] == [GROUP] * 3
    assert [r.text for r in replies] == [
        "I answer /history only in our private chat, so nothing personal shows up here.",
        "I answer /me only in our private chat, so nothing personal shows up here.",
        "I take /cancel only in our private chat: please send it there."]
    # /cancel changes something: its link only opens the chat, it never runs it.
    assert [link_of(r.reply_markup) for r in replies] == [
        BOT_LINK + "history", BOT_LINK + "me", BOT_LINK.removesuffix("?start=")]
    assert not any("hunter2" in r.text or "quota" in r.text.lower() for r in replies)


async def test_admin_commands_in_a_group_show_nothing_there(make_app: AppFactory) -> None:
    app = await make_app(admin_ids=str(ADMIN))
    await app.feed(message_update(1, "secret text"))
    await app.settle()
    before = len(app.sent(SendMessage))

    for command in ("/units", "/stats", "/user 1", "/quota 1 unlimited", "/ban 1"):
        await app.feed(in_group(ADMIN, command))
    await app.feed(in_group(2, f"/units@{BOT_USERNAME}"))  # not an admin: looks unknown
    await app.feed(in_group(2, "/units"))  # a bare command of no concern to a non-admin

    replies = app.sent(SendMessage)[before:]
    in_the_group = [r for r in replies if r.chat_id == GROUP]
    assert [r.text for r in in_the_group] == [
        "I don't know this command. Send /help to see what I can do."]  # the non-admin's
    told = [r for r in replies if r.chat_id == ADMIN]  # the admin hears of it in private
    assert told[0].text == ("You sent /units in a group. I answer admin commands only here, "
                            "so the group sees nothing of them.")
    assert [link_of(r.reply_markup) for r in told] == [
        BOT_LINK + "units", BOT_LINK + "stats", BOT_LINK + "user-1",
        BOT_LINK.removesuffix("?start="), BOT_LINK.removesuffix("?start=")]
    assert app.chatinfo.calls["units"] <= 1  # the start-up refresh at most; none for /units
    assert not await app.db.execute_fetchall("SELECT 1 FROM users WHERE banned = 1")


async def test_a_link_never_runs_a_command_that_changes_something(make_app: AppFactory,
                                                                   ) -> None:
    app = await make_app(admin_ids=str(ADMIN))
    await app.feed(message_update(7, "hello"))
    await app.settle()
    for payload in ("ban-7", "quota-7-unlimited", "grant-7-999", "unban-7", "cancel"):
        await app.feed(message_update(ADMIN, f"/start {payload}"))  # a link posted anywhere

    assert all(t.startswith("👋 Hi!") for t in texts(app, to=ADMIN))  # only greeted
    assert not await app.db.execute_fetchall(
        "SELECT 1 FROM users WHERE banned = 1 OR daily_quota IS NOT NULL")
    assert not await app.db.execute_fetchall("SELECT 1 FROM usage WHERE granted > 0")


async def test_the_link_runs_the_command_in_the_private_chat(make_app: AppFactory) -> None:
    app = await make_app(admin_ids=str(ADMIN))
    await app.feed(message_update(1, "what is a monad"))
    await app.settle()

    await app.feed(message_update(1, "/start history"))
    await app.feed(message_update(ADMIN, "/start user-1"))
    await app.feed(message_update(1, "/start user-1"))  # not an admin: the card stays hidden

    assert texts(app, to=1)[-2].startswith("Your last requests:\n#")
    assert texts(app, to=1)[-2].endswith("what is a monad")
    assert texts(app, to=ADMIN)[-1].startswith("👤 User 1\n")
    assert texts(app, to=1)[-1] == "I don't know this command. Send /help to see what I can do."


async def test_a_history_button_never_posts_a_private_answer_into_a_group(app: App) -> None:
    await app.feed(message_update(1, "private question"))
    await app.settle()
    await app.feed(message_update(1, "/history"))
    [button] = history_buttons(app)
    before = len(app.sent(SendMessage))

    await app.feed(callback_update(1, button, message_id=5, chat_id=GROUP))
    await app.feed(callback_update(2, button, message_id=5, chat_id=1))  # someone else
    assert len(app.sent(SendMessage)) == before
    alerts = [(a.text, a.show_alert) for a in app.sent(AnswerCallbackQuery)]
    assert alerts == [("I show this answer only in our private chat.", True),
                      ("This button belongs to someone else's request.", True)]

    await app.feed(callback_update(1, button, message_id=5, chat_id=1))
    [shown] = app.sent(SendMessage)[before:]
    assert (shown.chat_id, shown.text) == (1, "[chat] private question")


async def test_a_group_answer_is_shown_again_in_that_group(app: App) -> None:
    await app.feed(in_group(1, f"@{BOT_USERNAME} group question"))
    await app.settle()
    job = (await app.jobs.recent(1, 1))[0]
    before = len(app.sent(SendMessage))

    await app.feed(callback_update(1, f"hist:{job.id}", message_id=5, chat_id=GROUP))

    [shown] = app.sent(SendMessage)[before:]
    assert (shown.chat_id, shown.text) == (GROUP, "[chat] group question")


async def test_banned_and_unlisted_users_are_quiet_in_groups(make_app: AppFactory) -> None:
    app = await make_app(admin_ids=str(ADMIN), allowed_user_ids=f"1,2,{ADMIN}")
    await app.feed(message_update(ADMIN, "/ban 2"))
    for user in (2, 3):  # banned; not on the list
        await app.feed(in_group(user, "just chatting with friends"))
        for n in range(5):
            await app.feed(in_group(user, f"@{BOT_USERNAME} answer me {n}"))
        await app.feed(in_group(user, "/mode"))

    assert texts(app, to=GROUP) == ["You cannot use this bot.", "Sorry, this bot is private."]
    assert app.chatinfo.calls["create_request"] == 0

    for n in range(10):  # a flood in the private chat gets one refusal a minute
        await app.feed(message_update(2, f"in private {n}"))
    assert texts(app, to=2) == ["You cannot use this bot."]


async def test_two_users_and_an_admin_in_one_group(make_app: AppFactory) -> None:
    app = await make_app(admin_ids=str(ADMIN))
    await app.feed(in_group(1, f"@{BOT_USERNAME} first"))
    await app.feed(in_group(2, f"@{BOT_USERNAME} second"))
    await app.feed(in_group(2, "talking to Ann, not the bot"))
    await app.settle()
    answers = {e.text for e in app.sent(EditMessageText) if e.chat_id == GROUP}
    assert answers == {"[chat] first", "[chat] second"}

    first = (await app.jobs.recent(1, 1))[0]
    await app.feed(callback_update(2, f"ans:r:{first.id}", message_id=first.placeholder_id or 0,
                                   chat_id=GROUP))
    assert app.sent(AnswerCallbackQuery)[-1].text == (
        "This button belongs to someone else's request.")
    await app.feed(in_group(ADMIN, "/stats"))
    assert link_of(app.sent(SendMessage)[-1].reply_markup) == BOT_LINK + "stats"
    assert app.sent(SendMessage)[-1].chat_id == ADMIN  # told in private, not in the group
    assert app.chatinfo.calls["create_request"] == 2


# -- admin commands ----------------------------------------------------------------------------

@pytest.mark.parametrize("user", [17, ADMIN])
async def test_access_refuses_when_no_profile_was_loaded(
        user: int, caplog: pytest.LogCaptureFixture) -> None:
    """The access check reads the profile the locale middleware loads. Wired without it,
    it refuses everyone, admins too, rather than let a banned user through."""
    def dispatcher(*, load_profile: bool) -> Dispatcher:
        dp = Dispatcher()
        if load_profile:
            dp.update.outer_middleware(loads_profile)
        dp.message.outer_middleware(AccessMiddleware(frozenset({ADMIN}), frozenset()))
        dp.message.register(handle)
        return dp

    async def handle(message: Message) -> None:
        handled.append(message.chat.id)

    async def loads_profile(handler: Any, event: Any, data: dict[str, Any]) -> Any:
        data["profile"] = Profile(locale=None, banned=False)
        return await handler(event, data)

    bot, session = mocked_bot()
    handled: list[int] = []
    for load_profile in (True, False):
        update = Update.model_validate({"update_id": 1, **message_update(user, "hi")},
                                       context={"bot": bot})
        await dispatcher(load_profile=load_profile).feed_update(bot, update)

    assert handled == [user]  # only with the profile loaded
    assert session.requests == []  # refused without a word: the bot is miswired
    assert f"no profile for user {user}; refusing the update" in caplog.text


async def test_quota_zero_cuts_off_and_unlimited_and_default_are_spelled_out(
        make_app: AppFactory) -> None:
    app = await make_app(admin_ids=str(ADMIN), daily_quota=2)
    await app.feed(message_update(5, "/start"))
    await app.feed(message_update(ADMIN, "/quota 5 0"))
    await app.feed(message_update(5, "anything"))
    assert texts(app, to=5)[-1] == (
        "🚫 An admin has set your daily quota to 0, so your requests are not sent. Ask an "
        "admin if you think this is a mistake.")
    await app.feed(message_update(5, "/me"))
    assert "Your quota: 0. An admin has stopped your requests." in texts(app, to=5)[-1]

    await app.feed(message_update(ADMIN, "/quota 5 unlimited"))
    await app.feed(message_update(ADMIN, "/user 5"))
    assert texts(app, to=ADMIN)[-1].split("\n")[2] == (
        "Quota: unlimited (set with /quota) · used today: 0 · extra today: 0")
    await app.feed(message_update(5, "/me"))
    assert texts(app, to=5)[-1].split("\n")[1] == (
        "Your quota: unlimited, set for you by an admin.")

    await app.feed(message_update(ADMIN, "/quota 5 default"))
    await app.feed(message_update(ADMIN, "/user 5"))
    assert texts(app, to=ADMIN)[-1].split("\n")[2] == (
        "Quota: 2 a day (DAILY_QUOTA) · used today: 0 · extra today: 0")
    await app.feed(message_update(5, "/me"))
    assert texts(app, to=5)[-1].split("\n")[1:3] == [
        "Your quota: 2 requests a day, the same for everyone.", "2 requests left today."]
    confirmations = [t for t in texts(app, to=ADMIN) if t.startswith("User 5")]
    assert confirmations == ["User 5 is cut off: 0 requests a day.",
                             "User 5 now has an unlimited daily quota.",
                             "User 5 now has the default daily quota (DAILY_QUOTA)."]
    assert app.chatinfo.calls["create_request"] == 0


async def test_daily_quota_zero_in_settings_still_means_unlimited(make_app: AppFactory) -> None:
    app = await make_app(admin_ids=str(ADMIN), daily_quota=0)
    await app.feed(message_update(6, "/me"))
    await app.feed(message_update(ADMIN, "/user 6"))

    assert texts(app, to=6)[-1].split("\n")[1:] == [
        "Your quota: unlimited, the same for everyone."]
    assert texts(app, to=ADMIN)[-1].split("\n")[2].startswith(
        "Quota: unlimited (DAILY_QUOTA=0)")


async def test_a_ban_in_advance_holds_and_admins_cannot_be_banned(make_app: AppFactory) -> None:
    app = await make_app(admin_ids=f"{ADMIN},901")
    await app.feed(message_update(ADMIN, "/ban 777"))
    await app.feed(message_update(ADMIN, "/ban 777"))
    await app.feed(message_update(ADMIN, "/ban 901"))
    await app.feed(message_update(ADMIN, "/user 777"))
    await app.feed(message_update(ADMIN, "/stats"))
    await app.feed(message_update(777, "spam spam spam"))

    assert texts(app, to=ADMIN)[:4] == [
        "User 777 is banned. They have not written yet; the ban holds from their first "
        "message.",
        "User 777 was already banned.",
        "User 901 is an admin, and admins cannot be banned. Remove them from ADMIN_IDS first.",
        "👤 User 777 (has not written yet)\nMode: chat · language: — · banned: yes\n"
        "Quota: 30 a day (DAILY_QUOTA) · used today: 0 · extra today: 0",
    ]
    assert texts(app, to=ADMIN)[4].startswith("👥 Users: 1 ·")  # the admin; 777 never wrote
    assert texts(app, to=777) == ["You cannot use this bot."]
    assert app.chatinfo.calls["create_request"] == 0

    await app.feed(message_update(ADMIN, "/unban 777"))
    await app.feed(message_update(ADMIN, "/unban 777"))
    assert texts(app, to=ADMIN)[-2:] == ["User 777 is no longer banned.",
                                         "User 777 was not banned."]


async def test_units_live_refused_and_unanswered(make_app: AppFactory) -> None:
    app = await make_app(admin_ids=str(ADMIN))
    app.chatinfo.units = 7
    await app.feed(message_update(ADMIN, "/units"))
    assert texts(app, to=ADMIN)[-1].split("\n")[0] == "💰 Balance: 7 units"

    app.chatinfo.keys["test-key"] = "free"
    await app.feed(message_update(ADMIN, "/units"))
    refused = texts(app, to=ADMIN)[-1].split("\n")
    assert refused[:2] == [
        "🛑 The API refused our key: the API needs the Prestige tariff and ours is "
        "“Бесплатный”.", "Last known balance: 7"]

    app.chatinfo.keys.clear()
    app.chatinfo.keys["other"] = "prestige"
    await app.feed(message_update(ADMIN, "/units"))
    assert "the key is wrong or was revoked" in texts(app, to=ADMIN)[-1]

    await app.chatinfo.stop()  # nobody answers at all
    await app.feed(message_update(ADMIN, "/units"))
    assert texts(app, to=ADMIN)[-1].split("\n")[0] == (
        "💰 Balance: 7 (last known; the API did not answer)")


async def spent(app: App, *, at: float, count: int) -> None:
    """`count` jobs that spent a unit at Unix time `at`."""
    jobs = JobRepo(app.db)
    await app.db.execute(
        "INSERT OR IGNORE INTO users (id, first_seen, last_seen) VALUES (50, 1, 1)")
    for _ in range(count):
        job_id = await jobs.add(user_id=50, chat_id=50, source_message_id=None, locale="en",
                                mode="chat", content="old")
        assert job_id is not None
        await jobs.set_upstream(job_id, 1, None)
        await app.db.execute("UPDATE jobs SET created_at = ? WHERE id = ?",
                             (at, job_id))
    await app.db.commit()


async def test_units_averages_over_the_days_with_data(make_app: AppFactory) -> None:
    app = await make_app(admin_ids=str(ADMIN))
    app.chatinfo.units = 100
    clock: QuotaClock = app.dp["clock"]
    await spent(app, at=max(clock.day_start() + 1, time.time() - 60), count=4)
    await app.feed(message_update(ADMIN, "/units"))
    # Less than a day of data: an average, but no forecast yet.
    assert texts(app, to=ADMIN)[-1].split("\n")[3:] == ["Average so far today: 4 a day."]

    await spent(app, at=clock.day_start(days_ago=2) + 3600, count=2)  # 3 local days of data
    await app.feed(message_update(ADMIN, "/units"))
    assert texts(app, to=ADMIN)[-1].split("\n")[3:] == [
        "Average: 2 a day over the last 3 days.",
        "At that rate the balance lasts about 50 more days."]


async def test_alerts_reach_each_admin_in_their_own_language(make_app: AppFactory) -> None:
    app = await make_app(admin_ids=f"{ADMIN},901", low_units_threshold=100)
    await app.feed(message_update(ADMIN, "/help", language_code="ru"))
    await app.feed(message_update(901, "/help", language_code="en"))
    app.chatinfo.units = 50
    await app.feed(message_update(1, "spend one"))
    await app.settle()

    assert texts(app, to=ADMIN)[-1] == "⚠️ Баланс API заканчивается: осталось 49 юнитов."
    assert texts(app, to=901)[-1] == "⚠️ The API unit balance is low: 49 units left."


# -- help --------------------------------------------------------------------------------------

async def test_help_lists_every_command_and_admins_see_theirs(make_app: AppFactory) -> None:
    app = await make_app(admin_ids=str(ADMIN), daily_quota=21)
    await app.feed(message_update(1, "/help"))
    await app.feed(message_update(ADMIN, "/help", language_code="ru"))
    user_help, admin_help = texts(app, to=1)[-1], texts(app, to=ADMIN)[-1]

    for command in ("/mode", "/language", "/me", "/history", "/cancel", "/start", "/help"):
        assert f"\n{command} — " in user_help
    for needle in ("Reply to one of my answers", "🔄", "➡️", "✂️", ".txt", ".md",
                   "Up to 5000 characters", "21 requests a day", "Moscow time",
                   f"@{BOT_USERNAME}"):
        assert needle in user_help
    assert "/units" not in user_help and "Admin" not in user_help
    assert "/quota &lt;id&gt; &lt;n | unlimited | default&gt; — " in admin_help
    await app.feed(message_update(ADMIN, "/help", language_code="en"))
    assert "/user &lt;id&gt; — A user's card" in texts(app, to=ADMIN)[-1]  # no &#x27;
    assert "<b>Команды админа</b>" in admin_help and "21 запрос в день, как и у всех." in admin_help
    assert "по московскому времени" in admin_help
    await app.feed(message_update(1, "/start"))
    assert texts(app, to=1)[-1].startswith("👋 Hi!")  # /start greets; /help is not /start


# -- texts -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("count", "russian"), [
    (1, "1 запрос"), (2, "2 запроса"), (5, "5 запросов"), (21, "21 запрос"),
    (11, "11 запросов"), (22, "22 запроса")])
async def test_russian_counts_take_their_plural_form(make_app: AppFactory, count: int,
                                                     russian: str) -> None:
    app = await make_app(admin_ids=str(ADMIN))
    await app.feed(message_update(7, "/start", language_code="ru"))
    await app.feed(message_update(ADMIN, f"/quota 7 {count}"))
    await app.feed(message_update(7, "/me", language_code="ru"))

    lines = texts(app, to=7)[-1].split("\n")
    assert lines[1] == f"Ваш лимит: {russian} в день, его задал вам админ."
    left = {"запрос": "остался", "запроса": "осталось", "запросов": "осталось"}
    assert lines[2] == f"Сегодня {left[russian.split()[1]]} {russian}."


async def test_character_counts_in_russian_and_english(app: App) -> None:
    await app.feed(message_update(8, "я" * 5001, language_code="ru"))
    await app.feed(message_update(9, "x" * 5001, language_code="en"))

    assert texts(app, to=8)[0] == (
        "В вашем сообщении 5001 символ; обработаны будут только первые 5000.")
    assert texts(app, to=9)[0] == (
        "Your message is 5001 characters long; only the first 5000 will be processed.")


class FixedClock(QuotaClock):
    def __init__(self, zone: str, now: datetime) -> None:
        super().__init__(ZoneInfo(zone))
        self._now = now.replace(tzinfo=self.zone)

    def now(self) -> datetime:
        return self._now


@pytest.mark.parametrize(("minutes", "english", "russian"), [
    (1, "1 minute", "1 минуту"), (61, "1 hour 1 minute", "1 час 1 минуту"),
    (125, "2 hours 5 minutes", "2 часа 5 минут"), (21 * 60 + 22, "21 hours 22 minutes",
                                                   "21 час 22 минуты"),
    (11 * 60, "11 hours", "11 часов")])
def test_waits_are_said_in_words_with_plural_forms(minutes: int, english: str,
                                                   russian: str) -> None:
    clock = FixedClock("Europe/Moscow", datetime(2026, 12, 2, 1, 0))
    moment = clock.now() + timedelta(minutes=minutes)
    i18n = make_i18n()
    with i18n.context(), i18n.use_locale("en"):
        assert until(moment, clock) == english
    with i18n.context(), i18n.use_locale("ru"):
        assert until(moment, clock) == russian


@pytest.mark.parametrize(("zone", "english", "russian"), [
    ("Europe/Moscow", "Moscow time", "по московскому времени"),
    ("Asia/Novosibirsk", "Novosibirsk time", "по новосибирскому времени"),
    ("Asia/Kolkata", "UTC+5:30", "по UTC+5:30"),
    ("America/New_York", "UTC-5", "по UTC-5"),
])
def test_time_zones_are_named_as_people_say_them(zone: str, english: str, russian: str) -> None:
    clock = FixedClock(zone, datetime(2026, 12, 2, 12, 0))
    i18n = make_i18n()
    with i18n.context(), i18n.use_locale("en"):
        assert clock.zone_name() == english
    with i18n.context(), i18n.use_locale("ru"):
        assert clock.zone_name() == russian


async def test_refusals_never_look_like_the_placeholder(make_app: AppFactory) -> None:
    app = await make_app(max_pending_per_user=1, daily_quota=1)
    app.chatinfo.solve_time = lambda mode, content: 60.0 if content == "slow" else 0.05
    await app.feed(message_update(10, "slow", language_code="ru"))
    await app.feed(message_update(10, "second", language_code="ru"))
    await app.feed(message_update(11, "quick"))
    await wait_until(lambda: any(e.text == "[chat] quick" for e in app.sent(EditMessageText)),
                     timeout=10, what="the quick answer")
    await app.feed(message_update(11, "over the quota"))

    pending, over_quota = texts(app, to=10)[-1], texts(app, to=11)[-1]
    assert pending == ("✋ У вас уже 1 запрос в работе. Дождитесь ответа, прежде чем "
                       "отправлять новый; этот не отправлен.")
    assert over_quota.startswith("🚫 You have used all your requests for today, so this one "
                                 "was not sent. New ones arrive at midnight Moscow time, in ")
    assert app.chatinfo.calls["create_request"] == 2


async def test_history_shows_the_users_own_words(app: App) -> None:
    await app.feed(message_update(12, "a poem about rain"))
    await app.settle()
    first = (await app.jobs.recent(12, 1))[0]
    follow_up = message_update(12, "make it sadder")
    follow_up["message"]["reply_to_message"] = {
        "message_id": first.placeholder_id, "date": 0, "chat": {"id": 12, "type": "private"},
        "from": {"id": 42, "is_bot": True, "first_name": "Bot"},
        "text": "**Rain** falls on the *roof*"}
    await app.feed(follow_up)
    await app.settle()
    await app.feed(callback_update(12, f"ans:c:{first.id}", message_id=first.placeholder_id or 0))
    await app.settle()
    await app.feed(message_update(12, "/history"))

    lines = texts(app, to=12)[-1].split("\n")[1:]
    assert [line.split(" ", 5)[-1] for line in lines] == [
        "Continue: a poem about rain", "make it sadder", "a poem about rain"]
    assert not any("Rain" in line or "**" in line for line in lines)
    follow = (await app.jobs.recent(12, 3))[1]
    assert follow.content.startswith("**Rain** falls")  # the context still went upstream


async def test_a_mode_pressed_on_a_keyboard_too_old_to_see_is_marked(app: App) -> None:
    update = callback_update(13, "mode:poems", message_id=77)
    update["callback_query"]["message"] = {"chat": {"id": 13, "type": "private"},
                                           "message_id": 77, "date": 0}
    await app.feed(update)

    [edit] = app.sent(EditMessageText)
    assert (edit.chat_id, edit.message_id) == (13, 77)
    assert edit.text.startswith("Current mode: 🎭 Poems")
    keyboard = edit.reply_markup
    assert isinstance(keyboard, InlineKeyboardMarkup)
    marked = [b.text for row in keyboard.inline_keyboard for b in row if b.text.startswith("✅")]
    assert marked == ["✅ 🎭 Poems"]


async def test_mode_labels_read_clearly_in_russian(app: App) -> None:
    await app.feed(message_update(14, "/mode", language_code="ru"))
    markup = app.sent(SendMessage)[-1].reply_markup
    assert isinstance(markup, InlineKeyboardMarkup)
    labels = [b.text for row in markup.inline_keyboard for b in row]

    assert "📖 Рассказ" in labels and not any("История" in label for label in labels)
    assert "🧾 Выводы по тексту" in labels
    assert not any("." in label for label in labels)  # no abbreviations
    assert max(len(label) for label in labels) <= 22  # two columns on a phone


async def test_an_unreachable_service_is_not_called_busy(app: App) -> None:
    await app.chatinfo.stop()
    await app.feed(message_update(15, "anyone there?"))
    await app.settle()

    assert app.sent(EditMessageText)[-1].text == (
        "⚠️ The AI service cannot be reached right now. Your request was not sent, so nothing "
        "was counted. Tap the button to try again in a few minutes.")
    [job] = await app.jobs.recent(15, 1)
    assert job.error == "unreachable"


async def test_a_long_answer_without_line_breaks_splits_between_words(app: App) -> None:
    words = [f"слово{n}" for n in range(1100)]
    prose = " ".join(f"{word}." if n % 13 == 12 else word for n, word in enumerate(words))
    assert len(prose) > 9000 and "\n" not in prose
    app.chatinfo.answer = lambda mode, content: prose
    await app.feed(message_update(16, "write a lot"))
    await app.settle()

    first = app.sent(EditMessageText)[-1].text
    rest = [m.text for m in app.sent(SendMessage) if m.chat_id == 16][1:]  # after the ⏳
    parts = [first, *rest]
    assert len(parts) == 3
    assert all(len(part.encode("utf-16-le")) // 2 <= 4096 for part in parts)
    assert " ".join(parts) == prose  # nothing lost, and every cut fell between two words
    assert all(part.endswith(".") for part in parts[:-1])  # at a sentence end: one fits


async def test_help_in_a_group_keeps_a_personal_quota_private(make_app: AppFactory) -> None:
    app = await make_app(admin_ids=str(ADMIN), daily_quota=30)
    await app.feed(message_update(ADMIN, "/quota 17 7"))
    await app.feed(in_group(17, "/help"))
    await app.feed(message_update(17, "/help"))

    in_the_group, in_private = texts(app, to=GROUP)[-1], texts(app, to=17)[-1]
    assert "30 requests a day" in in_the_group and "7 requests" not in in_the_group
    assert "7 requests a day" in in_private


def test_readme_commands_table_matches_the_command_registry() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("## Commands"):readme.index("## Run it")]
    rows = [line for line in table.splitlines() if line.startswith("| `/")]
    cells = [re.split(r"(?<!\\)\|", row)[1:3] for row in rows]  # `\|` is a | in a cell
    listed = {name for command, _ in cells for name in re.findall(r"`/([a-z]+)", command)}
    assert listed == set(COMMANDS_BY_NAME)
    for command_cell, who in cells:
        for name in re.findall(r"`/([a-z]+)", command_cell):
            command = COMMANDS_BY_NAME[name]
            assert who.strip() == ("admins" if command.admin else "everyone"), name
            assert ("🔒" in command_cell) == command.private, name


@pytest.mark.parametrize("text", ["   ", "\u200b\u200b", "\u2060\n\t\u200d", f"@{BOT_USERNAME}"])
async def test_a_blank_request_is_not_sent(app: App, text: str) -> None:
    await app.feed(in_group(18, text) if text.startswith("@") else message_update(18, text))

    [reply] = app.sent(SendMessage)
    assert reply.text == ("✋ There is nothing to send: write your request as text, up to 5000 "
                          "characters.")
    assert app.chatinfo.calls["create_request"] == 0
    assert await app.jobs.recent(18, 1) == []


async def test_a_reply_that_adds_nothing_is_not_sent(app: App) -> None:
    await app.feed(message_update(19, "a question"))
    await app.settle()
    [job] = await app.jobs.recent(19, 1)
    blank_reply = message_update(19, " \u200b ")
    blank_reply["message"]["reply_to_message"] = {
        "message_id": job.placeholder_id, "date": 0, "chat": {"id": 19, "type": "private"},
        "from": {"id": 42, "is_bot": True, "first_name": "Bot"}, "text": "[chat] a question"}
    await app.feed(blank_reply)

    assert app.sent(SendMessage)[-1].text.startswith("✋ There is nothing to send")
    assert app.chatinfo.calls["create_request"] == 1


@pytest.mark.parametrize("locale", ["en", "ru"])
def test_every_refusal_fits_a_callback_alert(locale: str) -> None:
    """Buttons show refusals as alerts, which Telegram cuts at 200 characters."""
    clock = FixedClock("Asia/Yekaterinburg", datetime(2026, 12, 2, 0, 1))  # longest wait
    i18n = make_i18n()
    with i18n.context(), i18n.use_locale(locale):
        texts = [refusal_text(refusal, clock, max_pending=22) for refusal in Refusal]
    assert all(len(text) <= 200 for text in texts), max(texts, key=len)


async def test_an_admin_who_never_opened_the_private_chat_is_still_not_answered_in_a_group(
        make_app: AppFactory) -> None:
    app = await make_app(admin_ids=str(ADMIN))
    app.session.fail_next(SendMessage, 403, "Forbidden: bot can't initiate conversation")
    await app.feed(in_group(ADMIN, "/units"))

    assert [m.chat_id for m in app.sent(SendMessage)] == [ADMIN]  # tried in private only
    assert app.sent(AnswerCallbackQuery) == []
