"""/broadcast through the real Dispatcher: compose, preview, confirm or cancel, progress,
stop, who gets it, and the share of Telegram's budget it may use."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Any

from aiogram import Bot
from aiogram.client.session.middlewares.base import NextRequestMiddlewareType
from aiogram.methods import (
    AnswerCallbackQuery,
    CopyMessage,
    EditMessageText,
    SendMessage,
    TelegramMethod,
)
from aiogram.methods.base import Response, TelegramType
from aiogram.types import InlineKeyboardMarkup

from bot.jobs.broadcast import Broadcaster, report_text
from bot.telegram.i18n import make_i18n
from bot.telegram.throttle import TelegramThrottle
from storage.broadcasts import Broadcast, BroadcastRepo, BroadcastState, Tally
from storage.users import UserRepo
from tests.fakes.telegram_api import (
    callback_update,
    message_update,
    photo_update,
    sticker_update,
)
from tests.harness import App, AppFactory, wait_until

ADMIN = 900
UNKNOWN_COMMAND = "I don't know this command. Send /help to see what I can do."
PROMPT = "📣 Send me the message to broadcast"
GROUP = -100777
PROGRESS = (r"📣 Broadcast: sending…\n✅ Sent to (\d+) users?\n🚫 0 users have blocked the bot\n"
            r"⚠️ Could not be sent to 0 users\n⏳ (\d+) users left\n⏱ About (\d+) seconds to go\.")


def buttons(markup: object) -> list[tuple[str, str | None]]:
    assert isinstance(markup, InlineKeyboardMarkup)
    return [(b.text, b.callback_data) for row in markup.inline_keyboard for b in row]


def texts(app: App, to: int | None = None) -> list[str]:
    return [m.text for m in app.sent(SendMessage) if to is None or m.chat_id == to]


def copies(app: App, previews: int = 1) -> list[int]:
    """Whom the broadcast was copied to: the copies after the admin's `previews`."""
    return [m.chat_id for m in app.sent(CopyMessage)][previews:]


def reports(app: App) -> list[EditMessageText]:
    """Edits of the progress message (the confirmation, message 5004 in these tests)."""
    return [e for e in app.session.sent(EditMessageText) if e.message_id == 5004]


def preview(app: App) -> CopyMessage:
    return app.session.sent(CopyMessage)[0]


async def users(app: App, *user_ids: int) -> None:
    repo = UserRepo(app.db)
    for user_id in user_ids:
        await repo.touch(user_id, "en")


async def compose(app: App, update: dict[str, Any]) -> tuple[SendMessage, int]:
    """/broadcast, then `update` as the message: the preview's count message and its id."""
    await app.feed(message_update(ADMIN, "/broadcast"))
    await app.feed(update)
    confirm = app.sent(SendMessage)[-1]
    [(_, send), _] = buttons(confirm.reply_markup)
    assert send is not None
    return confirm, int(send.split(":")[2])


async def confirm_and_finish(app: App, broadcast_id: int) -> EditMessageText:
    await app.feed(callback_update(ADMIN, f"bc:s:{broadcast_id}", message_id=5000))
    repo = BroadcastRepo(app.db)
    await wait_until(lambda: not app.dp["broadcaster"].sending, timeout=10,
                     what="the broadcast ends")
    broadcast = await repo.get(broadcast_id)
    assert broadcast is not None and broadcast.state is BroadcastState.DONE
    return [e for e in app.session.sent(EditMessageText) if e.message_id == 5000][-1]


