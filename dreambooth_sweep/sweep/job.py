"""The job side of an Optuna sweep: report checkpoint scores to this run's trial, get pruned.

The sweeper (:mod:`dreambooth_sweep.sweep.sweeper`) asks Optuna for a trial and launches a job with
``sweep.study_name``, ``sweep.storage`` and ``sweep.trial_number`` set. The job opens the same
storage, finds its trial by number and reports one score per evaluated checkpoint; the study's
pruner (stored by the sweeper in the study's user attrs) decides whether the curve is already worse
than the others, and :class:`TrialReporter` raises :class:`optuna.TrialPruned` to stop the run. This
works under any Hydra launcher (local, joblib, SLURM): jobs and sweeper only share the storage.

The final evaluation is never pruned on: the run has paid for every step by then, and its model
and ``metrics.json`` are worth keeping. A pruned job writes ``trial_state.json`` into its run dir
(:data:`TRIAL_STATE_FILE`, see :meth:`TrialReporter.write_state`), so readers of run dirs (the
report) know the state without Optuna or log text.

Outside an Optuna sweep (a single run, a grid) the reporter only tracks the best checkpoint, by the
one rule of :class:`dreambooth_sweep.objective.BestTracker` (step 0 never, NaN never).
"""

from __future__ import annotations

import json
import logging
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dreambooth_sweep.files import atomic_write
from dreambooth_sweep.objective import BestTracker
from dreambooth_sweep.sweep.storage import job_storage

if TYPE_CHECKING:
    import optuna

__all__ = ["TRIAL_STATE_FILE", "TrialReporter", "numeric_metrics", "read_trial_state"]

log = logging.getLogger(__name__)

TRIAL_STATE_FILE = "trial_state.json"


def numeric_metrics(values: Mapping[str, Any]) -> dict[str, int | float]:
    """The entries of a result dict that are numbers (numpy scalars too, bools not): ints stay ints."""
    return {
        str(k): int(v) if isinstance(v, numbers.Integral) else float(v)
        for k, v in values.items()
        if isinstance(v, numbers.Real) and not isinstance(v, bool)
    }


def read_trial_state(run_dir: str | Path) -> dict[str, Any] | None:
    """The ``trial_state.json`` of a run dir (see :meth:`TrialReporter.write_state`); None if absent."""
    path = Path(run_dir) / TRIAL_STATE_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


