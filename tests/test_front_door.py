"""What a newcomer relies on: README's commands, CI running them, every setting documented."""

from __future__ import annotations

import re

from bot.config import Settings
from tests.botprocess import REPO


def readme_block_after(heading: str) -> str:
    readme = (REPO / "README.md").read_text()
    match = re.search(rf"## {heading}\n.*?```sh\n(.*?)\n```", readme, re.S)
    assert match, f"README has no command under '## {heading}'"
    return match.group(1)


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    command = readme_block_after("Test it")
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert command in ci_lines


def test_every_setting_is_documented_in_env_example_and_readme() -> None:
    example = (REPO / ".env.example").read_text()
    readme = (REPO / "README.md").read_text()
    for name in Settings.model_fields:
        assert re.search(rf"^{name.upper()}=", example, re.M), f"{name.upper()} not in .env.example"
        assert f"`{name.upper()}`" in readme, f"{name.upper()} not in README"


def test_secrets_stay_out_of_git() -> None:
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert ".env" in ignored
