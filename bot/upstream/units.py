"""The shared unit balance: cached, refreshed rarely, and watched for the admins.

create_request reports the balance with every answer, so the cache is mostly fed for
free; the units endpoint (500/min) is only asked every few minutes and by /units.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from contextlib import suppress
from typing import Protocol

from aiogram.utils.i18n import gettext as _
from aiogram.utils.i18n import ngettext

from bot.services import Worker
from bot.upstream.client import AccessDenied, ChatinfoClient, ChatinfoError, NotEnoughUnits

log = logging.getLogger(__name__)

REFRESH_EVERY = 300.0
# While the balance is empty, users are turned away: notice a top-up within seconds. The
# endpoint allows 500 calls a minute; this is 2.
REFRESH_WHEN_EMPTY = 30.0


class AdminAlerts(Protocol):
    """Where the tracker's news goes (the admins' chats); a text is built per admin locale."""

    async def send(self, text: Callable[[], str]) -> None: ...


class UnitsTracker(Worker):
    """The balance, cached from what the API reports; a service that refreshes it."""

    name = "units-refresher"

    def __init__(self, client: ChatinfoClient, notifier: AdminAlerts,
                 low_threshold: int, *, key_name: str | None = None) -> None:
        self._client = client
        self._notifier = notifier
        # One of a pool of keys: each alert names its key (by fingerprint), and says the
        # others carry on.
        self._key_name = key_name
        self._low_threshold = low_threshold
        self.balance: int | None = None
        self._low_alerted = False
        self._empty_alerted = False
        self._denied_alerted = False
        self._limited: set[str] = set()  # endpoints the admins were told run below their limit
        self._emptied = asyncio.Event()  # wakes the refresher to watch for a top-up

    @property
    def exhausted(self) -> bool:
        return self.balance == 0

    @property
    def refused(self) -> bool:
        """The API refused the key (tariff, or a wrong key) since it last reported a balance."""
        return self._denied_alerted

    async def _send(self, text: Callable[[], str]) -> None:
        """To the admins; from one key of a pool, naming it."""
        name = self._key_name
        if name is None:
            await self._notifier.send(text)
        else:
            await self._notifier.send(lambda: _("🔑 Key {key}: {alert}").format(
                key=name, alert=text()))

    async def observe(self, units: int, *, from_create: bool = False) -> None:
        """Record a balance the API reported; alert once per crossing.

        Creates answer out of order: one that reports a balance above an empty one was
        only slower than the one that emptied it, so only a balance read can end "empty".
        """
        if from_create and self.balance == 0 and units > 0:
            return
        if units == 0 and self.balance != 0:
            self._emptied.set()
        self.balance = units
        self._denied_alerted = False  # the key works again
        if units >= self._low_threshold:
            self._low_alerted = False
        if units > 0 and self._empty_alerted:
            self._empty_alerted = False
            await self._send(lambda: ngettext(
                "✅ The API units are back: {units} unit. Users are served again.",
                "✅ The API units are back: {units} units. Users are served again.",
                units).format(units=units))
        if units == 0 and not self._empty_alerted:
            self._empty_alerted = self._low_alerted = True  # one alert says both
            await self._send(lambda: _(
                "🛑 The API unit balance is exhausted. Users are told the service is out of "
                "capacity until it is topped up.") if self._key_name is None else _(
                "🛑 Its unit balance is exhausted. New requests go to the other keys; once "
                "every key is empty, users are told the service is out of capacity."))
        elif units < self._low_threshold and not self._low_alerted:
            self._low_alerted = True
            await self._send(lambda: ngettext(
                "⚠️ The API unit balance is low: {units} unit left.",
                "⚠️ The API unit balance is low: {units} units left.", units).format(units=units))

    async def denied(self, upstream_error: str | None) -> None:
        """The API refused the key (tariff not Prestige, or a wrong key)."""
        if not self._denied_alerted:
            self._denied_alerted = True
            await self._send(lambda: (_(
                "🛑 The API refused our key: {reason}. Users are told the service is "
                "unavailable until this is fixed.") if self._key_name is None else _(
                "🛑 The API refused it: {reason}. New requests go to the other keys; once "
                "none works, users are told the service is unavailable.")).format(
                    reason=refusal_reason(upstream_error)))

    async def refresh(self) -> int:
        """A fresh balance from the API (raises ChatinfoError)."""
        try:
            units = await self._client.units()
        except AccessDenied as error:
            await self.denied(error.upstream_error)
            raise
        except NotEnoughUnits:
            units = 0
        await self.observe(units)
        return units

    async def check_limits(self) -> None:
        """Tell the admins once when the key gets fewer calls than documented (another
        program on it, or a lower limit), and forget it once the full rate is back."""
        for endpoint, limiter in self._client.limiters.items():
            if limiter.limit >= limiter.configured:
                self._limited.discard(endpoint)
            elif endpoint not in self._limited:
                self._limited.add(endpoint)
                await self._send(lambda e=endpoint, lim=limiter: ngettext(  # type: ignore[misc]
                    "⚠️ The API answers 429 below its documented rate: {endpoint} now gets "
                    "{limit} call a minute instead of {configured}. Is another program "
                    "using the key?",
                    "⚠️ The API answers 429 below its documented rate: {endpoint} now gets "
                    "{limit} calls a minute instead of {configured}. Is another program "
                    "using the key?", lim.limit).format(endpoint=e, limit=lim.limit,
                                                        configured=lim.configured))

    async def _serve(self) -> None:
        while True:
            try:
                await self.refresh()
            except ChatinfoError as error:
                log.warning("could not refresh the unit balance: %s", error)
            await self.check_limits()
            self._emptied.clear()
            with suppress(TimeoutError):
                async with asyncio.timeout(REFRESH_WHEN_EMPTY if self.exhausted
                                           else REFRESH_EVERY):
                    await self._emptied.wait()  # the balance ran out meanwhile


def refusal_reason(upstream_error: str | None) -> str:
    """The server's (Russian) reason for refusing the key, in the admin's language."""
    tariff = re.search(r"Ваш тариф:\s*([^.]+)", upstream_error or "")
    if tariff:
        return _("the API needs the Prestige tariff and ours is “{tariff}”").format(
            tariff=tariff.group(1).strip())
    if "Престиж" in (upstream_error or ""):
        return _("the API needs the Prestige tariff")
    return _("the key is wrong or was revoked")
