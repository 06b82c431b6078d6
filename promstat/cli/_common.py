"""What the ``promstat`` command modules share: options, time parsing, the one-line error.

* :func:`add_url_option` / :func:`resolve_url`: ``--url``, else ``$PROMSTAT_URL``, else
  :data:`DEFAULT_URL`; a URL ending in ``/api/v1`` is refused before anything is sent.
* :func:`parse_time`, :func:`positive_seconds`, :func:`positive_int`: argparse ``type=``
  functions (a bad value is a usage error, exit 2).
* :func:`error_line`: a :class:`~promstat.errors.PromstatError` as the one line
  ``promstat: error: ...``: the message collapsed to one line and cut, plus what to check
  (the URL and where it came from, "is it Prometheus?", "drop the /api/v1 suffix").
* :class:`LogCapture`: holds the library's log records while a command runs, so a failure
  prints one line, not a logger line and then the same text again.
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TextIO, TypeAlias

from promstat.api import TimeArg
from promstat.errors import (
    APIError,
    ConfigError,
    PromstatError,
    RequestTimeoutError,
    ResponseDecodeError,
    RuleError,
    TransportError,
)

__all__ = [
    "DEFAULT_URL",
    "MAX_DETAIL",
    "DefaultsHelpFormatter",
    "Handler",
    "LogCapture",
    "Subparsers",
    "add_url_option",
    "as_unix",
    "error_line",
    "first",
    "one_line",
    "parse_time",
    "positive_int",
    "positive_seconds",
    "resolve_url",
    "url_source",
]

#: Prometheus URL used when neither ``--url`` nor ``$PROMSTAT_URL`` is set.
DEFAULT_URL = "http://127.0.0.1:9090"

#: Characters of a server's or library's message kept in an error line.
MAX_DETAIL = 200

#: A subcommand's entry point: parsed arguments in, exit code out.
Handler: TypeAlias = Callable[[argparse.Namespace], int]
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


# ---------------------------------------------------------------------- argument types


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, except where there is none to show.

    argparse's own formatter also prints ``(default: None)`` for required options and
    ``(default: False)`` for flags, which says nothing; help texts that name their default
    themselves (``(default: ...)``) are left alone.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or action.required:
            return text
        if "default:" in text or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action) or text


def parse_time(text: str) -> TimeArg:
    """Parse ``--time``: Unix seconds (``1700000000.5``) or RFC 3339 (``2023-11-14T22:13:20Z``).

    A timestamp without an offset is taken as UTC.

    Raises:
        argparse.ArgumentTypeError: neither form (argparse turns it into exit code 2).
    """
    try:
        return float(text)
    except ValueError:
        pass
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}: use Unix seconds or RFC 3339 (2023-11-14T22:13:20Z)"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def as_unix(value: TimeArg | None) -> float | None:
    """A parsed ``--time`` as Unix seconds (``None`` stays ``None``: now)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value)


def positive_seconds(text: str) -> float:
    """argparse type: a number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: a number of seconds > 0")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: an integer >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


# ---------------------------------------------------------------------- the URL


def add_url_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--url`` (default: ``$PROMSTAT_URL``, else :data:`DEFAULT_URL`)."""
    parser.add_argument(
        "--url",
        default=None,
        help=f"Prometheus base URL, may include a path prefix, without /api/v1 "
        f"(default: $PROMSTAT_URL or {DEFAULT_URL})",
    )


def url_source(url: str | None) -> str:
    """Where the URL :func:`resolve_url` picks comes from: ``--url``, ``$PROMSTAT_URL`` or
    ``default``."""
    if url:
        return "--url"
    if os.environ.get("PROMSTAT_URL"):
        return "$PROMSTAT_URL"
    return "default"


def _check(url: str | None, source: str) -> str:
    """What to check about the URL, in words."""
    if not url:
        return ""
    if source == "default":
        return f"set --url or $PROMSTAT_URL (neither is set, so the default {url} was used)"
    if source:
        return f"check {source} ({url})"
    return f"check --url / $PROMSTAT_URL ({url})"


_API_SUFFIX = re.compile(r"/api/v1(/(query(_range)?|rules|series|labels?)?)?/*$")


