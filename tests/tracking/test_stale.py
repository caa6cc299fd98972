"""Runs left RUNNING by killed processes (tracking/stale.py), across sweeps, in a real SQLite store."""

# ruff: noqa: F811  (the fixtures imported from tracking_helpers are test arguments here)

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient
from tracking_helpers import _cwd_in_tmp, client, root, run_cfg  # noqa: F401 (fixtures)

from dreambooth_sweep.tracking import pid_namespace, start_tracking
from dreambooth_sweep.tracking.tags import (
    ROLE_CHILD,
    ROLE_PARENT,
    TAG_ERROR,
    TAG_HOST,
    TAG_OPTUNA_STUDY,
    TAG_PARENT,
    TAG_PID,
    TAG_PID_NS,
    TAG_ROLE,
    TAG_STALE,
    TAG_SWEEP_ID,
    optuna_sweep_id,
)


def _dead_pid() -> str:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return str(proc.pid)


def test_a_new_sweep_closes_killed_runs_of_an_abandoned_one(
    root: Path, tmp_path: Path, client: MlflowClient
) -> None:
    """`make demo` twice: the first study (timestamped name, own experiment) lost its trial to a kill;
    starting the second closes that run as KILLED, and its parent, but leaves a live process's run."""
    old_study = "demo-20240101-000000"
    exp = client.create_experiment(old_study, artifact_location=(tmp_path / "old").as_uri())
    parent = client.create_run(
        exp, run_name=old_study, tags={TAG_SWEEP_ID: optuna_sweep_id(old_study), TAG_ROLE: ROLE_PARENT}
    ).info.run_id
    here = socket.gethostname()

    def child(name: str, pid: str, host: str = here) -> str:
        tags = {TAG_PARENT: parent, TAG_ROLE: ROLE_CHILD, TAG_OPTUNA_STUDY: old_study, TAG_HOST: host,
                TAG_PID: pid, TAG_PID_NS: pid_namespace()}  # fmt: skip
        return client.create_run(exp, run_name=name, tags=tags).info.run_id

    killed = child("trial-1", _dead_pid())
    alive = child("trial-2", str(os.getpid()))  # this very process: alive
    elsewhere = child("trial-3", _dead_pid(), host="gpu-node-7")  # pids of other machines mean nothing here
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        other = child("trial-4", str(sleeper.pid))  # another live process
        new = run_cfg(
            root, tmp_path, "x", **{"sweep.study_name": "demo-20240102-000000", "sweep.trial_number": 0}
        )
        with start_tracking(new, system_metrics=False) as tracker:
            assert tracker.parent_run_id != parent
        assert client.get_run(other).info.status == "RUNNING"
    finally:
        sleeper.kill()
        sleeper.wait()

    run = client.get_run(killed)
    assert run.info.status == "KILLED"
    assert "ended without closing the run" in run.data.tags[TAG_STALE]
    assert run.data.tags[TAG_ERROR] == run.data.tags[TAG_STALE]
    assert client.get_run(alive).info.status == "RUNNING"
    assert client.get_run(elsewhere).info.status == "RUNNING"
    assert client.get_run(parent).info.status == "RUNNING"  # its children trial-2..4 still run

    # Once the last one's process is gone too, the next sweep start closes it, and the idle parent.
    client.set_terminated(alive, status="FINISHED")
    client.set_terminated(elsewhere, status="FINISHED")
    again = run_cfg(
        root, tmp_path, "x", **{"sweep.study_name": "demo-20240102-000000", "sweep.trial_number": 1}
    )
    with start_tracking(again, system_metrics=False):
        pass
    assert client.get_run(other).info.status == "KILLED"
    assert client.get_run(parent).info.status == "FINISHED"
