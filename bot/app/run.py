"""Running the bot: settings -> logging -> database -> clients -> dispatcher -> serving.

In the sandbox (`python -m bot --sandbox`) the fake chatinfo server (bot/upstream/sandbox.py)
runs first, in the same process, and the API client talks to it: no API key is needed and
no units are spent. Its database is a file of its own beside DATABASE_PATH, so the
sandbox's jobs and balance never mix with the real API's.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from aiogram.exceptions import TelegramUnauthorizedError
from pydantic import AnyHttpUrl, ValidationError

from bot.app.wiring import freeze_startup_objects, make_application, make_bot
from bot.config import Settings, describe_problems
from bot.logs import setup_logging
from bot.ops.serve import StartupError, serve
from bot.ops.web import WebServerError
from bot.telegram.i18n import make_i18n
from bot.upstream.sandbox import FakeChatinfo
from storage.db import DatabaseError, open_database

EXIT_BAD_SETTINGS = 2
EXIT_BAD_DATABASE = 1
EXIT_CANNOT_SERVE = 1
# The fake server's: a balance to try the bot with, and answers after a short "thinking".
SANDBOX_UNITS = 1000
SANDBOX_SOLVE_SECONDS = 2.0
# Where the client points until the fake server has its port (it never calls this).
SANDBOX_PLACEHOLDER_URL = "http://127.0.0.1:1"

log = logging.getLogger(__name__)


async def run(settings: Settings, *, sandbox: bool = False) -> None:
    async with _upstream(settings, sandbox) as pointed:
        await _run(pointed, sandbox=sandbox)


async def _run(settings: Settings, *, sandbox: bool) -> None:
    db = await open_database(settings.database_path)
    bot = make_bot(settings)
    app = make_application(bot, db, make_i18n(settings.default_locale), settings,
                           sandbox=sandbox)
    try:
        freeze_startup_objects()
        await serve(settings, bot=bot, app=app)
    finally:
        await app.pool.close()
        await bot.session.close()
        await db.close()


@asynccontextmanager
async def _upstream(settings: Settings, sandbox: bool) -> AsyncIterator[Settings]:
    """The settings to run with; in the sandbox, the fake server runs meanwhile."""
    if not sandbox:
        yield settings
        return
    keys = settings.api_keys
    server = FakeChatinfo(dict.fromkeys(keys, "prestige"), units=SANDBOX_UNITS,
                          key_units=dict.fromkeys(keys, SANDBOX_UNITS) if len(keys) > 1 else None,
                          solve_time=SANDBOX_SOLVE_SECONDS)
    url = await server.start()
    log.warning("SANDBOX MODE: answers come from the built-in fake chatinfo server at %s, "
                "not from chatinfo.ru; no API key is used and no units are spent. Its "
                "database is %s.", url, settings.database_path)
    try:
        yield settings.model_copy(update={"chatinfo_base_url": AnyHttpUrl(url)})
    finally:
        await server.stop()


def sandbox_settings() -> Settings:
    """The settings from the environment, with the sandbox's own key and database."""
    settings = Settings(chatinfo_api_key=f"sandbox-{secrets.token_hex(8)}", chatinfo_api_keys=(),
                        chatinfo_base_url=AnyHttpUrl(SANDBOX_PLACEHOLDER_URL))
    return settings.model_copy(update={"database_path": sandbox_database(settings.database_path)})


def sandbox_database(path: Path) -> Path:
    """data/bot.sqlite3 -> data/bot-sandbox.sqlite3"""
    return path if str(path) == ":memory:" else path.with_name(f"{path.stem}-sandbox{path.suffix}")


def run_bot(*, sandbox: bool = False) -> int:
    try:
        settings = sandbox_settings() if sandbox else Settings()
    except ValidationError as error:
        for line in describe_problems(error):
            print(f"config error: {line}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    setup_logging(settings.log_level, secrets_of(settings), settings.log_format)
    try:
        asyncio.run(run(settings, sandbox=sandbox))
    except DatabaseError as error:
        print(f"database error: {error}", file=sys.stderr)
        return EXIT_BAD_DATABASE
    except (StartupError, WebServerError) as error:
        print(f"startup error: {error}", file=sys.stderr)
        return EXIT_CANNOT_SERVE
    except TelegramUnauthorizedError:
        print("startup error: Telegram rejected the bot token (BOT_TOKEN)", file=sys.stderr)
        return EXIT_CANNOT_SERVE
    except KeyboardInterrupt:
        pass
    return 0


def secrets_of(settings: Settings) -> list[str]:
    """What the logs must never show."""
    secrets = [settings.bot_token, settings.webhook_secret]
    return [*settings.api_keys,
            *(secret.get_secret_value() for secret in secrets if secret is not None)]
