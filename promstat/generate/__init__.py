"""Generators: recording rules, their promtool tests, alerts and Grafana dashboards.

Each generator builds typed objects from the metric catalog, the series names and a
:class:`~promstat.profile.RuleProfile`, and writes files last. They back ``promstat rules``,
``promstat alerts`` and ``promstat dashboards``; a manager never imports them.
"""
