"""Where runs go (tracking/runs.py): the run plan, one parent per sweep, its children and summary."""

# ruff: noqa: F811  (the fixtures imported from tracking_helpers are test arguments here)

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient
from tracking_helpers import APP, PY, _cwd_in_tmp, children_of, client, parents_in, root, run_cfg  # noqa: F401 (fixtures)

from dreambooth_sweep.tracking import default_uri, ensure_parent_run, plan_run, start_tracking
from dreambooth_sweep.tracking.tags import (
    TAG_BEST_RUN_ID,
    TAG_BEST_RUN_NAME,
    TAG_HYDRA_OVERRIDES,
    TAG_OPTUNA_STUDY,
    TAG_OPTUNA_TRIAL,
    TAG_PARENT,
    grid_sweep_id,
    optuna_sweep_id,
)


def test_plan_single_run_and_optuna_trial(tmp_path: Path) -> None:
    cfg = run_cfg(tmp_path, tmp_path, "exp")
    plan = plan_run(cfg)
    assert (plan.experiment, plan.sweep_id, plan.run_name) == ("exp", None, None)
    assert ensure_parent_run(cfg) is None  # not a sweep: no parent, nothing touched
    assert not (tmp_path / "outputs").exists()
    cfg.sweep.study_name, cfg.sweep.trial_number = "lr-study", 7
    plan = plan_run(cfg)
    assert (plan.experiment, plan.sweep_id, plan.run_name) == ("lr-study", "optuna:lr-study", "trial-7")


def test_sweep_ids_have_one_format(tmp_path: Path) -> None:
    """The ids the report looks parents up by are the ones the runs get."""
    assert optuna_sweep_id("lr-study") == "optuna:lr-study"
    assert optuna_sweep_id("it's") == "optuna:it_s"  # stays usable inside a search filter
    assert grid_sweep_id(tmp_path / "m" / ".." / "grid") == f"hydra:{(tmp_path / 'grid').resolve()}"


# --- sweeps: parent and children -------------------------------------------------------------------


def test_optuna_trials_share_one_parent_with_the_best_summary(root, tmp_path, client) -> None:
    study = "study-parent-summary"
    run_ids = []
    for trial, score in [(0, 0.3), (1, 0.5), (2, 0.4)]:
        cfg = run_cfg(
            root, tmp_path / str(trial), "ignored", **{"sweep.study_name": study, "sweep.trial_number": trial}
        )
        with start_tracking(cfg, system_metrics=False) as tracker:
            tracker.log_metrics({"eval/dino": score}, step=10)
            tracker.log_summary({"best/score": score, "best/step": 10 * (trial + 1)})
            run_ids.append(tracker.run_id)
            parent_id = tracker.parent_run_id

    (parent,) = parents_in(client, study)  # experiment named after the study
    assert parent.info.run_id == parent_id and parent.info.run_name == study
    assert parent.info.status == "FINISHED"
    kids = children_of(client, parent_id)
    assert sorted(r.info.run_name for r in kids) == ["trial-0", "trial-1", "trial-2"]
    assert {r.data.tags[TAG_OPTUNA_TRIAL] for r in kids} == {"0", "1", "2"}
    assert all(r.data.tags[TAG_OPTUNA_STUDY] == study for r in kids)
    best = parent.data
    assert best.metrics["best/score"] == pytest.approx(0.5)
    assert best.metrics["best/step"] == 20 and best.metrics["best/trial"] == 1
    assert best.tags[TAG_BEST_RUN_ID] == run_ids[1] and best.tags[TAG_BEST_RUN_NAME] == "trial-1"
    assert [m.step for m in client.get_metric_history(parent_id, "sweep/score")] == [0, 1, 2]


def test_given_parent_run_id_is_used(root, tmp_path, client) -> None:
    exp = client.create_experiment("given-parent", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(exp, run_name="made-by-the-sweeper")
    cfg = run_cfg(root, tmp_path, "elsewhere", **{"sweep.parent_run_id": parent.info.run_id})
    with start_tracking(cfg, system_metrics=False) as tracker:
        pass
    run = client.get_run(tracker.run_id)
    assert run.data.tags[TAG_PARENT] == parent.info.run_id
    assert run.info.experiment_id == exp


def test_parallel_workers_create_one_parent(root, client) -> None:
    """Processes starting together find-or-create the same parent (file lock in paths.log_dir)."""
    code = (
        "import sys; from omegaconf import OmegaConf; from dreambooth_sweep.config import load_config;"
        "from dreambooth_sweep.tracking import ensure_parent_run;"
        "cfg = load_config(); cfg.paths.log_dir = sys.argv[1]; cfg.sweep.study_name = 'race';"
        "print(ensure_parent_run(cfg))"
    )
    log_dir = str(root / "outputs")
    procs = [subprocess.Popen([PY, "-c", code, log_dir], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    ids = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(ids) == 1
    assert len(parents_in(client, "race")) == 1


def test_hydra_multirun_parent_children_and_resume(tmp_path: Path) -> None:
    """A 2-job grid gives one parent and two children; re-running the same sweep reuses the parent."""
    args = [
        PY,
        str(APP),
        "-m",
        "train.lr=1e-6,2e-6",
        "train.max_steps=3",
        "model.name=tiny",
        "model.pretrained=tiny",
        f"data.instance_dir={tmp_path}/data/cat",
        "data.class_noun=cat",
        f"paths.root_dir={tmp_path}",
        f"hydra.sweep.dir={tmp_path}/outputs/multirun/grid",
    ]
    env = {**os.environ, "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false"}
    for _ in range(2):
        done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        client = MlflowClient(default_uri(tmp_path / "outputs"))
        (parent,) = parents_in(client, "dreambooth-sweep/grid")
        assert parent.info.run_name == "grid"
    kids = children_of(client, parent.info.run_id)
    assert sorted(r.info.run_name for r in kids) == ["job-0", "job-0", "job-1", "job-1"]
    assert all(r.info.status == "FINISHED" for r in kids)
    assert all("train.lr=" in r.data.tags[TAG_HYDRA_OVERRIDES] for r in kids)
    assert parent.data.metrics["best/score"] == pytest.approx(2.0)
    assert parent.data.tags[TAG_BEST_RUN_NAME] == "job-1"
    assert parent.info.status == "FINISHED"
    assert not (tmp_path / "mlruns").exists()
