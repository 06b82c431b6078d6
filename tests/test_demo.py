"""``promstat demo``: runs the real pipeline, shows real numbers, and leaves nothing behind.

The subprocess tests run ``python -m promstat demo`` (what the ``promstat demo`` entry point
runs) and then check that its temporary directory is gone and that no process
still refers to it (a ``/proc`` scan: the managed Prometheus keeps its data directory inside
the demo's temporary directory).
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import selectors
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import promstat
from promstat.apps.demo import DemoOptions, PageView, format_bytes, render_view, run_demo
from promstat.cli import main as cli_main
from promstat.testing import lab

REPO = Path(promstat.__file__).resolve().parents[1]
SMALL = ["--agents", "2", "--kernels-per-agent", "5", "--interval", "1s"]
ROW = re.compile(
    r"^(?P<kernel>[0-9a-f]{8})\s+(?P<agent>i-sim-\d{4})\s+(?P<cpu>[\d.]+)\s+"
    r"(?P<mem>[\d.]+\w*) / (?P<limit>[\d.]+\w*)\s+(?P<rx>\S+/s)\s+(?P<tx>\S+/s)\s+(?P<gpu>\S+)$"
)
#: A terminated kernel's row: the same cells plus its termination time.
ENDED = re.compile(ROW.pattern[:-1] + r"\s+(?P<ended>\d\d:\d\d:\d\d)$")


#: Multipliers of format_bytes' units, to read the view's rates back as numbers.
_UNITS = {"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}


def _rate(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(\w*)/s", text)
    assert match, text
    return float(match[1]) * _UNITS[match[2]]


def _live_pages(output: str) -> list[dict[str, re.Match[str]]]:
    """Each refresh's live kernel rows (not the terminated ones), by short kernel id."""
    pages: list[dict[str, re.Match[str]]] = []
    live = False
    for line in output.splitlines():
        if re.match(r"^\[\d+\] ", line):
            pages.append({})
            live = True
        elif line.startswith("recently terminated"):
            live = False
        elif live and (m := ROW.match(line)):
            pages[-1][m["kernel"]] = m
    return pages


def _assert_steady(pages: list[dict[str, re.Match[str]]]) -> int:
    """Every kernel's CPU and network rates are steady across the pages it appears on: ``0``
    only before its second measurement (a prefix), then non-zero and unchanged (network
    within 1%: byte counters are whole bytes), never alternating; from its third page on
    (two refreshes later: several measurement intervals) it is non-zero.

    Returns how many kernels showed the same non-zero rates on at least two pages.
    """
    steady = 0
    for kernel in {k for page in pages for k in page}:
        seen = [page[kernel] for page in pages if kernel in page]
        lines = [m.group(0) for m in seen]
        shown = [m for m in seen if float(m["cpu"]) > 0]
        assert seen[len(seen) - len(shown) :] == shown, lines
        assert all(float(m["cpu"]) > 0 for m in seen[2:]), lines
        for m in shown:
            assert m["cpu"] == shown[0]["cpu"], lines
            for col in ("rx", "tx"):
                first = _rate(shown[0][col])
                assert first > 0 and _rate(m[col]) == pytest.approx(first, rel=0.01), lines
        steady += len(shown) >= 2
    return steady


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else "")}


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "promstat", "demo", *SMALL, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=_env(),
    )


def _temp_dir(output: str) -> Path:
    match = re.search(r"^\s+temp dir:\s+(\S+)$", output, re.MULTILINE)
    assert match, output
    return Path(match.group(1))


def _processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (a /proc scan, no psutil)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def _assert_clean(output: str) -> None:
    tmp = _temp_dir(output)
    assert not tmp.exists(), f"{tmp} was not removed"
    assert _processes_mentioning(str(tmp)) == []
    assert "servers and temp files removed" in output


