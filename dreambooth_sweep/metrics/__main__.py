"""``python -m dreambooth_sweep.metrics``: the same command as ``dreambooth-sweep score``."""

from __future__ import annotations

import sys

from dreambooth_sweep.metrics.cli import main

if __name__ == "__main__":
    sys.exit(main())