async def test_preview_then_send_copies_it_once_to_each_reachable_user(
        make_app: AppFactory) -> None:
    app = await make_app(admin_ids=str(ADMIN))
    await users(app, 11, 12, 13, 14, 15)
    await UserRepo(app.db).set_banned(14, True)
    await UserRepo(app.db).ensure(16)  # known to the admins, never wrote: not a recipient

    await app.feed(message_update(ADMIN, "/broadcast"))
    [prompt] = texts(app, ADMIN)
    assert prompt.startswith(PROMPT)
    announcement = message_update(ADMIN, "New modes are here!", message_id=321)
    announcement["message"]["entities"] = [{"type": "bold", "offset": 0, "length": 9}]
    await app.feed(announcement)

    assert (preview(app).chat_id, preview(app).from_chat_id, preview(app).message_id) == (
        ADMIN, ADMIN, 321)
    confirm = app.sent(SendMessage)[-1]
    # 11, 12, 13, 15 and the admin, who wrote too; not the banned one, nor the silent one.
    assert confirm.text.startswith("☝️ This is how it looks. It goes to 5 users.")
    [(send_label, send), (cancel_label, _)] = buttons(confirm.reply_markup)
    assert (send_label, cancel_label) == ("📣 Send", "✖️ Cancel")
    assert send is not None

    app.session.fail_next(CopyMessage, 403, "Forbidden: bot was blocked by the user")
    report = await confirm_and_finish(app, int(send.split(":")[2]))

    assert app.sent(AnswerCallbackQuery)[-1].text == "Sending…"
    assert sorted(copies(app)) == [11, 12, 13, 15, ADMIN]  # 11 got a 403
    assert all((c.from_chat_id, c.message_id) == (ADMIN, 321) for c in app.sent(CopyMessage))
    assert report.text == ("📣 Broadcast finished.\n✅ Sent to 4 users\n"
                           "🚫 1 user has blocked the bot\n⚠️ Could not be sent to 0 users")
    assert report.reply_markup is None
    row = await app.db.fetch_one("SELECT blocked_at FROM users WHERE id = 11")
    assert row is not None and row["blocked_at"] is not None


async def test_the_next_broadcast_skips_who_blocked_the_bot_until_they_write_again(
        make_app: AppFactory) -> None:
    app = await make_app(admin_ids=str(ADMIN))
    await users(app, 21, 22)
    _, first = await compose(app, message_update(ADMIN, "one"))
    app.session.fail_next(CopyMessage, 403, "Forbidden: bot was blocked by the user")
    await confirm_and_finish(app, first)  # to 21 first: the lowest id
    assert await BroadcastRepo(app.db).reachable_users() == [22, ADMIN]

    confirm, _ = await compose(app, message_update(ADMIN, "two"))
    assert confirm.text.startswith("☝️ This is how it looks. It goes to 2 users.")
    await app.feed(message_update(21, "/start"))  # unblocked: Telegram sends /start
    confirm, _ = await compose(app, message_update(ADMIN, "three"))
    assert confirm.text.startswith("☝️ This is how it looks. It goes to 3 users.")


def membership_update(user_id: int, status: str) -> dict[str, Any]:
    """Telegram's word that a user blocked the bot ("kicked") or unblocked it ("member")."""
    user = {"id": user_id, "is_bot": False, "first_name": "Ann"}
    bot = {"id": 42, "is_bot": True, "first_name": "Bot"}
    old = "member" if status == "kicked" else "kicked"
    return {"my_chat_member": {
        "chat": {"id": user_id, "type": "private", "first_name": "Ann"}, "from": user,
        "date": int(time.time()),
        "old_chat_member": {"status": old, "user": bot, **({"until_date": 0} if old == "kicked"
                                                           else {})},
        "new_chat_member": {"status": status, "user": bot, **({"until_date": 0}
                                                              if status == "kicked" else {})}}}


async def test_telegram_saying_a_user_blocked_the_bot_spares_the_broadcast_a_403(
        make_app: AppFactory) -> None:
    app = await make_app(admin_ids=str(ADMIN))
    await users(app, 61, 62)
    await app.feed(membership_update(61, "kicked"))
    assert await BroadcastRepo(app.db).reachable_users() == [62]
    await app.feed(membership_update(61, "member"))
    assert await BroadcastRepo(app.db).reachable_users() == [61, 62]
    assert app.session.requests == []  # nothing said to anyone


async def test_cancel_sends_nothing_and_the_send_button_is_then_dead(
        make_app: AppFactory) -> None:
    app = await make_app(admin_ids=str(ADMIN))
    await users(app, 31)
    confirm, broadcast_id = await compose(app, photo_update(ADMIN, caption="look"))
    assert confirm.text.startswith("☝️ This is how it looks. It goes to 2 users.")

    await app.feed(callback_update(ADMIN, f"bc:c:{broadcast_id}", message_id=5001))
    assert app.sent(AnswerCallbackQuery)[-1].text == "Broadcast cancelled. Nothing was sent."
    assert app.sent(EditMessageText)[-1].text == "Broadcast cancelled. Nothing was sent."
    await app.feed(callback_update(ADMIN, f"bc:s:{broadcast_id}", message_id=5001))
    ack = app.sent(AnswerCallbackQuery)[-1]
    assert (ack.text, ack.show_alert) == ("This broadcast was already sent or cancelled.", True)
    assert len(app.sent(CopyMessage)) == 1  # the preview only


