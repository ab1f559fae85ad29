"""Settings from the environment and `.env`, validated once at start."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AnyHttpUrl,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.languages import DEFAULT_LOCALE, LANGUAGES_BY_CODE

# What the chatinfo API allows, per its spec: the settings' defaults, the client's when it is
# built without settings, and what the sandbox enforces. Calls a minute, per endpoint.
RATE_LIMITS: Mapping[str, int] = MappingProxyType(
    {"create_request": 1500, "get_response": 15000, "units": 500})
MAX_CONTENT_CHARS = 5000  # the API cuts longer content silently
# How long a request may wait for its answer before its user is told it is late.
MAX_WAIT_SECONDS = 600
# Telegram's own soft limit on a bot's messages (TELEGRAM_MESSAGES_PER_SECOND).
TELEGRAM_MESSAGES_PER_SECOND = 30

# What Telegram accepts as a webhook's secret_token.
WEBHOOK_SECRET_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,256}")
# Paths the bot's web server answers itself; a webhook there would shadow them.
RESERVED_PATHS = frozenset({"/healthz", "/metrics"})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore",
                                      arbitrary_types_allowed=True)

    bot_token: SecretStr
    # A pool of keys (comma-separated), each its own account: declared before
    # chatinfo_api_key, whose validator reads it.
    chatinfo_api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    chatinfo_api_key: SecretStr | None = Field(None, validate_default=True)
    chatinfo_base_url: AnyHttpUrl = AnyHttpUrl("https://chatinfo.ru")
    telegram_api_url: AnyHttpUrl | None = None
    admin_ids: Annotated[frozenset[int], NoDecode] = frozenset()
    database_path: Path = Path("data/bot.sqlite3")
    chatinfo_create_per_min: int = Field(RATE_LIMITS["create_request"], gt=0)
    chatinfo_poll_per_min: int = Field(RATE_LIMITS["get_response"], gt=0)
    chatinfo_units_per_min: int = Field(RATE_LIMITS["units"], gt=0)
    telegram_messages_per_second: int = Field(TELEGRAM_MESSAGES_PER_SECOND, gt=0)
    # The most of that a broadcast may use, and only what answers leave (bot/telegram/throttle.py).
    broadcast_share: float = Field(1 / 3, gt=0, le=1)
    allowed_user_ids: Annotated[frozenset[int], NoDecode] = frozenset()
    daily_quota: int = Field(30, ge=0)
    quota_timezone: ZoneInfo = ZoneInfo("Europe/Moscow")
    max_pending_per_user: int = Field(3, gt=0)
    low_units_threshold: int = Field(100, ge=0)
    max_wait_seconds: int = Field(MAX_WAIT_SECONDS, gt=0)
    # Silence that ends a conversation; at most 30 days, the oldest turn ever read.
    conversation_idle_minutes: int = Field(30, gt=0, le=30 * 24 * 60)
    default_locale: str = DEFAULT_LOCALE
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    # Declared after telegram_api_url: their validators read it.
    webhook_url: AnyHttpUrl | None = None
    webhook_secret: SecretStr | None = Field(None, validate_default=True)
    web_host: str = "0.0.0.0"
    web_port: int = Field(8080, ge=0, le=65535)

    @field_validator("quota_timezone", mode="before")
    @classmethod
    def _zone(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError("must be an IANA time zone such as Europe/Moscow") from None
        return value

    @field_validator("broadcast_share", mode="before")
    @classmethod
    def _fraction(cls, value: object) -> object:
        # "1/3" reads better in .env than 0.3333333333333333.
        if isinstance(value, str) and "/" in value:
            numerator, _, denominator = value.partition("/")
            try:
                return float(numerator) / float(denominator)
            except (ValueError, ZeroDivisionError):
                raise ValueError("must be a number or a fraction such as 1/3") from None
        return value

    @field_validator("admin_ids", "allowed_user_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: object) -> object:
        # Operators write "1, 2"; JSON lists are not what a .env file looks like.
        if not isinstance(value, str):
            return value
        parts = [part.strip() for part in value.split(",") if part.strip()]
        if not all(part.lstrip("-").isdigit() for part in parts):
            raise ValueError("must be comma-separated numeric Telegram user ids")
        return frozenset(int(part) for part in parts)

    @field_validator("bot_token")
    @classmethod
    def _not_blank(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("chatinfo_api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("chatinfo_api_key")
    @classmethod
    def _one_key_at_least(cls, value: SecretStr | None,
                          info: ValidationInfo) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            if info.data.get("chatinfo_api_keys"):
                return None  # an empty line in .env beside CHATINFO_API_KEYS
            raise ValueError("must not be empty")
        if value is None and not info.data.get("chatinfo_api_keys"):
            raise ValueError("is required")
        return value

    @field_validator("default_locale")
    @classmethod
    def _known_locale(cls, value: str) -> str:
        if value not in LANGUAGES_BY_CODE:
            raise ValueError(f"must be one of {', '.join(LANGUAGES_BY_CODE)}")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("telegram_api_url", "webhook_url", mode="before")
    @classmethod
    def _empty_url_is_unset(cls, value: object) -> object:
        # `.env.example` lists these with no value; a copy of it must start as it is.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_format(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: AnyHttpUrl | None, info: ValidationInfo) -> AnyHttpUrl | None:
        if value is None:
            return None
        # Telegram's own servers only call https URLs; a local Bot API server also calls http.
        if value.scheme != "https" and info.data.get("telegram_api_url") is None:
            raise ValueError("must be an https URL (Telegram sends updates only over HTTPS)")
        if (value.path or "/") in RESERVED_PATHS:
            raise ValueError(f"its path must not be {' or '.join(sorted(RESERVED_PATHS))}")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            value = None  # an empty line in .env means "not set"
        if value is None:
            if info.data.get("webhook_url") is not None:
                raise ValueError("is required when WEBHOOK_URL is set")
            return None
        if not WEBHOOK_SECRET_PATTERN.fullmatch(value.get_secret_value()):
            raise ValueError("must be 1-256 characters of A-Z, a-z, 0-9, _ and -")
        return value

    @property
    def default_quota(self) -> int | None:
        """DAILY_QUOTA as requests a day; None: unlimited (DAILY_QUOTA=0)."""
        return self.daily_quota or None

    @property
    def api_keys(self) -> tuple[str, ...]:
        """Every chatinfo key, CHATINFO_API_KEY first, then CHATINFO_API_KEYS, each once."""
        keys = ([self.chatinfo_api_key] if self.chatinfo_api_key else []) + list(
            self.chatinfo_api_keys)
        return tuple(dict.fromkeys(key.get_secret_value() for key in keys))

    @property
    def webhook_path(self) -> str:
        """Where the web server takes updates: the path of WEBHOOK_URL."""
        return (self.webhook_url.path if self.webhook_url else None) or "/"


def describe_problems(error: ValidationError) -> list[str]:
    """One line per bad setting, naming the environment variable and never its value."""
    lines = []
    for problem in error.errors(include_input=False, include_url=False):
        name = str(problem["loc"][0]).upper() if problem["loc"] else "settings"
        reason = "is required" if problem["type"] == "missing" else problem["msg"]
        reason = reason.removeprefix("Value error, ")
        lines.append(f"{name}: {reason}")
    return lines
