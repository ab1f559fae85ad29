"""Broadcasts: an admin's message copied (copyMessage) to every reachable user, in the
background, with the progress edited into one message in the admin's chat.

- **Its own share of Telegram's budget.** Copies are sent `in_background()`: at most
  BROADCAST_SHARE of the per-bot rate, and only what answers leave (bot/telegram/throttle.py).
- **One copy in flight at a time.** Each recipient is stored as "sending" before its
  copyMessage and as sent, blocked or failed after it. A crash (SIGKILL, power cut) in
  between leaves it "sending", and the next start sends it again: Telegram may have
  delivered the first copy, and the Bot API cannot tell, so that one user may see it
  twice. With one copy in flight, that is at most one duplicate per crash. A stop by
  SIGTERM lets the copy in flight finish and be recorded, so a deploy makes none.
- **Telegram's word is kept:** a 429 is waited out (retry_after) and the same recipient
  tried again; a 403 (blocked, deactivated, never started the bot) marks the user, whom
  later broadcasts skip until they write again; network and server errors are retried a
  few times, then the recipient counts as failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from aiogram import Bot
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.utils.i18n import I18n, ngettext
from aiogram.utils.i18n import gettext as _

from bot.jobs import crashpoints
from bot.telegram.keyboards import broadcast_stop_keyboard
from bot.telegram.retries import with_retries
from bot.telegram.throttle import in_background
from bot.telegram.wording import duration_text
from storage.broadcasts import (
    Broadcast,
    BroadcastRepo,
    BroadcastState,
    RecipientState,
    StopReason,
    Tally,
)

log = logging.getLogger(__name__)

PAGE = 200  # recipients read at a time
PROGRESS_EVERY = 3.0  # seconds between two edits of the progress message
ATTEMPTS = 4  # network or server errors for one recipient before it counts as failed
SHUTDOWN_GRACE = 2.0  # for the copy in flight when the bot stops
# How Telegram says the admin's message is gone: nothing is left to copy.
SOURCE_GONE = ("message to copy not found", "message_id_invalid")


class SourceGone(Exception):
    """The admin's message was deleted; no copy can be made any more."""


class Busy(Exception):
    """Another broadcast is being sent; one runs at a time."""


