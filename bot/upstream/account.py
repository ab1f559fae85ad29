"""One chatinfo.ru account: its key, its per-minute budgets, its unit balance.

Everything the bot asks of the API goes through an `Upstream`, and nothing else holds its
parts: the client (which carries the key, and counts each endpoint's calls in a window of
its own, lowering a limit the server's 429s show to be lower than documented) and the
units tracker (the balance cached from what the API reports, refreshed in the background,
and the admins' alerts about it).

The create queue and the poll scheduler hand out the create and poll budgets' slots among
the jobs; `create` and `poll` are the calls made in such a slot. Each key of a pool
(bot/upstream/pool.py) is an `Upstream` of its own, with its own queue and scheduler.
"""

from __future__ import annotations

from collections.abc import Mapping

from bot.upstream.client import (
    AccessDenied,
    ChatinfoClient,
    ChatinfoError,
    CreatedRequest,
    NotEnoughUnits,
    RateLimited,
)
from bot.upstream.limiter import SlidingWindowLimiter
from bot.upstream.units import AdminAlerts, UnitsTracker


class Upstream:
    """One account. A service: its balance refresher runs from `start` to `stop`."""

    def __init__(self, client: ChatinfoClient, alerts: AdminAlerts, low_threshold: int, *,
                 name: str | None = None) -> None:
        """`name`: how the admins' alerts name this key, when it is one of several."""
        self._client = client
        self._units = UnitsTracker(client, alerts, low_threshold, key_name=name)
        self.fingerprint = client.fingerprint
        self.name = name or self.fingerprint

    # --- budgets ---------------------------------------------------------------------------

    def budget(self, endpoint: str) -> SlidingWindowLimiter:
        """The calls `endpoint` may take in the current window (CREATE, POLL or UNITS)."""
        return self._client.limiters[endpoint]

    @property
    def budgets(self) -> Mapping[str, SlidingWindowLimiter]:
        """Every endpoint's budget, for the metrics."""
        return self._client.limiters

    # --- calls -----------------------------------------------------------------------------

    async def create(self, content: str, mode: str) -> CreatedRequest:
        """create_request, in the slot the create queue took from `budget(CREATE)` for it
        (a retry, where one is safe, takes a slot of its own)."""
        return await self._client.create_request(content, mode, slot_taken=True)

    async def poll(self, upstream_id: int) -> str | None:
        """get_response, in the slot the poll scheduler took from `budget(POLL)` for it:
        the answer, or None while it is still being solved."""
        return await self._client.get_response(upstream_id, slot_taken=True)

    async def read_balance(self) -> int:
        """The balance as the API says it now, taken as it is (raises ChatinfoError)."""
        return await self._client.units()

    # --- the balance -----------------------------------------------------------------------

    @property
    def balance(self) -> int | None:
        """The last balance the API reported; None before any."""
        return self._units.balance

    @property
    def exhausted(self) -> bool:
        """The balance is spent: new requests are refused without calling."""
        return self._units.exhausted

    @property
    def refused(self) -> bool:
        """The API refused the key (tariff not Prestige, or a wrong key)."""
        return self._units.refused

    @property
    def usable(self) -> bool:
        """Whether new requests may go to this key: units left, and not refused."""
        return not (self.exhausted or self.refused)

    async def refresh(self) -> int:
        """A fresh balance from the API, recorded, the admins alerted as it says (raises
        ChatinfoError)."""
        return await self._units.refresh()

    async def observe(self, units: int, *, from_create: bool = False) -> None:
        """Record a balance the API reported, with a create's answer or read."""
        await self._units.observe(units, from_create=from_create)

    async def learn(self, error: ChatinfoError) -> None:
        """What a failed call tells about the account; the admins are told once what is
        theirs to fix: the balance is spent (403 with units 0), the key was refused (403),
        an endpoint answers 429 below its documented rate."""
        if isinstance(error, NotEnoughUnits):
            await self._units.observe(0)
        elif isinstance(error, AccessDenied):
            await self._units.denied(error.upstream_error)
        elif isinstance(error, RateLimited):
            await self._units.check_limits()

    # --- the service -----------------------------------------------------------------------

    def start(self) -> None:
        self._units.start()

    async def stop(self) -> None:
        await self._units.stop()

    def alive(self) -> bool:
        return self._units.alive()

    async def close(self) -> None:
        """Close the connections; after `stop`."""
        await self._client.close()

