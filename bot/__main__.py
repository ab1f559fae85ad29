"""`python -m bot`: see bot/app/main.py for the commands."""

import sys

from bot.app.main import main

if __name__ == "__main__":
    sys.exit(main())
