"""/broadcast: an admin's message to every user, previewed and confirmed before it goes.

Only ADMIN_IDS reach it, and only in the private chat (in a group the privacy rule tells the
admin in private; anyone else gets the unknown-command reply). Each step is stored
(storage/broadcasts.py), so a restart between them changes nothing: after /broadcast the
admin's next message (within COMPOSE_MINUTES) is the one to broadcast, and the buttons
under its preview still work. The sending itself is bot/jobs/broadcast.py's.
"""

from __future__ import annotations

import time

from aiogram import Bot, F, Router
from aiogram.enums import ChatMemberStatus, ChatType, ContentType
from aiogram.filters import Filter
from aiogram.types import CallbackQuery, ChatMemberUpdated, Message
from aiogram.utils.i18n import gettext as _
from aiogram.utils.i18n import ngettext

from bot.jobs.broadcast import Broadcaster, Busy
from bot.telegram.commands import Commands
from bot.telegram.keyboards import (
    BroadcastAction,
    BroadcastCallback,
    broadcast_cancel_keyboard,
    broadcast_confirm_keyboard,
)
from bot.telegram.retries import with_retries
from storage.broadcasts import Broadcast, BroadcastRepo

COMPOSE_MINUTES = 30  # a message later than this after /broadcast is a message like any other
BROADCASTABLE = frozenset({ContentType.TEXT, ContentType.PHOTO, ContentType.DOCUMENT,
                           ContentType.VIDEO, ContentType.ANIMATION})


async def begin(message: Message, broadcasts: BroadcastRepo, broadcaster: Broadcaster,
                locale: str) -> None:
    assert message.from_user is not None
    if broadcaster.sending:
        await message.answer(busy_text())
        return
    broadcast_id = await broadcasts.compose(message.from_user.id, locale)
    await message.answer(
        _("📣 Send me the message to broadcast: a text (its formatting is kept), or a photo, "
          "video or document with a caption. You can also forward one here. You will see a "
          "preview and the number of recipients before anything is sent."),
        reply_markup=broadcast_cancel_keyboard(broadcast_id))


def busy_text() -> str:
    return _("A broadcast is being sent now. Wait for it to finish, or stop it with ⏹ under "
             "its progress.")


class Composing(Filter):
    """The admin's message after /broadcast; gives the handler `draft`."""

    async def __call__(self, message: Message,
                       broadcasts: BroadcastRepo) -> bool | dict[str, Broadcast]:
        if message.from_user is None:
            return False
        since = time.time() - COMPOSE_MINUTES * 60
        draft = await broadcasts.composing(message.from_user.id, since)
        return {"draft": draft} if draft else False


async def take_message(message: Message, draft: Broadcast, broadcasts: BroadcastRepo,
                       broadcaster: Broadcaster, bot: Bot) -> None:
    if message.media_group_id is not None or message.content_type not in BROADCASTABLE:
        await message.answer(_("I can broadcast a text, or one photo, video, animation or "
                               "document with its caption; not an album or other kinds of "
                               "message. Send one of those, or tap ✖️ Cancel."))
        return
    if not await broadcasts.set_message(draft.id, message.chat.id, message.message_id):
        return  # cancelled meanwhile
    # The preview is a copy made exactly as every user's will be.
    await with_retries(lambda: bot.copy_message(message.chat.id, message.chat.id,
                                                message.message_id))
    count = await broadcaster.recipients()
    await message.answer(
        ngettext("☝️ This is how it looks. It goes to {count} user. Keep the message in this "
                 "chat until the broadcast ends: it is copied from here.",
                 "☝️ This is how it looks. It goes to {count} users. Keep the message in this "
                 "chat until the broadcast ends: it is copied from here.",
                 count).format(count=count),
        reply_markup=broadcast_confirm_keyboard(draft.id))


async def send(query: CallbackQuery, callback_data: BroadcastCallback,
               broadcaster: Broadcaster) -> None:
    if not isinstance(query.message, Message):
        await query.answer(_("This button is no longer valid."), show_alert=True)
        return
    try:
        started = await broadcaster.begin(callback_data.broadcast_id, query.message.message_id)
    except Busy:
        await query.answer(busy_text(), show_alert=True)
        return
    if started is None:
        await query.answer(_("This broadcast was already sent or cancelled."), show_alert=True)
        return
    await query.answer(_("Sending…"))


async def cancel(query: CallbackQuery, callback_data: BroadcastCallback,
                 broadcasts: BroadcastRepo) -> None:
    if not await broadcasts.cancel(callback_data.broadcast_id):
        await query.answer(_("This broadcast was already sent or cancelled."), show_alert=True)
        return
    text = _("Broadcast cancelled. Nothing was sent.")
    await query.answer(text)
    if isinstance(query.message, Message):
        await query.message.edit_text(text, reply_markup=None)


async def stop(query: CallbackQuery, callback_data: BroadcastCallback,
               broadcaster: Broadcaster) -> None:
    if await broadcaster.request_stop(callback_data.broadcast_id):
        await query.answer(_("Stopping: the copy on its way is the last."))
    else:
        await query.answer(_("This broadcast is no longer being sent."), show_alert=True)


async def membership(update: ChatMemberUpdated, broadcasts: BroadcastRepo) -> None:
    """Telegram tells when a user blocks the bot (kicked) and unblocks it (member again),
    so a broadcast need not try to learn it from a 403."""
    blocked = update.new_chat_member.status == ChatMemberStatus.KICKED
    await broadcasts.set_blocked(update.from_user.id, blocked)


def make_router(admin_ids: frozenset[int]) -> Router:
    router = Router(name="broadcast")
    router.message.filter(F.from_user.id.in_(admin_ids), F.chat.type == ChatType.PRIVATE)
    router.callback_query.filter(F.from_user.id.in_(admin_ids))
    router.message.register(begin, Commands.broadcast.filter())
    # A command is a command, also while a broadcast waits for its message.
    router.message.register(take_message, ~F.text.startswith("/"), Composing())
    router.callback_query.register(
        send, BroadcastCallback.filter(F.action == BroadcastAction.SEND))
    router.callback_query.register(
        cancel, BroadcastCallback.filter(F.action == BroadcastAction.CANCEL))
    router.callback_query.register(
        stop, BroadcastCallback.filter(F.action == BroadcastAction.STOP))
    router.my_chat_member.register(membership, F.chat.type == ChatType.PRIVATE)
    return router
