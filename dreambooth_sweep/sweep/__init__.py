"""Optuna sweeps: the Hydra sweeper that asks trials, the job side that reports to them, search spaces.

- :mod:`.sweeper`: :class:`OptunaSearch`, the sweeper behind ``hydra/sweeper=optuna`` (the plugin
  shell in ``hydra_plugins/dreambooth_sweep_optuna`` imports it only when a sweep starts).
- :mod:`.job`: :class:`TrialReporter`, what a training job calls per checkpoint (scores, pruning,
  ``trial_state.json``).
- :mod:`.search_space`: Hydra sweep syntax and dicts → Optuna distributions, values → overrides.
- :mod:`.storage`: Optuna storages from URLs, shared by the sweeper, the jobs, tracking and the report.
- :mod:`.errors`: :class:`SweepError`.

Importing this package stays light: a single run or a grid never imports Optuna. The sweeper and the
search-space helpers (which need Optuna) load on first use of their names.
"""

from __future__ import annotations

import importlib
from typing import Any

from dreambooth_sweep.sweep.errors import SweepError
from dreambooth_sweep.sweep.job import TRIAL_STATE_FILE, TrialReporter, numeric_metrics, read_trial_state
from dreambooth_sweep.sweep.storage import (
    JOURNAL_PREFIX,
    STORAGE_ENV,
    job_storage_override,
    open_storage,
    release_job_storages,
)

__all__ = [
    "JOURNAL_PREFIX",
    "STORAGE_ENV",
    "TRIAL_STATE_FILE",
    "OptunaSearch",
    "SweepError",
    "TrialReporter",
    "format_value",
    "grid_search_space",
    "job_storage_override",
    "numeric_metrics",
    "open_storage",
    "parse_search_space",
    "read_trial_state",
    "release_job_storages",
]

# Names whose modules import Optuna at their top: loaded when first asked for.
_LAZY = {
    "OptunaSearch": "dreambooth_sweep.sweep.sweeper",
    "format_value": "dreambooth_sweep.sweep.search_space",
    "grid_search_space": "dreambooth_sweep.sweep.search_space",
    "parse_search_space": "dreambooth_sweep.sweep.search_space",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