async def test_cancel_while_composing_and_a_later_message_is_a_question(
        make_app: AppFactory) -> None:
    app = await make_app(admin_ids=str(ADMIN))
    await app.feed(message_update(ADMIN, "/broadcast"))
    [(label, data)] = buttons(app.sent(SendMessage)[-1].reply_markup)
    assert label == "✖️ Cancel" and data is not None
    await app.feed(callback_update(ADMIN, data, message_id=5002))
    await app.feed(message_update(ADMIN, "what is a black hole"))
    await app.settle()

    assert app.sent(CopyMessage) == []
    assert app.sent(SendMessage)[-1].text == "⏳ Got it, one moment…"  # a question's placeholder


async def test_what_cannot_be_broadcast_is_refused_and_commands_stay_commands(
        make_app: AppFactory) -> None:
    app = await make_app(admin_ids=str(ADMIN))
    await app.feed(message_update(ADMIN, "/broadcast"))
    await app.feed(sticker_update(ADMIN))
    assert texts(app, ADMIN)[-1].startswith("I can broadcast a text, or one photo, video, "
                                            "animation or document with its caption")
    album = photo_update(ADMIN, caption="one of three")
    album["message"]["media_group_id"] = "album-1"
    await app.feed(album)
    assert texts(app, ADMIN)[-1].startswith("I can broadcast a text")
    await app.feed(message_update(ADMIN, "/stats"))
    assert texts(app, ADMIN)[-1].startswith("👥 Users:")
    assert app.sent(CopyMessage) == []

    await app.feed(message_update(ADMIN, "the real one"))  # still waiting for its message
    assert len(app.sent(CopyMessage)) == 1
    assert texts(app, ADMIN)[-1].startswith("☝️ This is how it looks.")


async def test_a_restart_between_preview_and_send_keeps_the_draft(make_app: AppFactory) -> None:
    first = await make_app(admin_ids=str(ADMIN))
    await users(first, 41)
    _, broadcast_id = await compose(first, message_update(ADMIN, "hello all"))
    second = await make_app(admin_ids=str(ADMIN))  # the same database, a new process

    report = await confirm_and_finish(second, broadcast_id)

    assert sorted(copies(second, previews=0)) == [41, ADMIN]
    assert (report.text or "").startswith("📣 Broadcast finished.\n✅ Sent to 2 users")


async def test_non_admins_get_the_unknown_command_reply(make_app: AppFactory) -> None:
    app = await make_app(admin_ids=str(ADMIN))
    await app.feed(message_update(51, "/broadcast"))
    await app.feed(callback_update(51, "bc:s:1", message_id=5003))

    assert texts(app) == [UNKNOWN_COMMAND]
    assert app.sent(AnswerCallbackQuery)[-1].text == "This button is no longer valid."
    assert await app.db.fetch_one("SELECT 1 FROM broadcasts") is None


async def test_in_a_group_the_admin_is_told_in_private(make_app: AppFactory) -> None:
    app = await make_app(admin_ids=str(ADMIN))
    await app.feed(message_update(ADMIN, "/broadcast", chat_id=GROUP, chat_type="supergroup"))

    [told] = app.sent(SendMessage)
    assert told.chat_id == ADMIN
    assert told.text.startswith("You sent /broadcast in a group.")
    assert await app.db.fetch_one("SELECT 1 FROM broadcasts") is None


@dataclass
class Call:
    method: str
    chat_id: Any
    asked: float  # when the bot made the call
    sent: float | None = None  # when the throttle let it go


class Timeline:
    """Session middlewares around the throttle: when each Bot API call was made and when
    it went out, so a wait the throttle imposed shows apart from the handlers' own time."""

    def __init__(self) -> None:
        self.calls: dict[int, Call] = {}

    async def made(self, make_request: NextRequestMiddlewareType[TelegramType], bot: Bot,
                   method: TelegramMethod[TelegramType]) -> Response[TelegramType]:
        self.calls[id(method)] = Call(type(method).__name__, getattr(method, "chat_id", None),
                                      time.monotonic())
        return await make_request(bot, method)

    async def went_out(self, make_request: NextRequestMiddlewareType[TelegramType], bot: Bot,
                       method: TelegramMethod[TelegramType]) -> Response[TelegramType]:
        self.calls[id(method)].sent = time.monotonic()
        return await make_request(bot, method)

    def of(self, method: str, chats: range | None = None) -> list[Call]:
        return [call for call in self.calls.values() if call.method == method
                and (chats is None or call.chat_id in chats)]


