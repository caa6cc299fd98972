"""Where a run goes: its experiment, its sweep's parent run, its name.

A single run is a plain run in ``tracking.experiment``. In a sweep the experiment is named after the
sweep, with one *parent* run per sweep and one nested *child* run per trial/job:

* Optuna sweeper (``sweep.study_name`` set): experiment = the study name, children ``trial-<n>``.
* Hydra grid (multirun, no study): experiment = ``<tracking.experiment>/<sweep name>``, where the sweep
  name is ``hydra.sweep.dir`` relative to ``paths.log_dir`` (a leading ``multirun(s)/`` dropped), or its
  last two parts when it lies elsewhere; children ``job-<n>``. Set ``tracking.run_name`` (e.g.
  ``lr=${train.lr}``) for more telling names; the overrides are always in the ``hydra.overrides`` tag.

The parent is found by its tag ``dbs.sweep_id`` (:mod:`~dreambooth_sweep.tracking.tags` builds the id)
or created, under a file lock in ``paths.log_dir``, so workers starting together share one parent and
re-running a sweep (same study or sweep dir) attaches new children to the same parent. Workers on
machines without a shared ``paths.log_dir`` (one study, one tracking server) settle on the oldest
parent if they race to create one; a parent id given in ``sweep.parent_run_id`` (see
:func:`ensure_parent_run`) always wins. Finding or creating a parent also closes runs left RUNNING by
dead processes (:mod:`~dreambooth_sweep.tracking.stale`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreambooth_sweep.files import file_lock
from dreambooth_sweep.tracking import store
from dreambooth_sweep.tracking.params import MAX_KEY, tag_value
from dreambooth_sweep.tracking.secrets import masked_line
from dreambooth_sweep.tracking.stale import close_stale_runs, close_stale_store_runs, process_tags
from dreambooth_sweep.tracking.tags import (
    ROLE_CHILD,
    ROLE_PARENT,
    ROLE_SINGLE,
    TAG_CLASS_NOUN,
    TAG_GIT_COMMIT,
    TAG_GIT_DIRTY,
    TAG_HYDRA_JOB_NUM,
    TAG_HYDRA_OVERRIDES,
    TAG_IDENTIFIER,
    TAG_METHOD,
    TAG_MODEL,
    TAG_OPTUNA_STUDY,
    TAG_OPTUNA_TRIAL,
    TAG_OUTPUT_DIR,
    TAG_PARENT,
    TAG_ROLE,
    TAG_SUBJECT,
    TAG_SWEEP_ID,
    grid_sweep_id,
    optuna_sweep_id,
)

__all__ = [
    "RunPlan",
    "ensure_parent_run",
    "find_or_create_parent_run",
    "hydra_context",
    "locate",
    "output_dir",
    "plan_run",
    "run_tags",
]

log = logging.getLogger(__name__)


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


def hydra_context() -> Any | None:
    """Hydra's runtime config of this job, or None outside a Hydra app."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get() if HydraConfig.initialized() else None
    except Exception:
        return None


def _is_multirun(hc: Any) -> bool:
    from hydra.types import RunMode

    return hc.mode == RunMode.MULTIRUN


def _grid_sweep_name(sweep_dir: Path, log_dir: Path) -> str:
    try:
        parts = sweep_dir.relative_to(log_dir).parts
        if len(parts) > 1 and parts[0] in ("multirun", "multiruns"):
            parts = parts[1:]
    except ValueError:
        parts = sweep_dir.parts[-2:]
    return "/".join(parts) or sweep_dir.name


def plan_run(cfg: Any) -> RunPlan:
    """Decide experiment, parent sweep and run name of this run (see the module docstring)."""
    tr, sw = cfg.tracking, cfg.sweep
    log_dir = Path(cfg.paths.log_dir).expanduser().resolve()
    plan = RunPlan(experiment=str(tr.experiment), run_name=tr.run_name or None)
    hc = hydra_context()
    multirun = hc is not None and _is_multirun(hc)
    if sw.study_name:
        plan.experiment = plan.sweep_name = str(sw.study_name)
        plan.sweep_id = optuna_sweep_id(str(sw.study_name))
        plan.trial = sw.trial_number
        plan.tags[TAG_OPTUNA_STUDY] = str(sw.study_name)
        if sw.trial_number is not None:
            plan.tags[TAG_OPTUNA_TRIAL] = str(sw.trial_number)
            plan.run_name = plan.run_name or f"trial-{sw.trial_number}"
    elif multirun:
        sweep_dir = Path(hc.runtime.cwd, hc.sweep.dir).resolve()
        name = _grid_sweep_name(sweep_dir, log_dir)
        plan.experiment = f"{tr.experiment}/{name}"
        plan.sweep_name = name
        plan.sweep_id = grid_sweep_id(sweep_dir)
        plan.trial = int(hc.job.num) if hc.job.num is not None else None
        if plan.trial is not None:
            plan.run_name = plan.run_name or f"job-{plan.trial}"
    if sw.parent_run_id:
        plan.parent_run_id = str(sw.parent_run_id)
    if hc is not None:
        if multirun and hc.job.num is not None:
            plan.tags[TAG_HYDRA_JOB_NUM] = str(hc.job.num)
        overrides = list(hc.overrides.task)
        if overrides:
            plan.tags[TAG_HYDRA_OVERRIDES] = " ".join(overrides)
    return plan


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
        all_tags = {**(tags or {}), TAG_SWEEP_ID: sweep_id, TAG_ROLE: ROLE_PARENT}
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
        filter_string=f"tags.`{TAG_SWEEP_ID}` = '{sweep_id}' and tags.`{TAG_ROLE}` = '{ROLE_PARENT}'",
        run_view_type=ViewType.ACTIVE_ONLY,
        order_by=["attributes.start_time ASC"],
        max_results=50,
    )
    found.sort(key=lambda r: (r.info.start_time, r.info.run_id))
    return [r.info.run_id for r in found]


