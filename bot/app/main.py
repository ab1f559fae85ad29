"""`python -m bot` runs the bot (see bot/app/run.py for the start-up sequence);
`python -m bot --sandbox` runs it against the built-in fake chatinfo server, no key needed.

`python -m bot backup PATH` copies the live database; `python -m bot healthcheck` asks
the running bot's /healthz (Docker's HEALTHCHECK).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bot.ops.backup import backup_command
from bot.ops.probe import healthcheck_command


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bot", description="The chatinfo.ru bot.")
    parser.add_argument("--sandbox", action="store_true",
                        help="answer from the built-in fake chatinfo server (no API key, no "
                        "units spent), with a database of its own")
    commands = parser.add_subparsers(dest="command", metavar="[command]")
    backup = commands.add_parser("backup", help="copy the live database to PATH (a file, or "
                                 "a folder for a dated file) while the bot runs")
    backup.add_argument("path", type=Path, metavar="PATH")
    commands.add_parser("healthcheck", help="exit 0 if the running bot's /healthz is 200")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "backup":
        return backup_command(args.path)
    if args.command == "healthcheck":
        return healthcheck_command()
    # Imported only to run the bot: aiogram and the handlers take seconds to import, a
    # cost the cron backup and Docker's 30-second healthcheck should not pay.
    from bot.app.run import run_bot  # noqa: PLC0415

    return run_bot(sandbox=args.sandbox)


if __name__ == "__main__":
    sys.exit(main())
