"""``python -m promstat.cli``: the same as the ``promstat`` command."""

from __future__ import annotations

import sys

from promstat.cli import main

if __name__ == "__main__":
    sys.exit(main())
