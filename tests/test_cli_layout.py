"""The command lives in promstat/cli/ only: no argparse, and no import of the CLI, elsewhere."""

from __future__ import annotations

import ast
from pathlib import Path

import promstat

PACKAGE = Path(promstat.__file__).resolve().parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_argparse_and_the_cli_are_imported_only_by_the_cli() -> None:
    """Library modules take typed options; only promstat/cli parses command lines (and only
    the two entry points, promstat/__main__.py and the cli itself, import it)."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "cli":
            continue
        names = _imports(path)
        if "argparse" in names:
            offenders.append(f"{rel}: imports argparse")
        if rel != Path("__main__.py") and any(
            n == "promstat.cli" or n.startswith("promstat.cli.") for n in names
        ):
            offenders.append(f"{rel}: imports promstat.cli")
    assert offenders == []


def test_one_module_per_command() -> None:
    """Each subcommand has its module, registered through COMMANDS in --help order."""
    from promstat.cli import COMMANDS

    modules = [register.__module__.rsplit(".", 1)[1] for register in COMMANDS]
    assert modules == [
        "query", "live_stat", "rules", "dashboards", "alerts", "serve", "demo", "bench",
        "compare",
    ]  # fmt: skip
    for name in modules:
        assert (PACKAGE / "cli" / f"{name}.py").is_file()
