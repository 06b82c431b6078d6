"""The migration kit off Valkey: dual publishing and the shadow comparison gate.

:mod:`promstat.migration.publisher` writes the legacy msgpack payloads to Valkey from the same
measurements the exporter publishes; :mod:`promstat.migration.compare` diffs Valkey against
Prometheus field by field before an operator switches Valkey off. Operators use these during the
migration; a manager never imports them.
"""
