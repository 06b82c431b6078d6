"""promstat: Backend.AI live statistics served from Prometheus."""

from __future__ import annotations

__version__ = "0.1.0"
