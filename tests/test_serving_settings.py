"""The web and webhook settings: checked at start, each problem named, exit 2 (or 1 when the
port is taken)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bot.config import Settings, describe_problems
from tests.botprocess import REPO
from tests.test_startup import run_bot


def settings(**values: Any) -> Settings:
    return Settings(bot_token="1:T", chatinfo_api_key="k", **values)


def problems(**values: Any) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        settings(**values)
    return describe_problems(caught.value)


def test_defaults_serve_by_long_polling_on_port_8080() -> None:
    defaults = settings()

    assert defaults.webhook_url is None
    assert (defaults.web_host, defaults.web_port, defaults.log_format) == ("0.0.0.0", 8080, "text")


def test_the_webhook_path_comes_from_its_url() -> None:
    webhook = settings(webhook_url="https://bot.example.com/tg/updates", webhook_secret="s3_-")

    assert webhook.webhook_path == "/tg/updates"


def test_a_webhook_needs_a_secret_of_telegrams_alphabet() -> None:
    assert problems(webhook_url="https://bot.example.com/tg") == [
        "WEBHOOK_SECRET: is required when WEBHOOK_URL is set"]
    assert problems(webhook_url="https://bot.example.com/tg", webhook_secret="") == [
        "WEBHOOK_SECRET: is required when WEBHOOK_URL is set"]
    for bad in ("has space", "ü", "x" * 257):
        assert problems(webhook_url="https://bot.example.com/tg", webhook_secret=bad) == [
            "WEBHOOK_SECRET: must be 1-256 characters of A-Z, a-z, 0-9, _ and -"]


def test_a_webhook_url_must_be_https_unless_a_local_bot_api_server_calls_it() -> None:
    assert problems(webhook_url="http://bot.example.com/tg", webhook_secret="s") == [
        "WEBHOOK_URL: must be an https URL (Telegram sends updates only over HTTPS)"]
    local = settings(webhook_url="http://bot:8080/tg", webhook_secret="s",
                     telegram_api_url="http://telegram-bot-api:8081")
    assert local.webhook_path == "/tg"


def test_the_webhook_cannot_take_the_health_or_metrics_path() -> None:
    assert problems(webhook_url="https://bot.example.com/metrics", webhook_secret="s") == [
        "WEBHOOK_URL: its path must not be /healthz or /metrics"]


def test_bad_port_and_log_format_are_named() -> None:
    assert [line.split(":")[0] for line in problems(web_port=70000, log_format="yaml")] == [
        "LOG_FORMAT", "WEB_PORT"]
    assert settings(log_format="JSON").log_format == "json"


def test_a_webhook_without_its_secret_stops_the_bot_with_exit_2(tmp_path: Path) -> None:
    result = run_bot(tmp_path, BOT_TOKEN="1:SECRET-TOKEN", CHATINFO_API_KEY="k",
                     WEBHOOK_URL="https://bot.example.com/tg")

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "config error: WEBHOOK_SECRET: is required when WEBHOOK_URL is set"]


def test_a_taken_port_stops_the_bot_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_bot(tmp_path, BOT_TOKEN="1:T", CHATINFO_API_KEY="k",
                         TELEGRAM_API_URL="http://127.0.0.1:9", WEB_HOST="127.0.0.1",
                         WEB_PORT=str(port))

    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"startup error: cannot listen on 127.0.0.1:{port}: Address already in use")
    assert "Traceback" not in result.stderr


def test_a_copy_of_env_example_with_the_two_required_values_is_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    example = (REPO / ".env.example").read_text()
    filled = example.replace("\nBOT_TOKEN=\n", "\nBOT_TOKEN=1:T\n").replace(
        "\nCHATINFO_API_KEY=\n", "\nCHATINFO_API_KEY=k\n")
    (tmp_path / ".env").write_text(filled)
    monkeypatch.chdir(tmp_path)
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)

    loaded = Settings()

    assert loaded.telegram_api_url is None and loaded.webhook_url is None
    assert loaded.webhook_secret is None
