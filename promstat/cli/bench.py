"""``promstat bench [ARGS...]``: run ``benchmarks/run.py`` from a source checkout."""

from __future__ import annotations

import argparse

from promstat.cli._common import Subparsers
from promstat.errors import ConfigError

__all__ = ["register", "run"]


def register(subparsers: Subparsers) -> None:
    """Register ``promstat bench``."""
    p = subparsers.add_parser(
        "bench",
        help="run the benchmarks (needs a source checkout)",
        description="Run benchmarks/run.py from a source checkout; arguments pass through.",
    )
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for benchmarks.run")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``promstat bench``.

    Raises:
        ConfigError: not run from a source checkout (no ``benchmarks`` package).
    """
    import importlib
    import importlib.util

    try:
        found = importlib.util.find_spec("benchmarks.run") is not None
    except ModuleNotFoundError:  # no "benchmarks" package at all
        found = False
    if not found:
        raise ConfigError(
            "the benchmarks live in the source checkout: run `./dev bench` from there"
        )
    runner = importlib.import_module("benchmarks.run")
    return int(runner.main(list(args.args)))
