"""Starting `python -m bot`: bad settings and a bad database stop it with one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.botprocess import REPO


def run_bot(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("CHATINFO_", "BOT_", "ADMIN_", "DATABASE_", "LOG_"))}
    return subprocess.run(
        [sys.executable, "-m", "bot"], cwd=tmp_path, env={**clean, "PYTHONPATH": str(REPO), **env},
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_missing_settings_name_each_variable_and_exit_2(tmp_path: Path) -> None:
    result = run_bot(tmp_path)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "config error: BOT_TOKEN: is required",
        "config error: CHATINFO_API_KEY: is required",
    ]


def test_invalid_settings_are_reported_without_their_values(tmp_path: Path) -> None:
    result = run_bot(tmp_path, BOT_TOKEN="1:SECRET-TOKEN", CHATINFO_API_KEY="SECRET-KEY",
                     ADMIN_IDS="12,abc", CHATINFO_POLL_PER_MIN="0", CHATINFO_BASE_URL="nope",
                     LOG_LEVEL="chatty")

    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert [line.split(":")[1].strip() for line in lines] == [
        "CHATINFO_BASE_URL", "ADMIN_IDS", "CHATINFO_POLL_PER_MIN", "LOG_LEVEL"]
    assert "Traceback" not in result.stderr
    assert "SECRET" not in result.stderr


def test_settings_come_from_a_dotenv_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("BOT_TOKEN=1:T\nCHATINFO_API_KEY=k\nLOG_LEVEL=shouty\n")
    result = run_bot(tmp_path)

    assert result.returncode == 2
    assert result.stderr.splitlines() == ["config error: LOG_LEVEL: must be one of DEBUG, INFO, "
                                          "WARNING, ERROR, CRITICAL"]


def test_a_file_that_is_not_a_database_stops_the_bot_and_is_left_alone(tmp_path: Path) -> None:
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_bytes(b"my precious notes\n" * 100)
    result = run_bot(tmp_path, BOT_TOKEN="1:T", CHATINFO_API_KEY="k",
                     DATABASE_PATH=str(not_a_db))

    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("database error: cannot use database")
    assert "Traceback" not in result.stderr
    assert not_a_db.read_bytes() == b"my precious notes\n" * 100


def test_an_unwritable_database_folder_stops_the_bot(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    result = run_bot(tmp_path, BOT_TOKEN="1:T", CHATINFO_API_KEY="k",
                     DATABASE_PATH=str(blocker / "data" / "bot.sqlite3"))

    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("database error: cannot open")
