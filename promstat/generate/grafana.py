"""The Grafana dashboard JSON model promstat's dashboards are written in.

Frozen values (:class:`Target`, :class:`Panel`, :class:`Row`, :class:`Variable`,
:class:`Dashboard`) that render Grafana's JSON (schema 39, read as is by Grafana 10.x/11.x):
ids and grid positions are assigned in order, every panel and target points at the
``${datasource}`` variable. What the dashboards show is :mod:`promstat.generate.dashboards`'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

__all__ = ["SCHEMA_VERSION", "Dashboard", "Panel", "Row", "Target", "Variable"]

#: Grafana dashboard schema the JSON follows (Grafana 10.x/11.x read it as is).
SCHEMA_VERSION: Final = 39
DATASOURCE: Final = {"type": "prometheus", "uid": "${datasource}"}
TAGS: Final = ["promstat", "backend.ai"]


@dataclass(frozen=True, slots=True)
class Target:
    """One query of a panel: PromQL with Grafana variables, a legend, instant or range."""

    expr: str
    legend: str = ""
    instant: bool = False

    def to_dict(self, ref_id: str) -> dict[str, Any]:
        """Return the Grafana target model."""
        return {
            "datasource": dict(DATASOURCE),
            "refId": ref_id,
            "expr": self.expr,
            "legendFormat": self.legend or "__auto",
            "range": not self.instant,
            "instant": self.instant,
            "editorMode": "code",
        }


@dataclass(frozen=True, slots=True)
class Panel:
    """A panel: ``timeseries``, ``stat`` or ``bargauge``, with its unit and width (of 24)."""

    title: str
    targets: tuple[Target, ...]
    kind: str = "timeseries"
    unit: str = "short"
    description: str = ""
    width: int = 12
    height: int = 8

    def to_dict(self, panel_id: int, x: int, y: int) -> dict[str, Any]:
        """Return the Grafana panel model at grid position ``(x, y)``."""
        options: dict[str, Any]
        if self.kind == "timeseries":
            options = {
                "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                "tooltip": {"mode": "multi", "sort": "desc"},
            }
        elif self.kind == "bargauge":
            options = {
                "orientation": "horizontal",
                "displayMode": "gradient",
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            }
        else:
            options = {
                "colorMode": "value",
                "graphMode": "area",
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            }
        return {
            "id": panel_id,
            "type": self.kind,
            "title": self.title,
            "description": self.description,
            "datasource": dict(DATASOURCE),
            "gridPos": {"h": self.height, "w": self.width, "x": x, "y": y},
            "fieldConfig": {"defaults": {"unit": self.unit}, "overrides": []},
            "options": options,
            "targets": [t.to_dict(chr(ord("A") + i)) for i, t in enumerate(self.targets)],
        }


@dataclass(frozen=True, slots=True)
class Row:
    """A titled row of panels; a collapsed row holds its panels inside the row model."""

    title: str
    panels: tuple[Panel, ...]
    collapsed: bool = False


@dataclass(frozen=True, slots=True)
class Variable:
    """A ``query`` template variable read with ``label_values``."""

    name: str
    label: str
    query: str

    def to_dict(self) -> dict[str, Any]:
        """Return the Grafana variable model (multi-select, "All" = ``.*``)."""
        return {
            "name": self.name,
            "label": self.label,
            "type": "query",
            "datasource": dict(DATASOURCE),
            "definition": self.query,
            "query": {
                "query": self.query,
                "refId": "PrometheusVariableQueryEditor-VariableQuery",
                "qryType": 1,
            },
            "refresh": 2,
            "regex": "",
            "sort": 1,
            "multi": True,
            "includeAll": True,
            # "All" as a regex, not the union of every value: a fleet has thousands of kernels.
            "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "options": [],
            "hide": 0,
        }


@dataclass(frozen=True, slots=True)
class Dashboard:
    """A dashboard: uid, title, variables and rows of panels."""

    uid: str
    title: str
    description: str
    variables: tuple[Variable, ...]
    rows: tuple[Row, ...]
    filename: str = ""
    time_from: str = "now-1h"

    def to_dict(self) -> dict[str, Any]:
        """Return the Grafana dashboard JSON model (ids and grid positions assigned in order)."""
        panels: list[dict[str, Any]] = []
        next_id, y = 1, 0
        for row in self.rows:
            row_model: dict[str, Any] = {
                "id": next_id,
                "type": "row",
                "title": row.title,
                "collapsed": row.collapsed,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
            next_id, y = next_id + 1, y + 1
            panels.append(row_model)
            x, row_height = 0, 0
            for panel in row.panels:
                if x + panel.width > 24:
                    x, y = 0, y + row_height
                    row_height = 0
                model = panel.to_dict(next_id, x, y)
                next_id += 1
                (row_model["panels"] if row.collapsed else panels).append(model)
                x += panel.width
                row_height = max(row_height, panel.height)
            y += row_height
        datasource = {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "regex": "",
            "hide": 0,
            "options": [],
            "refresh": 1,
        }
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": list(TAGS),
            "timezone": "browser",
            "editable": True,
            "graphTooltip": 1,
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "refresh": "30s",
            "time": {"from": self.time_from, "to": "now"},
            "links": [
                {
                    "type": "dashboards",
                    "title": "promstat",
                    "tags": ["promstat"],
                    "asDropdown": True,
                    "includeVars": True,
                    "keepTime": True,
                }
            ],
            "annotations": {
                "list": [
                    {
                        "builtIn": 1,
                        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                        "enable": True,
                        "hide": True,
                        "iconColor": "rgba(0, 211, 255, 1)",
                        "name": "Annotations & Alerts",
                        "type": "dashboard",
                    }
                ]
            },
            "templating": {"list": [datasource, *(v.to_dict() for v in self.variables)]},
            "panels": panels,
        }
