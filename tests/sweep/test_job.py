"""The job side of a sweep (dreambooth_sweep/sweep/job.py): best checkpoint, pruning, trial_state.json.

Real Optuna trials in a real SQLite study; the reporter finds them the way a training job does.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest

from dreambooth_sweep.config import SweepContext
from dreambooth_sweep.sweep import TRIAL_STATE_FILE, TrialReporter, numeric_metrics, read_trial_state


def test_reporter_outside_a_sweep_only_tracks_the_best(tmp_path: Path) -> None:
    reporter = TrialReporter.from_context(SweepContext(), run_dir=tmp_path)
    assert not reporter.active
    # step 0 (the base model) is never the best, NaN never wins, a tie keeps the earlier step
    for step, score in [(0, 0.9), (10, 0.5), (20, math.nan), (30, 0.3), (40, 0.5)]:
        reporter.report(score, step, final=step == 40)
    assert (reporter.best_score, reporter.best_step) == (0.5, 10)
    reporter.write_state("COMPLETE", 40)
    assert read_trial_state(tmp_path) is None  # no trial, no state file
    assert numeric_metrics({"eval/dino": 0.5, "best_step": 10, "ok": True, "name": "x"}) == {
        "eval/dino": 0.5,
        "best_step": 10,
    }


def _reporter(tmp_path: Path) -> tuple[optuna.Study, TrialReporter]:
    """A study whose pruner stops every trial below 10 from step 15 on, and the reporter of its trial 0."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="job", storage=storage, direction="maximize")
    study.set_user_attr(
        "pruner", {"_target_": "optuna.pruners.ThresholdPruner", "lower": 10.0, "n_warmup_steps": 15}
    )
    trial = study.ask()
    context = SweepContext(study_name="job", storage=storage, trial_number=trial.number)
    return study, TrialReporter.from_context(context, run_dir=tmp_path / str(trial.number))


def test_a_pruned_job_writes_its_state_and_best_checkpoint(tmp_path: Path) -> None:
    study, reporter = _reporter(tmp_path)
    assert reporter.active
    reporter.report(0.9, 0)  # the base model: never pruned on, never the best
    reporter.report(0.7, 10, {"eval/dino": 0.7})  # in the pruner's warm-up
    with pytest.raises(optuna.TrialPruned):
        reporter.report(0.4, 20)
    state = json.loads((tmp_path / "0" / TRIAL_STATE_FILE).read_text())
    assert state == {
        "state": "PRUNED",
        "step": 20,
        "best_score": 0.7,
        "best_step": 10,
        "study_name": "job",
        "trial_number": 0,
    }
    attrs = study.trials[0].user_attrs
    assert (attrs["best_score"], attrs["best_step"], attrs["eval/dino"]) == (0.7, 10, 0.7)


def test_the_final_evaluation_is_never_pruned_on(tmp_path: Path) -> None:
    """Pruning at the last step would throw away a run that has paid for every step."""
    study, reporter = _reporter(tmp_path)
    reporter.report(0.5, 20, final=True)  # the pruner would stop it: below 10
    assert study.trials[0].intermediate_values == {20: 0.5}  # reported all the same
    reporter.write_state("COMPLETE", 20)
    assert read_trial_state(tmp_path / "0") == {
        "state": "COMPLETE",
        "step": 20,
        "best_score": 0.5,
        "best_step": 20,
        "study_name": "job",
        "trial_number": 0,
    }