class Broadcaster:
    def __init__(self, bot: Bot, repo: BroadcastRepo, i18n: I18n, *, rate: float,
                 audience: frozenset[int] | None = None,
                 progress_every: float = PROGRESS_EVERY) -> None:
        """`rate`: copies a second the throttle allows at most (for the first ETA);
        `audience`: the only users who may get it (the whitelist and the admins)."""
        self._bot = bot
        self._repo = repo
        self._i18n = i18n
        self._rate = rate
        self._audience = audience
        self.progress_every = progress_every
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._wake: dict[int, asyncio.Event] = {}  # set by a stop: ends a wait at once
        self._closing = False
        self._beginning = asyncio.Lock()  # two admins' Send at once: one wins

    @property
    def sending(self) -> bool:
        return bool(self._tasks)

    async def recipients(self) -> int:
        """How many would get a broadcast confirmed now."""
        return len(await self._repo.reachable_users(self._audience))

    async def resume(self) -> None:
        """Carry on the broadcasts a stop or a crash interrupted."""
        for broadcast in await self._repo.sending():
            if interrupted := await self._repo.interrupted(broadcast.id):
                log.warning("broadcast %s: %d recipient(s) were being sent it at the crash "
                            "and get it again; they may see it twice", broadcast.id,
                            len(interrupted))
            log.info("broadcast %s resumes", broadcast.id)
            self._start(broadcast)

    async def begin(self, broadcast_id: int, report_id: int) -> int | None:
        """Start sending a draft, its progress shown in message `report_id` of the admin's
        chat; how many it goes to, or None if it was no longer a draft. Busy if another
        broadcast is being sent."""
        async with self._beginning:
            if self.sending:
                raise Busy
            recipients = await self._repo.reachable_users(self._audience)
            if not await self._repo.start(broadcast_id, recipients, report_id):
                return None
            broadcast = await self._repo.get(broadcast_id)
            assert broadcast is not None
            log.info("broadcast %s starts: %d recipient(s)", broadcast_id, len(recipients))
            self._start(broadcast)
        return len(recipients)

    async def request_stop(self, broadcast_id: int) -> bool:
        """The admin's ⏹: the copy in flight finishes, no other starts. False if it was
        not being sent."""
        stopped = await self._repo.stop(broadcast_id, StopReason.ADMIN)
        if stopped:
            log.info("broadcast %s stopped by an admin", broadcast_id)
        if wake := self._wake.get(broadcast_id):
            wake.set()
        return stopped

    async def stop(self) -> None:
        """At shutdown: the copies in flight finish; the broadcasts resume at the next start."""
        self._closing = True
        for wake in self._wake.values():
            wake.set()
        tasks = list(self._tasks.values())
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE)
            for task in late:  # its recipient stays "sending": sent again at the next start
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _start(self, broadcast: Broadcast) -> None:
        self._wake[broadcast.id] = asyncio.Event()
        task = asyncio.create_task(self._run(broadcast), name=f"broadcast-{broadcast.id}")
        self._tasks[broadcast.id] = task
        task.add_done_callback(lambda _: self._done(broadcast.id))

    def _done(self, broadcast_id: int) -> None:
        self._tasks.pop(broadcast_id, None)
        self._wake.pop(broadcast_id, None)

    def _halted(self, broadcast_id: int) -> bool:
        return self._closing or self._wake[broadcast_id].is_set()

    async def _run(self, broadcast: Broadcast) -> None:
        # Its own task: an edit waiting for the admin's chat never holds up the copies.
        reporter = asyncio.create_task(self._report(broadcast),
                                       name=f"broadcast-{broadcast.id}-progress")
        try:
            await self._send_all(broadcast)
        except SourceGone:
            log.warning("broadcast %s stopped: its message was deleted", broadcast.id)
            await self._repo.stop(broadcast.id, StopReason.SOURCE_GONE)
        except Exception:
            log.exception("broadcast %s failed; it resumes at the next start", broadcast.id)
            return
        finally:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
        if self._closing:
            return  # resumes at the next start, where it was
        final = await self._repo.finish(broadcast.id)
        tally = await self._repo.tally(broadcast.id)
        log.info("broadcast %s %s: %s", broadcast.id, final.state, tally)
        await self._show(final, tally, None)

    async def _report(self, broadcast: Broadcast) -> None:
        """The progress, now and every `progress_every` seconds, until cancelled."""
        progress = Progress(await self._repo.tally(broadcast.id), self._rate)
        while True:
            tally = await self._repo.tally(broadcast.id)
            await self._show(broadcast, tally, progress.eta(tally))
            await asyncio.sleep(self.progress_every)

    async def _send_all(self, broadcast: Broadcast) -> None:
        while not self._halted(broadcast.id):
            page = await self._repo.next_recipients(broadcast.id, PAGE)
            if not page:
                return
            for user_id in page:
                if self._halted(broadcast.id):
                    return
                await self._send_one(broadcast, user_id)

    async def _send_one(self, broadcast: Broadcast, user_id: int) -> None:
        await self._repo.mark(broadcast.id, user_id, RecipientState.SENDING)
        try:
            outcome = await self._copy(broadcast, user_id)
        except SourceGone:
            await self._repo.mark(broadcast.id, user_id, RecipientState.QUEUED)
            raise
        if outcome is RecipientState.SENT:
            crashpoints.reach(crashpoints.BROADCAST_AFTER_COPY)
        await self._repo.mark(broadcast.id, user_id, outcome)

    async def _copy(self, broadcast: Broadcast, user_id: int) -> RecipientState:
        """SENT, BLOCKED or FAILED; QUEUED if a stop came during a wait (not sent)."""
        assert broadcast.from_chat_id is not None and broadcast.message_id is not None
        failures = 0
        while True:
            try:
                with in_background():
                    await self._bot.copy_message(chat_id=user_id,
                                                 from_chat_id=broadcast.from_chat_id,
                                                 message_id=broadcast.message_id)
                return RecipientState.SENT
            except TelegramRetryAfter as error:
                log.warning("broadcast %s: telegram asked to wait %ss", broadcast.id,
                            error.retry_after)
                wait: float = error.retry_after
            except TelegramForbiddenError:
                return RecipientState.BLOCKED
            except TelegramBadRequest as error:
                if any(gone in error.message.lower() for gone in SOURCE_GONE):
                    raise SourceGone from None
                log.info("broadcast %s: user %s: %s", broadcast.id, user_id, error.message)
                return RecipientState.FAILED
            except (TelegramNetworkError, TelegramServerError) as error:
                failures += 1
                log.warning("broadcast %s: user %s: %s (attempt %d)", broadcast.id, user_id,
                            type(error).__name__, failures)
                if failures == ATTEMPTS:
                    return RecipientState.FAILED
                wait = 2.0 ** (failures - 1)
            except TelegramAPIError as error:
                log.info("broadcast %s: user %s: %s", broadcast.id, user_id, error.message)
                return RecipientState.FAILED
            if await self._wait(broadcast.id, wait):
                return RecipientState.QUEUED

    async def _wait(self, broadcast_id: int, seconds: float) -> bool:
        """Sleep unless a stop comes first; whether one came."""
        with suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake[broadcast_id].wait()
        return self._halted(broadcast_id)

    async def _show(self, broadcast: Broadcast, tally: Tally, eta: float | None) -> None:
        """Edit the progress message; the final report (no ⏹) is sent anew if it is gone."""
        assert broadcast.report_id is not None
        final = broadcast.state is not BroadcastState.SENDING
        with self._locale(broadcast.locale):
            text = report_text(broadcast, tally, eta)
            keyboard = None if final else broadcast_stop_keyboard(broadcast.id)
        try:
            await with_retries(lambda: self._bot.edit_message_text(
                text, chat_id=broadcast.admin_id, message_id=broadcast.report_id,
                reply_markup=keyboard), attempts=3 if final else 1)
        except TelegramBadRequest as error:
            if "not modified" in error.message:
                return
            log.info("broadcast %s: progress not shown: %s", broadcast.id, error.message)
            if final:
                await self._send_report(broadcast.admin_id, text)
        except TelegramAPIError as error:
            log.info("broadcast %s: progress not shown: %s", broadcast.id,
                     type(error).__name__)

    async def _send_report(self, admin_id: int, text: str) -> None:
        with suppress(TelegramAPIError):
            await with_retries(lambda: self._bot.send_message(admin_id, text))

    @contextmanager
    def _locale(self, locale: str) -> Iterator[None]:
        with self._i18n.context(), self._i18n.use_locale(locale):
            yield


