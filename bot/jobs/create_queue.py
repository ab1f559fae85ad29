"""Sharing the create_request budget among users: round-robin, so one heavy user cannot
starve the others, and holding back after a 429, or while answers wait for Telegram's
message budget."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from contextlib import suppress

from bot.services import Worker
from bot.telegram.throttle import PressureGauge
from bot.upstream.limiter import SlidingWindowLimiter

log = logging.getLogger(__name__)


class FairQueue(Worker):
    """create_request slots, handed out round-robin between users as the budget allows.

    After a 429 (which spent nothing) the queue honours the server's window: it grants
    nothing until the oldest call of the last window has left it, then lets one call
    through as a probe and grants no other until that one's outcome is known (`sent`).
    It grants nothing while Telegram's `pressure` holds new requests (an answer bought
    then would wait for Telegram), nor while `pause`d. At most `in_flight` granted calls
    are out at once: the fewer creates are out together, the fewer a crash leaves
    undecided and the more often the balance can tell which failed one spent.

    While `careful()` (a failed create awaits the balance's verdict), at most
    `careful_in_flight` calls out for less than `slow_after` seconds: each then reports
    its balance apart from the others', so a unit a failed one did or did not spend is
    not mixed up with theirs; a slow call, whose reply places its balance loosely
    anyway, does not hold the rest. Then the cap grows back by one with each call that
    ends: a backlog is not let out all at once, where a few failures together could not
    be told apart again. But a backlog that one at a time would take `lift_after`
    seconds or more to get through, at the pace of the latest calls (each counted for
    at most `slow_after`), lifts the cap at once: its users would wait too long, or
    until told "busy".
    """

    name = "create-queue"
    PROBE_TIMEOUT = 60.0  # longer than a create call with its retries
    # The start's probe only tells a 429 storm, whose reply is quick: a slow create is
    # not left to hold everyone.
    START_PROBE_TIMEOUT = 2.0
    TURNS_KEPT = 16  # the latest calls whose pace says how fast a backlog goes, one by one

    def __init__(self, limiter: SlidingWindowLimiter, in_flight: int = 1_000_000,
                 pressure: PressureGauge | None = None, *,
                 careful: Callable[[], bool] = lambda: False, careful_in_flight: int = 1,
                 slow_after: float = 3.0, lift_after: float = 10.0) -> None:
        self._limiter = limiter
        self._in_flight = in_flight
        self._careful = careful
        self._careful_in_flight = careful_in_flight
        self._slow_after = slow_after
        self._cap = careful_in_flight  # calls out at once now, but for slow ones
        self._lift_after = lift_after
        self._granted_at: dict[int, float] = {}  # job id -> when its call was granted
        # How long the latest calls held their turn, from grant to `sent`.
        self._turns: deque[float] = deque(maxlen=self.TURNS_KEPT)
        self._call_ended = asyncio.Event()
        self._pressure = pressure or PressureGauge()
        # user -> their waiting (job id, ticket)s, users in round-robin order
        self._waiting: OrderedDict[int, deque[tuple[int, asyncio.Future[None]]]] = OrderedDict()
        self._changed = asyncio.Event()
        self._hold_until = 0.0  # monotonic; no grant before it
        # A 429 came, or we just started (the server's window may be full, of our calls
        # before a restart or another program's): the next grant is a probe, so meeting a
        # 429 storm costs one 429, not a burst of them.
        self._need_probe = True
        self._probe_timeout = self.START_PROBE_TIMEOUT
        self._probe_job: int | None = None  # the probe out now
        self._probe_done = asyncio.Event()
        self._open = asyncio.Event()  # cleared while paused
        self._open.set()
        self.outstanding = 0  # granted calls whose outcome (`sent`) is not known yet

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def ahead_of_new(self, user_id: int) -> int:
        """About how many requests go before one this user queues now (round-robin)."""
        mine = len(self._waiting.get(user_id, ()))
        return mine + sum(min(len(queue), mine + 1)
                          for uid, queue in self._waiting.items() if uid != user_id)

    def ahead(self, job_id: int) -> int | None:
        """How many queued requests go before this job's (None: it is not waiting)."""
        users = list(self._waiting.items())
        for place, (_user, queue) in enumerate(users):
            round_ = next((n for n, (key, _) in enumerate(queue) if key == job_id), None)
            if round_ is None:
                continue
            # Every earlier round of everyone, then this round's turns of the users before.
            return sum(min(len(q), round_) for _, q in users) + sum(
                1 for _, q in users[:place] if len(q) > round_)
        return None

    @property
    def held(self) -> bool:
        """Whether a 429 (or a pause) holds the queue now."""
        return self._hold_until > time.monotonic() or not self._open.is_set()

    def eta(self, ahead: int) -> float:
        """Seconds until the request with `ahead` others before it is sent, at the budget."""
        held = max(0.0, self._hold_until - time.monotonic(), self._limiter.delay())
        return held + ahead * self._limiter.period / self._limiter.limit

    async def turn(self, user_id: int, job_id: int, *, first: bool = False) -> None:
        """Wait until this user's request may be sent; the budget slot is taken for it.

        The caller then reports how the call went with `sent`. `first`: ahead of the
        user's other waiting requests (one sent before and queued again).
        """
        ticket = asyncio.get_running_loop().create_future()
        queue = self._waiting.setdefault(user_id, deque())
        (queue.appendleft if first else queue.append)((job_id, ticket))
        self._changed.set()
        try:
            await ticket
        except asyncio.CancelledError:
            if ticket.done() and not ticket.cancelled():
                self.give_back(job_id)  # granted, but the call will not be made
            else:
                self._forget(user_id, ticket)
            raise

    def give_back(self, job_id: int) -> None:
        """A granted slot whose call will not be made."""
        self._limiter.release_last()
        self._granted_at.pop(job_id, None)  # no call: nothing to learn of the pace
        self.sent(job_id, rate_limited=False)

    def pause(self) -> None:
        """Grant nothing until `resume` (the creates of the key are to wait)."""
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    def sent(self, job_id: int, *, rate_limited: bool) -> None:
        """How the granted call went: a 429 holds the queue for the server's window."""
        self.outstanding -= 1
        granted = self._granted_at.pop(job_id, None)
        if granted is not None:
            self._turns.append(min(time.monotonic() - granted, self._slow_after))
        self._cap = min(self._cap + 1, self._in_flight)
        self._call_ended.set()
        if rate_limited:
            self._hold_until = max(self._hold_until, self._limiter.window_clears_at())
            self._need_probe = True
            self._probe_timeout = self.PROBE_TIMEOUT
            log.warning("create_request got 429: holding new requests for %.0f s",
                        self._hold_until - time.monotonic())
        if job_id == self._probe_job:
            self._probe_job = None
            self._probe_done.set()

    def _forget(self, user_id: int, ticket: asyncio.Future[None]) -> None:
        queue = self._waiting.get(user_id)
        entry = next((item for item in queue or () if item[1] is ticket), None)
        if queue is not None and entry is not None:
            queue.remove(entry)
            if not queue:
                del self._waiting[user_id]

    async def _serve(self) -> None:
        while True:
            if not self._waiting:
                self._changed.clear()
                await self._changed.wait()
                continue
            await self._open.wait()
            if (wait := self._until_room()) != 0.0:
                self._call_ended.clear()
                with suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._call_ended.wait()
                continue
            await self._pressure.creates_may_go()
            if (held := self._hold_until - time.monotonic()) > 0:
                await asyncio.sleep(held)
                continue  # the hold may have grown, or a pause come, meanwhile
            await self._limiter.acquire()
            if self.held:  # a pause or a 429 came while waiting for the budget
                self._limiter.release_last()
                continue
            if not await self._grant():
                self._limiter.release_last()  # everyone waiting went away meanwhile

    def _until_room(self) -> float | None:
        """Seconds until another call may go out (0: now; None: once a call ends)."""
        if self.outstanding >= self._in_flight:
            return None
        if self._one_by_one_takes() >= self._lift_after:  # getting through it comes first
            self._cap = self._in_flight
        elif self._careful():
            self._cap = self._careful_in_flight
        now = time.monotonic()
        recent = sorted(at for at in self._granted_at.values() if now - at < self._slow_after)
        if len(recent) < self._cap:
            return 0.0
        return recent[-self._cap] + self._slow_after - now

    def _one_by_one_takes(self) -> float:
        """Seconds the requests waiting would take one at a time, at the latest pace."""
        if not self._turns:
            return 0.0
        return self.queued * sum(self._turns) / len(self._turns)

    async def _grant(self) -> bool:
        """Hand the slot just taken to the next request; after a 429, as a probe whose
        outcome is awaited before anything else is granted."""
        entry = self._next_ticket()
        if entry is None:
            return False
        job_id, ticket = entry
        self.outstanding += 1
        self._granted_at[job_id] = time.monotonic()
        if not self._need_probe:
            ticket.set_result(None)
            return True
        self._need_probe, self._probe_job = False, job_id
        self._probe_done.clear()
        ticket.set_result(None)
        with suppress(TimeoutError):  # a caller that never reports cannot stall us
            async with asyncio.timeout(self._probe_timeout):
                await self._probe_done.wait()
        self._probe_job = None
        return True

    def _next_ticket(self) -> tuple[int, asyncio.Future[None]] | None:
        while self._waiting:
            user_id, queue = self._waiting.popitem(last=False)
            job_id, ticket = queue.popleft()
            if queue:
                self._waiting[user_id] = queue  # to the back of the round
            if not ticket.done():
                return job_id, ticket
        return None