def _read_until(proc: subprocess.Popen[str], marker: str, *, limit: float = 180.0) -> str:
    """Read the child's stdout until a line starts with ``marker`` (or the child exits)."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    seen: list[str] = []
    try:
        while True:
            # A generous safety net against a hung child, not a speed requirement.
            if not sel.select(timeout=limit):
                pytest.fail("demo printed nothing for a long time:\n" + "".join(seen))
            line = proc.stdout.readline()
            if not line:
                return "".join(seen)
            seen.append(line)
            if line.startswith(marker):
                return "".join(seen)
    finally:
        sel.close()


@pytest.mark.slow
def test_demo_runs_for_its_duration_and_cleans_up() -> None:
    """--duration 18 shows kernel rows with real numbers, a recorded plan, terminated kernels
    with their final stats (non-zero rates: taken before the termination), and exits 0 clean.

    The agents measure every 2 s (twice the 1 s scrape interval, on their own timer), so
    Prometheus stores each measurement twice: steady kernels must still show the same
    non-zero CPU and network rates on consecutive pages (not 0, not alternating)."""
    proc = _start("--duration", "18", "--lifetime", "12", "--table-every", "1")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err + out
    assert "agents measure every 2s" in out
    rows = [m for line in out.splitlines() if (m := ROW.match(line))]
    assert rows, out
    assert any(float(m["cpu"]) > 0 for m in rows), out
    assert any(m["rx"] != "0/s" for m in rows), out
    pages = _live_pages(out)
    assert len(pages) >= 2, out
    assert _assert_steady(pages) >= 3, out
    summaries = [line for line in out.splitlines() if re.match(r"^\[\d+\] ", line)]
    assert summaries, out
    assert all("page of 10/10 kernels" in s and "Prometheus quer" in s for s in summaries)
    assert any("plan recorded/" in s for s in summaries), out
    ended = [m for line in out.splitlines() if (m := ENDED.match(line))]
    assert ended, out
    assert "final stats from Prometheus history" in out
    assert any("final/" in s for s in summaries), out
    assert all(float(m["cpu"]) > 0 and m["rx"] != "0/s" for m in ended), out
    assert "curl -s" in out and "/graphql" in out
    _assert_clean(out)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_demo_stops_on_signal(sig: signal.Signals) -> None:
    """Ctrl-C (SIGINT) and SIGTERM stop the demo with exit 0 and nothing left behind."""
    proc = _start()
    head = _read_until(proc, "[1]")
    assert proc.poll() is None, head
    proc.send_signal(sig)
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    _assert_clean(head + rest)


@pytest.mark.slow
async def test_demo_in_process_terminal_view() -> None:
    """On a terminal the view redraws in place and lists the configured number of rows."""

    stop = asyncio.Event()

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

        def write(self, text: str) -> int:
            if "[2] " in text:  # the second refresh: enough seen, stop the demo
                stop.set()
            return super().write(text)

    out = Terminal()
    options = DemoOptions(
        agents=1, kernels_per_agent=6, interval="1s", measure_interval="3s", rows=2, refresh=0.5
    )
    # Session-scoped servers of other tests may be running; the demo must add none.
    already = {id(p) for p in lab.running_processes()}
    assert await run_demo(options, out, stop=stop) == 0
    text = out.getvalue()
    assert "\x1b[H\x1b[2J" in text
    assert "... 4 more kernels on this page" in text
    assert "scrape + rules every 1s, agents measure every 3s" in text
    assert [p for p in lab.running_processes() if id(p) not in already] == []
    assert not _temp_dir(text).exists()


@pytest.mark.slow
async def test_demo_not_a_terminal_prints_one_line_between_tables() -> None:
    """Into a file or a pipe the demo prints the table on the first refresh (and every
    PLAIN_TABLE_EVERY-th), and one summary line for each refresh in between."""
    from promstat.apps.demo import PLAIN_TABLE_EVERY

    stop = asyncio.Event()

    class Log(io.StringIO):
        def write(self, text: str) -> int:
            if text.startswith("[4] "):  # three refreshes after the first: enough seen
                stop.set()
            return super().write(text)

    out = Log()
    options = DemoOptions(agents=1, kernels_per_agent=3, interval="1s", refresh=0.2)
    assert await run_demo(options, out, stop=stop) == 0
    lines = out.getvalue().splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(r"^\[\d+\] ", line)]
    assert len(starts) >= 4 and PLAIN_TABLE_EVERY > 3, lines
    first, second, third, fourth = starts[:4]
    assert lines[first + 1].split()[:2] == ["KERNEL", "AGENT"]  # the first refresh: a table
    assert second - first > 4
    assert third == second + 1 and fourth == third + 1  # in between: one line per refresh
    assert all("page of 3/3 kernels" in lines[i] for i in (second, third, fourth))


@pytest.mark.parametrize("bad", ["0s", "soon", "-1s"])
def test_measure_interval_must_be_a_positive_duration(
    bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--measure-interval`` is checked by the parser: usage error (exit 2) naming it."""
    with pytest.raises(SystemExit) as exc:
        cli_main(["demo", "--measure-interval", bad])
    assert exc.value.code == 2
    assert "--measure-interval" in capsys.readouterr().err


