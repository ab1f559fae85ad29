"""Log lines: one per event, text or JSON, with the job's fields, and never a secret."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from bot.logs import job_event, make_formatter, setup_logging
from bot.upstream.client import ChatinfoClient
from bot.upstream.sandbox import FakeChatinfo

TOKEN = "123:TOKEN-secret"
KEY = 'KEY-with-"quotes"-and\\backslash'
SECRETS = [TOKEN, KEY]


@dataclass(frozen=True)
class AJob:
    id: int = 7
    user_id: int = 501
    mode: str = "poems"


def a_job() -> AJob:
    return AJob()


def record(message: str, *args: object, extra: dict[str, object] | None = None,
           error: Exception | None = None) -> logging.LogRecord:
    logger = logging.getLogger("bot.jobs.runner")
    exc_info = (type(error), error, error.__traceback__) if error else None
    return logger.makeRecord("bot.jobs.runner", logging.INFO, __file__, 1, message, args, exc_info,
                             extra=extra)


def failure() -> Exception:
    try:
        raise RuntimeError(f"POST https://api.telegram.org/bot{TOKEN}/getMe with {KEY}")
    except RuntimeError as error:
        return error


def test_json_line_has_time_level_logger_message_and_the_jobs_fields() -> None:
    line = make_formatter("json", SECRETS).format(
        record("job %s delivered", 7, extra=job_event(a_job(), "delivered")))

    assert "\n" not in line
    entry = json.loads(line)
    assert entry.pop("time").endswith("+00:00")
    assert entry == {"level": "INFO", "logger": "bot.jobs.runner", "message": "job 7 delivered",
                     "job_id": 7, "user_id": 501, "mode": "poems", "outcome": "delivered"}


def test_text_line_ends_with_the_jobs_fields() -> None:
    line = make_formatter("text", SECRETS).format(
        record("job %s failed", 7, extra=job_event(a_job(), "timeout")))

    assert line.endswith("INFO bot.jobs.runner: job 7 failed job_id=7 user_id=501 mode=poems "
                         "outcome=timeout")


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_secrets_are_redacted_in_messages_fields_and_tracebacks(log_format: str) -> None:
    formatter = make_formatter("json" if log_format == "json" else "text", SECRETS)
    line = formatter.format(record("calling with %s", KEY, extra={"url": f"/bot{TOKEN}/x"},
                                   error=failure()))

    assert TOKEN not in line and KEY not in line
    assert json.dumps(KEY)[1:-1] not in line  # nor in its JSON-escaped form
    assert "***" in line
    if log_format == "json":
        entry = json.loads(line)
        assert "RuntimeError" in entry["exception"] and entry["url"] == "/bot***/x"
    else:
        assert len(line.splitlines()) > 1  # the traceback follows, redacted too


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


async def test_httpx_request_logging_stays_quiet_at_debug(
    root_logging: None, caplog: pytest.LogCaptureFixture,
) -> None:
    setup_logging("DEBUG", SECRETS, "json")
    async with FakeChatinfo(solve_time=0.0) as server:
        client = ChatinfoClient(server.base_url, "test-key")
        try:
            with caplog.at_level(logging.DEBUG):
                await client.units()
        finally:
            await client.close()

    assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("httpcore").getEffectiveLevel() == logging.WARNING
    assert not [r for r in caplog.records if r.name.startswith(("httpx", "httpcore"))]
    assert all("test-key" not in r.getMessage() for r in caplog.records)
