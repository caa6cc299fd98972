"""Report sources: job folders (a sweep still running, trial_state.json), an Optuna study, an MLflow
parent run — real SQLite stores around copies of the tiny sweep's folder."""

# The shared fixtures are imported from report_helpers (a conftest.py here would shadow tests/conftest.py
# for `from conftest import ...`); pytest injects them by name, which ruff reads as redefinitions.
# ruff: noqa: F811
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from report_helpers import copy_sweep, read_csv, sweep_dir  # noqa: F401

from dreambooth_sweep import report

pytestmark = pytest.mark.filterwarnings("error:constrained_layout not applied:UserWarning")


def test_partial_sweep_still_reports(sweep_dir: Path, tmp_path: Path) -> None:
    sweep = copy_sweep(sweep_dir, tmp_path / "sweep")
    (sweep / "1" / "metrics.json").unlink()
    first = (sweep / "1" / "eval_history.jsonl").read_text().splitlines()[0]
    (sweep / "1" / "eval_history.jsonl").write_text(first + '\n{"step": 2, "eval/di')  # a line being written
    shutil.copytree(sweep / "1" / ".hydra", sweep / "2" / ".hydra")  # a job that has only just started
    hydra_yaml = sweep / "2" / ".hydra" / "hydra.yaml"
    hydra_yaml.write_text(re.sub(r"(?m)^    num: 1$", "    num: 2", hydra_yaml.read_text()))

    page = report.build_report(sweep)
    assert page == sweep / "report" / "index.html"
    trials = {t["trial"]: t for t in read_csv(sweep / "report" / "trials.csv")}
    assert {k: (t["state"], t["checkpoints"]) for k, t in trials.items()} == {
        "0": ("COMPLETE", "3"),
        "1": ("RUNNING", "1"),
        "2": ("RUNNING", "0"),
    }
    assert len(read_csv(sweep / "report" / "checkpoints.csv")) == 3 + 1
    assert "Sweep in progress" in page.read_text()


def test_trial_state_file_gives_the_state_never_the_log_text(sweep_dir: Path, tmp_path: Path) -> None:
    sweep = copy_sweep(sweep_dir, tmp_path / "sweep")
    (sweep / "1" / "metrics.json").unlink()  # a job stopped by the pruner writes no metrics.json...
    (sweep / "1" / report.TRIAL_STATE_FILE).write_text(
        json.dumps({"state": "PRUNED", "step": 2})
    )  # ...but this
    shutil.copytree(sweep / "1", sweep / "2", ignore=shutil.ignore_patterns(report.TRIAL_STATE_FILE))
    hydra_yaml = sweep / "2" / ".hydra" / "hydra.yaml"
    hydra_yaml.write_text(re.sub(r"(?m)^    num: 1$", "    num: 2", hydra_yaml.read_text()))
    # A log line that merely mentions pruning (a prompt, another trial, a message) says nothing about the state.
    (sweep / "2" / "train.log").write_text("INFO trial 1 was pruned at step 2\n")

    trials = {t.number: t for t in report.load_sweep(sweep).trials}
    assert {n: t.state for n, t in trials.items()} == {0: "COMPLETE", 1: "PRUNED", 2: "RUNNING"}
    assert trials[1].stopped_at == 2 and trials[2].stopped_at is None
    page = report.build_report(sweep, log_mlflow=False)
    rows = {r["trial"]: r for r in read_csv(page.parent / "trials.csv")}
    assert (rows["1"]["state"], rows["1"]["stopped_at"]) == ("PRUNED", "2")
    assert "pruned at step 2" in page.read_text()


