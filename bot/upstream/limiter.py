"""A rate limiter that holds in *every* window, not just on average.

A leaky or token bucket (aiolimiter's AsyncLimiter, for one) lets a full burst through
and then the steady rate, so a 60-second window straddling the burst can see almost
twice the limit. The upstream counts calls per minute, so we keep the times of the
last `limit` calls and let a new one go only when the oldest has left the window.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

LEARN_AFTER_429S = 3
# 429s are taken as the server's real limit only when they are at least this share of its
# replies in the window. A limit lower than ours refuses every call past it, so its 429s
# are a large share at once; 429s scattered among many answered calls (a flaky proxy,
# another program's burst) are not a limit, and lowering ours for them only starves us.
LEARN_SHARE = 0.1


class SlidingWindowLimiter:
    def __init__(
        self,
        limit: int,
        period: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if limit <= 0:
            raise ValueError("limit must be positive")
        self.configured = limit  # what the settings (the API's documentation) allow
        self.limit = limit  # what the server is found to allow: lowered by its 429s
        # The server's replies in the current window (True for a 429), oldest first.
        self._replies: deque[tuple[float, bool]] = deque()
        self._refused = 0  # the 429s among them
        self._recalled: deque[float] = deque()  # a previous run's calls still in the window
        # Of the answers in the window, when each came and how many calls the window had
        # let through with it: only those no later answer matched, so the first is the most.
        self._peaks: deque[tuple[float, int]] = deque()
        self._lowered_at = self._raised_at = float("-inf")
        self._lowered_from: int | None = None  # the limit before 429s began to lower it
        self.period = period
        self._clock = clock
        self._sleep = sleep
        self._stamps: deque[float] = deque(maxlen=limit)
        # asyncio.Lock wakes waiters in FIFO order, so callers are served first come first.
        self._lock = asyncio.Lock()

    def delay(self) -> float:
        """Seconds until a call would be allowed (0 when one is allowed now)."""
        if len(self._stamps) < self.limit:
            return 0.0
        return max(0.0, self._stamps[-self.limit] + self.period - self._clock())

    def answered(self) -> None:
        """The server replied to a call with anything but 429."""
        self._record(refused=False)

    def rate_limited(self) -> bool:
        """The server said 429 to a call we allowed. Three in a window, making up at
        least `LEARN_SHARE` of its replies, after it answered at least three, mean it
        allows fewer calls than we thought:
        our limit drops to the calls of the window it did not refuse (and climbs back
        slowly in `acquire`). Whether it dropped now.

        A 429 met with clearly fewer calls let through in the window than an earlier
        answer saw is no limit of ours: it is another program's share of the key, or a
        storm. It lowers nothing, and undoes what the 429s before it lowered."""
        now = self._record(refused=True)
        if self._refused_below_answered():
            if self._lowered_from is not None:
                self.limit, self._lowered_from = self._lowered_from, None
            return False
        if not self._refusals_show_a_limit():
            return False
        allowed = max(1, self.in_use() - self._refused)
        if allowed >= self.limit:
            return False
        if self._lowered_from is None:
            self._lowered_from = self.limit
        self.limit = allowed
        self._lowered_at = now
        return True

    def _record(self, *, refused: bool) -> float:
        now = self._clock()
        self._forget_before(now - self.period)
        self._replies.append((now, refused))
        self._refused += refused
        if not refused:
            let_through = self._let_through()
            while self._peaks and self._peaks[-1][1] <= let_through:
                self._peaks.pop()
            self._peaks.append((now, let_through))
        return now

    def _let_through(self) -> int:
        """The calls of the window the server let through, as far as we know: those it
        answered, and a previous run's (most of which it answered)."""
        return len(self._replies) - self._refused + len(self._recalled)

    def _refused_below_answered(self) -> bool:
        """A server at a limit of its own answers a call only while it has let fewer than
        the limit through in the window, and refuses one only once it has let as many:
        a refusal never sees fewer let through than an answer in the same window saw."""
        # Our window is a little longer than the server's, so an answer may have seen a
        # few more: only clearly fewer count.
        return bool(self._peaks) and \
            self._peaks[0][1] * (1 - LEARN_SHARE) - LEARN_AFTER_429S > self._let_through()

    def _refusals_show_a_limit(self) -> bool:
        """A limit lets some calls through and refuses those past it; a server refusing
        everything (a storm of 429s, say after our restart) shows no limit to learn."""
        answered = len(self._replies) - self._refused
        return (answered >= LEARN_AFTER_429S
                and self._refused >= max(LEARN_AFTER_429S, LEARN_SHARE * len(self._replies)))

    def _forget_before(self, cutoff: float) -> None:
        while self._replies and self._replies[0][0] <= cutoff:
            self._refused -= self._replies.popleft()[1]
        while self._recalled and self._recalled[0] <= cutoff:
            self._recalled.popleft()
        while self._peaks and self._peaks[0][0] <= cutoff:
            self._peaks.popleft()

    def _climb(self) -> None:
        """A whole window without learning a lower limit, and with 429s too few to teach
        one: win back a tenth of the way to the configured limit (at least a tenth
        more). A storm of 429s from another program on the key can drop the limit to a
        few calls; climbing only by a tenth of that would starve the bot for an hour
        after the storm. A key truly limited below its documented rate meets a share of
        429s at the next step up, and the limit drops back."""
        now = self._clock()
        if self.limit >= self.configured or now - self._raised_at < self.period \
                or now - self._lowered_at < self.period:
            return
        self._forget_before(now - self.period)
        if self._refusals_show_a_limit():
            return
        step = max(1, self.limit // 10, (self.configured - self.limit) // 10)
        self.limit = min(self.configured, self.limit + step)
        self._raised_at = now
        self._lowered_from = None  # it held a whole window: a limit, not a storm

    def recall(self, ages: Iterable[float]) -> None:
        """Calls made `ages` seconds ago (by a previous run): the server's window still
        holds those of the last period, so ours must too."""
        now = self._clock()
        earlier = [now - age for age in ages if 0 <= age < self.period]
        kept = sorted([*earlier, *self._stamps])[-self.configured:]
        self._stamps = deque(kept, maxlen=self.configured)
        self._recalled = deque(sorted([*self._recalled, *earlier]))

    def window_clears_at(self) -> float:
        """When the oldest call of the current window leaves it (now, if none is in it)."""
        now = self._clock()
        inside = [stamp for stamp in self._stamps if stamp > now - self.period]
        return inside[0] + self.period if inside else now

    def busy(self, share: float) -> bool:
        """Whether `share` of the limit or more was used within the current window."""
        calls = max(1, math.ceil(self.limit * share))
        return len(self._stamps) >= calls and \
            self._stamps[-calls] > self._clock() - self.period

    def in_use(self) -> int:
        """Calls made within the current window."""
        cutoff = self._clock() - self.period
        return sum(1 for stamp in self._stamps if stamp > cutoff)

    async def acquire(self) -> None:
        self._climb()
        async with self._lock:
            while (wait := self.delay()) > 0:
                await self._sleep(wait)
            self._stamps.append(self._clock())

    def release_last(self) -> None:
        """Give back the slot just acquired, when the call it was for will not be made."""
        if self._stamps:
            self._stamps.pop()
