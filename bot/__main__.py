"""`python -m bot`: settings -> logging -> database -> clients -> dispatcher -> polling."""

from __future__ import annotations

import asyncio
import logging
import sys

from pydantic import ValidationError

from bot.app import make_bot, make_client, make_dispatcher
from bot.config import Settings, describe_problems
from bot.i18n import make_i18n
from bot.logs import setup_logging
from storage.db import DatabaseError, open_database

log = logging.getLogger("bot")
EXIT_BAD_SETTINGS = 2
EXIT_BAD_DATABASE = 1


async def run(settings: Settings) -> None:
    db = await open_database(settings.database_path)
    client = make_client(settings)
    bot = make_bot(settings)
    try:
        dp = make_dispatcher(bot, db, client, make_i18n(settings.default_locale), settings)
        # start_polling stops on SIGINT/SIGTERM, runs the shutdown hooks (the job
        # runner's stop) and closes the bot's session.
        await dp.start_polling(bot, allowed_updates=dp.resolve_used_update_types())
    finally:
        await client.close()
        await bot.session.close()
        await db.close()


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as error:
        for line in describe_problems(error):
            print(f"config error: {line}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    setup_logging(settings.log_level, [settings.bot_token.get_secret_value(),
                                       settings.chatinfo_api_key.get_secret_value()])
    try:
        asyncio.run(run(settings))
    except DatabaseError as error:
        print(f"database error: {error}", file=sys.stderr)
        return EXIT_BAD_DATABASE
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
