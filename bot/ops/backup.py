"""`python -m bot backup PATH`: a consistent copy of the live database (storage/backup.py
takes it), written to PATH only once it is whole and checked.

Only DATABASE_PATH is read (from the environment or `.env`), so a cron job needs no
bot token or API key.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic_settings import BaseSettings

from bot.config import Settings
from storage.backup import BackupError, backup_database

EXIT_FAILED = 1


class _DatabaseSetting(BaseSettings):
    model_config = Settings.model_config
    database_path: Path = Settings.model_fields["database_path"].default


def backup_command(target: Path) -> int:
    source = _DatabaseSetting().database_path
    try:
        written = backup_database(source, target)
    except BackupError as error:
        print(f"backup error: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(written)
    return 0
