"""A pool of chatinfo keys: one `Upstream` per key, each its own account with its own
budgets, balance and alerts (CHATINFO_API_KEYS; CHATINFO_API_KEY alone is a pool of one).

The pool picks the key a new request goes to, finds a job's key again by its fingerprint
(the job stores that, never the key), and runs the keys' balance refreshers as one service.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from bot.upstream.account import Upstream


class UpstreamPool:
    """The configured keys, the first (CHATINFO_API_KEY, if set) the primary."""

    def __init__(self, keys: Sequence[Upstream]) -> None:
        if not keys:
            raise ValueError("a pool needs a key")
        self.keys = tuple(keys)
        self._by_fingerprint = {key.fingerprint: key for key in self.keys}

    @property
    def primary(self) -> Upstream:
        """The key of jobs stored before the pool (their rows name none)."""
        return self.keys[0]

    @property
    def pooled(self) -> bool:
        return len(self.keys) > 1

    def find(self, fingerprint: str | None) -> Upstream | None:
        """The key with this fingerprint (None: the primary); None if it is not configured."""
        return self.primary if fingerprint is None else self._by_fingerprint.get(fingerprint)

    def choose(self, wait: Callable[[Upstream], float],
               in_flight: Callable[[Upstream], int]) -> Upstream:
        """The key a new request goes to.

        Of the usable keys (units left, not refused; every key, if none is), the one whose
        create budget has room soonest (`wait`: seconds, 0 if now); among equals, the one
        with the most units, its requests on the way (`in_flight`) counted as spent: so the
        balances drain evenly.
        """
        candidates = [key for key in self.keys if key.usable] or list(self.keys)
        return min(candidates, key=lambda key: (
            wait(key), -((key.balance or 0) - in_flight(key))))

    def others_usable(self, key: Upstream) -> bool:
        """Whether a request this key turned away can go to another."""
        return any(other.usable for other in self.keys if other is not key)

    # --- the pool as a whole ---------------------------------------------------------------

    @property
    def balance(self) -> int | None:
        """The units of every key whose balance is known; None before any is."""
        known = [key.balance for key in self.keys if key.balance is not None]
        return sum(known) if known else None

    @property
    def exhausted(self) -> bool:
        """No key takes new requests, and a spent balance is why: users are told the bot
        is out of units. (A refused key alone is the admins' to fix; its requests fail
        with the server's word, as with one key.)"""
        return not any(key.usable for key in self.keys) and any(
            key.exhausted for key in self.keys)

    async def refresh(self) -> int:
        """Every key's balance from the API, recorded: their total (raises the first
        ChatinfoError if no key answered)."""
        results = await asyncio.gather(*(key.refresh() for key in self.keys),
                                       return_exceptions=True)
        units = [result for result in results if isinstance(result, int)]
        if not units:
            raise next(result for result in results if isinstance(result, BaseException))
        return sum(units)

    def start(self) -> None:
        for key in self.keys:
            key.start()

    async def stop(self) -> None:
        await asyncio.gather(*(key.stop() for key in self.keys))

    def alive(self) -> bool:
        return all(key.alive() for key in self.keys)

    async def close(self) -> None:
        await asyncio.gather(*(key.close() for key in self.keys))