class Progress:
    """How long the rest takes at the pace seen so far."""

    def __init__(self, tally: Tally, rate: float) -> None:
        self._start = time.monotonic()
        self._left_at_start = tally.left
        self._rate = rate  # until there is a pace to go by

    def eta(self, tally: Tally) -> float:
        done = self._left_at_start - tally.left
        elapsed = time.monotonic() - self._start
        rate = done / elapsed if done > 0 and elapsed >= 1 else self._rate
        return tally.left / rate


def report_text(broadcast: Broadcast, tally: Tally, eta: float | None) -> str:
    """The progress message, in the current locale."""
    lines = [_headline(broadcast),
             ngettext("✅ Sent to {count} user", "✅ Sent to {count} users",
                      tally.sent).format(count=tally.sent),
             ngettext("🚫 {count} user has blocked the bot",
                      "🚫 {count} users have blocked the bot",
                      tally.blocked).format(count=tally.blocked),
             ngettext("⚠️ Could not be sent to {count} user",
                      "⚠️ Could not be sent to {count} users",
                      tally.failed).format(count=tally.failed)]
    if broadcast.state is BroadcastState.SENDING:
        lines.append(ngettext("⏳ {count} user left", "⏳ {count} users left",
                              tally.left).format(count=tally.left))
        if eta is not None and tally.left:
            lines.append(_("⏱ About {wait} to go.").format(wait=duration_text(eta)))
    elif tally.left:
        lines.append(ngettext("⏹ Not sent to {count} user", "⏹ Not sent to {count} users",
                              tally.left).format(count=tally.left))
    return "\n".join(lines)


def _headline(broadcast: Broadcast) -> str:
    if broadcast.state is BroadcastState.SENDING:
        return _("📣 Broadcast: sending…")
    if broadcast.state is BroadcastState.DONE:
        return _("📣 Broadcast finished.")
    if broadcast.reason == StopReason.SOURCE_GONE:
        return _("📣 Broadcast stopped: the message to copy was deleted from this chat.")
    return _("📣 Broadcast stopped.")
