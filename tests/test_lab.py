"""Tests for promstat.testing.lab: real Prometheus, VictoriaMetrics, vmalert, redis."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from promstat.errors import BinaryNotFoundError, LabError
from promstat.testing import lab
from promstat.testing.lab import redis_server

# A fixed point in the past, so backfilled data and queries never depend on the clock.
T0 = 1_700_000_000

OPENMETRICS = f"""\
# HELP lab_gauge A gauge with tricky label values.
# TYPE lab_gauge gauge
lab_gauge{{kernel_id="k1",note="a b}}"}} 1.5 {T0}
lab_gauge{{kernel_id="k1",note="a b}}"}} 2.5 {T0 + 15}
lab_gauge{{kernel_id="k2",note="quote \\" here"}} 7 {T0}
lab_gauge{{kernel_id="k2",note="quote \\" here"}} 8 {T0 + 15}
# TYPE lab_bytes counter
lab_bytes_total{{kernel_id="k1"}} 100 {T0}
lab_bytes_total{{kernel_id="k1"}} 400 {T0 + 15}
lab_bytes_total{{kernel_id="k1"}} 700 {T0 + 30}
# EOF
"""


def _wait_for(check: Callable[[], bool], *, timeout: float = 60.0) -> bool:
    """Poll ``check`` until true; the timeout only bounds a hung server, it is no assertion."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def _by_kernel(result: list[dict[str, object]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in result:
        metric = item["metric"]
        value = item["value"]
        assert isinstance(metric, dict) and isinstance(value, list)
        out[metric["kernel_id"]] = value[1]
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Pure helpers


def test_free_port_is_bindable() -> None:
    """free_port returns a loopback port that can be bound right away."""
    port = lab.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_openmetrics_to_prometheus_text_uses_milliseconds() -> None:
    """The VictoriaMetrics conversion drops comments and exemplars and scales timestamps."""
    text = (
        "# TYPE a gauge\n"
        'a{x="sp ace",y="br}ace"} 1 1700000000.5\n'
        'b_total 3 1700000001 # {trace_id="t"} 1 1700000001\n'
        "c 4\n"
        "# EOF\n"
    )
    assert list(lab.openmetrics_to_prometheus_text(text)) == [
        'a{x="sp ace",y="br}ace"} 1 1700000000500\n',
        "b_total 3 1700000001000\n",
        "c 4\n",
    ]


def test_openmetrics_malformed_line_raises() -> None:
    """A sample line with an unterminated label set is a LabError, not a silent skip."""
    with pytest.raises(LabError, match="malformed"):
        list(lab.openmetrics_to_prometheus_text('a{x="1" 1 2\n'))


def test_backfill_requires_eof(tmp_path: Path) -> None:
    """Backfill input without the mandatory '# EOF' is rejected with a clear message."""
    with pytest.raises(LabError, match="# EOF"):
        lab.backfill_openmetrics("a 1 1700000000\n", tmp_path / "tsdb")


def test_missing_binary_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing executable raises BinaryNotFoundError carrying the apt-get install hint."""
    monkeypatch.setenv("PATH", "/nonexistent")
    for binary, package in [
        ("prometheus", "prometheus"),
        ("promtool", "prometheus"),
        ("victoria-metrics", "victoria-metrics"),
        ("vmalert", "victoria-metrics"),
        ("redis-server", "redis-server"),
    ]:
        with pytest.raises(BinaryNotFoundError) as info:
            lab.require_binary(binary)
        assert info.value.binary == binary
        assert info.value.package == package
        assert f"apt-get install -y {package}" in str(info.value)
        assert isinstance(info.value, FileNotFoundError)


def test_start_with_missing_binary_raises_before_spawning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """start_prometheus fails with the install hint and creates no data directory."""
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("PROMSTAT_LAB_DIR", str(tmp_path))
    with pytest.raises(BinaryNotFoundError, match="apt-get install -y prometheus"):
        lab.start_prometheus()
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Process lifecycle


@pytest.mark.slow
def test_stop_kills_process_and_removes_data_dir() -> None:
    """stop() ends the process, removes the temporary data dir and is idempotent."""
    proc = lab.start_redis()
    pid, data_dir = proc.pid, proc.data_dir
    assert proc.running and data_dir.is_dir()
    assert proc in lab.running_processes()
    proc.stop()
    proc.stop()
    assert not proc.running
    assert not _pid_alive(pid)
    assert not data_dir.exists()
    assert proc not in lab.running_processes()


@pytest.mark.slow
def test_context_manager_keeps_caller_data_dir(tmp_path: Path) -> None:
    """A caller-supplied data_dir survives stop(); only temporary directories are removed."""
    with lab.start_redis(data_dir=tmp_path / "redis") as proc:
        pid = proc.pid
        assert proc.log_path.parent == tmp_path / "redis"
    assert not _pid_alive(pid)
    assert (tmp_path / "redis").is_dir()
    assert "Ready to accept connections" in proc.log_path.read_text()


@pytest.mark.slow
def test_failed_start_reports_log_tail_and_cleans_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A server that exits during startup raises LabError with its log and leaves nothing."""
    monkeypatch.setenv("PROMSTAT_LAB_DIR", str(tmp_path))
    before = lab.running_processes()
    with pytest.raises(LabError) as info:
        lab.start_prometheus(extra_flags=["--no-such-flag"])
    assert "exited with status" in str(info.value)
    assert "no-such-flag" in str(info.value)
    assert list(tmp_path.iterdir()) == []
    assert lab.running_processes() == before


@pytest.mark.slow
def test_interrupted_start_stops_the_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A KeyboardInterrupt while waiting for readiness stops the server and removes its dir."""
    monkeypatch.setenv("PROMSTAT_LAB_DIR", str(tmp_path))
    before = lab.running_processes()

    def interrupted(port: int) -> bool:
        raise KeyboardInterrupt

    monkeypatch.setattr(redis_server, "_redis_ping", interrupted)
    with pytest.raises(KeyboardInterrupt):
        lab.start_redis()
    assert list(tmp_path.iterdir()) == []
    assert lab.running_processes() == before


# The child starts from the default SIGTERM/SIGHUP dispositions, as a plain process does: it
# would inherit SIG_IGN for SIGHUP under nohup (or a CI runner that ignores it), and the lab
# rightly leaves an ignored signal alone.
_CHILD_SCRIPT = """
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_DFL)
signal.signal(signal.SIGHUP, signal.SIG_IGN if sys.argv[1] == "ignore-hup" else signal.SIG_DFL)
from promstat.testing import lab
proc = lab.start_redis()
print(proc.pid, proc.data_dir, flush=True)
if sys.argv[1] != "exit":
    time.sleep(120)  # behaviour, not synchronisation: the child lives until it is signalled
"""


@contextlib.contextmanager
def _child(mode: str) -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    """The child interpreter, its server's pid and data directory; whatever the test's
    outcome, neither the child nor its server outlives the test."""
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(repo)}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD_SCRIPT, mode], stdout=subprocess.PIPE, text=True, env=env
    )
    pid = 0
    try:
        assert child.stdout is not None
        pid_text, data_dir = child.stdout.readline().split()
        pid = int(pid_text)
        yield child, pid, Path(data_dir)
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate()
        if pid and _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_killed_interpreter_stops_its_servers(sig: signal.Signals) -> None:
    """SIGTERM/SIGHUP to a Python process stops its servers before it dies of the signal."""
    with _child("wait") as (child, pid, data_dir):
        assert _pid_alive(pid)
        child.send_signal(sig)
        child.communicate(timeout=60)
        assert child.returncode == -sig
        assert not _pid_alive(pid)
        assert not data_dir.exists()


@pytest.mark.slow
def test_an_ignored_sighup_stays_ignored() -> None:
    """A program that ignores SIGHUP (nohup) keeps ignoring it: the lab claims only signals
    at their default; SIGTERM still stops the servers."""
    with _child("ignore-hup") as (child, pid, data_dir):
        child.send_signal(signal.SIGHUP)
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=1.0)
        assert _pid_alive(pid)
        child.send_signal(signal.SIGTERM)
        child.communicate(timeout=60)
        assert child.returncode == -signal.SIGTERM
        assert not _pid_alive(pid)
        assert not data_dir.exists()


@pytest.mark.slow
def test_interpreter_exit_stops_forgotten_servers() -> None:
    """The atexit safety net stops a server the program never stopped itself."""
    with _child("exit") as (child, pid, data_dir):
        child.communicate(timeout=60)
        assert child.returncode == 0
        assert not _pid_alive(pid)
        assert not data_dir.exists()


# ---------------------------------------------------------------------------------------------
# Prometheus


@pytest.mark.slow
def test_prometheus_answers_queries(prometheus_empty: lab.PrometheusProcess) -> None:
    """An empty Prometheus is ready, answers /api/v1/query for `up`, and lists our flags."""
    assert prometheus_empty.url.startswith("http://127.0.0.1:")
    assert not prometheus_empty.url.endswith("/")
    assert prometheus_empty.query("up") == []
    with urllib.request.urlopen(f"{prometheus_empty.url}/api/v1/status/flags") as resp:
        flags = json.load(resp)["data"]
    assert flags["storage.tsdb.retention.time"] == "100y"
    assert flags["web.enable-lifecycle"] == "true"
    assert flags["web.listen-address"] == f"127.0.0.1:{prometheus_empty.port}"


@pytest.mark.slow
def test_prometheus_scrapes_targets(
    prometheus_empty: lab.PrometheusProcess,
    start_prometheus: Callable[..., lab.PrometheusProcess],
) -> None:
    """A scrape target given as host:port is scraped at /metrics under job `promstat`."""
    target = f"127.0.0.1:{prometheus_empty.port}"
    prom = start_prometheus(scrape_targets=[target], scrape_interval="1s")
    assert _wait_for(lambda: bool(prom.query('up{job="promstat"} == 1')))
    (series,) = prom.query('up{job="promstat"}')
    assert series["metric"]["instance"] == target


@pytest.mark.slow
def test_prometheus_backfill_is_queryable_at_pinned_time(
    start_prometheus: Callable[..., lab.PrometheusProcess],
) -> None:
    """OpenMetrics data backfilled with promtool is visible at a pinned evaluation time."""
    prom = start_prometheus(openmetrics=OPENMETRICS)
    assert _by_kernel(prom.query("lab_gauge", at=T0 + 20)) == {"k1": "2.5", "k2": "8"}
    assert _by_kernel(prom.query("lab_gauge", at=T0 + 5)) == {"k1": "1.5", "k2": "7"}
    (row,) = prom.query('lab_gauge{kernel_id="k2"}', at=T0)
    assert row["metric"]["note"] == 'quote " here'
    rate = prom.query("irate(lab_bytes_total[1m])", at=T0 + 30)
    assert _by_kernel(rate) == {"k1": "20"}
    assert prom.query("lab_gauge", at=T0 - 60) == []


@pytest.mark.slow
def test_prometheus_backfill_from_file(
    tmp_path: Path, start_prometheus: Callable[..., lab.PrometheusProcess]
) -> None:
    """openmetrics may also be a Path to a file, which is passed to promtool as is."""
    path = tmp_path / "input.om"
    path.write_text(OPENMETRICS)
    prom = start_prometheus(openmetrics=path)
    assert _by_kernel(prom.query("lab_bytes_total", at=T0 + 30)) == {"k1": "700"}


@pytest.mark.slow
def test_prometheus_reload_loads_rule_file(
    tmp_path: Path, start_prometheus: Callable[..., lab.PrometheusProcess]
) -> None:
    """configure() rewrites prometheus.yml with a rule file and reloads; the rule evaluates."""
    prom = start_prometheus(scrape_interval="1s")
    rules = tmp_path / "rules.yml"
    rules.write_text(
        "groups:\n"
        "  - name: lab\n"
        "    interval: 1s\n"
        "    rules:\n"
        "      - record: lab:answer\n"
        "        expr: vector(42)\n"
    )
    prom.configure(rule_files=[rules])
    with urllib.request.urlopen(f"{prom.url}/api/v1/rules") as resp:
        groups = json.load(resp)["data"]["groups"]
    assert [g["name"] for g in groups] == ["lab"]
    assert _wait_for(lambda: bool(prom.query("lab:answer")))
    assert prom.query("lab:answer")[0]["value"][1] == "42"
    assert str(rules) in prom.config_path.read_text()


@pytest.mark.slow
def test_prometheus_reload_rejects_bad_rule_file(
    tmp_path: Path, start_prometheus: Callable[..., lab.PrometheusProcess]
) -> None:
    """A reload with an invalid rule file raises LabError and leaves the server running."""
    prom = start_prometheus()
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - record: y\n        expr: 'sum('\n")
    with pytest.raises(LabError, match="reload failed"):
        prom.configure(rule_files=[bad])
    assert prom.running
    assert prom.query("vector(1)")[0]["value"][1] == "1"


# ---------------------------------------------------------------------------------------------
# VictoriaMetrics and vmalert


@pytest.mark.slow
def test_victoria_metrics_import_is_queryable(
    victoria_metrics: lab.VictoriaMetricsProcess,
) -> None:
    """Imported OpenMetrics data is queryable at a pinned time as soon as the import returns."""
    text = OPENMETRICS.replace("lab_gauge", "lab_vm_gauge").replace("lab_bytes", "lab_vm_bytes")
    # Query first: a cached empty answer must not hide the data imported afterwards.
    assert victoria_metrics.query("lab_vm_gauge", at=T0 + 20, nocache=False) == []
    victoria_metrics.import_openmetrics(text)
    got = victoria_metrics.query("lab_vm_gauge", at=T0 + 20, nocache=False)
    assert _by_kernel(got) == {"k1": "2.5", "k2": "8"}
    (row,) = victoria_metrics.query('lab_vm_gauge{kernel_id="k1"}', at=T0)
    assert row["metric"]["note"] == "a b}"
    assert _by_kernel(victoria_metrics.query("lab_vm_bytes_total", at=T0 + 30)) == {"k1": "700"}


@pytest.mark.slow
def test_start_victoria_metrics_with_openmetrics(
    start_victoria_metrics: Callable[..., lab.VictoriaMetricsProcess],
) -> None:
    """start_victoria_metrics(openmetrics=...) returns only once the data is queryable."""
    vm = start_victoria_metrics(openmetrics=OPENMETRICS, extra_flags=["-search.latencyOffset=1s"])
    assert _by_kernel(vm.query("lab_gauge", at=T0 + 20)) == {"k1": "2.5", "k2": "8"}
    assert "-search.latencyOffset=1s" in vm.argv


@pytest.mark.slow
def test_vmalert_records_into_victoria_metrics(
    tmp_path: Path,
    start_victoria_metrics: Callable[..., lab.VictoriaMetricsProcess],
    start_vmalert: Callable[..., lab.ManagedProcess],
) -> None:
    """vmalert evaluates a recording rule and remote-writes the result into VictoriaMetrics."""
    vm = start_victoria_metrics()
    rules = tmp_path / "rules.yml"
    rules.write_text(
        "groups:\n"
        "  - name: lab\n"
        "    rules:\n"
        "      - record: lab_vmalert:one\n"
        "        expr: vector(1)\n"
        "        labels:\n"
        "          source: lab\n"
    )
    alert = start_vmalert(
        datasource_url=vm.url,
        remote_write_url=vm.url,
        rule_files=[rules],
        evaluation_interval="1s",
    )
    assert alert.running

    def recorded() -> bool:
        vm.force_flush()
        return bool(vm.query("lab_vmalert:one"))

    assert _wait_for(recorded)
    (row,) = vm.query("lab_vmalert:one")
    assert row["metric"] == {"__name__": "lab_vmalert:one", "source": "lab"}
    assert row["value"][1] == "1"


@pytest.mark.slow
def test_vmalert_rejects_invalid_rule_file(
    tmp_path: Path,
    victoria_metrics: lab.VictoriaMetricsProcess,
    start_vmalert: Callable[..., lab.ManagedProcess],
) -> None:
    """An invalid rule file makes vmalert exit; start_vmalert raises LabError with its log."""
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - record: y\n        expr: 'sum('\n")
    with pytest.raises(LabError, match="vmalert"):
        start_vmalert(
            datasource_url=victoria_metrics.url,
            remote_write_url=victoria_metrics.url,
            rule_files=[bad],
        )


# ---------------------------------------------------------------------------------------------
# redis-server


@pytest.mark.slow
def test_redis_answers_ping(redis_server: lab.ManagedProcess) -> None:
    """The managed redis-server answers PING and SET/GET over a raw RESP socket."""
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}"
    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=5) as sock:
        sock.sendall(b"PING\r\n")
        assert sock.recv(64) == b"+PONG\r\n"
        sock.sendall(b"*3\r\n$3\r\nSET\r\n$8\r\nlab:test\r\n$2\r\nok\r\n")
        assert sock.recv(64) == b"+OK\r\n"
        sock.sendall(b"*2\r\n$3\r\nGET\r\n$8\r\nlab:test\r\n")
        assert sock.recv(64) == b"$2\r\nok\r\n"
