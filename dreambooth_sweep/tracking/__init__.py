"""MLflow tracking of one training run, and of the sweep it belongs to.

The subsystem, in the order a run meets it:

* :mod:`~dreambooth_sweep.tracking.store`: the tracking URI (SQLite file by default), connecting
  (an unreachable server fails in seconds, with one line), the experiment.
* :mod:`~dreambooth_sweep.tracking.runs`: where a run goes (experiment, the sweep's parent run, its
  name).
* :mod:`~dreambooth_sweep.tracking.stale`: closing runs left RUNNING by killed processes.
* :mod:`~dreambooth_sweep.tracking.tracker`: :func:`start_tracking`, the :class:`Tracker` the trainer
  calls and its end-of-run status.
* :mod:`~dreambooth_sweep.tracking.sender`: the background delivery thread that buffers through a
  server outage.
* :mod:`~dreambooth_sweep.tracking.params`, :mod:`~dreambooth_sweep.tracking.secrets`,
  :mod:`~dreambooth_sweep.tracking.tags`: what is written (flattened params, the secret mask, every
  tag name and the sweep-id format).

Importing this package imports neither MLflow nor requests: the report and the sweeper take tag names
and the secret mask from here cheaply; MLflow loads when a run starts.
"""

from __future__ import annotations

from dreambooth_sweep.tracking.params import flatten_params
from dreambooth_sweep.tracking.runs import RunPlan, ensure_parent_run, find_or_create_parent_run, plan_run
from dreambooth_sweep.tracking.secrets import MASK, is_secret_key, mask_secrets, mask_text, masked_line
from dreambooth_sweep.tracking.sender import BATCH_WINDOW_S, MAX_QUEUED, RETRY_INTERVAL_S
from dreambooth_sweep.tracking.stale import close_stale_runs, close_stale_store_runs, pid_namespace
from dreambooth_sweep.tracking.store import CHECK_TIMEOUT_S, default_uri, resolve_uri
from dreambooth_sweep.tracking.tags import grid_sweep_id, optuna_sweep_id
from dreambooth_sweep.tracking.tracker import (
    FLUSH_TIMEOUT_S,
    NullTracker,
    Terminated,
    Tracker,
    start_tracking,
)

# The name tests/test_faults.py imported before the split.
_pid_namespace = pid_namespace

__all__ = [
    "BATCH_WINDOW_S",
    "CHECK_TIMEOUT_S",
    "FLUSH_TIMEOUT_S",
    "MASK",
    "MAX_QUEUED",
    "RETRY_INTERVAL_S",
    "NullTracker",
    "RunPlan",
    "Terminated",
    "Tracker",
    "close_stale_runs",
    "close_stale_store_runs",
    "default_uri",
    "ensure_parent_run",
    "find_or_create_parent_run",
    "flatten_params",
    "grid_sweep_id",
    "is_secret_key",
    "mask_secrets",
    "mask_text",
    "masked_line",
    "optuna_sweep_id",
    "pid_namespace",
    "plan_run",
    "resolve_uri",
    "start_tracking",
]
