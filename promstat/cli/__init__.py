"""The ``promstat`` command: the parser, :func:`main`, and one module per subcommand.

The command lives here and only here: library modules take typed options and return values
(:class:`~promstat.apps.serve.ServeOptions`, :class:`~promstat.apps.demo.DemoOptions`,
:class:`~promstat.migration.compare.CompareOptions`, :class:`~promstat.profile.RuleProfile`),
and each ``promstat.cli.<command>`` module parses flags into them. A command module has a
``register(subparsers)`` that adds its subparser and sets ``handler`` (a callable taking the
parsed :class:`argparse.Namespace` and returning the exit code); :data:`COMMANDS` lists them.

Exit codes: 0 success, 1 any :class:`~promstat.errors.PromstatError` (printed as one line,
``promstat: error: ...``, with what to check), 2 usage errors (argparse), 130 interrupted,
141 standard output closed early (``promstat live-stat ... | head``: quietly, as ``yes | head``).

Library log records (e.g. the planner's WARNING when plan detection fails) are held while the
command runs: a failing command prints its one error line and nothing repeating it; a
succeeding one prints each warning once, after its output. ``serve`` and ``demo`` run for
long, so they print warnings as they happen; so does ``-v``, which adds INFO records.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from collections.abc import Callable, Sequence

from promstat.cli import alerts, bench, compare, dashboards, demo, live_stat, query, rules, serve
from promstat.cli._common import (
    DEFAULT_URL,
    Handler,
    LogCapture,
    Subparsers,
    error_line,
    parse_time,
    resolve_url,
    url_source,
)
from promstat.errors import PromstatError

__all__ = [
    "COMMANDS",
    "DEFAULT_URL",
    "EXIT_BROKEN_PIPE",
    "Handler",
    "Subparsers",
    "build_parser",
    "main",
    "parse_time",
    "resolve_url",
]

#: Exit status when standard output was closed early (128 + SIGPIPE, as the shell reports it).
EXIT_BROKEN_PIPE = 141

#: Subcommand registrars, in the order ``promstat --help`` lists them.
COMMANDS: list[Callable[[Subparsers], None]] = [
    query.register,
    live_stat.register,
    rules.register,
    dashboards.register,
    alerts.register,
    serve.register,
    demo.register,
    bench.register,
    compare.register,
]


def build_parser() -> argparse.ArgumentParser:
    """Build the ``promstat`` parser with every subcommand in :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="promstat",
        description="Backend.AI live statistics served from Prometheus.",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print the library's log lines (INFO and up) as they happen, failures too",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(subparsers)
    return parser


def _silence_stdout() -> None:
    # The reader went away (| head): point stdout at /dev/null so the interpreter's final
    # flush does not raise a second BrokenPipeError (the Python docs' recipe for SIGPIPE).
    with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _target(args: argparse.Namespace) -> tuple[str | None, str]:
    """The Prometheus URL a command used and where it came from (for the error line)."""
    if not getattr(args, "talks_to_prometheus", False):
        return None, ""
    try:
        return resolve_url(args.url), url_source(args.url)
    except PromstatError:  # the URL itself is what is wrong; the error says so
        return None, ""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``promstat`` command.

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 success, 1 a promstat error (one line on stderr), 130 interrupted,
        141 standard output closed early.

    Raises:
        SystemExit: with code 2 on usage errors, 0 for ``--help`` (argparse).
    """
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    streaming = args.verbose or getattr(args, "log_stream", False)
    capture = LogCapture(stream=sys.stderr if streaming else None)
    remove = capture.install(verbose=args.verbose)
    try:
        try:
            code = handler(args)
            sys.stdout.flush()  # a closed pipe fails here, not in the interpreter's exit
        except PromstatError as exc:
            capture.drop()
            url, source = _target(args)
            print(error_line(exc, url=url, source=source), file=sys.stderr)
            return 1
        capture.flush_to(sys.stderr)
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return 130
    finally:
        remove()


if __name__ == "__main__":
    sys.exit(main())