async def test_missing_prometheus_prints_the_install_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a prometheus binary the demo prints the one-line install hint and returns 1."""
    monkeypatch.setenv("PATH", str(tmp_path))
    out = io.StringIO()
    code = await run_demo(
        DemoOptions(duration=1, agents=1, kernels_per_agent=1), out, stop=asyncio.Event()
    )
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "apt-get install -y prometheus" in err
    assert "servers and temp files removed" in out.getvalue()


def test_render_view_formats_a_page() -> None:
    """The view shows short ids, CPU %, memory used/limit, network rates, GPU and the cost."""
    stat = {
        "cpu_util": {"pct": "87.52"},
        "mem": {"current": "1181116006", "capacity": "4294967296"},
        "net_rx": {"current": "2046.356"},
        "net_tx": {"current": "1048576"},
        "cuda_util": {"pct": "87"},
    }
    view = PageView(
        number=3,
        rows=[
            ("3467e9c9-0c47-4825-af52-bd94bb872211", "i-sim-0000", stat),
            ("0a632b44-0000-0000-0000-000000000000", "i-sim-0001", None),
        ],
        total_count=10,
        seconds=0.0123,
        queries=1,
        response_bytes=2048,
        cache_hits=0,
        plan="recorded/filtered",
        ended=[("5a1e0000-0000-0000-0000-000000000000", "i-sim-0002", "11:59:58", stat)],
        ended_total=7,
    )
    lines = render_view(view, rows=5, stamp="12:00:00")
    assert lines[0] == (
        "[3] 12:00:00 page of 2/10 kernels: 1 with live_stat, 12.3 ms, "
        "1 Prometheus query (2.0KiB), plan recorded/filtered"
    )
    assert lines[1].split() == [
        "KERNEL",
        "AGENT",
        "CPU%",
        "MEM",
        "USED",
        "/",
        "LIMIT",
        "NET",
        "RX",
        "NET",
        "TX",
        "GPU%",
    ]
    assert lines[2].split() == [
        "3467e9c9",
        "i-sim-0000",
        "87.5",
        "1.1Gi",
        "/",
        "4.0Gi",
        "2.0Ki/s",
        "1.0Mi/s",
        "87",
    ]
    assert lines[3].split()[:3] == ["0a632b44", "i-sim-0001", "-"]
    assert lines[4].startswith("recently terminated (1 of 7), final stats")
    assert lines[5].split()[-1] == "TERMINATED"
    assert lines[6].split() == ["5a1e0000", "i-sim-0002", *lines[2].split()[2:], "11:59:58"]
    assert format_bytes(512) == "512" and format_bytes(1536, suffix="/s") == "1.5Ki/s"
