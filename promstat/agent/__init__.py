"""The agent side: what a Backend.AI agent runs to publish its measurements to Prometheus.

Nothing in the manager-side core imports this package. :mod:`promstat.agent.exporter` serves
the raw utilization series (with ``value_type="rate"``, the rate between the agent's last two
measurements) on an aiohttp ``/metrics`` endpoint. An agent that keeps serving its own
``prometheus_client`` registry adds the same rate series there with
:class:`promstat.agent.collector.RateCollector` (needs the ``prometheus`` extra).
"""