async def broadcasting_app(make_app: AppFactory, recipients: int) -> tuple[App, Timeline, int]:
    """An app whose session keeps Telegram's pace (30 a second, a third for broadcasts),
    with a broadcast to `recipients` users started."""
    app = await make_app(admin_ids=str(ADMIN))
    timeline = Timeline()
    app.bot.session.middleware(timeline.made)  # the first is the outermost
    app.bot.session.middleware(TelegramThrottle(30, 1 / 3))
    app.bot.session.middleware(timeline.went_out)
    await users(app, *range(1000, 1000 + recipients - 1))
    broadcaster: Broadcaster = app.dp["broadcaster"]
    broadcaster.progress_every = 0.3
    _, broadcast_id = await compose(app, message_update(ADMIN, "news"))
    await app.feed(callback_update(ADMIN, f"bc:s:{broadcast_id}", message_id=5004))
    return app, timeline, broadcast_id


async def test_progress_is_edited_and_stop_ends_it_with_the_report_kept(
        make_app: AppFactory) -> None:
    app, _, broadcast_id = await broadcasting_app(make_app, 200)
    await wait_until(lambda: len(reports(app)) >= 2, timeout=10, what="two progress edits")
    first, second = reports(app)[:2]
    assert buttons(first.reply_markup) == [("⏹ Stop", f"bc:x:{broadcast_id}")]
    for report in (first, second):
        shown = re.fullmatch(PROGRESS, report.text or "")
        assert shown, report.text
        sent, left, eta = map(int, shown.groups())
        assert sent + left == 200
        # A copy every 0.1 s (a third of 30 a second): the ETA is the rest at that pace.
        assert left / 10 - 2 <= eta <= left / 10 + 2

    await app.feed(callback_update(ADMIN, f"bc:x:{broadcast_id}", message_id=5004))
    assert app.sent(AnswerCallbackQuery)[-1].text == "Stopping: the copy on its way is the last."
    await wait_until(lambda: not app.dp["broadcaster"].sending, timeout=5, what="the stop")
    sent = len(copies(app))
    await asyncio.sleep(0.3)
    assert len(copies(app)) == sent < 60  # nothing after the stop, far from all 200
    report = reports(app)[-1]
    assert report.text == (f"📣 Broadcast stopped.\n✅ Sent to {sent} users\n"
                           "🚫 0 users have blocked the bot\n⚠️ Could not be sent to 0 users\n"
                           f"⏹ Not sent to {200 - sent} users")
    assert report.reply_markup is None
    await app.feed(callback_update(ADMIN, f"bc:x:{broadcast_id}", message_id=5004))
    assert app.sent(AnswerCallbackQuery)[-1].text == "This broadcast is no longer being sent."
    await app.feed(message_update(ADMIN, "/broadcast"))  # the next one may begin
    assert texts(app, ADMIN)[-1].startswith(PROMPT)


async def test_a_second_broadcast_waits_for_the_first(make_app: AppFactory) -> None:
    app = await make_app(admin_ids=f"{ADMIN},{ADMIN + 1}")
    app.bot.session.middleware(TelegramThrottle(30, 1 / 3))
    await users(app, *range(1000, 1050))
    _, first = await compose(app, message_update(ADMIN, "news"))
    # Another admin prepared one meanwhile: both tap Send at once, one broadcast starts.
    await app.feed(message_update(ADMIN + 1, "/broadcast"))
    await app.feed(message_update(ADMIN + 1, "other news"))
    second = first + 1
    await asyncio.gather(
        app.feed(callback_update(ADMIN, f"bc:s:{first}", message_id=5005)),
        app.feed(callback_update(ADMIN + 1, f"bc:s:{second}", message_id=5006)))

    acks = sorted(str(ack.text) for ack in app.sent(AnswerCallbackQuery))
    assert acks == ["A broadcast is being sent now. Wait for it to finish, or stop it with ⏹ "
                    "under its progress.", "Sending…"]
    await app.feed(message_update(ADMIN, "/broadcast"))
    assert texts(app, ADMIN)[-1].startswith("A broadcast is being sent now.")
    repo = BroadcastRepo(app.db)
    for broadcast_id in (first, second):
        await app.dp["broadcaster"].request_stop(broadcast_id)
    states = [(await repo.get(broadcast_id)).state  # type: ignore[union-attr]
              for broadcast_id in (first, second)]
    assert sorted(states) == [BroadcastState.DRAFT, BroadcastState.STOPPED]


