"""The job side of an Optuna sweep: report checkpoint scores to this run's trial, get pruned.

The sweeper (``hydra_plugins/dreambooth_sweep_optuna``) asks Optuna for a trial and launches a job
with ``sweep.study_name``, ``sweep.storage`` and ``sweep.trial_number`` set. The job opens the same
storage, finds its trial by number and reports one score per evaluated checkpoint; the study's
pruner (stored by the sweeper in the study's user attrs) decides whether the curve is already worse
than the others, and :class:`TrialReporter` raises :class:`optuna.TrialPruned` to stop the run. This
works under any Hydra launcher (local, joblib, SLURM): jobs and sweeper only share the storage.

Outside an Optuna sweep (a single run, a grid) the reporter only tracks the best checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.errors import CompactHydraException

if TYPE_CHECKING:
    import optuna

__all__ = [
    "JOURNAL_PREFIX",
    "SweepError",
    "TrialReporter",
    "numeric_metrics",
    "open_storage",
    "release_job_storages",
]

log = logging.getLogger(__name__)

JOURNAL_PREFIX = "journal://"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """Optuna storage for a URL: ``journal:///path.log`` is a journal file, anything else an RDB URL.

    SQLite files are switched to write-ahead logging, so a job reading the study never blocks the
    sweeper's writes, and wait up to a minute for a lock instead of SQLAlchemy's 5 s. (WAL needs a
    local disk; several machines share PostgreSQL or a journal file instead.)
    """
    import optuna
    import sqlalchemy.exc

    if url.startswith(JOURNAL_PREFIX):
        path = Path(url.removeprefix(JOURNAL_PREFIX)).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    storage = _rdb_storage(url, engine_kwargs)
    if not url.startswith("sqlite"):
        return storage
    # WAL is a property of the file: set once, kept. Busy elsewhere right now: the next opener sets it.
    with contextlib.suppress(sqlalchemy.exc.OperationalError), storage.engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    return storage


def _rdb_storage(
    url: str, engine_kwargs: dict[str, Any] | None, attempts: int = 5
) -> optuna.storages.RDBStorage:
    """``RDBStorage(url)``, retried: workers opening a fresh database at the same instant race to create
    Optuna's tables (SQLite: "table studies already exists", PostgreSQL: a duplicate pg_type row)."""
    import optuna
    import sqlalchemy.exc

    for attempt in range(1, attempts + 1):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except sqlalchemy.exc.SQLAlchemyError as e:
            if attempt == attempts:
                raise
            log.debug("opening the Optuna storage (attempt %d of %d): %s", attempt, attempts, e)
            time.sleep(0.2 + random.uniform(0, 1))
    raise AssertionError("unreachable")


_job_storages: dict[str, optuna.storages.BaseStorage] = {}


def _job_storage(url: str) -> optuna.storages.BaseStorage:
    # One storage (one connection pool) per process: local launchers run many jobs in one process.
    if url not in _job_storages:
        _job_storages[url] = open_storage(url)
    return _job_storages[url]


def release_job_storages() -> None:
    """Roll back and close this process's job-side connections.

    A job interrupted in the middle of a write (Ctrl-C under an in-process launcher) can leave its
    SQLite transaction open; the sweeper calls this before it marks the trial, or it would wait on
    that lock.
    """
    if not _job_storages:
        return
    import optuna

    for storage in _job_storages.values():
        if isinstance(storage, optuna.storages.RDBStorage):
            storage.scoped_session.remove()
            storage.engine.dispose()
    _job_storages.clear()


def numeric_metrics(values: Mapping[str, Any]) -> dict[str, int | float]:
    """The entries of a result dict that are numbers (numpy scalars too, bools not): ints stay ints."""
    return {
        str(k): int(v) if isinstance(v, numbers.Integral) else float(v)
        for k, v in values.items()
        if isinstance(v, numbers.Real) and not isinstance(v, bool)
    }


class SweepError(CompactHydraException):
    """A bad sweeper setting, or a sweep that cannot go on; Hydra prints only this one-line message."""


class TrialReporter:
    """Reports a run's checkpoint scores to its Optuna trial; only tracks the best one outside a sweep.

    Usage in the training loop::

        reporter = TrialReporter.from_context(cfg.sweep)
        for step in eval_steps:
            ...
            reporter.report(score, step, metrics)  # raises optuna.TrialPruned when pruned
        return {"objective": reporter.best_score, "best_step": reporter.best_step, **metrics}

    Step 0 (the untrained base model, the same for every trial) is recorded but never pruned on: its
    score only differs between trials by numerical noise.

    Args:
        trial: the running trial, or None for a no-op reporter.
        direction: which scores are better when there is no single-objective study to say so.
    """

    def __init__(self, trial: optuna.trial.Trial | None = None, *, direction: str = "maximize") -> None:
        self.trial = trial
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
        self.maximize = direction == "maximize"
        self.best_score: float | None = None
        self.best_step: int | None = None

    @classmethod
    def from_context(cls, sweep: Any, *, direction: str = "maximize") -> TrialReporter:
        """Reporter for the trial named by ``cfg.sweep`` (a :class:`~dreambooth_sweep.config.SweepContext`)."""
        study_name = getattr(sweep, "study_name", None) if sweep is not None else None
        storage_url = getattr(sweep, "storage", None) if sweep is not None else None
        number = getattr(sweep, "trial_number", None) if sweep is not None else None
        if study_name is None or storage_url is None or number is None:
            return cls(None, direction=direction)

        import optuna  # only in an Optuna sweep: a single run or a grid never imports it

        storage = _job_storage(storage_url)
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
        return cls(optuna.trial.Trial(study, trial_id), direction=direction)

    @property
    def active(self) -> bool:
        """Whether scores go to an Optuna trial."""
        return self.trial is not None

    def report(self, value: float, step: int, metrics: Mapping[str, Any] | None = None) -> None:
        """Record one checkpoint's score; raise :class:`optuna.TrialPruned` if the trial should stop.

        Args:
            value: the checkpoint's objective score.
            step: its training step.
            metrics: the checkpoint's other metrics, stored as user attrs while it is the best one.
        """
        value = float(value)
        improved = not math.isnan(value) and (
            self.best_score is None or (value > self.best_score if self.maximize else value < self.best_score)
        )
        if improved:
            self.best_score, self.best_step = value, int(step)
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
        if step > 0 and self.trial.should_prune():
            log.info("trial %d pruned at step %d (score %.4g)", self.trial.number, step, value)
            import optuna

            raise optuna.TrialPruned(f"pruned at step {step} with score {value:.6g}")

    def set_metrics(self, metrics: Mapping[str, Any]) -> None:
        """Store the numeric entries of ``metrics`` as user attrs of the trial (no-op outside a sweep)."""
        if self.trial is None:
            return
        for key, value in numeric_metrics(metrics).items():
            self.trial.set_user_attr(key, value)
