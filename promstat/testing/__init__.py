"""The test kit: a fault-injecting fake Prometheus, managed real servers, a simulated fleet.

* :mod:`promstat.testing.fake` — :class:`~promstat.testing.fake.FakePrometheus`, an aiohttp app
  for fault injection (features themselves are proven against the real servers);
* :mod:`promstat.testing.lab` — real Prometheus, VictoriaMetrics, vmalert and redis-server
  processes on free loopback ports with temporary data directories;
* :mod:`promstat.testing.sim` — a simulated Backend.AI fleet whose agents measure on their own
  timer.

Used by promstat's tests, benchmarks and demo; a manager never imports it.
"""
