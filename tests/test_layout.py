"""The import rules that keep the layout honest (README, "Layout")."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# bot's own subpackages are units of layering; its top-level modules (config, modes, logs,
# the two entry shims) are the shared core every package may use.
SUBPACKAGES = ("app", "jobs", "upstream", "telegram", "ops")
# `python -m bot` and `python -m bot.sandbox` are doors into a package, not core.
ENTRY_SHIMS = {"__main__": "bot.app", "sandbox": "bot.upstream"}


def unit_of(module: str) -> str | None:
    """The layering unit a dotted module belongs to, or None if it is not ours."""
    parts = module.split(".")
    if parts[0] in ("handlers", "storage"):
        return parts[0]
    if parts[0] != "bot":
        return None
    if len(parts) > 1 and parts[1] in SUBPACKAGES:
        return f"bot.{parts[1]}"
    if len(parts) > 1 and parts[1] in ENTRY_SHIMS:
        return ENTRY_SHIMS[parts[1]]
    return "bot"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> Iterator[str]:
    """Every module a file imports, at any depth (imports inside functions count too)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            # `from bot import crashpoints` names a module, not an attribute.
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def sources() -> Iterator[Path]:
    for package in ("bot", "handlers", "storage"):
        yield from (ROOT / package).rglob("*.py")


def unit_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sources():
        here = unit_of(module_name(path))
        assert here is not None
        for module in imported_modules(path):
            there = unit_of(module)
            if there and there != here and (ROOT / module.replace(".", "/")).parent.exists():
                graph.setdefault(here, set()).add(there)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return [*visiting[visiting.index(node):], node]
        if node in done:
            return None
        visiting.append(node)
        for successor in sorted(graph.get(node, ())):
            if cycle := visit(successor):
                return cycle
        visiting.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        if cycle := visit(start):
            return cycle
    return None


def test_the_packages_import_each_other_without_a_cycle() -> None:
    graph = unit_graph()
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


def test_the_shared_core_imports_nothing_of_ours() -> None:
    assert unit_graph().get("bot", set()) == set()


def test_the_cycle_finder_sees_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}) is None


DATABASE_DRIVERS = ("aiosqlite", "sqlite3")


def test_only_storage_imports_the_database_driver() -> None:
    """PostgreSQL instead of SQLite would change storage/ only (README, "Layout")."""
    offenders = sorted(
        f"{path.relative_to(ROOT)} imports {module}"
        for path in sources() if unit_of(module_name(path)) != "storage"
        for module in imported_modules(path) if module.split(".")[0] in DATABASE_DRIVERS)
    assert offenders == []


def test_storage_imports_nothing_from_bot_or_handlers() -> None:
    assert unit_graph().get("storage", set()) == set()


# README, "Layout": each package may use those before it here, and none after it.
LAYERS = ("bot", "storage", "bot.upstream", "bot.telegram", "bot.jobs", "bot.ops", "handlers",
          "bot.app")


def test_each_package_imports_only_the_layers_below_it() -> None:
    upward = [(here, there) for here, theirs in unit_graph().items() for there in theirs
              if LAYERS.index(there) > LAYERS.index(here)]
    assert upward == [], upward
