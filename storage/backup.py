"""A consistent copy of the live database, taken while the bot keeps writing.

SQLite's online backup API copies the database as of one moment (in WAL mode a reader
does not block the writer). The copy is written beside the target, checked, and only
then renamed to it, so the target is never a half-written file.

Blocking, and independent of the bot's own connection: `python -m bot backup` runs it in
a process of its own (bot/ops/backup.py).
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path


class BackupError(Exception):
    pass


def backup_database(source: Path, target: Path) -> Path:
    """Copy `source` to `target` (a file, or a folder to put a dated file in); the path
    written."""
    if target.is_dir():
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        target = target / f"{source.stem}-{stamp}{source.suffix or '.sqlite3'}"
    partial = target.with_name(target.name + ".partial")
    try:
        # mode=rw: a mistyped DATABASE_PATH must fail, not create an empty database.
        with closing(sqlite3.connect(f"{source.resolve().as_uri()}?mode=rw", uri=True,
                                     timeout=10)) as live, \
                closing(sqlite3.connect(partial)) as copy:
            live.backup(copy)  # one step, so one consistent snapshot of the source
            # A single self-contained file: the bot switches it back to WAL when it opens it.
            copy.execute("PRAGMA journal_mode = DELETE")
            verdict = copy.execute("PRAGMA integrity_check").fetchone()[0]
            if verdict != "ok":
                raise BackupError(f"the copy failed its integrity check: {verdict}")
        os.replace(partial, target)
    except (sqlite3.Error, OSError) as error:
        raise BackupError(f"cannot back up {source} to {target}: {error}") from None
    finally:
        partial.unlink(missing_ok=True)
    return target
