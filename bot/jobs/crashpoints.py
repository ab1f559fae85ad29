"""Named points where a test can kill the bot, to prove a restart loses nothing.

`BOT_CRASH_AT=<point>` makes the process SIGKILL itself the first time it reaches that
point (only if the marker file named by `BOT_CRASH_MARKER` does not exist yet, so the
restarted bot runs through); with `BOT_CRASH_AFTER=<n>`, the n-th time. Unset, as in
production, it costs one dict lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

BEFORE_ADMISSION = "before_admission"  # the message received, its request not stored
BEFORE_CREATE = "before_create"  # placeholder sent, create_request not sent
AFTER_CREATE = "after_create"  # create_request answered, its id not stored
WHILE_POLLING = "while_polling"  # upstream id stored, answer not yet fetched
AFTER_RESULT = "after_result"  # answer stored, not yet shown
BETWEEN_PARTS = "between_parts"  # first part of a long answer shown, the rest not
POINTS = (BEFORE_ADMISSION, BEFORE_CREATE, AFTER_CREATE, WHILE_POLLING, AFTER_RESULT, BETWEEN_PARTS)
# A broadcast's copy accepted by Telegram, its recipient not yet marked sent.
BROADCAST_AFTER_COPY = "broadcast_after_copy"

_passes: Counter[str] = Counter()


def reach(point: str) -> None:
    if os.environ.get("BOT_CRASH_AT") != point:
        return
    _passes[point] += 1
    if _passes[point] < int(os.environ.get("BOT_CRASH_AFTER", "1")):
        return
    marker = Path(os.environ.get("BOT_CRASH_MARKER", ".crashed"))
    if marker.exists():
        return
    marker.write_text(point)
    os.kill(os.getpid(), signal.SIGKILL)
