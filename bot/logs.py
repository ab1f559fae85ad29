"""Logging: one line per event, as text or JSON, that never prints a secret.

An event about a job carries its fields as `extra` (see `job_event`), so a line can
be found by job id, user id, mode or outcome:

    log.info("job %s delivered", job.id, extra=job_event(job, "delivered"))

In text the fields follow the message as `key=value`; in JSON each is a key.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Every attribute a plain LogRecord has; anything else on a record came from `extra`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName",
}
# Loggers that would print a line per HTTP request (httpx: INFO, httpcore: the request's
# stages at DEBUG). The chatinfo client logs what matters, and the key travels in
# request bodies, so these stay quiet at any LOG_LEVEL.
# httpx logs every request; aiosqlite's DEBUG lines carry SQL parameters: users' texts.
QUIET_LOGGERS = ("httpx", "httpcore", "aiohttp.access", "aiosqlite")


class JobLike(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def user_id(self) -> int: ...
    @property
    def mode(self) -> str: ...


def job_event(job: JobLike, outcome: str) -> dict[str, Any]:
    """The `extra` of a log line about a job."""
    return {"job_id": job.id, "user_id": job.user_id, "mode": job.mode, "outcome": outcome}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: value for name, value in vars(record).items()
            if name not in _RECORD_ATTRIBUTES and not name.startswith("_")}


class Redactor:
    """Replaces every secret in a string with ***.

    Our own code never logs a secret; this guards against libraries that might
    (aiogram puts the bot token in every request URL).
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret containing another is replaced whole.
        self._secrets = sorted({secret for secret in secrets if secret}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


class RedactingFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value …`, secrets replaced, tracebacks included."""

    def __init__(self, fmt: str, secrets: Iterable[str]) -> None:
        super().__init__(fmt)
        self._redact = Redactor(secrets)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(f"{name}={_text_value(value)}"
                          for name, value in extra_fields(record).items())
        if fields:
            head, newline, traceback = line.partition("\n")
            line = f"{head} {fields}{newline}{traceback}"
        return self._redact(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the event's fields, and
    `exception` with the traceback when there is one."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._redact = Redactor(secrets)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **extra_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        # Redact the values, not the encoded line: JSON escaping could hide a secret.
        entry = {name: self._redact(value) if isinstance(value, str) else value
                 for name, value in entry.items()}
        return self._redact(json.dumps(entry, ensure_ascii=False, default=str))


def _text_value(value: object) -> str:
    text = str(value)
    if text and not any(char.isspace() or char == '"' for char in text):
        return text
    return json.dumps(text, ensure_ascii=False)  # quoted, so the line still splits on spaces


def make_formatter(log_format: LogFormat, secrets: Iterable[str]) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter(secrets)
    return RedactingFormatter(TEXT_FORMAT, secrets)


def setup_logging(level: str, secrets: Iterable[str], log_format: LogFormat = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(log_format, secrets))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
