"""What the user sees of a job, in the job's own language: its placeholder, the texts
while it waits (its place in the queue, a check of the balance, a late answer), "typing…",
its answer rendered in parts with its buttons, and why it ended, with a retry button where
one helps. And the quota a job gives back when it ends without being sent.

The runner (bot/jobs/runner.py) decides what happens to a job and stores it; it asks the
view to show it.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext, suppress

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError, TelegramForbiddenError
from aiogram.types import InlineKeyboardMarkup
from aiogram.utils.deep_linking import create_start_link
from aiogram.utils.i18n import I18n
from aiogram.utils.i18n import gettext as _

from bot.jobs.create_queue import FairQueue
from bot.jobs.failures import Failure, failure_text
from bot.telegram.commands import answer_payload
from bot.telegram.delivery import Delivery
from bot.telegram.i18n import in_locale
from bot.telegram.indicators import WaitingIndicators
from bot.telegram.keyboards import answer_keyboard, full_answer_keyboard, retry_keyboard
from bot.telegram.render import Part, first_part, render
from bot.telegram.throttle import Pressure, in_background
from bot.telegram.wording import (
    duration_text,
    held_text,
    placeholder_text,
    queue_text,
    sending_text,
    settling_text,
    waiting_text,
)
from storage.jobs import Job, JobState
from storage.quotas import QuotaRepo

Keyboard = InlineKeyboardMarkup | None
# A new job this far from its create_request gets a placeholder whatever the pressure:
# the user should see that it was received, and where it waits.
VISIBLE_WAIT = 10.0


class JobView:
    def __init__(self, bot: Bot, delivery: Delivery, indicators: WaitingIndicators,
                 queues: Sequence[FairQueue], quotas: QuotaRepo, i18n: I18n, *, max_wait: float,
                 late_wait: float) -> None:
        self._bot = bot
        self._delivery = delivery
        self._indicators = indicators
        self._queues = queues  # one per key of the pool
        self._quotas = quotas
        self._i18n = i18n
        self._max_wait = max_wait
        self._late_wait = late_wait
        self._unsent: set[int] = set()  # going through the create queue: not "working" yet
        # Placeholders showing the queue (or a check of a failed create): once the request
        # is sent, they switch to "working" at once, not at their next progress edit.
        self._unsent_shown: set[int] = set()
        # New jobs without a placeholder, until their create_request is over (the runner
        # then posts none); a restart forgets them, and shows a placeholder after all.
        self._one_message: set[int] = set()

    # --- while the job waits -----------------------------------------------------------

    async def placeholder(self, job: Job) -> int:
        """Post the "⏳" placeholder; its message id (raises TelegramForbiddenError if the
        user blocked the bot)."""
        with self._locale(job.locale):
            text = self.first_text(job.id, job.user_id)
        with self.placeholder_turn():
            return await self._delivery.placeholder(job, text)

    def one_message(self, job_id: int, user_id: int) -> bool:
        """Whether a new job goes without a placeholder, its answer one new message that
        replies to the user's: Telegram's budget is short (`Pressure.ONE_MESSAGE`), and a
        placeholder and its edit would take two. Not if the job is to wait for its
        create_request: a placeholder shows that it waits. Decided when it is first asked.
        """
        if job_id in self._one_message:
            return True
        pressure = self._delivery.pressure
        if pressure.level is not Pressure.ONE_MESSAGE or self._waits(user_id):
            return False
        self._one_message.add(job_id)
        pressure.degrade(Pressure.ONE_MESSAGE)
        return True

    def first_text(self, job_id: int, user_id: int) -> str:
        """A new placeholder's text (in the current locale): while Telegram's budget is
        short, its progress edits are left out, so it says at once if the job waits."""
        pressure = self._delivery.pressure
        if pressure.level >= Pressure.HOLD:
            pressure.degrade(Pressure.HOLD)
            self._unsent_shown.add(job_id)
            return held_text()
        if pressure.level >= Pressure.QUIET and self._waits(user_id):
            queue, ahead, wait = self._soonest(user_id)
            self._unsent_shown.add(job_id)
            return queue_text(ahead, wait, held=queue.held)
        return placeholder_text()

    def placeholder_turn(self) -> AbstractContextManager[None]:
        """Where a new placeholder queues for Telegram's budget: while new create_requests
        are held, behind the answers (it takes only the room they leave), or it would
        deepen the backlog that holds them."""
        if self._delivery.pressure.level >= Pressure.HOLD:
            return in_background()
        return nullcontext()

    def _waits(self, user_id: int) -> bool:
        """Whether a job of this user's queued now waits long for its create_request."""
        queue, _, wait = self._soonest(user_id)
        return queue.held or wait >= VISIBLE_WAIT

    def _soonest(self, user_id: int) -> tuple[FairQueue, int, float]:
        """The key's create queue where a job of this user's would be sent soonest (a held
        one last), with the requests ahead of it there and the seconds until it is."""
        waits = []
        for queue in self._queues:
            ahead = queue.ahead_of_new(user_id)
            waits.append((queue.held, queue.eta(ahead), ahead, queue))
        _, wait, ahead, queue = min(waits, key=lambda entry: entry[:2])
        return queue, ahead, wait

    def watch(self, job: Job) -> None:
        """"typing…" and the waiting time on the placeholder, until `forget`."""
        self._indicators.watch(job)

    def sending(self, job_id: int) -> None:
        """The job goes through the create queue: its placeholder says where it is."""
        self._unsent.add(job_id)

    def sent(self, job: Job) -> None:
        """create_request is over; a placeholder that showed the queue (or a check) says
        "working" at the next tick, not at its next due edit."""
        self._unsent.discard(job.id)
        self._one_message.discard(job.id)  # the runner posts no placeholder after this
        if job.id in self._unsent_shown and job.state is JobState.PENDING:
            self._indicators.hurry(job.id)
        self._unsent_shown.discard(job.id)

    async def forget(self, job_id: int) -> None:
        """No more waiting signals for the job; none lands after this."""
        await self._indicators.forget(job_id)

    async def queue_position(self, job: Job, queue: FairQueue) -> None:
        """The job's place in its key's create queue, unless it is sent at once."""
        ahead = queue.ahead_of_new(job.user_id)
        seconds = queue.eta(ahead)
        if not ahead and seconds < 1 and not queue.held:
            return  # sent at once: the first text is still true
        with self._locale(job.locale):
            text = queue_text(ahead, seconds, held=queue.held)
        self._unsent_shown.add(job.id)
        await self._delivery.progress(job.chat_id, job.placeholder_id, text)

    def progress_text(self, job_id: int, locale: str, seconds: float, *,
                      settling: bool) -> str:
        """The placeholder while the job waits: where its request is until create_request
        succeeded, then how long it has been worked on. `settling`: its failed create waits
        for the balance to tell whether it counted."""
        with self._locale(locale):
            if (text := self._unsent_text(job_id, settling)) is None:
                return waiting_text(seconds)
        self._unsent_shown.add(job_id)
        return text

    def _unsent_text(self, job_id: int, settling: bool) -> str | None:
        if settling:
            return settling_text()
        if job_id not in self._unsent:
            return None
        place = next(((queue, ahead) for queue in self._queues
                      if (ahead := queue.ahead(job_id)) is not None), None)
        if place is None:
            return sending_text()  # its create_request is on its way
        queue, ahead = place
        wait = queue.eta(ahead)
        if not ahead and wait < 1 and not queue.held:
            return sending_text()  # about to be sent
        return queue_text(ahead, wait, held=queue.held)

    async def settling(self, job: Job) -> None:
        """The service did not confirm the request, and the balance is being checked."""
        if job.placeholder_id is None and not job.inline:
            return
        self._unsent_shown.add(job.id)
        with self._locale(job.locale):
            text = settling_text()
        with suppress(TelegramAPIError):  # best effort: the outcome is shown either way
            await self._delivery.show(job, Part(text))

    async def late(self, job: Job) -> None:
        """No answer within MAX_WAIT_SECONDS: it is still awaited, and posted if it comes."""
        with self._locale(job.locale):
            text = _("⏳ No answer yet after {wait}. The request was sent, so it was counted, "
                     "and its answer will still appear here if it comes within {late}. "
                     "/cancel stops waiting for it.").format(
                         wait=duration_text(self._max_wait), late=duration_text(self._late_wait))
        with suppress(TelegramForbiddenError):  # the answer, if it comes, finds out
            await self._delivery.show(job, Part(text))

    async def stopped_waiting(self, job: Job) -> None:
        """/cancel of a sent request: it counted, and its answer goes to /history."""
        await self._indicators.forget(job.id)
        with self._locale(job.locale):
            text = _("✖️ Stopped waiting. The request had already been sent, so it was "
                     "counted; its answer will be kept in /history.")
        with suppress(TelegramAPIError):  # best effort: the answer is what matters
            await self._delivery.show(job, Part(text))

    # --- the answer ----------------------------------------------------------------------

    async def answer(self, job: Job) -> tuple[list[Part], Keyboard]:
        """The job's answer as the messages it is shown in, and the buttons under the last.

        An inline message gets no parts after it and no buttons that act on the answer
        (they would need a chat): a long answer is cut, with a link to all of it.
        """
        assert job.result is not None
        with self._locale(job.locale):
            if not job.inline:
                return render(job.result) or [Part(_("(empty answer)"))], answer_keyboard(job.id)
            part, cut = first_part(job.result)
            link = await create_start_link(self._bot, answer_payload(job.id)) if cut else None
            return [part or Part(_("(empty answer)"))], full_answer_keyboard(link) if link else None

    async def show_part(self, job: Job, index: int, part: Part, keyboard: Keyboard) -> None:
        """The answer's part `index`: the first in place of the placeholder, the others as
        new messages (raises TelegramForbiddenError if the user blocked the bot)."""
        if index == 0:
            await self._delivery.show(job, part, keyboard)
        else:
            await self._delivery.send(job, part, keyboard)

    # --- the end -------------------------------------------------------------------------

    async def failure(self, job: Job, failure: Failure) -> None:
        """Why the job ended, whether it counted, and a retry button where one helps."""
        inline_bot = ((await self._bot.me()).username or "") if job.inline else None
        with self._locale(job.locale):
            text = failure_text(failure, sent=job.upstream_id is not None, inline_bot=inline_bot)
            keyboard = retry_keyboard(job.id) if failure.retryable and not job.inline else None
        with suppress(TelegramForbiddenError):
            await self._delivery.show(job, Part(text), keyboard)

    async def refund(self, job: Job) -> None:
        """Give back the request the job took from its user's daily quota: it ended without
        being sent, so it spent nothing."""
        if job.quota_day is not None:
            await self._quotas.give_back(job.user_id, job.quota_day)

    def _locale(self, locale: str) -> AbstractContextManager[None]:
        return in_locale(self._i18n, locale)
