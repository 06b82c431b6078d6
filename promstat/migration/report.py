"""The text report of ``promstat compare`` and the list of what fails its gate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TextIO

from promstat.migration.compare import FieldStats, Report
from promstat.migration.tolerances import FieldKind

__all__ = ["failing_fields", "format_report"]


def _num(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e6 or abs(value) < 1e-3:
        return f"{value:.3g}"
    return f"{value:.4g}"


def format_report(report: Report, out: TextIO) -> None:
    """Print a report as the aligned text ``promstat compare`` shows."""
    what = "kernels" if report.level == "kernel" else "agents"
    failing = report.failing
    out.write(
        f"{what}: {report.ids} ids, {report.both} on both sides, "
        f"{len(report.missing_legacy)} missing in legacy, "
        f"{len(report.missing_promstat)} missing in promstat, "
        f"{len(report.undecodable)} undecodable, "
        f"{len(report.stale_legacy)} stale in legacy (not compared)\n"
        f"agreement: {report.agreement:.2%} of {report.compared} field comparisons, "
        f"{report.missing_values} values on one side only (not gated: each field is)\n"
        f"missing ids: {report.missing_fraction:.2%} (allowed {report.max_missing:.2%}): "
        f"{'OK' if report.missing_ok else 'TOO MANY'}\n"
        f"fields: {len(report.counted) - len(failing)} of {len(report.counted)} pass their "
        f"own threshold: {'OK' if not failing else 'FAIL ' + _failing_text(failing)}\n"
    )
    header = ["metric", "field", "kind", "agree", "compared", "%", "gate", "worst abs",
              "worst rel", "missing L/P", "example"]  # fmt: skip
    for title, rows in (("", report.counted), ("known differences (not counted)", report.known)):
        if not rows:
            continue
        if title:
            out.write(f"{title}:\n")
        table = [header]
        for f in sorted(rows, key=lambda r: (r.metric, r.name)):
            example = ""
            if f.examples:
                e = f.examples[0]
                example = f"{e['id']}: {e['legacy']!r} vs {e['promstat']!r}"
            gate = f"{'ok' if f.ok else 'FAIL'} {f.gated_agreement:.1%}/{f.min_agreement:.0%}"
            if f.kind is FieldKind.KNOWN:
                gate = "-"  # known differences never gate
            table.append([
                f.metric, f.name, f.kind.value, str(f.agreed), str(f.compared),
                f"{f.agreement:.1%}", gate, _num(f.worst_abs), _num(f.worst_rel),
                f"{f.missing_legacy}/{f.missing_promstat}", example,
            ])  # fmt: skip
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        for row in table:
            cells = [c.ljust(w) for c, w in zip(row, widths, strict=True)]
            out.write("  ".join(cells).rstrip() + "\n")
    for side, ids in (("legacy", report.missing_legacy), ("promstat", report.missing_promstat)):
        if ids:
            shown = ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")
            out.write(f"missing in {side}: {shown}\n")


def _failing_text(failing: Sequence[FieldStats]) -> str:
    return ", ".join(f"{f.path} ({f.gated_agreement:.1%} < {f.min_agreement:.2%})"
                     for f in failing)  # fmt: skip


def failing_fields(reports: Sequence[Report]) -> list[str]:
    """What fails the gate, one entry per failing field or missing-id bound, for a CLI.

    Entries are ``"<level> <metric.field>"`` (``"kernel mem.current"``) and
    ``"<level> missing ids"``; empty when every report passes.
    """
    out: list[str] = []
    for report in reports:
        if not report.missing_ok:
            out.append(f"{report.level} missing ids")
        out += [f"{report.level} {f.path}" for f in report.failing]
    return out
