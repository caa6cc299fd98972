"""Faults on the real training app: nothing finished is lost, nothing half-written is left.

| fault                                         | test (slow: run by `make test-all`)                              |
|-----------------------------------------------|------------------------------------------------------------------|
| worker SIGKILLed mid-trial, sweep re-run      | test_sigkill_mid_trial_then_resume                               |
| MLflow runs left RUNNING by a dead process    | test_runs_left_by_dead_processes_are_closed_when_a_job_attaches  |
| Ctrl-C (SIGINT) while training                | test_ctrl_c_leaves_only_complete_checkpoints (slow)              |
| Ctrl-C in the middle of a checkpoint write    | test_interrupted_checkpoint_write_leaves_the_last_intact         |
| CUDA out of memory in one trial               | test_out_of_memory_fails_the_trial_and_the_study_goes_on (slow)  |
| tracking server unreachable at start          | test_bad_input.py::test_cli_errors_exit_non_zero_with_one_line   |
| tracking server lost mid-run                  | test_tracking.py::test_server_run_survives_losing_the_server     |
| 4 workers on one SQLite / journal study       | test_four_workers_one_study (slow)                               |
| 4 workers creating a fresh SQLite study       | test_four_workers_on_a_fresh_sqlite_file (slow)                  |
| disk full while saving                        | test_bad_input.py::test_disk_full_*, test_a_really_full_disk     |
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import torch
from mlflow import MlflowClient
from optuna.trial import TrialState
from scaleout.services import PY, Worker, tiny_overrides, worker_env

from dreambooth_sweep.config import load_config
from dreambooth_sweep.tracking import _pid_namespace, default_uri, start_tracking
from dreambooth_sweep.train import train

TESTS = Path(__file__).resolve().parent
SWEEP_APP = TESTS / "sweep_app" / "app.py"
OOM_APP = TESTS / "scaleout" / "oom_app.py"


def _wait_for(condition, timeout: float, what: str, worker: Worker | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if worker is not None and worker.proc.poll() is not None:
            pytest.fail(
                f"the worker exited ({worker.proc.returncode}) before {what}:\n{worker.output()[-3000:]}"
            )
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _trials(storage: str, study: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    except KeyError:  # not created yet
        return []


def _runs(client: MlflowClient, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], "tags.`dbs.role` = 'child'")


# --- a worker killed outright -----------------------------------------------------------------------


def test_sigkill_mid_trial_then_resume(tmp_path: Path, cache_dir: Path, demo_dir: Path) -> None:
    """SIGKILL during trial 1 (no handler runs); re-running the same sweep fails the stale trial, closes
    its MLflow run as KILLED, and completes n_trials without repeating or losing a finished trial."""
    storage, study = f"sqlite:///{tmp_path / 'optuna.db'}", "killed"
    args = [
        "-m",
        # long enough (≈4 s) to be caught mid-trial even with the base model reused in-process
        *tiny_overrides(tmp_path, cache_dir, demo_dir, steps=80),
        "hydra/sweeper=optuna",
        f"hydra.sweeper.storage='{storage}'",
        f"hydra.sweeper.study_name={study}",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.heartbeat_interval=1",  # stale after 3 s without a heartbeat
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
        "train.lr=tag(log, interval(1e-5, 1e-3))",
    ]
    client = MlflowClient(default_uri(tmp_path / "outputs"))

    def trial_1_is_training() -> bool:
        trials = _trials(storage, study)
        if len(trials) < 2 or trials[1].state != TrialState.RUNNING:
            return False
        return any(r.data.tags.get("optuna.trial_number") == "1" for r in _runs(client, study))

    first = Worker(args, tmp_path / "first.log", cwd=tmp_path)
    try:
        _wait_for(trial_1_is_training, 240, "trial 1 to start training", first)
        first.kill(signal.SIGKILL)
        first.wait(30)
    finally:
        first.close()
    before = _trials(storage, study)
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.RUNNING]
    (killed_run,) = [r for r in _runs(client, study) if r.data.tags["optuna.trial_number"] == "1"]
    assert killed_run.info.status == "RUNNING"  # nobody could close it

    second = Worker(args, tmp_path / "second.log", cwd=tmp_path)
    assert second.wait(240) == 0, second.output()[-3000:]

    trials = _trials(storage, study)
    assert [t.state for t in trials] == [
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.COMPLETE,
        TrialState.COMPLETE,
    ]
    assert trials[1].user_attrs["interrupted"] is True
    assert (trials[0].params, trials[0].value) == (before[0].params, before[0].value)  # nothing lost
    runs = {r.data.tags["optuna.trial_number"]: r for r in _runs(client, study)}
    assert sorted(runs) == ["0", "1", "2", "3"] and len(_runs(client, study)) == 4  # one run per trial
    assert runs["1"].info.status == "KILLED"
    # Closed by whichever comes first: the sweeper failing the trial on its stale heartbeat
    # ("interrupted: ..."), or the store-wide stale-run check seeing the process gone.
    error = runs["1"].data.tags["error"]
    assert "dbs.stale_reason" in runs["1"].data.tags
    assert error.startswith("interrupted") or "ended without closing the run" in error, error
    assert [runs[n].info.status for n in ("0", "2", "3")] == ["FINISHED"] * 3
    parent = client.get_run(runs["0"].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parent.info.run_id}


def test_runs_left_by_dead_processes_are_closed_when_a_job_attaches(tmp_path: Path, monkeypatch) -> None:
    """What the killed worker above relies on, case by case: a child RUNNING on the tracking store is
    closed when its process is gone (same host) or its Optuna trial has finished; a child whose
    process lives, or that runs on another machine with its trial still RUNNING, is left alone."""
    monkeypatch.chdir(tmp_path)
    storage, study_name = f"sqlite:///{tmp_path / 'optuna.db'}", "stale"
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize")
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead_pid = str(gone.pid)  # a process that has ended (and been reaped)

    def cfg(trial: int):
        c = load_config()
        c.model.name = c.model.pretrained = "tiny"
        c.data.instance_dir, c.data.class_noun = str(tmp_path), "dog"
        c.paths.root_dir = str(tmp_path)
        c.sweep.study_name, c.sweep.trial_number, c.sweep.storage = study_name, trial, storage
        return c

    # Trial 0 starts a real run (which gives us the parent), then we forge the states to judge.
    t0 = study.ask()
    with start_tracking(cfg(t0.number), system_metrics=False) as tracker:
        parent = tracker.parent_run_id
    study.tell(t0, 1.0)
    client = MlflowClient(default_uri(tmp_path / "outputs"))
    exp = client.get_run(parent).info.experiment_id
    here = socket.gethostname()

    def child(name: str, trial: int, host: str, pid: str, pid_ns: str | None = None) -> str:
        tags = {"mlflow.parentRunId": parent, "dbs.role": "child", "optuna.study_name": study_name,
                "optuna.trial_number": str(trial), "dbs.host": host, "dbs.pid": pid,
                "dbs.pid_ns": _pid_namespace() if pid_ns is None else pid_ns}  # fmt: skip
        return client.create_run(exp, run_name=name, tags=tags).info.run_id

    finished = study.ask()
    study.tell(finished, 0.5)  # its run's end was lost: the trial knows better
    pruned = study.ask()
    study.tell(pruned, state=TrialState.PRUNED)
    running = study.ask()  # still running, elsewhere or here
    cases = {
        "dead-here": (child("dead-here", running.number, here, dead_pid), "KILLED"),
        "alive-here": (child("alive-here", running.number, here, str(os.getpid())), "RUNNING"),
        "other-host": (child("other-host", running.number, "gpu-node-7", dead_pid), "RUNNING"),
        # another container on this host (docker --network host shares the hostname, not the pids)
        "other-container": (child("other-container", running.number, here, dead_pid, "pid:[1]"), "RUNNING"),
        "trial-complete": (child("trial-complete", finished.number, "gpu-node-7", "1"), "FINISHED"),
        "trial-pruned": (child("trial-pruned", pruned.number, "gpu-node-7", "1"), "FINISHED"),
    }
    with start_tracking(cfg(running.number), system_metrics=False) as tracker:  # attaching closes them
        assert tracker.parent_run_id == parent
    for name, (run_id, status) in cases.items():
        run = client.get_run(run_id)
        assert run.info.status == status, name
        assert ("dbs.stale_reason" in run.data.tags) == (status != "RUNNING"), name
    assert "ended without closing the run" in client.get_run(cases["dead-here"][0]).data.tags["error"]
    assert client.get_run(cases["trial-pruned"][0]).data.tags["pruned"] == "true"


# --- Ctrl-C -------------------------------------------------------------------------------------------


def _checkpoint_is_complete(ckpt: Path) -> bool:
    state = json.loads((ckpt / "trainer_state.json").read_text())
    torch.load(ckpt / "noise_generator.pt", weights_only=True)
    return state["global_step"] == int(ckpt.name.split("-")[-1]) and any(ckpt.glob("*.safetensors"))


@pytest.mark.slow
def test_ctrl_c_leaves_only_complete_checkpoints(
    tmp_path: Path, cache_dir: Path, demo_dir: Path, make_cfg
) -> None:
    """SIGINT while a run checkpoints every step: every checkpoint-* left is complete and resumable,
    and the MLflow run is KILLED."""
    out = tmp_path / "run"
    args = [
        *tiny_overrides(tmp_path, cache_dir, demo_dir, steps=10_000),
        f"paths.output_dir={out}",
        "train.checkpoint_every_n_steps=1",
        "train.checkpoints_total_limit=2",  # old checkpoints are deleted while new ones are written
    ]
    worker = Worker(args, tmp_path / "run.log", cwd=tmp_path)
    try:
        _wait_for(
            lambda: len(list(out.glob("checkpoints/checkpoint-*"))) >= 2, 240, "two checkpoints", worker
        )
        time.sleep(1.0)  # a few more steps: the signal lands anywhere in step / save / delete
        worker.kill(signal.SIGINT)
        code = worker.wait(60)
    finally:
        worker.close()
    assert code != 0
    checkpoints = sorted(out.glob("checkpoints/checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    assert checkpoints, "no checkpoint survived"
    assert all(_checkpoint_is_complete(c) for c in checkpoints)

    client = MlflowClient(default_uri(tmp_path / "outputs"))
    (run,) = client.search_runs([client.get_experiment_by_name("dreambooth-sweep").experiment_id])
    assert run.info.status == "KILLED" and "KeyboardInterrupt" in run.data.tags["error"]

    # The newest one resumes.
    step = int(checkpoints[-1].name.split("-")[-1])
    resumed = make_cfg(f"train.resume_from={checkpoints[-1]}", f"train.max_steps={step + 1}", run="resumed")
    assert train(resumed)["final_step"] == step + 1


def test_interrupted_checkpoint_write_leaves_the_last_intact(make_cfg, monkeypatch) -> None:
    """Ctrl-C in the middle of writing checkpoint-4: checkpoint-2 is untouched, nothing named
    checkpoint-4 exists, and the half-written folder is gone."""
    from accelerate import Accelerator

    real_save_state = Accelerator.save_state

    def save_state(self, output_dir=None, **kwargs):
        result = real_save_state(self, output_dir, **kwargs)  # the files are written...
        if "checkpoint-4" in str(output_dir):
            raise KeyboardInterrupt  # ...and Ctrl-C arrives before the checkpoint is complete
        return result

    monkeypatch.setattr(Accelerator, "save_state", save_state)
    cfg = make_cfg("train.checkpoint_every_n_steps=2", "train.max_steps=6")
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    root = Path(cfg.paths.output_dir) / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-2"]
    assert _checkpoint_is_complete(root / "checkpoint-2")
    monkeypatch.setattr(Accelerator, "save_state", real_save_state)
    resumed = make_cfg("train.resume_from=latest", "train.max_steps=3")
    assert train(resumed)["final_step"] == 3


# --- out of memory ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_out_of_memory_fails_the_trial_and_the_study_goes_on(
    tmp_path: Path, cache_dir: Path, demo_dir: Path
) -> None:
    """A CUDA out-of-memory error (simulated on the CPU for lr=2e-4 by tests/scaleout/oom_app.py) ends
    that trial as FAIL with the reason recorded; the other trials complete."""
    storage, study = f"sqlite:///{tmp_path / 'optuna.db'}", "oom"
    cmd = [
        PY, str(OOM_APP), "-m",
        *tiny_overrides(tmp_path, cache_dir, demo_dir),
        "hydra/sweeper=optuna",
        f"hydra.sweeper.storage='{storage}'",
        f"hydra.sweeper.study_name={study}",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler={_target_: optuna.samplers.GridSampler}",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
        "train.lr=choice(1e-4, 2e-4, 3e-4)",
    ]  # fmt: skip
    env = worker_env(DBS_TEST_OOM_LR="2e-4")
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    trials = {t.params["train.lr"]: t for t in _trials(storage, study)}
    assert sorted(trials) == [1e-4, 2e-4, 3e-4]
    assert trials[2e-4].state == TrialState.FAIL
    assert trials[2e-4].user_attrs["fail_reason"].startswith("OutOfMemoryError: CUDA out of memory")
    assert trials[1e-4].state == trials[3e-4].state == TrialState.COMPLETE

    client = MlflowClient(default_uri(tmp_path / "outputs"))
    runs = {r.data.params["train.lr"]: r for r in _runs(client, study)}
    assert runs["0.0002"].info.status == "FAILED"
    assert runs["0.0002"].data.tags["error"].startswith("OutOfMemoryError: CUDA out of memory")
    assert runs["0.0001"].info.status == runs["0.0003"].info.status == "FINISHED"


# --- many workers, one study, one machine -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "journal"])
def test_four_workers_one_study(tmp_path: Path, backend: str) -> None:
    """Four sweep processes at once on one SQLite file (or one journal file): every trial and every
    intermediate report lands, and no worker sees "database is locked". The jobs are the sweeper's
    test app (instant trials, 6 reports each): the most write contention per second."""
    storage = (
        f"sqlite:///{tmp_path / 'optuna.db'}" if backend == "sqlite" else f"journal://{tmp_path / 'j.log'}"
    )
    n_trials = 16
    if backend == "sqlite":
        # The README's order: create the study once, then start the workers (see the next test).
        optuna.create_study(study_name="four", storage=storage, direction="maximize")
    cmd = [
        PY, str(SWEEP_APP), "-m", "hydra/sweeper=optuna",
        f"hydra.sweeper.storage='{storage}'",
        "hydra.sweeper.study_name=four",
        f"hydra.sweeper.n_trials={n_trials}",
        "lr=tag(log, interval(0.01, 1.0))",
        "hydra.sweeper.pruner=null",  # every trial reports all 6 checkpoints
    ]  # fmt: skip
    procs = [
        subprocess.Popen(
            [*cmd, f"hydra.sweep.dir={tmp_path / f'multirun-{i}'}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=worker_env(),
        )
        for i in range(4)
    ]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(o[-2000:] for o in outputs)
    assert not any("database is locked" in o for o in outputs)

    if backend == "journal":
        storage_obj = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp_path / "j.log"))
        )
        trials = optuna.load_study(study_name="four", storage=storage_obj).trials
    else:
        trials = _trials(storage, "four")
    assert [t.number for t in trials] == list(range(len(trials)))
    # A worker that loses the race for the last trial gives its surplus trial back (FAIL, interrupted):
    # exactly n_trials complete, each with every intermediate report.
    done = [t for t in trials if not t.user_attrs.get("interrupted")]
    assert len(done) == n_trials, {t.number: t.state for t in trials}
    assert all(t.state == TrialState.COMPLETE for t in done), {t.number: t.state for t in trials}
    assert all(sorted(t.intermediate_values) == [0, 10, 20, 30, 40, 50] for t in done)


@pytest.mark.slow
def test_four_workers_on_a_fresh_sqlite_file(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    cmd = [
        PY, str(SWEEP_APP), "-m", "hydra/sweeper=optuna",
        f"hydra.sweeper.storage='{storage}'", "hydra.sweeper.study_name=fresh", "hydra.sweeper.n_trials=4",
        "lr=tag(log, interval(0.01, 1.0))",
    ]  # fmt: skip
    procs = [
        subprocess.Popen([*cmd, f"hydra.sweep.dir={tmp_path / f'm{i}'}"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=worker_env())
        for i in range(4)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(o[-1500:] for o in outputs)
