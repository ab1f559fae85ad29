"""When an update may be confirmed to Telegram: once what it asked for is stored.

Confirmed, Telegram forgets it; a crash before its request was stored would lose it. The
update's handling says so as soon as it can (`secured`), or simply ends: polling waits for
one or the other before confirming it (bot/ops/serve.py, `HandedOut`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_on_secured: ContextVar[Callable[[], None] | None] = ContextVar("update_secured", default=None)


@contextmanager
def receipt(on_secured: Callable[[], None]) -> Iterator[None]:
    """Handle an update inside: `secured()` within calls `on_secured`."""
    token = _on_secured.set(on_secured)
    try:
        yield
    finally:
        _on_secured.reset(token)


def secured() -> None:
    """What the update being handled asked for is stored: losing the process now loses
    nothing of it."""
    if (on_secured := _on_secured.get()) is not None:
        on_secured()
