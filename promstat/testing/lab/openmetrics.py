"""OpenMetrics text, read sample by sample, and converted to the Prometheus text format."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from promstat.errors import LabError

__all__ = [
    "LABEL_RE",
    "iter_openmetrics",
    "openmetrics_to_prometheus_text",
]


LABEL_RE = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"')


def _split_sample(line: str) -> tuple[str, str, str] | None:
    """Split an exposition sample line into ``(name, labels_text, rest)``; None if malformed."""
    brace = line.find("{")
    space = line.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        # Walk to the closing brace, skipping quoted label values (they may hold "}" or " ").
        i, in_quote = brace + 1, False
        while i < len(line):
            ch = line[i]
            if in_quote:
                if ch == "\\":
                    i += 1
                elif ch == '"':
                    in_quote = False
            elif ch == '"':
                in_quote = True
            elif ch == "}":
                return line[:brace], line[brace + 1 : i], line[i + 1 :]
            i += 1
        return None
    if space == -1:
        return None
    return line[:space], "", line[space:]


def iter_openmetrics(
    text: str | Path,
) -> Iterator[tuple[str, str, str, str | None]]:
    """Yield ``(name, labels_text, value, timestamp_seconds)`` for each sample line."""
    if isinstance(text, Path):
        with open(text, encoding="utf-8") as fh:
            yield from _iter_openmetrics_lines(fh)
    else:
        yield from _iter_openmetrics_lines(text.splitlines())


def _iter_openmetrics_lines(lines: Iterable[str]) -> Iterator[tuple[str, str, str, str | None]]:
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = _split_sample(line)
        if parts is None:
            raise LabError(f"malformed OpenMetrics sample line: {line[:200]!r}")
        name, labels, rest = parts
        # Drop an exemplar ("value ts # {...} ...") before splitting value and timestamp.
        tokens = rest.split(" # ", 1)[0].split()
        if not tokens:
            raise LabError(f"OpenMetrics sample line without a value: {line[:200]!r}")
        yield name.strip(), labels, tokens[0], tokens[1] if len(tokens) > 1 else None


def openmetrics_to_prometheus_text(text: str | Path) -> Iterator[str]:
    """Convert OpenMetrics exposition to Prometheus text lines with millisecond timestamps.

    Comment lines (``# TYPE``, ``# HELP``, ``# UNIT``, ``# EOF``) and exemplars are dropped;
    the result is what VictoriaMetrics' ``/api/v1/import/prometheus`` accepts.

    Args:
        text: the OpenMetrics text, or a :class:`~pathlib.Path` to a file holding it.

    Returns:
        An iterator of lines, each ending with ``"\\n"``.

    Raises:
        LabError: a sample line is malformed.
    """
    for name, labels, value, ts in iter_openmetrics(text):
        head = f"{name}{{{labels}}}" if labels else name
        if ts is None:
            yield f"{head} {value}\n"
        else:
            yield f"{head} {value} {round(float(ts) * 1000)}\n"