def locate(
    client: Any, plan: RunPlan, uri: str, log_dir: Path, storage: str | None = None
) -> tuple[str, str | None]:
    """(experiment id, parent run id or None) of a run planned by :func:`plan_run`.

    Attaching to a parent also closes runs that dead processes left RUNNING: the parent's own
    children (:func:`~dreambooth_sweep.tracking.stale.close_stale_runs`; ``storage`` is the sweep's
    Optuna storage URL) and this machine's dead runs of any other sweep in the store
    (:func:`~dreambooth_sweep.tracking.stale.close_stale_store_runs`).
    """
    lock = store.lock_file(log_dir)
    if plan.parent_run_id:
        experiment_id, parent = client.get_run(plan.parent_run_id).info.experiment_id, plan.parent_run_id
    else:
        with file_lock(lock):
            experiment_id = store.experiment_id(client, plan.experiment, uri, log_dir)
        if not plan.sweep_id:
            return experiment_id, None
        parent_tags = {k: v for k, v in plan.tags.items() if k == TAG_OPTUNA_STUDY}
        parent = find_or_create_parent_run(
            client, experiment_id, plan.sweep_id, name=plan.sweep_name, lock_path=lock, tags=parent_tags
        )
    # Housekeeping must never stop a new run.
    try:
        close_stale_runs(client, parent, storage=storage)
    except Exception as e:
        log.warning("MLflow: could not check parent %s for stale runs: %s", parent, masked_line(e, 300))
    try:
        close_stale_store_runs(client, lock)
    except Exception as e:
        log.warning("MLflow: could not check the store for stale runs: %s", masked_line(e, 300))
    return experiment_id, parent


def ensure_parent_run(cfg: Any) -> str | None:
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
    uri, log_dir = store.resolve_uri(cfg), Path(cfg.paths.log_dir).expanduser().resolve()
    with store.startup_limits(uri):
        client = store.connect(uri, log_dir)
        try:
            return locate(client, plan, uri, log_dir, cfg.sweep.storage)[1]
        except Exception as e:
            raise store.setup_error(uri, e) from e


# --- what identifies a run ---------------------------------------------------------------------


def run_tags(cfg: Any, plan: RunPlan, parent_run_id: str | None) -> dict[str, str]:
    """The tags a new run starts with: what it trains, where it runs, its place in a sweep."""
    tags: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        from mlflow.tracking.context.registry import resolve_tags

        tags.update(resolve_tags())
    git = _git_commit()
    if git is not None:
        tags[TAG_GIT_COMMIT] = git[0]
        tags[TAG_GIT_DIRTY] = str(git[1]).lower()
    tags.update(plan.tags)
    tags.update(process_tags())
    tags.update(
        {
            TAG_METHOD: cfg.method.name,
            TAG_MODEL: cfg.model.name,
            TAG_SUBJECT: _subject(cfg),
            TAG_IDENTIFIER: cfg.data.identifier,
            TAG_CLASS_NOUN: cfg.data.class_noun,
            TAG_ROLE: ROLE_CHILD if parent_run_id else ROLE_SINGLE,
        }
    )
    out = output_dir(cfg)
    if out:
        tags[TAG_OUTPUT_DIR] = out
    if parent_run_id:
        tags[TAG_PARENT] = parent_run_id
        tags[TAG_SWEEP_ID] = plan.sweep_id or ""
    return {k[:MAX_KEY]: tag_value(v) for k, v in tags.items() if v is not None}


def _subject(cfg: Any) -> str:
    try:
        return Path(str(cfg.data.instance_dir)).name
    except Exception:
        return ""


def output_dir(cfg: Any) -> str | None:
    """The run's output folder: ``paths.output_dir``, else Hydra's job folder."""
    if cfg.paths.output_dir:
        return str(Path(cfg.paths.output_dir).expanduser().resolve())
    hc = hydra_context()
    return str(hc.runtime.output_dir) if hc is not None else None


def _git_commit() -> tuple[str, bool] | None:
    """(commit, dirty) of the checkout this package runs from, or None outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
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
