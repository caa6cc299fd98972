"""``python -m dreambooth_sweep.report SWEEP_DIR``: the same as ``dreambooth-sweep report SWEEP_DIR``."""

from __future__ import annotations

import sys

from dreambooth_sweep.report.cli import main

if __name__ == "__main__":
    sys.exit(main())
