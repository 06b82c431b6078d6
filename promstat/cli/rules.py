"""``promstat rules render|check``: write the recording rules from one profile; run promtool.

``render`` parses its flags into one :class:`~promstat.profile.RuleProfile`
(:func:`profile_from_args`), the object the reader takes too, so the rules and the reader are
described the same way.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from promstat.cli._common import DefaultsHelpFormatter, Subparsers, positive_int
from promstat.conventions import SeriesNames
from promstat.errors import ConfigError
from promstat.expressions import RateSource
from promstat.profile import RuleProfile

__all__ = ["load_names", "profile_from_args", "register", "write_profile_rules"]

#: The kernel shard counts ``--kernel-shards`` accepts (promstat.generate.rules.KERNEL_SHARDS;
#: spelled here so ``promstat --help`` does not import jinja2; a test keeps them equal).
KERNEL_SHARDS = (1, 2, 4, 8, 16)

_DEFAULTS = RuleProfile()


def register(subparsers: Subparsers) -> None:
    """Register ``promstat rules render`` and ``promstat rules check``."""
    from promstat.promql import duration

    rules = subparsers.add_parser("rules", help="generate and check recording rules")
    sub = rules.add_subparsers(dest="rules_command", metavar="COMMAND", required=True)
    render = sub.add_parser(
        "render",
        help="write the recording-rule files",
        description="Write promstat's recording-rule files (and their promtool unit tests "
        "for the default profile) into a directory.",
        formatter_class=DefaultsHelpFormatter,
    )
    render.add_argument("--output", required=True, help="directory to write into")
    render.add_argument(
        "--interval",
        default=duration(_DEFAULTS.interval),
        help="rule evaluation interval: use the scrape interval",
    )
    render.add_argument(
        "--window",
        default=duration(_DEFAULTS.window),
        help="stats.max/stats.avg window (at least 4 x --interval)",
    )
    render.add_argument(
        "--lookback",
        default=duration(_DEFAULTS.lookback),
        help="instant-query lookback (at least 2 x --interval)",
    )
    render.add_argument(
        "--collect-interval",
        default=duration(_DEFAULTS.collect_interval),
        help="how often agents measure (sizes the rate window of raw counters; Backend.AI: 30s)",
    )
    shards = render.add_mutually_exclusive_group()
    shards.add_argument(
        "--kernel-shards",
        type=int,
        default=_DEFAULTS.kernel_shards,
        choices=KERNEL_SHARDS,
        help="split the kernel rules into groups by kernel_id (evaluated concurrently)",
    )
    shards.add_argument(
        "--kernels",
        type=positive_int,
        default=None,
        metavar="N",
        help="about how many kernels the fleet runs at once: picks --kernel-shards for it "
        "(one group up to 5,000 kernels, then one per 2,500 rounded up to 4, 8 or 16)",
    )
    render.add_argument(
        "--rates",
        default=_DEFAULTS.rates.value,
        choices=[r.value for r in RateSource],
        help="counter rates from the agents' rate series and else rate() of the raw counter "
        "(both), or from the rate series only (exporter: every agent runs promstat's "
        "exporter; much cheaper to evaluate)",
    )
    render.add_argument(
        "--catalog", default=None, help="catalog YAML extending the built-in one"
    )
    render.add_argument(
        "--names",
        default=None,
        metavar="FILE",
        help="YAML mapping of series and label names to change (SeriesNames fields, e.g. "
        "container_metric: my_container_utilization) for relabelled setups",
    )
    render.set_defaults(handler=run_render)
    check = sub.add_parser(
        "check",
        help="promtool check rules --lint=all + promtool test rules",
        description="Lint the rule files with promtool and run their unit tests.",
    )
    check.add_argument("directory", help="directory with *.rules.yml (and tests/*.test.yml)")
    check.set_defaults(handler=run_check)


def load_names(path: str | None) -> SeriesNames:
    """The :class:`~promstat.conventions.SeriesNames` of a ``--names`` YAML file (or defaults).

    Raises:
        ConfigError: unreadable file, not a mapping, or an unknown name.
    """
    from dataclasses import fields

    if path is None:
        return SeriesNames()
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read --names {path!r}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"--names {path!r} must be a mapping of SeriesNames fields")
    known = {f.name for f in fields(SeriesNames)}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ConfigError(f"unknown name(s) {unknown} in {path!r}; known: {sorted(known)}")
    return SeriesNames(**{str(k): str(v) for k, v in data.items()})


def profile_from_args(args: argparse.Namespace) -> RuleProfile:
    """The :class:`~promstat.profile.RuleProfile` that ``rules render``'s flags describe.

    Raises:
        ConfigError: a bad duration, relation (window < 4 x interval, ...), catalog or names.
    """
    from promstat.catalog import DEFAULT_CATALOG, Catalog

    shards = args.kernel_shards
    if args.kernels is not None:  # argparse keeps it and --kernel-shards apart
        from promstat.generate.rules import recommended_kernel_shards

        shards = recommended_kernel_shards(args.kernels)
    catalog = Catalog.from_yaml(Path(args.catalog)) if args.catalog else DEFAULT_CATALOG
    return RuleProfile.parse(
        names=load_names(args.names),
        catalog=catalog,
        interval=args.interval,
        window=args.window,
        lookback=args.lookback,
        collect_interval=args.collect_interval,
        rates=args.rates,
        kernel_shards=shards,
    )


def write_profile_rules(
    output: str | Path, profile: RuleProfile, *, catalog_file: str | None = None
) -> list[Path]:
    """Write the rule files for ``profile`` (and their promtool tests where they apply)."""
    from promstat.generate.rules import write_rules

    return write_rules(output, profile, catalog_file=catalog_file)


def run_render(args: argparse.Namespace) -> int:
    """Handler of ``promstat rules render``: write the rule files (and unit tests).

    Raises:
        ConfigError: invalid options or catalog.
        RuleError: the files could not be written.
    """
    profile = profile_from_args(args)
    paths = write_profile_rules(args.output, profile, catalog_file=args.catalog)
    for path in paths:
        print(path)
    if not any(p.parent.name == "tests" for p in paths):
        print(
            "note: promtool unit tests are only generated for the default durations, catalog "
            "and --rates both"
        )
    return 0


def run_check(args: argparse.Namespace) -> int:
    """Handler of ``promstat rules check``: promtool lint + unit tests.

    Raises:
        RuleError: a check failed.
        BinaryNotFoundError: promtool is missing.
    """
    from promstat.generate.rules import check_rules

    for path in check_rules(args.directory):
        print(f"ok {path}")
    return 0
