"""`python -m bot backup PATH`: a consistent copy of the live database.

SQLite's online backup API copies the database as of one moment while the bot keeps
writing (in WAL mode a reader does not block the writer). The copy is written beside
PATH, checked, and only then renamed to PATH, so PATH is never a half-written file.

Only DATABASE_PATH is read (from the environment or `.env`), so a cron job needs no
bot token or API key.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

from pydantic_settings import BaseSettings

from bot.config import Settings

EXIT_FAILED = 1


class BackupError(Exception):
    pass


class _DatabaseSetting(BaseSettings):
    model_config = Settings.model_config
    database_path: Path = Settings.model_fields["database_path"].default


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


def backup_command(target: Path) -> int:
    source = _DatabaseSetting().database_path
    try:
        written = backup_database(source, target)
    except BackupError as error:
        print(f"backup error: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(written)
    return 0
