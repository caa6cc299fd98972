"""The sweep's error: a bad sweeper setting, or a sweep that cannot go on, as one line.

It lives here, not in the plugin shell under ``hydra_plugins``: Hydra's plugin scan executes those
modules again in every run, and each execution would make a new, different exception class.
"""

from __future__ import annotations

from hydra.errors import CompactHydraException

from dreambooth_sweep.errors import ConfigError

__all__ = ["SweepError"]


class SweepError(CompactHydraException, ConfigError):
    """A bad sweeper setting or storage, or a sweep that cannot go on; the message is one line.

    A Hydra exception (``python -m dreambooth_sweep.train -m`` and Hydra's own runner print only the
    message) and a :class:`~dreambooth_sweep.errors.ConfigError` (a single run's or a tool's
    ``error:`` line and exit 2).
    """
