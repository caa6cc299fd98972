"""MLflow tracking of one training run, and of the sweep it belongs to.

Usage (the trainer)::

    with start_tracking(cfg) as tracker:           # cfg: the composed RunConfig
        tracker.log_train(step, {"train/loss": loss, "train/lr": lr})  # throttled
        tracker.log_metrics({"eval/dino": 0.61}, step=step)            # always logged
        tracker.log_image(grid, key="samples", step=step)               # UI step slider
        tracker.log_artifact(lora_file, artifact_path="weights")
        tracker.log_summary({"best/score": 0.58, "best/step": 300})

``tracking=none`` gives a :class:`NullTracker` with the same methods doing nothing.

**Store.** ``tracking.uri: null`` is the embedded store: the SQLite file ``<paths.log_dir>/mlflow.db``
(:func:`default_uri`; ``make ui`` opens the same file), with artifacts beside it in
``<paths.log_dir>/mlartifacts/<experiment>`` (set when the experiment is created, so nothing lands in a
stray ``./mlruns``). Any other URI is used as given; an ``http(s)://`` server is checked before the run
starts and an unreachable one fails at once with a one-line :class:`ConfigError`. SQLite is fine for
one process at a time; parallel or multi-node sweeps should use ``mlflow server`` on PostgreSQL.

**Runs.** A single run is a plain run in ``tracking.experiment``. In a sweep the experiment is named
after the sweep, with one *parent* run per sweep and one nested *child* run per trial/job:

* Optuna sweeper (``sweep.study_name`` set): experiment = the study name, children ``trial-<n>``.
* Hydra grid (multirun, no study): experiment = ``<tracking.experiment>/<sweep id>``, where the sweep id
  is ``hydra.sweep.dir`` relative to ``paths.log_dir`` (a leading ``multirun(s)/`` dropped), or its last two
  parts when it lies elsewhere; children ``job-<n>``. Set ``tracking.run_name`` (e.g.
  ``lr=${train.lr}``) for more telling names; the overrides are always in the ``hydra.overrides`` tag.

The parent is found by its tag ``dbs.sweep_id`` or created, under a file lock in ``paths.log_dir``, so
workers starting together share one parent and re-running a sweep (same study or sweep dir) attaches
new children to the same parent. Workers on machines without a shared ``paths.log_dir`` (one study,
one tracking server) settle on the oldest parent if they race to create one; a parent id given in
``sweep.parent_run_id`` (see :func:`ensure_parent_run`) always wins.
:meth:`Tracker.log_summary` on a child also updates the parent's ``best/*`` values when the child
beats them, and logs ``sweep/score`` at step = trial number. A parent is RUNNING while a child runs
and FINISHED when its last running child ends.

**End of run.** Leaving the ``with`` block sets FINISHED; an exception sets FAILED with tag ``error``
(one line, ``Type: message``); KeyboardInterrupt or SIGTERM sets KILLED; ``optuna.TrialPruned`` is a
normal outcome: FINISHED with tag ``pruned=true``. Exceptions always propagate.
A process killed outright (SIGKILL, the kernel's OOM killer, a lost node) cannot end its run: each
run records its host and process (tags ``dbs.host``, ``dbs.pid``, ``dbs.pid_start``, ``dbs.pid_ns``), and every job
attaching to a sweep's parent closes the children left RUNNING by a dead process or whose Optuna trial
has already finished (:func:`close_stale_runs`: KILLED, or the trial's outcome, tag ``dbs.stale_reason``).

**Off the hot path.** Every call only appends an item to an in-memory queue (microseconds); one
background thread per run delivers them in order, gathering metrics for ``BATCH_WINDOW_S`` into one
``log_batch`` call. Leaving the block (or :meth:`Tracker.flush`) delivers everything queued. Pass plain floats: a CUDA tensor would force a device sync.

**Lost server: buffer and retry.** If the tracking server stops answering mid-run, training goes on:
one warning is logged, items stay queued in memory (up to ``MAX_QUEUED``, then new ones are dropped
with one warning), delivery is retried every ``RETRY_INTERVAL_S`` and resumes in order when the server
is back. At the end the run waits for the server at most ``flush_timeout`` seconds (default
``FLUSH_TIMEOUT_S``, env ``DBS_TRACKING_FLUSH_TIMEOUT``), then gives up with one warning that counts
the lost items (the run then stays RUNNING on the server). A request the server *rejects* (e.g. a
changed param) is dropped with a warning, never retried. Database stores (sqlite://, postgresql://)
have no server to wait for: a failing write is retried a few times with backoff, then dropped.
For http stores this module turns off MLflow's own HTTP retries (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``,
``MLFLOW_HTTP_REQUEST_TIMEOUT=60``; only where unset): it retries itself, without minutes of backoff
and a urllib3 warning per attempt.

**Secrets.** Values of keys naming a token/password/secret/api_key, and passwords inside URLs
(``postgresql://user:pw@host``), are written as ``***`` in params, tags and ``config.yaml``.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dreambooth_sweep.config import ConfigError
from dreambooth_sweep.files import file_lock
from dreambooth_sweep.tracking.secrets import MASK, is_secret_key, mask_secrets, mask_text  # noqa: F401 (re-exported until the split)

__all__ = [
    "BATCH_WINDOW_S",
    "FLUSH_TIMEOUT_S",
    "MAX_QUEUED",
    "RETRY_INTERVAL_S",
    "NullTracker",
    "RunPlan",
    "Terminated",
    "Tracker",
    "close_stale_runs",
    "default_uri",
    "ensure_parent_run",
    "find_or_create_parent_run",
    "flatten_params",
    "mask_secrets",
    "plan_run",
    "resolve_uri",
    "start_tracking",
]

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_S = 60.0  # how long the end of a run waits for a lost server before giving up
RETRY_INTERVAL_S = 2.0  # delay between delivery attempts while the server is unreachable
BATCH_WINDOW_S = 0.5  # metrics are gathered this long into one log_batch call
MAX_QUEUED = 100_000  # items kept in memory while the server is away (one log_train call = 1 item)
CHECK_TIMEOUT_S = 5.0  # reachability check of an http tracking server at start

# MLflow limits (mlflow/utils/validation.py).
_MAX_PARAM_VAL = 6000
_MAX_TAG_VAL = 8000
_MAX_KEY = 250
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAMS_TAGS_PER_BATCH = 100

TAG_SWEEP_ID = "dbs.sweep_id"
TAG_ROLE = "dbs.role"  # parent | child | single
TAG_PARENT = "mlflow.parentRunId"
TAG_GIT_COMMIT = "mlflow.source.git.commit"

# MLflow error codes that mean "try again later" rather than "this request is wrong".
_TRANSIENT_CODES = {
    "INTERNAL_ERROR",
    "TEMPORARILY_UNAVAILABLE",
    "IO_ERROR",
    "SERVICE_UNDER_MAINTENANCE",
    "DEADLINE_EXCEEDED",
    "REQUEST_LIMIT_EXCEEDED",
    "RESOURCE_EXHAUSTED",
    "ABORTED",
    "COULD_NOT_ACQUIRE_LOCK",
    "UNPARSEABLE_HTTP_ERROR",
}


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM while a tracked run is open, so the run is marked KILLED."""


