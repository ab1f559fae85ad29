"""A key's lane: the way a job's calls go with one key of the pool.

Each key has its own create budget and poll budget, so each has its own create queue and
poll scheduler; and its own balance, so each checks failed creates against its own
(its ledger). A job goes into the lane of the key the pool picks for it, and stays
there: its row keeps the key's fingerprint, and every poll uses that key.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from bot.jobs.balance_ledger import BalanceLedger
from bot.jobs.create_queue import FairQueue
from bot.jobs.poll_scheduler import PollScheduler
from bot.upstream.account import Upstream
from bot.upstream.client import CREATE


@dataclass(eq=False)
class Lane:
    upstream: Upstream
    queue: FairQueue
    scheduler: PollScheduler
    # The key's balances seen (read, and reported by its creates), which tell its failed
    # creates that spent a unit from those that did not.
    ledger: BalanceLedger = field(default_factory=BalanceLedger)
    reconciling: asyncio.Lock = field(default_factory=asyncio.Lock)
    read_failed_at: float = float("-inf")  # when a read of its balance last failed
    rejudge_after: float = float("-inf")  # monotonic; see JobRunner._rejudge
    _news: asyncio.Event = field(default_factory=asyncio.Event)

    def news_event(self) -> asyncio.Event:
        """Set when the ledger next learns something (a create ends, or fails)."""
        return self._news

    def news(self) -> None:
        self._news.set()
        self._news = asyncio.Event()  # each waiter holds the one it waited on

    @property
    def key(self) -> str:
        """The key's fingerprint, as jobs store it."""
        return self.upstream.fingerprint

    def wait(self) -> float:
        """Seconds until a new request could be sent with this key: 0 while its create
        budget has room beyond the requests already queued for it."""
        budget = self.upstream.budget(CREATE)
        if not self.queue.held and budget.in_use() + self.queue.queued < budget.limit:
            return 0.0
        return max(self.queue.eta(self.queue.queued), 0.001)

    def in_flight(self) -> int:
        """Requests queued or sent with this key whose units the balance may not show yet."""
        return self.queue.queued + self.queue.outstanding