def resolve_url(url: str | None) -> str:
    """Return ``url``, else ``$PROMSTAT_URL``, else :data:`DEFAULT_URL`.

    Raises:
        ConfigError: the URL ends in ``/api/v1`` (promstat adds it: the request would go to
            ``/api/v1/api/v1/query``), or has no ``http://``/``https://`` scheme.
    """
    chosen = url or os.environ.get("PROMSTAT_URL") or DEFAULT_URL
    where = {"default": "the default"}.get(url_source(url), url_source(url))
    stripped = chosen.split("?", 1)[0]
    match = _API_SUFFIX.search(stripped)
    if match:
        base = stripped[: match.start()] or "http://HOST:9090"
        raise ConfigError(
            f"{chosen} (from {where}) ends in {match.group(0).rstrip('/')}: drop the /api/v1 "
            f"suffix, promstat adds it (use {base})"
        )
    if not re.match(r"^https?://[^/]", chosen):
        raise ConfigError(
            f"{chosen!r} (from {where}) is not an http:// or https:// URL; "
            f"e.g. {DEFAULT_URL}"
        )
    return chosen


# ---------------------------------------------------------------------- the error line


def one_line(text: str, limit: int = MAX_DETAIL) -> str:
    """``text`` with its whitespace collapsed, cut to ``limit`` characters (``...`` marks it)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3].rstrip() + "..."


_DNS = ("name or service not known", "nodename nor servname", "temporary failure in name",
        "no address associated", "getaddrinfo failed", "name does not resolve")  # fmt: skip
_REFUSED = ("connect call failed", "connection refused", "errno 111", "errno 61",
            "error 111 connecting", "error 61 connecting")  # fmt: skip  # redis-py's wording


def _refused(exc: BaseException) -> bool:
    """Whether a ConnectionRefusedError is anywhere in the cause chain (any client's wording)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ConnectionRefusedError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _html_title(body: str) -> str | None:
    match = re.search(r"<title[^>]*>(.*?)</title>", body, re.IGNORECASE | re.DOTALL)
    if match:
        return " ".join(html.unescape(match.group(1)).split()) or None
    match = re.search(r"<h1[^>]*>(.*?)</h1>", body, re.IGNORECASE | re.DOTALL)
    if match:
        return " ".join(html.unescape(match.group(1)).split()) or None
    return None


def _looks_html(text: str) -> bool:
    head = text.lstrip()[:200].lower()
    return head.startswith(("<!doctype html", "<html", "<head", "<body", "<h1", "<title"))


def _body_of(exc: PromstatError) -> tuple[int | None, str]:
    """The HTTP status and the (start of the) body an error carries, if any."""
    if isinstance(exc, ResponseDecodeError):
        return exc.status, exc.body_excerpt.decode("utf-8", "replace")
    if isinstance(exc, APIError):
        return exc.status, exc.error
    return None, ""


def error_line(exc: PromstatError, *, url: str | None = None, source: str = "") -> str:
    """The one line ``promstat: error: ...`` for ``exc``, with what to check.

    Args:
        exc: the error.
        url: the Prometheus URL the command used (``None``: it talked to no Prometheus).
        source: where ``url`` came from (:func:`url_source`).
    """
    check = _check(url, source)
    status, body = _body_of(exc)
    text = str(exc)
    lowered = text.lower()
    if isinstance(exc, TransportError) and (url or exc.url):
        # Another server's address (compare's --redis) is named as it is, not as Prometheus.
        elsewhere = bool(exc.url) and not (url and exc.url.startswith(url.rstrip("/")))
        target, what = (exc.url, "the server") if elsewhere else (url, "Prometheus")
        if elsewhere:
            check = "check that address"
        if isinstance(exc, RequestTimeoutError):
            message = f"no answer from {target} within {exc.timeout or '?'}s"
            hint = f"is {what} up and reachable? (raise --timeout if it is only slow) {check}"
        elif any(s in lowered for s in _DNS):
            message = f"cannot resolve the host of {target}"
            hint = f"is the host name right? {check}"
        elif _refused(exc) or any(s in lowered for s in _REFUSED):
            message = f"nothing is listening at {target} (connection refused)"
            hint = f"is {what} running there, on that port? {check}"
        else:
            message = f"cannot reach {target}: {one_line(text)}"
            hint = check
    elif status is not None and _looks_html(body):
        title = _html_title(body) or f"HTTP {status}"
        server = " (nginx)" if "nginx" in body.lower() else ""
        if status in (502, 503, 504):
            message = f"a proxy{server} answered HTTP {status} with an HTML page: {title}"
            hint = f"Prometheus behind the proxy is down or unreachable; {check}"
        else:
            message = f"HTTP {status} with an HTML page{server}: {title}"
            hint = f"is it Prometheus? (promstat serve's GraphQL port is not); {check}"
    elif status == 404 or (isinstance(exc, ResponseDecodeError) and url):
        detail = one_line(body) if body else one_line(text)
        message = f"HTTP {status} for {getattr(exc, 'url', '') or url}: {detail}"
        hint = (
            "is it Prometheus? (promstat serve's GraphQL port is not; a Prometheus behind a "
            f"path prefix needs the prefix in the URL); {check}"
        )
    elif isinstance(exc, ConfigError | RuleError):
        # promstat's own words about an option, or promtool's verdict on a rule file: they
        # say what to change, so they are kept (up to 1,000 characters), on one line.
        message, hint = one_line(text, 5 * MAX_DETAIL), ""
    else:
        message, hint = one_line(text), ""
    line = f"promstat: error: {message}"
    hint = hint.strip().rstrip(";")
    return f"{line}; {hint}" if hint else line


# ---------------------------------------------------------------------- logging


class LogCapture(logging.Handler):
    """Holds the ``promstat`` loggers' WARNING (and worse) records while a command runs.

    Without it Python's last-resort handler prints a library WARNING such as "kernel plan
    detection failed ... ConnectError" and then the command prints the same failure as its
    error line. With it the command decides: on success :meth:`flush_to` prints each
    distinct warning once (``promstat: warning: ...``, one line); on failure :meth:`drop`
    forgets them, because they describe the same failure the error line explains (a failed
    detection, a failed query: the library logs each failure it survives, the command did not
    survive it). ``-v`` streams every record as it happens, for the whole story.

    A ``stream`` prints records as they come instead (long-running commands: serve, demo;
    and ``-v``), still one line each.
    """

    def __init__(self, *, stream: TextIO | None = None, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []
        self.stream = stream

    def drop(self) -> None:
        """Forget the kept records (the command failed: its error line says what matters)."""
        self.records.clear()

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the record (or print it at once when streaming)."""
        if self.stream is not None:
            self.stream.write(self._line(record) + "\n")
            self.stream.flush()
        else:
            self.records.append(record)

    @staticmethod
    def _line(record: logging.LogRecord) -> str:
        level = record.levelname.lower()
        return f"promstat: {level}: {one_line(record.getMessage(), 2 * MAX_DETAIL)}"

    def flush_to(self, out: TextIO) -> None:
        """Print each distinct kept record once, one line each."""
        seen: set[str] = set()
        for record in self.records:
            line = self._line(record)
            if line not in seen:
                seen.add(line)
                out.write(line + "\n")
        self.records.clear()

    def install(self, verbose: bool = False) -> Callable[[], None]:
        """Attach to the ``promstat`` logger; returns the function that detaches it.

        ``verbose``: also keep INFO records (``-v``).
        """
        logger = logging.getLogger("promstat")
        saved = (logger.level, logger.propagate)
        if verbose:
            self.setLevel(logging.INFO)
        logger.addHandler(self)
        logger.setLevel(self.level)
        # The command prints the library's records itself: not the root logger's handlers too
        # (nor Python's last-resort handler, which would print them a second time).
        logger.propagate = False

        def remove() -> None:
            logger.removeHandler(self)
            logger.setLevel(saved[0])
            logger.propagate = saved[1]

        return remove


def first(values: Sequence[str], n: int) -> str:
    """The first ``n`` values joined with ``, `` and ``...`` when there are more."""
    shown = ", ".join(values[:n])
    return shown + (f", ... ({len(values) - n} more)" if len(values) > n else "")