async def test_answers_keep_flowing_while_a_broadcast_takes_its_share(
        make_app: AppFactory) -> None:
    app, timeline, broadcast_id = await broadcasting_app(make_app, 200)
    await wait_until(lambda: len(app.sent(CopyMessage)) >= 20, timeout=10, what="copies")

    # Ten users ask at once: twenty messages (placeholders and answers) in a second or so.
    askers = range(2000, 2010)
    await asyncio.gather(*(app.feed(message_update(user, "a question")) for user in askers))
    await app.settle()
    placeholders = timeline.of("SendMessage", askers)
    answers = timeline.of("EditMessageText", askers)
    assert len(placeholders) == len(answers) == 10
    # The throttle let each placeholder go at once, as with no broadcast; an answer waited
    # at most for its chat's one message a second (the placeholder was its first).
    assert all(call.sent is not None for call in placeholders + answers)
    assert max(call.sent - call.asked for call in placeholders if call.sent) < 0.05
    assert max(call.sent - call.asked for call in answers if call.sent) < 1.05

    await wait_until(lambda: len(app.sent(CopyMessage)) >= 50, timeout=10, what="copies")
    copied = sorted(call.sent for call in timeline.of("CopyMessage") if call.sent)[1:]
    # A third of 30 a second, answers or not (the first is the preview).
    assert (len(copied) - 1) / (copied[-1] - copied[0]) <= 10.5
    await app.dp["broadcaster"].request_stop(broadcast_id)


def test_the_report_in_russian_counts_in_all_three_plural_forms() -> None:
    i18n = make_i18n()
    broadcast = Broadcast(id=1, admin_id=ADMIN, locale="ru", state=BroadcastState.SENDING,
                          from_chat_id=ADMIN, message_id=1, report_id=2, reason=None,
                          created_at=0.0, started_at=0.0)
    with i18n.context(), i18n.use_locale("ru"):
        text = report_text(broadcast, Tally(sent=21, blocked=2, failed=5, left=1), eta=90)
    assert text == ("📣 Рассылка: отправляю…\n✅ Отправлено 21 пользователю\n"
                    "🚫 2 пользователя заблокировали бота\n⚠️ Не удалось отправить 5 пользователям\n"
                    "⏳ Остался 1 пользователь\n⏱ Ждать ещё примерно 2 минуты.")


async def test_recipients_of_a_broadcast_a_month_old_are_forgotten_at_the_next(
        make_app: AppFactory) -> None:
    app = await make_app(admin_ids=str(ADMIN))
    await users(app, 71)
    _, old = await compose(app, message_update(ADMIN, "old news"))
    await confirm_and_finish(app, old)
    await app.db.execute("UPDATE broadcasts SET finished_at = finished_at - 31 * 86400")
    await app.db.commit()
    _, new = await compose(app, message_update(ADMIN, "news"))
    await confirm_and_finish(app, new)

    rows = await app.db.execute_fetchall(
        "SELECT broadcast_id, count(*) FROM broadcast_recipients GROUP BY broadcast_id")
    assert [tuple(row) for row in rows] == [(new, 2)]


async def test_a_429_is_waited_out_and_the_same_user_tried_again(make_app: AppFactory) -> None:
    app = await make_app(admin_ids=str(ADMIN))
    await users(app, 81, 82)
    _, broadcast_id = await compose(app, message_update(ADMIN, "news"))
    app.session.fail_next(CopyMessage, 429, "Too Many Requests: retry after 1", retry_after=1)
    started = time.monotonic()
    report = await confirm_and_finish(app, broadcast_id)

    assert time.monotonic() - started >= 1
    assert copies(app) == [81, 81, 82, ADMIN]  # 81 refused once, then sent
    assert (report.text or "").startswith("📣 Broadcast finished.\n✅ Sent to 3 users\n")


async def test_a_deleted_message_stops_the_broadcast_and_says_why(make_app: AppFactory) -> None:
    app = await make_app(admin_ids=str(ADMIN))
    await users(app, 91, 92)
    _, broadcast_id = await compose(app, message_update(ADMIN, "news"))
    app.session.fail_next(CopyMessage, 400, "Bad Request: message to copy not found")
    await app.feed(callback_update(ADMIN, f"bc:s:{broadcast_id}", message_id=5000))
    await wait_until(lambda: not app.dp["broadcaster"].sending, timeout=10, what="the end")

    report = [e for e in app.session.sent(EditMessageText) if e.message_id == 5000][-1]
    assert report.text == ("📣 Broadcast stopped: the message to copy was deleted from this "
                           "chat.\n✅ Sent to 0 users\n🚫 0 users have blocked the bot\n"
                           "⚠️ Could not be sent to 0 users\n⏹ Not sent to 3 users")
    assert copies(app) == [91]  # the one that failed; no other was tried
