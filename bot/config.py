"""Settings from the environment and `.env`, validated once at start."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AnyHttpUrl, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore",
                                      arbitrary_types_allowed=True)

    bot_token: SecretStr
    chatinfo_api_key: SecretStr
    chatinfo_base_url: AnyHttpUrl = AnyHttpUrl("https://chatinfo.ru")
    telegram_api_url: AnyHttpUrl | None = None
    admin_ids: Annotated[frozenset[int], NoDecode] = frozenset()
    database_path: Path = Path("data/bot.sqlite3")
    chatinfo_create_per_min: int = Field(1500, gt=0)
    chatinfo_poll_per_min: int = Field(15000, gt=0)
    chatinfo_units_per_min: int = Field(500, gt=0)
    allowed_user_ids: Annotated[frozenset[int], NoDecode] = frozenset()
    daily_quota: int = Field(30, ge=0)
    quota_timezone: ZoneInfo = ZoneInfo("Europe/Moscow")
    max_pending_per_user: int = Field(3, gt=0)
    low_units_threshold: int = Field(100, ge=0)
    max_wait_seconds: int = Field(600, gt=0)
    default_locale: Literal["en", "ru"] = "en"
    log_level: str = "INFO"

    @field_validator("quota_timezone", mode="before")
    @classmethod
    def _zone(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError("must be an IANA time zone such as Europe/Moscow") from None
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

    @field_validator("bot_token", "chatinfo_api_key")
    @classmethod
    def _not_blank(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level


def describe_problems(error: ValidationError) -> list[str]:
    """One line per bad setting, naming the environment variable and never its value."""
    lines = []
    for problem in error.errors(include_input=False, include_url=False):
        name = str(problem["loc"][0]).upper() if problem["loc"] else "settings"
        reason = "is required" if problem["type"] == "missing" else problem["msg"]
        reason = reason.removeprefix("Value error, ")
        lines.append(f"{name}: {reason}")
    return lines
