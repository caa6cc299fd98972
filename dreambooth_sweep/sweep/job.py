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

The pruning signal is ``eval/score`` unless the sweep says ``hydra.sweeper.prune_on`` (stored in the
study's user attrs as ``prune_on``): then every value of that metric (e.g. ``val/instance_loss``, computed
every ``eval.val_loss_every_n_steps``) goes to the pruner instead, through :meth:`TrialReporter.report_signal`,
while the trial's value stays its best ``eval/score``. Optuna compares intermediate values in the study's
direction, so a metric better when lower (a loss: ``val/*``, ``*loss*``) is reported negated in a
maximize study (and a higher-is-better one negated in a minimize study): ``intermediate_values`` then
hold e.g. ``-val/instance_loss``.

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

__all__ = [
    "DEFAULT_PRUNE_ON",
    "TRIAL_STATE_FILE",
    "TrialReporter",
    "lower_is_better",
    "numeric_metrics",
    "read_trial_state",
]

log = logging.getLogger(__name__)

TRIAL_STATE_FILE = "trial_state.json"
DEFAULT_PRUNE_ON = "eval/score"


def lower_is_better(key: str) -> bool:
    """Whether metric ``key`` improves downwards: validation and training losses."""
    return key.startswith("val/") or "loss" in key.rsplit("/", 1)[-1]


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
        prune_on: the metric the pruner decides on (``hydra.sweeper.prune_on``); ``eval/score``: the
            checkpoint scores of :meth:`report`.
    """

    def __init__(
        self,
        trial: optuna.trial.Trial | None = None,
        *,
        direction: str = "maximize",
        run_dir: str | Path | None = None,
        prune_on: str = DEFAULT_PRUNE_ON,
    ) -> None:
        self.trial = trial
        self.prune_on = prune_on or DEFAULT_PRUNE_ON
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
        self.direction = direction
        self._signal_named = False
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
        attrs = storage.get_study_user_attrs(study_id)
        pruner_cfg = attrs.get("pruner")
        if pruner_cfg is None:
            pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
        else:
            from hydra.utils import instantiate

            pruner = instantiate(pruner_cfg)
        # The sampler is never used here: the sweeper sampled all parameters before launching the job.
        study = optuna.load_study(
            study_name=study_name, storage=storage, sampler=optuna.samplers.RandomSampler(), pruner=pruner
        )
        trial = optuna.trial.Trial(study, trial_id)
        prune_on = str(attrs.get("prune_on") or DEFAULT_PRUNE_ON)
        return cls(trial, direction=direction, run_dir=run_dir, prune_on=prune_on)

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
        if not self.can_prune or self.prune_on != DEFAULT_PRUNE_ON:
            return
        self._prune(value, step, final, f"score {value:.6g}")

    def report_signal(self, metrics: Mapping[str, Any], step: int, *, final: bool = False) -> None:
        """Report ``metrics[prune_on]`` to the pruner when the sweep prunes on a metric other than
        ``eval/score``; raise :class:`optuna.TrialPruned` if the trial should stop.

        The value goes to Optuna in the study's direction: a lower-is-better metric (a loss) negated in
        a maximize study. No-op outside a sweep, when pruning on ``eval/score`` or when ``metrics``
        lacks the key (an image-only evaluation step).
        """
        if self.trial is None or not self.can_prune or self.prune_on == DEFAULT_PRUNE_ON:
            return
        raw = metrics.get(self.prune_on)
        if raw is None:
            return
        raw = float(raw)
        sign = self.signal_sign
        if not self._signal_named:  # readers of the study alone (the report) undo the sign with these
            self.trial.set_user_attr("prune_on", self.prune_on)
            self.trial.set_user_attr("prune_sign", sign)
            self._signal_named = True
        self._prune(sign * raw, step, final, f"{self.prune_on} {raw:.6g}")

    @property
    def signal_sign(self) -> float:
        """+1 or -1: what ``prune_on`` values are multiplied by for the study's direction."""
        return -1.0 if lower_is_better(self.prune_on) == (self.direction == "maximize") else 1.0

    def _prune(self, value: float, step: int, final: bool, what: str) -> None:
        assert self.trial is not None
        self.trial.report(value, step)
        if step > 0 and not final and self.trial.should_prune():
            log.info(
                "trial %d pruned at step %d (%s; best score %s)",
                self.trial.number,
                step,
                what,
                "none" if self.best_step is None else f"{self.best_score:.4g} at step {self.best_step}",
            )
            self.write_state("PRUNED", step)
            import optuna

            raise optuna.TrialPruned(f"pruned at step {step} with {what}")

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
