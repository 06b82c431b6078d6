"""``promstat dashboards render``: write the Grafana dashboards and provisioning files."""

from __future__ import annotations

import argparse
from pathlib import Path

from promstat.cli._common import DefaultsHelpFormatter, Subparsers
from promstat.expressions import RateSource

__all__ = ["register", "run_render"]


def register(subparsers: Subparsers) -> None:
    """Register ``promstat dashboards render``."""
    parser = subparsers.add_parser("dashboards", help="generate the Grafana dashboards")
    sub = parser.add_subparsers(dest="dashboards_command", metavar="COMMAND", required=True)
    render = sub.add_parser(
        "render",
        help="write the dashboard JSON and provisioning files",
        description="Write promstat's Grafana dashboards and provisioning examples.",
        formatter_class=DefaultsHelpFormatter,
    )
    render.add_argument("--output", required=True, help="directory to write into")
    render.add_argument("--catalog", default=None, help="catalog YAML extending the built-in one")
    render.add_argument(
        "--rates",
        choices=[r.value for r in RateSource],
        default=RateSource.BOTH.value,
        help="as the recording rules were rendered (promstat rules render --rates)",
    )
    render.set_defaults(handler=run_render)


def run_render(args: argparse.Namespace) -> int:
    """Handler of ``promstat dashboards render``.

    Raises:
        ConfigError: a bad catalog.
        RuleError: the files could not be written.
    """
    from promstat.catalog import DEFAULT_CATALOG, Catalog
    from promstat.generate.dashboards import write_dashboards

    catalog = Catalog.from_yaml(Path(args.catalog)) if args.catalog else DEFAULT_CATALOG
    for path in write_dashboards(args.output, catalog=catalog, rates=args.rates):
        print(path)
    return 0
