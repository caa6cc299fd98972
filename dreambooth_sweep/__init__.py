"""dreambooth-sweep: find where DreamBooth's subject fidelity is high before prompt fidelity collapses."""

from __future__ import annotations

__version__ = "0.1.0"