def make_study(storage: str, name: str) -> None:
    """A real study: trials 0-1 like the grid's jobs (1 pruned), 2 running without a folder, 3 failed."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    dist = {"train.lr": FloatDistribution(1e-6, 1e-3, log=True)}
    for lr, state in (
        (1e-4, TrialState.COMPLETE),
        (1e-5, TrialState.PRUNED),
        (3e-5, None),
        (1e-3, TrialState.FAIL),
    ):
        study.enqueue_trial({"train.lr": lr})
        trial = study.ask(dist)
        trial.report(0.1, 0)
        trial.report(0.2, 2)
        trial.set_user_attr("best_step", 2)
        trial.set_user_attr("eval/dino", 0.3)
        if state is TrialState.FAIL:
            trial.set_user_attr("fail_reason", "RuntimeError: CUDA out of memory (simulated)")
        if state is not None:  # None: still running
            study.tell(trial, 0.2 if state is TrialState.COMPLETE else None, state=state)


def test_optuna_gives_states_and_trials_without_a_folder(sweep_dir: Path, tmp_path: Path) -> None:
    sweep = copy_sweep(sweep_dir, tmp_path / "sweep")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    make_study(storage, "lr-grid")
    (sweep / "optimization_results.yaml").write_text(f"study_name: lr-grid\nstorage: {storage}\n")

    loaded = report.load_sweep(sweep)
    trials = {t.number: t for t in loaded.trials}
    assert {n: t.state for n, t in trials.items()} == {0: "COMPLETE", 1: "PRUNED", 2: "RUNNING", 3: "FAIL"}
    assert sorted(trials[0].history) == [0, 2, 4]  # the folder's history wins over the reported scores
    assert sorted(trials[2].history) == [0, 2] and trials[2].run_dir is None
    assert "out of memory" in trials[3].fail_reason
    assert loaded.swept == ["train.lr"] and trials[2].lr == pytest.approx(3e-5)

    alone = report.build_report(storage=storage, study="lr-grid", out=tmp_path / "alone")  # no folders at all
    rows = read_csv(alone.parent / "trials.csv")
    assert [r["state"] for r in rows] == ["COMPLETE", "PRUNED", "RUNNING", "FAIL"]
    assert {r["best_step"] for r in rows} == {"2"} and {r["eval/dino"] for r in rows} == {"0.3"}
    with pytest.raises(report.ReportError, match="no study"):
        report.load_sweep(storage=storage, study="nope")


def test_mlflow_parent_run_source_and_the_report_logged_to_it(sweep_dir: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    sweep = copy_sweep(sweep_dir, tmp_path / "sweep")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(
        "dreambooth-sweep/grid", artifact_location=(tmp_path / "artifacts").as_uri()
    )
    parent = client.create_run(exp, tags={"dbs.sweep_id": f"hydra:{sweep.resolve()}", "dbs.role": "parent"})
    pid = parent.info.run_id
    for job in ("0", "1"):
        child = client.create_run(
            exp, tags={"mlflow.parentRunId": pid, "hydra.job_num": job, "output_dir": str(sweep / job)}
        )
        client.set_terminated(child.info.run_id, "FINISHED")
    # A job whose folder is on another machine: the curve comes from MLflow's metric history.
    remote = client.create_run(
        exp,
        tags={"mlflow.parentRunId": pid, "hydra.job_num": "2", "error": "RuntimeError: boom",
              "hydra.overrides": "model=tiny train.lr=0.001 data.identifier='sks dog'"},
    )  # fmt: skip
    client.log_param(remote.info.run_id, "train.lr", "0.001")
    for step, score in ((0, 0.1), (2, 0.05)):
        for key, value in (("eval/score", score), ("eval/dino", score), ("eval/clip_t", 0.2)):
            client.log_metric(remote.info.run_id, key, value, step=step)
    client.set_terminated(remote.info.run_id, "FAILED")

    page = report.build_report(pid, tracking_uri=uri, out=tmp_path / "from-mlflow")
    trials = {t["trial"]: t for t in read_csv(page.parent / "trials.csv")}
    assert {k: t["state"] for k, t in trials.items()} == {"0": "COMPLETE", "1": "COMPLETE", "2": "FAIL"}
    assert trials["2"]["checkpoints"] == "2" and trials["2"]["fail_reason"] == "RuntimeError: boom"
    assert float(trials["2"]["train.lr"]) == 1e-3
    assert trials["0"]["mlflow_run_id"] and trials["0"]["run_dir"] == str(sweep / "0")
    logged = {f.path for f in client.list_artifacts(pid, "report")}
    assert {"report/index.html", "report/trials.csv", "report/heatmaps.png"} <= logged

    # From the folder, the parent run is found by its sweep id (tracking.py's dbs.sweep_id tag).
    assert report.load_sweep(sweep, tracking_uri=uri).tracking == (uri, pid)


def test_a_moved_optuna_sweep_folder_keeps_one_trial_per_number(sweep_dir: Path, tmp_path: Path) -> None:
    """The MLflow runs still name the folder the jobs ran in; their Optuna trial numbers (unique in the
    study) attach them to the moved folder's trials instead of doubling every trial."""
    from mlflow.tracking import MlflowClient

    sweep = copy_sweep(sweep_dir, tmp_path / "moved")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("dreambooth-sweep/s", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(exp, tags={"dbs.sweep_id": f"hydra:{sweep.resolve()}", "dbs.role": "parent"})
    children = {}
    for job in ("0", "1"):
        child = client.create_run(
            exp,
            tags={"mlflow.parentRunId": parent.info.run_id, "optuna.trial_number": job,
                  "hydra.job_num": job, "output_dir": str(tmp_path / "where-it-ran" / job)},
        )  # fmt: skip
        client.set_terminated(child.info.run_id, "FINISHED")
        children[job] = child.info.run_id
    loaded = report.load_sweep(sweep, tracking_uri=uri)
    assert [(t.number, t.run_dir, t.run_id) for t in loaded.trials] == [
        (0, sweep / "0", children["0"]),
        (1, sweep / "1", children["1"]),
    ]
