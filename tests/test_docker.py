"""The Docker files, checked as far as a machine without a Docker engine can check them,
and the `python -m bot healthcheck` their HEALTHCHECK runs."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from bot.ops.probe import healthcheck_command
from tests.botprocess import REPO, free_port

Instruction = tuple[str, str]  # (keyword, arguments)


def instructions(dockerfile: Path) -> list[Instruction]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines()]
    found = []
    for line in lines:
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            found.append((keyword.upper(), arguments.strip()))
    return found


def stages(dockerfile: Path) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for keyword, arguments in instructions(dockerfile):
        if keyword == "FROM":
            result.append([])
        result[-1].append((keyword, arguments))
    return result


def test_dockerfile_builds_in_stages_and_runs_python_itself_as_a_user() -> None:
    build, runtime = stages(REPO / "Dockerfile")
    runtime_args = dict(runtime)

    assert build[0][1].endswith("-slim AS build") and runtime[0][1].endswith("-slim")
    assert runtime_args["USER"] not in {"root", "0"}
    # Exec form: Python is PID 1, so `docker stop`'s SIGTERM reaches the bot.
    assert json.loads(runtime_args["CMD"]) == ["python", "-m", "bot"]
    health = runtime_args["HEALTHCHECK"]
    assert json.loads(health[health.index("CMD") + 3:]) == ["python", "-m", "bot", "healthcheck"]
    assert json.loads(runtime_args["VOLUME"]) == ["/app/data"]
    assert "DATABASE_PATH=/app/data/" in runtime_args["ENV"]


def test_dockerfile_checks_the_catalogs_and_copies_every_package() -> None:
    build, runtime = stages(REPO / "Dockerfile")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {name.rstrip("*") for name in
                pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}

    assert any("make_i18n()" in arguments for keyword, arguments in build if keyword == "RUN")
    assert any("tomllib" in arguments for keyword, arguments in build if keyword == "RUN")
    copied = {arguments.split()[-1] for keyword, arguments in runtime if keyword == "COPY"}
    assert packages | {"locales"} <= copied


def test_compose_reads_env_and_keeps_the_database_in_a_named_volume() -> None:
    compose = (REPO / "docker-compose.yml").read_text()

    assert re.search(r"^\s+env_file: \.env$", compose, re.M)
    assert re.search(r"^\s+- bot-data:/app/data$", compose, re.M)
    assert re.search(r"^volumes:\n  bot-data:", compose, re.M)
    assert "DATABASE_PATH: /app/data/" in compose


def compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 check=False).returncode == 0:
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    return [standalone] if standalone else None


def test_docker_compose_config_parses(tmp_path: Path) -> None:
    command = compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    shutil.copy(REPO / "docker-compose.yml", tmp_path)
    (tmp_path / ".env").write_text("BOT_TOKEN=1:T\nCHATINFO_API_KEY=k\nWEB_PORT=9090\n")

    result = subprocess.run([*command, "config"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=False)

    assert result.returncode == 0, result.stderr
    assert "bot-data:/app/data" in result.stdout
    assert "127.0.0.1:9090:8080" in result.stdout


@pytest.fixture
async def health_server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[int]]:
    """A /healthz answering the status the test puts in the list."""
    status = [200]

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "?"}, status=status[0])

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    monkeypatch.setenv("WEB_HOST", "0.0.0.0")  # as in the image: it asks 127.0.0.1
    monkeypatch.setenv("WEB_PORT", str(port))
    try:
        yield status
    finally:
        await runner.cleanup()


async def test_healthcheck_command_follows_the_status_of_healthz(
    health_server: list[int],
) -> None:
    assert await asyncio.to_thread(healthcheck_command) == 0
    health_server[0] = 503
    assert await asyncio.to_thread(healthcheck_command) == 1


def test_healthcheck_command_fails_when_nothing_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_HOST", "127.0.0.1")
    monkeypatch.setenv("WEB_PORT", str(free_port()))

    assert healthcheck_command() == 1