# ---------------------------------------------------------------------------------------------------
# Store location


def default_uri(log_dir: str | os.PathLike[str]) -> str:
    """The embedded store: ``sqlite:///<absolute log_dir>/mlflow.db`` (what ``make ui`` opens)."""
    return f"sqlite:///{Path(log_dir).expanduser().resolve() / 'mlflow.db'}"


def resolve_uri(cfg: DictConfig) -> str:
    """``tracking.uri``, or the embedded default under ``paths.log_dir`` when it is null."""
    uri = cfg.tracking.uri
    return str(uri) if uri else default_uri(cfg.paths.log_dir)


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _artifact_root(uri: str, log_dir: Path) -> Path | None:
    """Where new experiments keep artifacts: beside a SQLite file, under log_dir for other databases,
    and wherever the server says for http(s) and other remote stores (None)."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts"
    if re.match(r"^(postgresql|mysql|mssql)(\+\w+)?://", uri):
        return log_dir / "mlartifacts"
    return None


# ---------------------------------------------------------------------------------------------------
# Secrets and params


def _config_container(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Resolved plain dict of a config; unresolved where an interpolation cannot be resolved here."""
    if not isinstance(cfg, DictConfig):
        return dict(cfg)
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[return-value]
    except Exception:  # e.g. ${hydra:...} outside a Hydra app
        return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


def flatten_params(container: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 1e-6}}`` -> ``{"train.lr": "1e-06"}``, secrets masked, MLflow limits respected."""
    out: dict[str, str] = {}
    for k, v in mask_secrets(container).items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_params(v, prefix=f"{name}."))
            continue
        text = str(v)
        if len(text) > _MAX_PARAM_VAL:
            text = text[: _MAX_PARAM_VAL - 3] + "..."
        out[name[:_MAX_KEY]] = text
    return out


def _one_line(exc: BaseException, limit: int = 500) -> str:
    msg = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    return mask_text(text)[:limit]


def _tag_value(value: Any) -> str:
    return mask_text(str(value))[:_MAX_TAG_VAL]


# ---------------------------------------------------------------------------------------------------
# Where a run goes: experiment, parent, name


@dataclass
class RunPlan:
    """Where a run is logged; computed from the config and the Hydra/Optuna context by :func:`plan_run`."""

    experiment: str
    run_name: str | None = None
    sweep_id: str | None = None  # None: a plain run without parent
    sweep_name: str | None = None  # name of the parent run
    parent_run_id: str | None = None  # given by the sweeper: used as is
    trial: int | None = None  # Optuna trial number or Hydra job number
    tags: dict[str, str] = field(default_factory=dict)


def _hydra_context() -> Any | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get() if HydraConfig.initialized() else None
    except Exception:
        return None


def _is_multirun(hc: Any) -> bool:
    from hydra.types import RunMode

    return hc.mode == RunMode.MULTIRUN


def _grid_sweep_id(sweep_dir: Path, log_dir: Path) -> str:
    try:
        parts = sweep_dir.relative_to(log_dir).parts
        if len(parts) > 1 and parts[0] in ("multirun", "multiruns"):
            parts = parts[1:]
    except ValueError:
        parts = sweep_dir.parts[-2:]
    return "/".join(parts) or sweep_dir.name


def plan_run(cfg: DictConfig) -> RunPlan:
    """Decide experiment, parent sweep and run name of this run (see the module docstring)."""
    tr, sw = cfg.tracking, cfg.sweep
    log_dir = Path(cfg.paths.log_dir).expanduser().resolve()
    plan = RunPlan(experiment=str(tr.experiment), run_name=tr.run_name or None)
    hc = _hydra_context()
    multirun = hc is not None and _is_multirun(hc)
    if sw.study_name:
        plan.experiment = plan.sweep_name = str(sw.study_name)
        plan.sweep_id = f"optuna:{sw.study_name}"
        plan.trial = sw.trial_number
        plan.tags["optuna.study_name"] = str(sw.study_name)
        if sw.trial_number is not None:
            plan.tags["optuna.trial_number"] = str(sw.trial_number)
            plan.run_name = plan.run_name or f"trial-{sw.trial_number}"
    elif multirun:
        sweep_dir = Path(hc.runtime.cwd, hc.sweep.dir).resolve()
        name = _grid_sweep_id(sweep_dir, log_dir)
        plan.experiment = f"{tr.experiment}/{name}"
        plan.sweep_name = name
        plan.sweep_id = f"hydra:{sweep_dir}"
        plan.trial = int(hc.job.num) if hc.job.num is not None else None
        if plan.trial is not None:
            plan.run_name = plan.run_name or f"job-{plan.trial}"
    if sw.parent_run_id:
        plan.parent_run_id = str(sw.parent_run_id)
    if hc is not None:
        if multirun and hc.job.num is not None:
            plan.tags["hydra.job_num"] = str(hc.job.num)
        overrides = list(hc.overrides.task)
        if overrides:
            plan.tags["hydra.overrides"] = " ".join(overrides)
    if plan.sweep_id and "'" in plan.sweep_id:  # keep it usable inside a search filter string
        plan.sweep_id = plan.sweep_id.replace("'", "_")
    return plan


# ---------------------------------------------------------------------------------------------------
# Store helpers (also used by the sweeper)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "experiment"


def _experiment_id(client: Any, name: str, uri: str, log_dir: Path) -> str:
    """Get or create the experiment (call under the lock); restores a deleted one of the same name."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            log.warning("MLflow experiment %r was deleted; restoring it", name)
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    root = _artifact_root(uri, log_dir)
    location = (root / _slug(name)).as_uri() if root is not None else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:
        # Another machine (no shared lock file) created it a moment ago: use theirs.
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def find_or_create_parent_run(
    client: Any,
    experiment_id: str,
    sweep_id: str,
    *,
    name: str | None,
    lock_path: str | os.PathLike[str],
    tags: Mapping[str, str] | None = None,
) -> str:
    """The id of the sweep's parent run (tag ``dbs.sweep_id``), created if missing.

    Search and creation happen under a file lock, so processes sharing ``lock_path`` never create two
    parents. Workers on different machines (no shared lock file) may race: each one that created a
    parent looks again, and all settle on the oldest (earliest start time, then smallest id); a
    creator whose parent lost deletes it before any child could use it.
    """
    with file_lock(Path(lock_path)):
        found = _parents(client, experiment_id, sweep_id)
        if found:
            return found[0]
        all_tags = {**(tags or {}), TAG_SWEEP_ID: sweep_id, TAG_ROLE: "parent"}
        mine = client.create_run(experiment_id, run_name=name, tags=all_tags).info.run_id
        oldest = _parents(client, experiment_id, sweep_id)[0]
        if oldest != mine:
            client.delete_run(mine)
        return oldest


