"""Running the bot: settings -> logging -> database -> the application -> serving."""

from __future__ import annotations

import asyncio
import sys

from aiogram.exceptions import TelegramUnauthorizedError
from pydantic import ValidationError

from bot.app.wiring import freeze_startup_objects, make_application, make_bot
from bot.config import Settings, describe_problems
from bot.logs import setup_logging
from bot.ops.serve import StartupError, serve
from bot.ops.web import WebServerError
from bot.telegram.i18n import make_i18n
from storage.db import DatabaseError, open_database

EXIT_BAD_SETTINGS = 2
EXIT_BAD_DATABASE = 1
EXIT_CANNOT_SERVE = 1


async def run(settings: Settings) -> None:
    db = await open_database(settings.database_path)
    bot = make_bot(settings)
    app = make_application(bot, db, make_i18n(settings.default_locale), settings)
    try:
        freeze_startup_objects()
        await serve(settings, bot=bot, app=app)
    finally:
        await app.upstream.close()
        await bot.session.close()
        await db.close()


def run_bot() -> int:
    try:
        settings = Settings()
    except ValidationError as error:
        for line in describe_problems(error):
            print(f"config error: {line}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    setup_logging(settings.log_level, secrets_of(settings), settings.log_format)
    try:
        asyncio.run(run(settings))
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
    secrets = [settings.bot_token, settings.chatinfo_api_key, settings.webhook_secret]
    return [secret.get_secret_value() for secret in secrets if secret is not None]
