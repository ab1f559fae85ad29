"""`python -m bot.sandbox`: the fake chatinfo server (bot/upstream/sandbox.py) on a port."""

import sys

from bot.upstream.sandbox import main

if __name__ == "__main__":
    sys.exit(main())