def _parents(client: Any, experiment_id: str, sweep_id: str) -> list[str]:
    """Ids of the live parent runs of a sweep, oldest first."""
    from mlflow.entities import ViewType

    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_SWEEP_ID}` = '{sweep_id}' and tags.`{TAG_ROLE}` = 'parent'",
        run_view_type=ViewType.ACTIVE_ONLY,
        order_by=["attributes.start_time ASC"],
        max_results=50,
    )
    found.sort(key=lambda r: (r.info.start_time, r.info.run_id))
    return [r.info.run_id for r in found]


def _process_tags() -> dict[str, str]:
    """Which process runs this run: lets a later job tell a live run from one left by a dead process."""
    pid = os.getpid()
    return {
        TAG_HOST: socket.gethostname(),
        TAG_PID: str(pid),
        TAG_PID_START: _process_start(pid) or "",
        TAG_PID_NS: _pid_namespace(),
    }


def _pid_namespace() -> str:
    """Linux PID namespace: containers sharing a hostname (``--network host``) still see different pids."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _git_commit() -> tuple[str, bool] | None:
    """(commit, dirty) of the checkout this package runs from, or None outside a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return commit.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None


def _check_reachable(uri: str) -> None:
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=CHECK_TIMEOUT_S)
    except requests.RequestException as e:
        reason = type(e).__name__
        raise ConfigError(
            f"MLflow tracking server {mask_text(uri)} is unreachable ({reason}): "
            "start it (mlflow server ...), fix tracking.uri, or set tracking=none"
        ) from None


def _server_answers(uri: str) -> bool:
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=2)
        return True
    except requests.RequestException:
        return False


def _connect(uri: str, log_dir: Path) -> Any:
    """An MlflowClient for ``uri``; an unreachable http server fails here, fast, with one line.

    A database store creates or migrates its schema on first use; parallel jobs on one machine
    (joblib, submitit_local) would race doing so ("table _alembic_tmp_... already exists"), so the
    first query runs under the file lock in ``log_dir``.
    """
    if _is_http(uri):
        # We retry ourselves (see the module docstring): no minutes of per-request backoff in MLflow.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
        _check_reachable(uri)
    else:
        log_dir.mkdir(parents=True, exist_ok=True)
    from mlflow import MlflowClient

    try:
        if _is_http(uri):
            return MlflowClient(tracking_uri=uri)
        with file_lock(log_dir / "mlflow.lock"):
            client = MlflowClient(tracking_uri=uri)  # opens the store: creates/migrates the schema
            client.search_experiments(max_results=1)
        return client
    except Exception as e:
        raise _setup_error(uri, e) from e


def _setup_error(uri: str, exc: Exception) -> ConfigError:
    if isinstance(exc, ConfigError):
        return exc
    return ConfigError(
        f"MLflow tracking at {mask_text(uri)} failed to start ({_one_line(exc, 300)}): "
        "fix tracking.uri or set tracking=none"
    )


def _locate(
    client: Any, plan: RunPlan, uri: str, log_dir: Path, storage: str | None = None
) -> tuple[str, str | None]:
    """(experiment id, parent run id or None) of a run planned by :func:`plan_run`.

    Attaching to a parent also closes its children that a dead process left RUNNING
    (:func:`close_stale_runs`; ``storage`` is the sweep's Optuna storage URL).
    """
    if plan.parent_run_id:
        experiment_id, parent = client.get_run(plan.parent_run_id).info.experiment_id, plan.parent_run_id
    else:
        lock = log_dir / "mlflow.lock"
        with file_lock(lock):
            experiment_id = _experiment_id(client, plan.experiment, uri, log_dir)
        if not plan.sweep_id:
            return experiment_id, None
        parent_tags = {k: v for k, v in plan.tags.items() if k.startswith("optuna.study")}
        parent = find_or_create_parent_run(
            client, experiment_id, plan.sweep_id, name=plan.sweep_name, lock_path=lock, tags=parent_tags
        )
    try:
        close_stale_runs(client, parent, storage=storage)
    except Exception as e:  # housekeeping must never stop a new run
        log.warning("MLflow: could not check parent %s for stale runs: %s", parent, _one_line(e, 300))
    return experiment_id, parent


def ensure_parent_run(cfg: DictConfig) -> str | None:
    """The parent run id of the sweep ``cfg`` belongs to, created if missing; None outside a sweep.

    For a sweeper that wants to create the parent once, up front, and hand it to every job as
    ``sweep.parent_run_id`` (the way to share one parent between machines without a shared
    ``paths.log_dir``). Jobs call the same logic themselves otherwise.
    """
    if str(cfg.tracking.backend).lower() == "none":
        return None
    plan = plan_run(cfg)
    if not (plan.sweep_id or plan.parent_run_id):
        return None
    uri, log_dir = resolve_uri(cfg), Path(cfg.paths.log_dir).expanduser().resolve()
    client = _connect(uri, log_dir)
    try:
        return _locate(client, plan, uri, log_dir, cfg.sweep.storage)[1]
    except Exception as e:
        raise _setup_error(uri, e) from e


# ---------------------------------------------------------------------------------------------------
# Runs left RUNNING by a process that died (SIGKILL, the kernel's OOM killer, a lost node)

TAG_HOST = "dbs.host"
TAG_PID = "dbs.pid"
TAG_PID_START = "dbs.pid_start"  # the process's start time: a reused pid is not taken for the same process
TAG_PID_NS = "dbs.pid_ns"  # the PID namespace: pids are only comparable within one
TAG_STALE = "dbs.stale_reason"


def _process_start(pid: int) -> str | None:
    """Start time of process ``pid`` as a string ("" if unknown), or None when no such process lives."""
    try:
        import psutil
    except ImportError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # alive, owned by someone else
            pass
        return ""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:  # dead, only not reaped by its parent yet
            return None
        return f"{proc.create_time():.2f}"
    except psutil.NoSuchProcess:
        return None
    except psutil.Error:
        return ""


def _process_gone(tags: Mapping[str, str]) -> bool:
    """True when the run was started on this machine by a process that no longer lives."""
    same_machine = tags.get(TAG_HOST) == socket.gethostname() and tags.get(TAG_PID_NS, "") == _pid_namespace()
    if not same_machine or not tags.get(TAG_PID, "").isdigit():
        return False
    started = _process_start(int(tags[TAG_PID]))
    return started is None or bool(started and tags.get(TAG_PID_START) and started != tags[TAG_PID_START])


@functools.cache
def _optuna_storage(url: str) -> Any:
    from dreambooth_sweep.sweep import open_storage

    return open_storage(url)


def _finished_trial(tags: Mapping[str, str], storage: str | None) -> Any | None:
    """The run's Optuna trial (FrozenTrial) if it has finished, else None."""
    study, number = tags.get("optuna.study_name"), tags.get("optuna.trial_number", "")
    if not (storage and study and number.isdigit()):
        return None
    store = _optuna_storage(storage)
    study_id = store.get_study_id_from_name(study)
    trial = store.get_trial(store.get_trial_id_from_study_id_trial_number(study_id, int(number)))
    return trial if trial.state.is_finished() else None


def _stale_verdict(tags: Mapping[str, str], storage: str | None) -> tuple[str, dict[str, str]] | None:
    """(status, tags) to close a RUNNING run with, or None while something may still be running it."""
    gone = _process_gone(tags)
    trial = _finished_trial(tags, storage)
    if trial is not None:
        state = trial.state.name
        if state == "FAIL":
            reason = str(trial.user_attrs.get("fail_reason") or "the trial failed")
            status = "KILLED" if gone or trial.user_attrs.get("interrupted") else "FAILED"
            return status, {TAG_STALE: f"Optuna trial {trial.number} is FAIL", "error": reason}
        extra = {"pruned": "true"} if state == "PRUNED" else {}
        return "FINISHED", {
            TAG_STALE: f"Optuna trial {trial.number} is {state}; the run's end was lost",
            **extra,
        }
    if gone:
        reason = (
            f"process {tags[TAG_PID]} on {tags[TAG_HOST]} ended without closing the run "
            "(SIGKILL, out of host memory, or a lost node)"
        )
        return "KILLED", {TAG_STALE: reason, "error": reason}
    return None


def close_stale_runs(client: Any, parent_run_id: str, *, storage: str | None = None) -> list[str]:
    """Close the children of a sweep's parent that are RUNNING although nothing runs them any more.

    A child is stale when its Optuna trial has finished (then its status follows the trial: COMPLETE
    or PRUNED → FINISHED; FAIL → KILLED when the sweeper failed it as interrupted or its process is
    gone, else FAILED, with the trial's ``fail_reason`` as tag ``error``), or when it was started on this
    machine by a process that no longer lives (KILLED). Every job attaching to the parent calls this,
    so a resumed or continuing sweep cleans up after a killed worker. Returns the closed run ids.

    Args:
        client: an MlflowClient.
        parent_run_id: the sweep's parent run.
        storage: the sweep's Optuna storage URL (``sweep.storage``); None: only the process check.
    """
    from mlflow.entities import RunTag

    experiment_id = client.get_run(parent_run_id).info.experiment_id
    running = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}' and attributes.status = 'RUNNING'",
        max_results=1000,
    )
    closed = []
    for run in running:
        verdict = _stale_verdict(run.data.tags, storage)
        if verdict is None:
            continue
        status, tags = verdict
        run_id = run.info.run_id
        client.log_batch(run_id, tags=[RunTag(k, _tag_value(v)) for k, v in tags.items()])
        client.set_terminated(run_id, status=status)
        log.warning(
            "MLflow run %s (%s) was left RUNNING: now %s (%s)",
            run_id,
            run.info.run_name,
            status,
            tags[TAG_STALE],
        )
        closed.append(run_id)
    return closed


# ---------------------------------------------------------------------------------------------------
# Background delivery


@dataclass
class _Op:
    kind: str  # batch | call
    run_id: str = ""
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)  # key, value, ms, step
    params: list[Any] = field(default_factory=list)
    tags: list[Any] = field(default_factory=list)
    fn: Any = None  # kind == call: fn(client) does the work
    what: str = ""  # for warnings


def _is_transient(exc: BaseException) -> bool:
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return exc.error_code in _TRANSIENT_CODES
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError | TypeError | ValueError):
        return False
    return isinstance(exc, OSError) or type(exc).__module__.startswith(("requests", "urllib3", "sqlalchemy"))


class _Sender(threading.Thread):
    """Delivers queued items to MLflow in order; buffers and retries while the server is away.

    The training thread only appends to a deque (no lock, no wake-up); this thread wakes every
    ``BATCH_WINDOW_S`` (or at once on flush/close) and sends what piled up, metrics merged into
    ``log_batch`` calls.
    """

    def __init__(self, client: Any, uri: str) -> None:
        super().__init__(name="mlflow-sender", daemon=True)
        self.client, self.uri = client, uri
        self.buf: collections.deque[_Op] = collections.deque()
        self.hurry = threading.Event()  # set by flush()/close(): deliver now
        self.abandon = threading.Event()  # set when the end of the run stops waiting for the server
        self.closing = False
        self.offline_since: float | None = None
        self.busy = False  # an item is being delivered
        self.dropped = self.rejected = self.undelivered = 0

    # producer side ---------------------------------------------------------------------------------
    def submit(self, op: _Op) -> None:
        if len(self.buf) >= MAX_QUEUED:
            if not self.dropped:
                log.warning(
                    "MLflow buffer full (%d items): dropping new log calls until it drains", MAX_QUEUED
                )
            self.dropped += 1
            return
        self.buf.append(op)

    def pending(self) -> int:
        return len(self.buf) + self.busy

    # consumer side ---------------------------------------------------------------------------------
    def _take(self) -> _Op:
        """The next item; consecutive batch items of one run merged into one log_batch call."""
        op = self.buf.popleft()
        if op.kind != "batch":
            return op
        merged = _Op("batch", op.run_id, list(op.metrics), list(op.params), list(op.tags), what="metrics")
        while self.buf:
            nxt = self.buf[0]
            fits = (
                nxt.kind == "batch"
                and nxt.run_id == merged.run_id
                and len(merged.metrics) + len(nxt.metrics) <= _MAX_METRICS_PER_BATCH
                and len(merged.params) + len(nxt.params) + len(merged.tags) + len(nxt.tags)
                <= _MAX_PARAMS_TAGS_PER_BATCH
            )
            if not fits:
                break
            self.buf.popleft()
            merged.metrics += nxt.metrics
            merged.params += nxt.params
            merged.tags += nxt.tags
        return merged

    def run(self) -> None:
        while True:
            if not self.buf:
                if self.closing:
                    return
                self.hurry.wait(BATCH_WINDOW_S)
                if not self.closing:
                    self.hurry.clear()
                continue
            self.busy = True
            self._deliver(self._take())
            self.busy = False
            if self.abandon.is_set():
                self.undelivered += len(self.buf)
                self.buf.clear()
                return

    def _send(self, op: _Op) -> None:
        if op.kind == "batch":
            from mlflow.entities import Metric

            metrics = [Metric(*m) for m in op.metrics]  # (key, value, timestamp, step) tuples
            self.client.log_batch(op.run_id, metrics=metrics, params=op.params, tags=op.tags)
        else:
            op.fn(self.client)

    def _deliver(self, op: _Op) -> None:
        attempts = 0
        while True:
            try:
                self._send(op)
            except Exception as e:
                if self.abandon.is_set():
                    self.undelivered += 1
                    return
                if not _is_transient(e):
                    self.rejected += 1
                    log.warning("MLflow rejected %s: %s (dropped)", op.what or op.kind, _one_line(e, 300))
                    return
                if _is_http(self.uri) and not _server_answers(self.uri):
                    if self.offline_since is None:
                        self.offline_since = time.monotonic()
                        log.warning(
                            "MLflow server %s is unreachable: training continues, log calls are buffered "
                            "in memory and retried every %g s",
                            mask_text(self.uri),
                            RETRY_INTERVAL_S,
                        )
                    self.abandon.wait(RETRY_INTERVAL_S)
                    continue
                attempts += 1
                if attempts > 3:
                    self.rejected += 1
                    log.warning(
                        "MLflow failed %s 4 times: %s (dropped)", op.what or op.kind, _one_line(e, 300)
                    )
                    return
                self.abandon.wait(0.5 * 2**attempts)
                continue
            if self.offline_since is not None:
                log.warning(
                    "MLflow server %s is back after %.0f s: delivering buffered log calls",
                    mask_text(self.uri),
                    time.monotonic() - self.offline_since,
                )
                self.offline_since = None
            return

    def close(self, flush_timeout: float) -> None:
        """Deliver everything queued; give up after the server has been away ``flush_timeout`` s."""
        self.closing = True
        self.hurry.set()
        started = time.monotonic()
        while self.is_alive():
            self.join(0.1)
            if self.offline_since is not None:
                away = time.monotonic() - max(self.offline_since, started)
                if away > flush_timeout:
                    self.abandon.set()
                    self.join(10)
                    break
        if self.undelivered or self.abandon.is_set():
            log.warning(
                "MLflow server %s unreachable for %.0f s at the end of the run: %d log call(s) not "
                "delivered; the run stays RUNNING there",
                mask_text(self.uri),
                flush_timeout,
                max(self.undelivered, 1),
            )


# ---------------------------------------------------------------------------------------------------
# Trackers


class NullTracker:
    """``tracking=none``: the same methods, doing nothing."""

    run_id: str | None = None
    parent_run_id: str | None = None

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, *exc: object) -> bool:
        return False

    def log_config(self, cfg: DictConfig | Mapping[str, Any]) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_train(self, step: int, values: Mapping[str, float]) -> None:
        pass

    def log_metrics(self, values: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_image(self, image: Any, key: str, step: int = 0) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        pass

    def log_summary(
        self, values: Mapping[str, Any], *, score_key: str = "best/score", maximize: bool = True
    ) -> None:
        pass

    def flush(self, timeout: float | None = None) -> bool:
        return True


def _image_key(key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_\-./ ]", "_", key) or "image"


def _system_metrics_available() -> bool:
    flag = os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return False
    try:
        import psutil  # noqa: F401
    except ImportError:
        return False
    return True


class Tracker:
    """One MLflow run; created by :func:`start_tracking`, opened by ``with``."""

    def __init__(
        self,
        cfg: DictConfig,
        *,
        flush_timeout: float | None = None,
        system_metrics: bool | None = None,
    ) -> None:
        self.cfg = cfg
        self.uri = resolve_uri(cfg)
        self.log_dir = Path(cfg.paths.log_dir).expanduser().resolve()
        self.plan = plan_run(cfg)
        env_timeout = os.environ.get("DBS_TRACKING_FLUSH_TIMEOUT")
        self.flush_timeout = (
            flush_timeout if flush_timeout is not None else float(env_timeout or FLUSH_TIMEOUT_S)
        )
        self.system_metrics = _system_metrics_available() if system_metrics is None else system_metrics
        self.every = max(1, int(cfg.tracking.log_every_n_steps))
        self.max_steps = int(cfg.train.max_steps)
        self.run_id: str | None = None
        self.parent_run_id: str | None = None
        self.experiment_id: str | None = None
        self._client: Any = None
        self._sender: _Sender | None = None
        self._params: dict[str, str] = {}
        self._warned: set[str] = set()
        self._sys_stop = threading.Event()
        self._sys_thread: threading.Thread | None = None
        self._old_sigterm: Any = None

    @property
    def lock_path(self) -> Path:
        return self.log_dir / "mlflow.lock"

    # opening ---------------------------------------------------------------------------------------
    def __enter__(self) -> Tracker:
        self._open()
        return self

    def _open(self) -> None:
        self._client = _connect(self.uri, self.log_dir)
        try:
            self.experiment_id, self.parent_run_id = _locate(
                self._client, self.plan, self.uri, self.log_dir, self.cfg.sweep.storage
            )
            self._create_run()
        except Exception as e:
            raise _setup_error(self.uri, e) from e
        self._sender = _Sender(self._client, self.uri)
        self._sender.start()
        self.log_config(self.cfg)
        if self.system_metrics:
            self._start_system_metrics()
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            self._old_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)

    def _create_run(self) -> None:
        client = self._client
        run = client.create_run(self.experiment_id, run_name=self.plan.run_name, tags=self._run_tags())
        self.run_id = run.info.run_id
        if self.parent_run_id and client.get_run(self.parent_run_id).info.status != "RUNNING":
            client.update_run(self.parent_run_id, status="RUNNING")

    def _run_tags(self) -> dict[str, str]:
        cfg, plan = self.cfg, self.plan
        tags: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            from mlflow.tracking.context.registry import resolve_tags

            tags.update(resolve_tags())
        git = _git_commit()
        if git is not None:
            tags[TAG_GIT_COMMIT] = git[0]
            tags["dbs.git_dirty"] = str(git[1]).lower()
        tags.update(plan.tags)
        tags.update(_process_tags())
        tags.update(
            {
                "method": cfg.method.name,
                "model": cfg.model.name,
                "subject": _subject(cfg),
                "identifier": cfg.data.identifier,
                "class_noun": cfg.data.class_noun,
                TAG_ROLE: "child" if self.parent_run_id else "single",
            }
        )
        output_dir = _output_dir(cfg)
        if output_dir:
            tags["output_dir"] = output_dir
        if self.parent_run_id:
            tags[TAG_PARENT] = self.parent_run_id
            tags[TAG_SWEEP_ID] = plan.sweep_id or ""
        return {k[:_MAX_KEY]: _tag_value(v) for k, v in tags.items() if v is not None}

    # logging ---------------------------------------------------------------------------------------
    def _submit(self, op: _Op) -> None:
        if self._sender is not None:
            self._sender.submit(op)

    def _warn_once(self, key: str, msg: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *args)

    def log_config(self, cfg: DictConfig | Mapping[str, Any]) -> None:
        """Resolved config as ``config.yaml`` plus flattened params (secrets masked). Also done on enter."""
        from mlflow.entities import Param

        try:
            container = mask_secrets(_config_container(cfg))
            text = OmegaConf.to_yaml(OmegaConf.create(container))
            params = flatten_params(container)
        except Exception as e:
            self._warn_once("config", "could not log the config to MLflow: %s", _one_line(e))
            return
        new = []
        for k, v in params.items():
            if k not in self._params:
                self._params[k] = v
                new.append(Param(k, v))
            elif self._params[k] != v:
                self._warn_once(f"param:{k}", "MLflow params are immutable: %s keeps %r", k, self._params[k])
        for i in range(0, len(new), _MAX_PARAMS_TAGS_PER_BATCH):
            self._submit(_Op("batch", self.run_id or "", params=new[i : i + _MAX_PARAMS_TAGS_PER_BATCH]))
        run_id = self.run_id
        self._submit(_Op("call", fn=lambda c: c.log_text(run_id, text, "config.yaml"), what="config.yaml"))

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Extra params (flattened, masked, logged once each)."""
        from mlflow.entities import Param

        new = []
        for k, v in flatten_params(params).items():
            if k not in self._params:
                self._params[k] = v
                new.append(Param(k, v))
        for i in range(0, len(new), _MAX_PARAMS_TAGS_PER_BATCH):
            self._submit(_Op("batch", self.run_id or "", params=new[i : i + _MAX_PARAMS_TAGS_PER_BATCH]))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        masked = mask_secrets(dict(tags))
        items = [RunTag(str(k)[:_MAX_KEY], _tag_value(v)) for k, v in masked.items() if v is not None]
        for i in range(0, len(items), _MAX_PARAMS_TAGS_PER_BATCH):
            self._submit(_Op("batch", self.run_id or "", tags=items[i : i + _MAX_PARAMS_TAGS_PER_BATCH]))

    def should_log_train(self, step: int) -> bool:
        """True at step 1, every ``tracking.log_every_n_steps`` steps, and at ``train.max_steps``."""
        return step == 1 or step % self.every == 0 or step == self.max_steps

    def log_train(self, step: int, values: Mapping[str, float]) -> None:
        """Per-step training values, logged only where :meth:`should_log_train` says so."""
        if self.should_log_train(step):
            self.log_metrics(values, step=step)

    def log_metrics(self, values: Mapping[str, float], step: int | None = None) -> None:
        """Metrics at ``step`` (always logged). Values that are not numbers are skipped with a warning."""
        ts = int(time.time() * 1000)
        metrics = []
        for k, v in values.items():
            try:
                metrics.append((str(k)[:_MAX_KEY], float(v), ts, int(step or 0)))
            except (TypeError, ValueError):
                self._warn_once(f"metric:{k}", "metric %s=%r is not a number: not logged", k, v)
        if metrics:
            self._submit(_Op("batch", self.run_id or "", metrics=metrics, what="metrics"))

    def log_image(self, image: Any, key: str, step: int = 0) -> None:
        """A PIL image (or HxWxC uint8 array) at ``step`` under ``key`` (``images/`` in the artifacts)."""
        ts = int(time.time() * 1000)
        with contextlib.suppress(AttributeError):
            image = image.copy()  # the caller may reuse its buffer before delivery
        run_id, key = self.run_id, _image_key(key)
        self._submit(
            _Op(
                "call",
                fn=lambda c: c.log_image(
                    run_id, image, key=key, step=int(step), timestamp=ts, synchronous=True
                ),
                what=f"image {key}@{step}",
            )
        )

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Upload a file to ``<artifact_path>/<file name>``, or a directory's contents to
        ``<artifact_path>/`` (default: the directory's name), as MLflow's log_artifact(s) do.

        The upload happens in the background: keep the files in place until the run ends (or call
        :meth:`flush`).
        """
        p = Path(path)
        run_id = self.run_id
        if p.is_dir():
            dest = artifact_path or p.name

            def fn(c: Any) -> None:
                c.log_artifacts(run_id, str(p), dest)
        else:

            def fn(c: Any) -> None:
                c.log_artifact(run_id, str(p), artifact_path)

        self._submit(_Op("call", fn=fn, what=f"artifact {p}"))

    def log_summary(
        self, values: Mapping[str, Any], *, score_key: str = "best/score", maximize: bool = True
    ) -> None:
        """Final values of this run; on a child run, also the parent's best-so-far.

        Numbers become metrics (step 0), anything else tags. When this run is a child and
        ``values[score_key]`` beats the parent's (higher if ``maximize``), the parent gets all numeric
        values plus ``best/trial`` and tags ``best.run_id``/``best.run_name``. The parent also logs
        ``sweep/score`` at step = trial number, one point per trial.
        """
        numbers = {k: v for k, v in values.items() if _is_number(v)}
        others = {k: v for k, v in values.items() if not _is_number(v)}
        if numbers:
            self.log_metrics(numbers, step=0)
        if others:
            self.set_tags(others)
        if not self.parent_run_id or not _is_number(values.get(score_key)):
            return
        parent_id, run_id, run_name, trial = (
            self.parent_run_id,
            self.run_id,
            self.plan.run_name,
            self.plan.trial,
        )
        lock = self.lock_path

        def update_parent(c: Any) -> None:
            from mlflow.entities import Metric, RunTag

            ts = int(time.time() * 1000)
            score = float(values[score_key])
            with file_lock(lock):
                held = c.get_run(parent_id).data.metrics.get(score_key)
                metrics = [Metric("sweep/score", score, ts, int(trial or 0))]
                tags = []
                if held is None or (score > held if maximize else score < held):
                    metrics += [Metric(k, float(v), ts, 0) for k, v in numbers.items()]
                    if trial is not None:
                        metrics.append(Metric("best/trial", float(trial), ts, 0))
                    tags = [RunTag("best.run_id", run_id or ""), RunTag("best.run_name", run_name or "")]
                c.log_batch(parent_id, metrics=metrics, tags=tags)

        self._submit(_Op("call", fn=update_parent, what="parent summary"))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is delivered (or ``timeout`` s); True if it was."""
        if self._sender is None:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._sender.pending() > 0 and self._sender.is_alive():
            self._sender.hurry.set()
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    # system metrics --------------------------------------------------------------------------------
    def _start_system_metrics(self) -> None:
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(self.run_id, tracking_uri=self.uri)
        except Exception as e:
            log.debug("system metrics unavailable: %s", e)
            return
        interval = float(monitor.sampling_interval)

        def loop() -> None:
            step = 0
            while True:
                try:
                    monitor.collect_metrics()
                except Exception:
                    return
                if self._sys_stop.wait(interval):
                    return
                values = monitor.aggregate_metrics()
                for m in monitor.monitors:
                    m.clear_metrics()
                self.log_metrics({f"system/{k}": v for k, v in values.items()}, step=step)
                step += 1

        self._sys_thread = threading.Thread(target=loop, name="mlflow-system-metrics", daemon=True)
        self._sys_thread.start()

    # closing ---------------------------------------------------------------------------------------
    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        try:
            self._close(exc)
        except Exception as e:  # tracking must never turn a finished run into a crash
            log.warning("MLflow: closing run %s failed: %s", self.run_id, _one_line(e))
        return False

    def _close(self, exc: BaseException | None) -> None:
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None
        self._sys_stop.set()
        if self._sys_thread is not None:
            self._sys_thread.join(5)
        status, tags = _outcome(exc)
        if tags:
            self.set_tags(tags)
        run_id, parent_id, end = self.run_id, self.parent_run_id, int(time.time() * 1000)
        lock = self.lock_path

        def terminate(c: Any) -> None:
            c.set_terminated(run_id, status=status, end_time=end)
            if parent_id:
                _finish_parent_if_idle(c, parent_id, lock)

        self._submit(_Op("call", fn=terminate, what=f"status {status}"))
        if self._sender is not None:
            self._sender.close(self.flush_timeout)


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(f"received signal {signal.Signals(signum).name}")


def _outcome(exc: BaseException | None) -> tuple[str, dict[str, str]]:
    """Run status and extra tags for how the block ended."""
    if exc is None:
        return "FINISHED", {}
    with contextlib.suppress(ImportError):
        import optuna

        if isinstance(exc, optuna.TrialPruned):
            return "FINISHED", {"pruned": "true"}
    if isinstance(exc, KeyboardInterrupt):
        return "KILLED", {"error": _one_line(exc)}
    if isinstance(exc, SystemExit) and exc.code in (None, 0):
        return "FINISHED", {}
    return "FAILED", {"error": _one_line(exc)}


def _finish_parent_if_idle(client: Any, parent_id: str, lock: Path) -> None:
    with file_lock(lock):
        parent = client.get_run(parent_id)
        running = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.`{TAG_PARENT}` = '{parent_id}' and attributes.status = 'RUNNING'",
            max_results=1,
        )
        if not running:
            client.set_terminated(parent_id, status="FINISHED")


def _is_number(v: Any) -> bool:
    """Ints, floats, numpy/torch scalars; not bools or strings (those become tags)."""
    if isinstance(v, bool | str | bytes) or v is None:
        return False
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def _subject(cfg: DictConfig) -> str:
    try:
        return Path(str(cfg.data.instance_dir)).name
    except Exception:
        return ""


def _output_dir(cfg: DictConfig) -> str | None:
    if cfg.paths.output_dir:
        return str(Path(cfg.paths.output_dir).expanduser().resolve())
    hc = _hydra_context()
    return str(hc.runtime.output_dir) if hc is not None else None


def start_tracking(
    cfg: DictConfig,
    *,
    flush_timeout: float | None = None,
    system_metrics: bool | None = None,
) -> Tracker | NullTracker:
    """The tracker for this run: use it as ``with start_tracking(cfg) as tracker:``.

    Args:
        cfg: the composed run config (``tracking``, ``paths``, ``sweep``, ``model``, ``data`` ... groups).
        flush_timeout: seconds the end of the run waits for an unreachable server (default
            ``FLUSH_TIMEOUT_S`` or env ``DBS_TRACKING_FLUSH_TIMEOUT``).
        system_metrics: log ``system/*`` CPU/GPU/memory metrics (default: when psutil is importable and
            ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING`` is not false).

    Returns:
        A :class:`Tracker`, or a :class:`NullTracker` when ``tracking.backend`` is ``none`` or in the
        processes of a multi-GPU launch other than rank 0 (env ``RANK``): one MLflow run per trial.
    """
    backend = str(cfg.tracking.backend).lower()
    if backend not in ("mlflow", "none"):
        raise ConfigError(f"unknown tracking.backend={backend!r}: choose mlflow or none")
    if backend == "none" or _process_rank() != 0:  # one run per trial, however many GPUs train it
        return NullTracker()
    return Tracker(cfg, flush_timeout=flush_timeout, system_metrics=system_metrics)


def _process_rank() -> int:
    """This process's rank in a multi-process launch (``accelerate launch``, torchrun, MPI); 0 alone."""
    for var in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0