class TrialReporter:
    """Reports a run's checkpoint scores to its Optuna trial; only tracks the best one outside a sweep.

    Usage in the training loop::

        reporter = TrialReporter.from_context(cfg.sweep, run_dir=out)
        for step in eval_steps:
            ...
            reporter.report(score, step, metrics, final=step == max_steps)  # may raise TrialPruned
        reporter.write_state("COMPLETE", max_steps)
        return {"objective": reporter.best_score, "best_step": reporter.best_step, **metrics}

    Step 0 (the untrained base model, the same for every trial) is recorded but never pruned on and
    never the best: its score only differs between trials by numerical noise.

    Args:
        trial: the running trial, or None for a no-op reporter.
        direction: which scores are better when there is no single-objective study to say so.
        run_dir: where :meth:`write_state` writes ``trial_state.json``; None: nowhere.
    """

    def __init__(
        self,
        trial: optuna.trial.Trial | None = None,
        *,
        direction: str = "maximize",
        run_dir: str | Path | None = None,
    ) -> None:
        self.trial = trial
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.can_prune = False
        if trial is not None:
            import optuna

            directions = trial.study.directions
            self.can_prune = len(directions) == 1  # Optuna prunes single-objective studies only
            if self.can_prune:
                direction = (
                    "minimize" if directions[0] == optuna.study.StudyDirection.MINIMIZE else "maximize"
                )
        if direction not in ("maximize", "minimize"):
            raise ValueError(f"direction must be maximize or minimize, got {direction!r}")
        self.best = BestTracker(maximize=direction == "maximize")

    @classmethod
    def from_context(
        cls, sweep: Any, *, direction: str = "maximize", run_dir: str | Path | None = None
    ) -> TrialReporter:
        """Reporter for the trial named by ``cfg.sweep`` (a :class:`~dreambooth_sweep.config.SweepContext`)."""
        study_name = getattr(sweep, "study_name", None) if sweep is not None else None
        storage_url = getattr(sweep, "storage", None) if sweep is not None else None
        number = getattr(sweep, "trial_number", None) if sweep is not None else None
        if study_name is None or storage_url is None or number is None:
            return cls(None, direction=direction)

        import optuna  # only in an Optuna sweep: a single run or a grid never imports it

        storage = job_storage(storage_url)
        study_id = storage.get_study_id_from_name(study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
        if storage.get_trial(trial_id).state != optuna.trial.TrialState.RUNNING:
            # e.g. a finished sweep job re-run by hand with its saved overrides
            log.warning("trial %d of study %r has already finished: not reporting to it", number, study_name)
            return cls(None, direction=direction)
        pruner_cfg = storage.get_study_user_attrs(study_id).get("pruner")
        if pruner_cfg is None:
            pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
        else:
            from hydra.utils import instantiate

            pruner = instantiate(pruner_cfg)
        # The sampler is never used here: the sweeper sampled all parameters before launching the job.
        study = optuna.load_study(
            study_name=study_name, storage=storage, sampler=optuna.samplers.RandomSampler(), pruner=pruner
        )
        return cls(optuna.trial.Trial(study, trial_id), direction=direction, run_dir=run_dir)

    @property
    def active(self) -> bool:
        """Whether scores go to an Optuna trial."""
        return self.trial is not None

    @property
    def best_score(self) -> float | None:
        return self.best.best_score

    @property
    def best_step(self) -> int | None:
        return self.best.best_step

    def report(
        self, value: float, step: int, metrics: Mapping[str, Any] | None = None, *, final: bool = False
    ) -> None:
        """Record one checkpoint's score; raise :class:`optuna.TrialPruned` if the trial should stop.

        Args:
            value: the checkpoint's objective score.
            step: its training step.
            metrics: the checkpoint's other metrics, stored as user attrs while it is the best one.
            final: the run's last evaluation: reported, never pruned on.
        """
        value = float(value)
        improved = self.best.update(int(step), value)
        if self.trial is None:
            return
        if improved:
            self.trial.set_user_attr("best_score", value)
            self.trial.set_user_attr("best_step", int(step))
            if metrics:
                self.set_metrics(metrics)
        if not self.can_prune:
            return
        self.trial.report(value, step)
        if step > 0 and not final and self.trial.should_prune():
            log.info(
                "trial %d pruned at step %d (score %.4g; best %s)",
                self.trial.number,
                step,
                value,
                "none" if self.best_step is None else f"{self.best_score:.4g} at step {self.best_step}",
            )
            self.write_state("PRUNED", step)
            import optuna

            raise optuna.TrialPruned(f"pruned at step {step} with score {value:.6g}")

    def set_metrics(self, metrics: Mapping[str, Any]) -> None:
        """Store the numeric entries of ``metrics`` as user attrs of the trial (no-op outside a sweep)."""
        if self.trial is None:
            return
        for key, value in numeric_metrics(metrics).items():
            self.trial.set_user_attr(key, value)

    def write_state(self, state: str, step: int) -> None:
        """Write ``<run dir>/trial_state.json`` (atomically) in an Optuna sweep; no-op elsewhere.

        ``{"state": "PRUNED" | "COMPLETE", "step": <last step trained>, "best_score": <float|null>,
        "best_step": <int|null>, "study_name": <str>, "trial_number": <int>}``: COMPLETE means the
        job ran to its end (the sweeper may still fail the trial if the job returns no objective).
        """
        if self.trial is None or self.run_dir is None:
            return
        record = {
            "state": state,
            "step": int(step),
            "best_score": self.best_score,
            "best_step": self.best_step,
            "study_name": self.trial.study.study_name,
            "trial_number": self.trial.number,
        }
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.run_dir / TRIAL_STATE_FILE) as tmp:
            tmp.write_text(json.dumps(record, indent=2) + "\n")
