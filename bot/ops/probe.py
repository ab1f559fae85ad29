"""`python -m bot healthcheck`: exit 0 when the running bot's /healthz answers 200.

For Docker's HEALTHCHECK (the slim image has no curl). It runs every 30 seconds, so it
imports nothing heavy, and it reads only WEB_HOST and WEB_PORT.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from pydantic_settings import BaseSettings

from bot.config import Settings

TIMEOUT = 5.0


class _WebSettings(BaseSettings):
    model_config = Settings.model_config
    web_host: str = Settings.model_fields["web_host"].default
    web_port: int = Settings.model_fields["web_port"].default


def healthcheck_command() -> int:
    settings = _WebSettings()
    host = "127.0.0.1" if settings.web_host in {"", "0.0.0.0", "::"} else settings.web_host
    host = f"[{host}]" if ":" in host else host
    url = f"http://{host}:{settings.web_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as error:  # 503: the body says which check failed
        print(f"unhealthy: {error.read().decode(errors='replace')}", file=sys.stderr)
    except OSError as error:
        print(f"unhealthy: {url}: {error}", file=sys.stderr)
    return 1
