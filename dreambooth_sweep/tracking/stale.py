"""Runs left RUNNING by a process that died (SIGKILL, the kernel's OOM killer, a lost node).

A killed process cannot end its MLflow run, so each run records which process runs it (tags
``dbs.host``, ``dbs.pid``, ``dbs.pid_start``, ``dbs.pid_ns``: :func:`process_tags`) and later jobs
close what a dead process left behind (tag ``dbs.stale_reason`` says why):

* :func:`close_stale_runs`: the children of one sweep's parent, judged by their process *and* by
  their Optuna trial (a finished trial closes its run with the trial's outcome, from any machine).
  Every job attaching to a parent calls it.
* :func:`close_stale_store_runs`: RUNNING runs of any sweep (or single run) in the whole store that
  this machine started from a process that is gone, e.g. the killed trial of a study abandoned when
  ``make demo`` started a new timestamped one. Called whenever a sweep's parent is created or found.

A run whose process still lives is never closed by the store-wide pass; only this machine's runs can
be judged by their process (pids mean nothing elsewhere, or in another PID namespace).
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dreambooth_sweep.files import file_lock
from dreambooth_sweep.tracking.params import tag_value
from dreambooth_sweep.tracking.tags import (
    ROLE_PARENT,
    TAG_ERROR,
    TAG_HOST,
    TAG_OPTUNA_STUDY,
    TAG_OPTUNA_TRIAL,
    TAG_PARENT,
    TAG_PID,
    TAG_PID_NS,
    TAG_PID_START,
    TAG_PRUNED,
    TAG_ROLE,
    TAG_STALE,
)

__all__ = [
    "close_stale_runs",
    "close_stale_store_runs",
    "finish_parent_if_idle",
    "pid_namespace",
    "process_tags",
]

log = logging.getLogger(__name__)

_PAGE = 1000  # runs per search_runs page
_EXPERIMENTS_PER_SEARCH = 100


def process_tags() -> dict[str, str]:
    """Which process runs this run: lets a later job tell a live run from one left by a dead process."""
    pid = os.getpid()
    return {
        TAG_HOST: socket.gethostname(),
        TAG_PID: str(pid),
        TAG_PID_START: _process_start(pid) or "",
        TAG_PID_NS: pid_namespace(),
    }


def pid_namespace() -> str:
    """Linux PID namespace: containers sharing a hostname (``--network host``) still see different pids."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


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


def _same_machine(tags: Mapping[str, str]) -> bool:
    return tags.get(TAG_HOST) == socket.gethostname() and tags.get(TAG_PID_NS, "") == pid_namespace()


def _process_gone(tags: Mapping[str, str]) -> bool:
    """True when the run was started on this machine by a process that no longer lives."""
    if not _same_machine(tags) or not tags.get(TAG_PID, "").isdigit():
        return False
    started = _process_start(int(tags[TAG_PID]))
    return started is None or bool(started and tags.get(TAG_PID_START) and started != tags[TAG_PID_START])


@functools.cache
def _optuna_storage(url: str) -> Any:
    from dreambooth_sweep.sweep import open_storage

    return open_storage(url)


def _finished_trial(tags: Mapping[str, str], storage: str | None) -> Any | None:
    """The run's Optuna trial (FrozenTrial) if it has finished, else None."""
    study, number = tags.get(TAG_OPTUNA_STUDY), tags.get(TAG_OPTUNA_TRIAL, "")
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
            return status, {TAG_STALE: f"Optuna trial {trial.number} is FAIL", TAG_ERROR: reason}
        extra = {TAG_PRUNED: "true"} if state == "PRUNED" else {}
        return "FINISHED", {
            TAG_STALE: f"Optuna trial {trial.number} is {state}; the run's end was lost",
            **extra,
        }
    if gone:
        return "KILLED", _killed_tags(tags)
    return None


def _killed_tags(tags: Mapping[str, str]) -> dict[str, str]:
    reason = (
        f"process {tags[TAG_PID]} on {tags[TAG_HOST]} ended without closing the run "
        "(SIGKILL, out of host memory, or a lost node)"
    )
    return {TAG_STALE: reason, TAG_ERROR: reason}


def _close(client: Any, run: Any, status: str, tags: Mapping[str, str]) -> None:
    from mlflow.entities import RunTag

    run_id = run.info.run_id
    client.log_batch(run_id, tags=[RunTag(k, tag_value(v)) for k, v in tags.items()])
    client.set_terminated(run_id, status=status)
    log.warning(
        "MLflow run %s (%s) was left RUNNING: now %s (%s)", run_id, run.info.run_name, status, tags[TAG_STALE]
    )


def _search_all(client: Any, experiment_ids: list[str], filter_string: str) -> Iterable[Any]:
    """Every run matching ``filter_string`` in ``experiment_ids``, page by page."""
    for i in range(0, len(experiment_ids), _EXPERIMENTS_PER_SEARCH):
        chunk, token = experiment_ids[i : i + _EXPERIMENTS_PER_SEARCH], None
        while True:
            page = client.search_runs(chunk, filter_string=filter_string, max_results=_PAGE, page_token=token)
            yield from page
            token = page.token
            if not token:
                break


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
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    running = _search_all(
        client,
        [experiment_id],
        f"tags.`{TAG_PARENT}` = '{parent_run_id}' and attributes.status = 'RUNNING'",
    )
    closed = []
    for run in running:
        verdict = _stale_verdict(run.data.tags, storage)
        if verdict is not None:
            _close(client, run, *verdict)
            closed.append(run.info.run_id)
    return closed


def close_stale_store_runs(client: Any, lock: Path) -> list[str]:
    """Close every RUNNING run in the store that this machine started from a process now gone.

    Covers the runs of other sweeps, e.g. the killed trial of an abandoned study, which no job of
    theirs will ever attach to again. Judged by process only (see the module docstring); a parent
    left RUNNING only by such runs is then set FINISHED. Returns the closed run ids.

    Args:
        client: an MlflowClient.
        lock: the lock file guarding parent runs (``<paths.log_dir>/mlflow.lock``); must not be held.
    """
    from mlflow.entities import ViewType

    experiment_ids, token = [], None
    while True:
        page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=_PAGE, page_token=token)
        experiment_ids += [e.experiment_id for e in page]
        token = page.token
        if not token:
            break
    host = socket.gethostname().replace("'", "_")
    running = _search_all(
        client, experiment_ids, f"attributes.status = 'RUNNING' and tags.`{TAG_HOST}` = '{host}'"
    )
    closed, parents = [], set()
    for run in running:
        tags = run.data.tags
        if tags.get(TAG_ROLE) == ROLE_PARENT or not _process_gone(tags):
            continue
        _close(client, run, "KILLED", _killed_tags(tags))
        closed.append(run.info.run_id)
        if tags.get(TAG_PARENT):
            parents.add(tags[TAG_PARENT])
    for parent_id in parents:
        finish_parent_if_idle(client, parent_id, lock)
    return closed


def finish_parent_if_idle(client: Any, parent_id: str, lock: Path) -> None:
    """Set a sweep's parent FINISHED when none of its children is RUNNING any more."""
    with file_lock(lock):
        parent = client.get_run(parent_id)
        running = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.`{TAG_PARENT}` = '{parent_id}' and attributes.status = 'RUNNING'",
            max_results=1,
        )
        if not running:
            client.set_terminated(parent_id, status="FINISHED")
