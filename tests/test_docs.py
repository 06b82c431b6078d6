"""The docs, run: every fenced block of README.md, CONTRIBUTING.md, benchmarks/README.md, docs/.

What is done with a block depends on its language and on ``<!-- docs-test: ... -->`` markers on
the lines right before it (CONTRIBUTING.md, "Docs", is the user's guide to them):

* ``sh`` (every line) and ``console`` (``$ `` lines) blocks: one bash script per block
  (``set -euo pipefail``; ``\\`` continuations joined), in a scratch directory holding a
  ``.venv`` link to this interpreter's environment, with a ``promstat`` that runs this checkout
  first on ``PATH``, ``PYTHONPATH`` at the repository, ``PROMSTAT_URL`` at the live lab's
  Prometheus and ``KERNEL_ID``/``AGENT_ID`` set to ids it has. Every command must exit 0.
  Mirrored, not verbatim, in one documented way: a command with ``--redis`` (``promstat
  compare``) runs against the dual-publishing fleet of ``tests/_support/dual_fleet.py``, whose
  data is historical, with ``--time`` appended.
* ``python`` blocks: compiled with top-level ``await`` and run in order in one namespace per
  page, in the test's event loop, against the live lab; :data:`PRELUDE` lists the names a
  block may use without defining them.
* ``yaml``/``json`` blocks must parse; ``text`` blocks are free-form unless marked; ``diff``
  blocks must be an ``excerpt-of`` a file of the repository.
* The placeholders ``http://prometheus:9090`` and ``redis://valkey:6379/0`` are replaced by
  the lab's URLs everywhere.

Markers: ``expect EXPR`` (evaluated in the page's namespace after the block, must be true),
``file NAME`` (the block is written to NAME in the scratch directory before any command of
the page runs), ``output-of COMMAND`` (every line of the block, digits aside, appears in the
output of that command of the same page), ``cwd repo`` (commands run in the repository),
``excerpt-of FILE`` (every line of the block is a line of FILE, in order), ``compile-only
REASON`` (python: compiled, not run) and ``skip-reason REASON``. A block without
a marker runs; the skipped ones are listed by :func:`test_what_the_docs_test_runs`.

The live lab: a simulated fleet (2 agents x 3 kernels, promstat's exporter, measuring every
second) served from a background thread, scraped every second by a real Prometheus with the
generated recording rules (1 s interval) loaded.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from _support.dual_fleet import DualFleet, dual_fleet, fleet_config

from promstat.agent.exporter import UtilizationExporter
from promstat.client import PrometheusClient
from promstat.generate.rules import write_rules
from promstat.profile import RuleProfile
from promstat.service import LiveStats
from promstat.testing import lab
from promstat.testing.sim import FleetConfig, SimulatedFleet

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "promstat"
DOCS = (
    ROOT / "README.md",
    ROOT / "CONTRIBUTING.md",
    ROOT / "benchmarks" / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
)
PROM, REDIS = "http://prometheus:9090", "redis://valkey:6379/0"
README_LIMIT = 15 * 1024
LANGUAGES = {"python", "sh", "console", "yaml", "json", "text", "diff"}
MARKERS = {"expect", "file", "output-of", "cwd", "compile-only", "skip-reason", "excerpt-of"}
#: Names a python block may use without defining them (what the manager has at hand).
PRELUDE = {
    "stats": "the process-wide LiveStats over the lab (closed after the page)",
    "prom": "the process-wide PrometheusClient",
    "kernel_id": "one kernel id the lab has",
    "kernel_ids": "every kernel id the lab has",
    "agent_ids": "every agent id the lab has",
    "sessions": "the kernels' sessions: objects with .id and .occupied_slots['mem']",
    "metric_name": "an autoscaling metric name ('cpu_util')",
    "exporter": "an agent's UtilizationExporter",
}
MARKER_LINE = re.compile(r"^<!--\s*docs-test:\s*([a-z-]+)\s*(.*?)\s*-->\s*$")
COMMENT_LINE = re.compile(r"^<!--.*-->\s*$")
FENCE = re.compile(r"^```(\S*)\s*$")


# -- parsing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # of the opening fence, 1-based
    lang: str
    body: str
    markers: tuple[tuple[str, str], ...] = ()

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"

    def marker(self, name: str) -> str | None:
        return next((arg for key, arg in self.markers if key == name), None)

    @property
    def skipped(self) -> str | None:
        return self.marker("skip-reason")

    def commands(self) -> list[str]:
        """The logical command lines of a shell block."""
        if self.lang == "console":
            lines, out = self.body.splitlines(), []
            i = 0
            while i < len(lines):
                line = lines[i]
                if line.startswith("$ "):
                    cmd = line[2:]
                    while cmd.endswith("\\") and i + 1 < len(lines):
                        i += 1
                        cmd = cmd[:-1] + " " + lines[i].strip()
                    out.append(cmd.strip())
                i += 1
            return out
        joined = re.sub(r"\\\n\s*", " ", self.body)
        return [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.startswith("#")]


@dataclass
class Doc:
    path: Path
    blocks: list[Block] = field(default_factory=list)
    stray_markers: list[int] = field(default_factory=list)
    unclosed: int | None = None


def parse(path: Path) -> Doc:
    doc = Doc(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    pending: list[tuple[int, str, str]] = []  # markers since the last non-comment line
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = FENCE.match(line)
        if fence:
            start, body = i, []
            i += 1
            while i < len(lines) and lines[i].rstrip() != "```":
                body.append(lines[i])
                i += 1
            if i == len(lines):
                doc.unclosed = start + 1
                break
            markers = tuple((k, a) for _, k, a in pending)
            body_text = "\n".join(body) + "\n"
            doc.blocks.append(Block(path, start + 1, fence.group(1), body_text, markers))
            pending = []
        elif match := MARKER_LINE.match(line):
            pending.append((i + 1, match.group(1), match.group(2)))
        elif not COMMENT_LINE.match(line):
            doc.stray_markers.extend(n for n, _, _ in pending)
            pending = []
        i += 1
    doc.stray_markers.extend(n for n, _, _ in pending)
    return doc


PARSED = {path: parse(path) for path in DOCS}


def _blocks(*langs: str) -> list[Block]:
    return [b for d in PARSED.values() for b in d.blocks if not langs or b.lang in langs]


def _compile(block: Block) -> types.CodeType:
    return compile(block.body, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


# -- static checks (no servers) -------------------------------------------------------------


def test_static_every_block_is_understood() -> None:
    problems: list[str] = []
    for doc in PARSED.values():
        rel = doc.path.relative_to(ROOT)
        if doc.unclosed:
            problems.append(f"{rel}:{doc.unclosed}: unclosed fence")
        problems += [f"{rel}:{n}: a docs-test marker not before a block" for n in doc.stray_markers]
        for block in doc.blocks:
            if block.lang not in LANGUAGES:
                problems.append(f"{block.where}: fence language {block.lang!r} is not known")
            for key, arg in block.markers:
                if key not in MARKERS:
                    problems.append(f"{block.where}: unknown marker {key!r}")
                elif key != "cwd" and not arg:
                    problems.append(f"{block.where}: marker {key!r} needs an argument")
                elif key == "cwd" and arg != "repo":
                    problems.append(f"{block.where}: only 'cwd repo' exists")
            if block.lang in ("sh", "console") and not block.commands():
                problems.append(f"{block.where}: a shell block without commands")
            if block.marker("compile-only") and block.lang != "python":
                problems.append(f"{block.where}: compile-only is for python blocks")
            if block.lang == "diff" and not (block.marker("excerpt-of") or block.skipped):
                problems.append(f"{block.where}: a diff block needs excerpt-of FILE")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("block", _blocks("python"), ids=lambda b: b.where)
def test_static_python_blocks_compile(block: Block) -> None:
    _compile(block)


@pytest.mark.parametrize("block", _blocks("yaml", "json"), ids=lambda b: b.where)
def test_static_data_blocks_parse(block: Block) -> None:
    if block.lang == "json":
        json.loads(block.body)
    else:
        yaml.safe_load(block.body)


@pytest.mark.parametrize(
    "block", [b for b in _blocks() if b.marker("excerpt-of")], ids=lambda b: b.where
)
def test_static_excerpts_are_in_their_file_in_order(block: Block) -> None:
    source = (ROOT / str(block.marker("excerpt-of"))).read_text(encoding="utf-8").splitlines()
    at = 0
    for line in (ln for ln in block.body.splitlines() if ln.strip()):
        assert line in source[at:], f"{block.where}: not in {block.marker('excerpt-of')} "  \
            f"(after line {at}): {line!r}"
        at += source[at:].index(line) + 1


@pytest.mark.parametrize("block", _blocks("sh", "console"), ids=lambda b: b.where)
def test_static_shell_commands_are_valid_shell(block: Block) -> None:
    for command in block.commands():
        shlex.split(command, comments=True)  # balanced quotes
        assert subprocess.run(["bash", "-n", "-c", command], check=False).returncode == 0, command


def test_static_readme_is_short_and_links_every_page() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode()) <= README_LIMIT, len(readme.encode())
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in readme, f"README does not link docs/{page.name}"
    assert "(CONTRIBUTING.md)" in readme and "(benchmarks/README.md)" in readme


def _slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def test_static_relative_links_resolve() -> None:
    problems = []
    for doc in PARSED.values():
        text = doc.path.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (doc.path.parent / file).resolve() if file else doc.path
            if not dest.exists():
                problems.append(f"{doc.path.relative_to(ROOT)}: {target}: no such file")
            elif anchor and anchor not in _anchors(dest):
                problems.append(f"{doc.path.relative_to(ROOT)}: {target}: no such heading")
    assert not problems, "\n".join(problems)


def _resolve(dotted: str) -> bool:
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:n]))
        except ImportError:
            continue
        try:
            for attr in parts[n:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def test_static_every_dotted_promstat_name_imports() -> None:
    names = {
        (doc.path.relative_to(ROOT), name)
        for doc in PARSED.values()
        for name in re.findall(r"`(promstat(?:\.\w+)+)", doc.path.read_text(encoding="utf-8"))
    }
    assert names
    missing = sorted(f"{rel}: {name}" for rel, name in names if not _resolve(name))
    assert not missing, "\n".join(missing)


def _architecture_modules() -> set[str]:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("\n## Modules\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([\w/.]+)` \|", section, re.M))


def test_static_architecture_names_every_module_and_only_modules() -> None:
    named = _architecture_modules()
    actual = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")}
    actual |= {f"{p.relative_to(PACKAGE)}/" for p in PACKAGE.rglob("templates") if p.is_dir()}
    assert sorted(actual - named) == [], "modules the architecture page does not name"
    assert sorted(named - actual) == [], "names on the architecture page that are no module"
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    flow = re.search(r"```text\n(.*?)```", text, re.S)
    assert flow is not None
    for module in re.findall(r"\b([a-z_]+\.py)\b", flow.group(1)):
        assert module in actual, f"the data flow names {module}, which does not exist"
    for line in flow.group(1).splitlines():  # `Class.method` and `module.py` on one line
        modules = re.findall(r"\b([a-z_]+)\.py\b", line)
        for cls, attr in re.findall(r"\b([A-Z]\w+)\.(\w+)", line):
            owners = [importlib.import_module(f"promstat.{m}") for m in modules]
            owners.append(importlib.import_module("promstat.service"))
            found = [getattr(o, cls) for o in owners if hasattr(o, cls)]
            assert found and hasattr(found[0], attr), f"the data flow names {cls}.{attr}"
    for path in re.findall(r"`promstat/([\w/.]+)`", text):
        assert (PACKAGE / path).exists(), path


def test_static_the_core_imports_no_subpackage() -> None:
    """architecture.md: subpackages may use the core; the core imports no subpackage."""
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name == "__main__.py":  # the `python -m promstat` entry point runs the CLI
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):  # lazy ones too
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                parts = target.split(".")
                if parts[0] == "promstat" and len(parts) > 1 and parts[1] in subpackages:
                    offenders.append(f"{path.name}: {target}")
    assert not offenders, offenders


def test_static_import_promstat_loads_no_subpackage() -> None:
    """architecture.md: ``import promstat`` loads only the core (in a fresh interpreter)."""
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    probe = "import sys, promstat; print('\\n'.join(sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    loaded = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert "promstat.service" in loaded
    assert [m for m in loaded if m.split(".")[0] == "promstat" and m.split(".")[1:2]
            and m.split(".")[1] in subpackages] == []  # fmt: skip


def test_what_the_docs_test_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """A summary of what runs and what does not (and why), printed with ``-s``."""
    runs = [b for b in _blocks() if not b.skipped and not b.marker("compile-only")]
    commands = sum(len(b.commands()) for b in runs if b.lang in ("sh", "console"))
    python = [b for b in runs if b.lang == "python"]
    not_run = [b for b in _blocks() if b.skipped or b.marker("compile-only")]
    with capsys.disabled():
        print(f"\ndocs: {len(_blocks())} blocks; {len(python)} python blocks and {commands} "
              f"commands run; {len(not_run)} blocks not run:")
        for b in not_run:
            why = b.skipped or f"compile-only: {b.marker('compile-only')}"
            print(f"  {b.where} ({b.lang}): {why}")
    assert python and commands
    for block in not_run:  # nothing silently: every block not run says why
        assert (block.skipped or block.marker("compile-only") or "").strip()


# -- the labs ---------------------------------------------------------------------------------


@dataclass
class LiveLab:
    prometheus: lab.PrometheusProcess
    fleet: SimulatedFleet
    kernel_ids: list[str]
    agent_ids: list[str]


def _poll(check: Any, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"the docs lab: {what} within {timeout} s")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def live_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveLab]:
    rules_dir = tmp_path_factory.mktemp("docs-rules")
    profile = RuleProfile.parse(interval="1s", window="1m", collect_interval="1s")
    written = write_rules(rules_dir, profile)
    rule_files = [p for p in written if p.name.endswith(".rules.yml")]
    config = FleetConfig(
        agents=2, kernels_per_agent=3, churn=None, seed=7, node_interval=1, measure_interval=1
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="docs-lab-fleet", daemon=True)
    thread.start()
    fleet = SimulatedFleet(config)
    try:
        asyncio.run_coroutine_threadsafe(fleet.start(), loop).result(60)
        with lab.start_prometheus(
            scrape_targets=fleet.targets, scrape_interval="1s", rule_files=rule_files
        ) as prom:
            kernels, agents = fleet.kernel_ids(), fleet.agent_ids()

            def count(expr: str) -> int:
                result = prom.query(expr)
                return int(float(result[0]["value"][1])) if result else 0

            kernel_family = "kernel_metric:backendai_container_utilization:live_stat"
            agent_family = "agent_metric:backendai_device_utilization:live_stat"
            # every kernel recorded, with a window of several evaluations behind it
            _poll(
                lambda: count(f'count(count by (kernel_id) ({kernel_family}{{stat="max"}}))')
                == len(kernels),
                "every kernel recorded",
            )
            _poll(lambda: count(f"count(count by (agent_id) ({agent_family}))") == len(agents),
                  "every agent recorded")
            # a few evaluations behind every kernel, for final stats "2 s ago" and the windows
            _poll(
                lambda: count(
                    f'min(count_over_time({kernel_family}{{stat="max"}}[10s]))'
                ) >= 3,
                "three evaluations of every kernel's window",
            )
            yield LiveLab(prom, fleet, kernels, agents)
    finally:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(fleet.stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(scope="module")
def dual() -> Iterator[DualFleet]:
    with dual_fleet(fleet_config(2, 4)) as running:
        yield running


# -- running a page ---------------------------------------------------------------------------


@dataclass
class Run:
    live: LiveLab
    dual: DualFleet | None
    cwd: Path
    env: dict[str, str]
    outputs: dict[str, str] = field(default_factory=dict)  # command as written -> stdout

    def substitute(self, text: str) -> str:
        text = text.replace(PROM, self.live.prometheus.url)
        if self.dual is not None:
            text = text.replace(REDIS, self.dual.redis.url)
        return text

    def shell(self, block: Block) -> None:
        commands = block.commands()
        script = ["set -euo pipefail"]
        for n, command in enumerate(commands):
            line = command
            if "--redis" in line:
                assert self.dual is not None
                line = line.replace(PROM, self.dual.prometheus.url)
                line = line.replace(REDIS, self.dual.redis.url)
                line += f" --time {self.dual.at}"
            script += [f"printf '\\n@@docs-test {n}\\n'", self.substitute(line)]
        cwd = ROOT if block.marker("cwd") == "repo" else self.cwd
        proc = subprocess.run(
            ["bash", "-c", "\n".join(script)],
            cwd=cwd, env=self.env, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        parts = re.split(r"\n@@docs-test (\d+)\n", "\n" + proc.stdout)
        for index, out in zip(parts[1::2], parts[2::2], strict=True):
            self.outputs[commands[int(index)]] = out
        ran = len(parts[1::2])
        assert proc.returncode == 0, (
            f"{block.where}: `{commands[ran - 1] if ran else commands[0]}` exited "
            f"{proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}"
            f"\n--- stderr\n{proc.stderr[-3000:]}"
        )

    def output_of(self, block: Block) -> None:
        command = block.marker("output-of")
        assert command in self.outputs, f"{block.where}: `{command}` did not run before it"
        printed = {_shape(ln) for ln in self.outputs[command].splitlines()}
        shown = [ln for ln in block.body.splitlines() if ln.strip()]
        missing = [ln for ln in shown if _shape(ln) not in printed]
        assert shown and not missing, f"{block.where}: not printed: {missing}"


def _shape(line: str) -> str:
    return re.sub(r"\d+(\.\d+)?", "N", line.strip())


def _environment(live: LiveLab, scratch: Path) -> dict[str, str]:
    shims = scratch / ".shims"
    shims.mkdir()
    promstat = shims / "promstat"
    promstat.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m promstat "$@"\n')
    promstat.chmod(0o755)
    if sys.prefix != sys.base_prefix:  # the environment ./dev made: .venv/bin/promstat is real
        (scratch / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    else:  # not run from a virtualenv: a stand-in with the same two entry points
        bin_dir = scratch / ".venv" / "bin"
        bin_dir.mkdir(parents=True)
        (bin_dir / "promstat").symlink_to(promstat)
        (bin_dir / "activate").write_text(f'PATH="{bin_dir}:$PATH"\nexport PATH\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join([str(shims), str(Path(sys.executable).parent), env["PATH"]])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PROMSTAT_URL"] = live.prometheus.url
    env["KERNEL_ID"], env["AGENT_ID"] = live.kernel_ids[0], live.agent_ids[0]
    return env


def _needs_dual(doc: Doc) -> bool:
    return any(
        REDIS in b.body
        for b in doc.blocks
        if not b.skipped and b.lang in ("sh", "console", "python")
    )


def _runs(block: Block) -> bool:
    if block.skipped or block.marker("compile-only"):
        return False
    return block.lang in ("sh", "console", "python") or bool(block.marker("output-of"))


RUNNABLE = [d for d in PARSED.values() if any(_runs(b) for b in d.blocks)]


@pytest.fixture
def dual_lab(doc: Doc, request: pytest.FixtureRequest) -> DualFleet | None:
    """The dual-publishing fleet, for the pages that need it (set up outside the event loop)."""
    return request.getfixturevalue("dual") if _needs_dual(doc) else None


@pytest.mark.slow
@pytest.mark.parametrize("doc", RUNNABLE, ids=lambda d: str(d.path.relative_to(ROOT)))
async def test_every_block_of_the_page_runs(
    doc: Doc, live_lab: LiveLab, dual_lab: DualFleet | None, tmp_path: Path
) -> None:
    run = Run(live_lab, dual_lab, tmp_path, _environment(live_lab, tmp_path))
    for block in doc.blocks:
        if name := block.marker("file"):
            (tmp_path / name).write_text(block.body, encoding="utf-8")
    fleet = live_lab.fleet
    async with PrometheusClient(live_lab.prometheus.url) as prom:
        stats = LiveStats(prom)
        namespace: dict[str, Any] = {
            "__name__": "__docs__",
            "stats": stats,
            "prom": prom,
            "kernel_id": live_lab.kernel_ids[0],
            "kernel_ids": list(live_lab.kernel_ids),
            "agent_ids": list(live_lab.agent_ids),
            "sessions": [
                types.SimpleNamespace(
                    id=fleet.kernel(k).session_id,
                    occupied_slots={"mem": fleet.kernel(k).mem_limit},
                )
                for k in live_lab.kernel_ids
            ],
            "metric_name": "cpu_util",
            "exporter": UtilizationExporter("i-docs-agent"),
        }
        assert set(PRELUDE) <= set(namespace)
        try:
            for block in doc.blocks:
                if block.skipped or block.lang in ("yaml", "json"):
                    continue
                if block.lang in ("sh", "console"):
                    run.shell(block)
                elif block.lang == "text" and block.marker("output-of"):
                    run.output_of(block)
                elif block.lang == "python" and not block.marker("compile-only"):
                    source = run.substitute(block.body)
                    code = compile(
                        source, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
                    )
                    result = eval(code, namespace)
                    if asyncio.iscoroutine(result):
                        await result
                    if expect := block.marker("expect"):
                        assert eval(expect, namespace), f"{block.where}: not true: {expect}"
        finally:
            await stats.aclose()
