"""``promstat alerts render|check``: write the alerting rules; lint and unit-test them."""

from __future__ import annotations

import argparse
from pathlib import Path

from promstat.cli._common import DefaultsHelpFormatter, Subparsers

__all__ = ["register", "run_check", "run_render"]


def register(subparsers: Subparsers) -> None:
    """Register ``promstat alerts render`` and ``promstat alerts check``."""
    alerts = subparsers.add_parser("alerts", help="generate and check the alerting rules")
    sub = alerts.add_subparsers(dest="alerts_command", metavar="COMMAND", required=True)
    render = sub.add_parser(
        "render",
        help="write the alerting-rule file (and unit tests)",
        description="Write promstat's alerting-rule file (and promtool unit tests for the "
        "default settings) into a directory.",
        formatter_class=DefaultsHelpFormatter,
    )
    render.add_argument("--output", required=True, help="directory to write into")
    render.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        help="change a threshold or duration (AlertSettings field), e.g. memory_pct=85",
    )
    render.add_argument("--catalog", default=None, help="catalog YAML extending the built-in one")
    render.set_defaults(handler=run_render)
    check = sub.add_parser(
        "check",
        help="promtool check rules --lint=all + promtool test rules",
        description="Lint the alerting rules with promtool and run their unit tests.",
    )
    check.add_argument("directory", help="directory with *.alerts.yaml (and tests/*.test.yaml)")
    check.set_defaults(handler=run_check)


def run_render(args: argparse.Namespace) -> int:
    """Handler of ``promstat alerts render``.

    Raises:
        ConfigError: a bad ``--set`` or catalog.
        RuleError: the files could not be written.
    """
    from promstat.catalog import DEFAULT_CATALOG, Catalog
    from promstat.generate.alert_tests import alert_tests_apply
    from promstat.generate.alerts import AlertSettings, write_alerts

    catalog = Catalog.from_yaml(Path(args.catalog)) if args.catalog else DEFAULT_CATALOG
    settings = AlertSettings.from_pairs(args.set or [])
    for path in write_alerts(
        args.output, catalog=catalog, settings=settings, catalog_file=args.catalog
    ):
        print(path)
    if not alert_tests_apply(catalog=catalog, settings=settings):
        print("note: promtool unit tests are only generated for the default settings")
    return 0


def run_check(args: argparse.Namespace) -> int:
    """Handler of ``promstat alerts check``.

    Raises:
        RuleError: a check failed.
        BinaryNotFoundError: promtool is missing.
    """
    from promstat.generate.alerts import check_alerts

    for path in check_alerts(args.directory):
        print(f"ok {path}")
    return 0
