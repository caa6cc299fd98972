"""Optuna search as a Hydra sweeper: ask a batch of trials, launch them as jobs, tell Optuna how each ended.

Hydra finds it through the thin plugin ``hydra_plugins.dreambooth_sweep_optuna.optuna_sweeper``, which
imports this module (and Optuna) only when a sweep starts. Search spaces:
:mod:`dreambooth_sweep.sweep.search_space`; storages: :mod:`dreambooth_sweep.sweep.storage`.

1. The search space comes from ``hydra.sweeper.params`` and from sweep overrides on the command line
   (``train.lr='tag(log, interval(1e-7, 1e-5))'``); other overrides reach every job unchanged.
2. The study is created in, or loaded from, the storage: re-running a sweep resumes its study until
   ``n_trials`` trials have finished.
3. Each batch of ``n_jobs`` trials is sampled up front and launched through the configured Hydra
   launcher, each job with its parameters and ``sweep.study_name/storage/trial_number``. A job reports
   checkpoint scores to its trial and is pruned there (:class:`dreambooth_sweep.sweep.job.TrialReporter`).
4. A job that returns → COMPLETE with the value(s) under ``objective(s)`` of its returned dict; one that
   raised ``optuna.TrialPruned`` → PRUNED; any other exception (out of memory, a bug) → FAIL with a
   ``fail_reason`` user attr. The sweep goes on unless too many of its trials failed.
5. ``optimization_results.yaml`` in the sweep dir holds the best trial (or the Pareto front).

While a batch runs, the sweeper stamps a ``heartbeat`` user attr on its trials every
``heartbeat_interval`` seconds. A RUNNING trial whose heartbeat is older than three intervals was left
by a killed sweeper: the next sweeper on the study fails it with the user attr ``interrupted: true``.
Interrupted trials (also those of a sweep stopped with Ctrl-C) do not count towards ``n_trials``.

One module past 500 lines on purpose: :class:`OptunaSearch` is one ask/launch/tell loop whose steps
share the open study, its seeds and this sweep's tally; what does not need that state (heartbeats,
stale trials, telling, summaries) is in :mod:`dreambooth_sweep.sweep.trials`.

Seeds: workers of one study never run the same point twice. A sweeper that opens an empty study
seeds its sampler with the configured seed (one process from an empty study is reproducible); one
that joins a study already holding N trials (a resumed sweep, a late worker) derives its seed from
(seed, study name, N). Workers started together on an empty study draw the same first point: the
later ask sees the earlier one's trial with the same parameters, gives its own back (interrupted,
``reason: duplicate``) and draws again with a seed derived from its trial number, unique in the study.
"""

from __future__ import annotations

import gc
import inspect
import logging
import math
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, Trial, TrialState

from dreambooth_sweep.errors import one_line
from dreambooth_sweep.objective import best_of
from dreambooth_sweep.sweep.errors import SweepError
from dreambooth_sweep.sweep.job import numeric_metrics
from dreambooth_sweep.sweep.search_space import format_value, grid_search_space, parse_search_space
from dreambooth_sweep.sweep.storage import (
    JOURNAL_PREFIX,
    job_storage_override,
    open_storage,
    release_job_storages,
)
from dreambooth_sweep.sweep.trials import (
    TRIED,
    Heartbeat,
    count_finished,
    derive_seed,
    drop_traceback,
    fail_stale_trials,
    interrupt,
    live_running,
    outcome,
    params_key,
    space_size,
    tell,
)
from dreambooth_sweep.tracking.secrets import mask_text

__all__ = ["MAX_REDRAWS", "OptunaSearch"]

log = logging.getLogger(__name__)


def _build(
    what: str,
    cfg: Any,
    base: type,
    defaults: Mapping[str, Callable[[], Any]],
    force: Mapping[str, Any] | None = None,
) -> tuple[Any, dict]:
    """Instantiate a ``{_target_: ...}`` config of an Optuna sampler or pruner, with one-line errors.

    ``defaults`` fill constructor arguments the config leaves out (the grid), ``force`` replaces
    them (the sampler seed this process derived). Returns the object and the config it was built from.
    """
    cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    if not isinstance(cfg, dict) or "_target_" not in cfg:
        raise SweepError(f"hydra.sweeper.{what} must be a config with a _target_, or null; got {cfg!r}")
    cfg = dict(cfg)
    target = cfg["_target_"]
    try:
        cls = get_class(target)
    except Exception:
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise SweepError(
            f"hydra.sweeper.{what}: unknown _target_ {target!r}; use a class of {base.__module__}"
        )
    accepted = inspect.signature(cls).parameters
    cfg.update({key: make() for key, make in defaults.items() if key in accepted and key not in cfg})
    cfg.update({key: value for key, value in (force or {}).items() if key in accepted})
    try:
        return instantiate(cfg, _convert_="all"), cfg
    except Exception as e:
        raise SweepError(
            f"hydra.sweeper.{what}: {target}: {one_line(e.__cause__ or e, with_type=True)}"
        ) from None


# Draws of one ask that may repeat another trial's parameters before the repeat is kept.
MAX_REDRAWS = 5
# ---------------------------------------------------------------------------------------------------
# The sweeper


class OptunaSearch(Sweeper):
    """Hydra sweeper over an Optuna study; :mod:`hydra_plugins.dreambooth_sweep_optuna.config` says what
    each setting means."""

    def __init__(
        self,
        *,
        study_name: str | None,
        storage: str | None,
        direction: str,
        directions: Sequence[str] | None,
        objective: str,
        objectives: Sequence[str] | None,
        n_trials: int,
        n_jobs: int,
        seed: int | None,
        max_failure_rate: float,
        failure_check_after: int,
        heartbeat_interval: int,
        sampler: Any,
        pruner: Any,
        params: Mapping[str, Any] | None,
        prune_on: str = "eval/score",
    ) -> None:
        if not isinstance(prune_on, str) or "/" not in prune_on:
            raise SweepError(
                f"hydra.sweeper.prune_on={prune_on!r} is not a metric name: use eval/score or a logged "
                "metric such as val/instance_loss"
            )
        self.prune_on = prune_on
        self.directions = [str(d) for d in directions] if directions else [direction]
        self.objectives = [str(k) for k in objectives] if objectives else [objective]
        if any(d not in ("maximize", "minimize") for d in self.directions):
            raise SweepError(
                f"hydra.sweeper.direction(s) must be maximize or minimize, got {self.directions}"
            )
        if len(self.directions) != len(self.objectives):
            raise SweepError(
                f"hydra.sweeper.directions {self.directions} and objectives {self.objectives} need one entry per objective"
            )
        if n_trials < 1 or n_jobs < 1 or heartbeat_interval <= 0 or not 0 <= max_failure_rate <= 1:
            raise SweepError(
                "hydra.sweeper: n_trials, n_jobs >= 1, heartbeat_interval > 0, max_failure_rate in [0, 1]"
            )
        self.study_name, self.storage = study_name, storage
        self.n_trials, self.n_jobs, self.seed = n_trials, n_jobs, seed
        self.max_failure_rate, self.failure_check_after = max_failure_rate, failure_check_after
        self.heartbeat_interval = heartbeat_interval
        self.sampler_cfg, self.pruner_cfg, self.params = sampler, pruner, params
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Any = None
        # this sweep's own tally: trials of earlier (interrupted) sweeps of the study do not count
        self.finished = self.failed = 0
        self.last_failure = ""

    @property
    def multi_objective(self) -> bool:
        return len(self.directions) > 1

    @property
    def maximize(self) -> bool:
        return self.directions[0] == "maximize"

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        assert self.config is not None and self.launcher is not None
        space, fixed = parse_search_space(self.params, arguments)
        if not space:
            raise SweepError(
                "the Optuna search space is empty: set hydra.sweeper.params or sweep a key on the command line, "
                "e.g. train.lr='tag(log, interval(1e-7, 1e-5))'"
            )
        if OmegaConf.select(self.config, "sweep") is None:
            raise SweepError(
                "the app config has no `sweep` node (a SweepContext): jobs could not find their trial"
            )
        self.sweep_dir = Path(self.config.hydra.sweep.dir)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, self.sweep_dir / "multirun.yaml")
        study = self._open_study(space)

        returns: list[Sequence[JobReturn]] = []
        waiting = False
        while True:
            fail_stale_trials(study, self.storage_obj, self.study_id, self.heartbeat_interval)
            done = count_finished(study)
            if done >= self.n_trials:
                break
            grid = isinstance(study.sampler, optuna.samplers.GridSampler)
            if grid and study.sampler.is_exhausted(study):
                log.info("every point of the grid has been tried: stopping at %d trials", done)
                break
            live = len(live_running(study, self.heartbeat_interval))
            if done + live >= self.n_trials or (grid and live and self._grid_busy(study)):
                # Other workers run the last trials: wait for them to finish (or to go stale, then redo them).
                if not waiting:
                    log.info("%d trials finished, %d running in other workers: waiting for them", done, live)
                waiting = True
                time.sleep(min(5.0, float(self.heartbeat_interval)))
                continue
            waiting = False
            self._check_failures(study, final=False)
            trials = self._ask(study, space, min(self.n_jobs, self.n_trials - done - live))
            if not trials:
                continue
            batch = [self._job_overrides(fixed, trial) for trial in trials]
            try:
                with Heartbeat(trials, self.heartbeat_interval):
                    self.validate_batch_is_legal(batch)
                    # job dirs are numbered like the trials (exactly so while one sweeper drives the study)
                    results = self.launcher.launch(batch, initial_job_idx=trials[0].number)
            except BaseException as e:  # Ctrl-C, a config that does not compose, a launcher that broke
                # An in-process job stopped mid-write may still hold the SQLite lock, through its
                # sessions or the frames of this traceback: let go of both before writing.
                traceback.clear_frames(e.__traceback__)
                release_job_storages()
                gc.collect()
                interrupt(study, trials, f"interrupted: {one_line(e, with_type=True)}")
                raise
            for trial, result in zip(trials, results, strict=True):
                self._record(study, trial, result)
            returns.append(results)

        self._write_results(study)
        self._check_failures(study, final=True)
        return returns

    # --- the study ---------------------------------------------------------------------------------

    def _open_study(self, space: Mapping[str, BaseDistribution]) -> optuna.Study:
        self.storage_url = self._storage_url()
        self.name = self.study_name or str(self.config.hydra.job.name)  # type: ignore[union-attr]
        self.storage_obj = open_storage(self.storage_url)
        pruner, pruner_cfg = self._make_pruner()
        study = optuna.create_study(
            study_name=self.name,
            storage=self.storage_obj,
            sampler=optuna.samplers.RandomSampler(),  # replaced below, once the study's size is known
            pruner=pruner,
            directions=self.directions,
            load_if_exists=True,
        )
        existing = [d.name.lower() for d in study.directions]
        if existing != self.directions:
            raise SweepError(
                f"study {self.name!r} in {mask_text(self.storage_url)} has directions {existing}, "
                f"not {self.directions}: use another hydra.sweeper.study_name"
            )
        study.set_user_attr("pruner", pruner_cfg)  # the jobs rebuild the pruner from this
        study.set_user_attr("objectives", self.objectives)
        study.set_user_attr("prune_on", self.prune_on)  # what the jobs report to the pruner
        self.study_id = self.storage_obj.get_study_id_from_name(self.name)
        self.space = dict(space)
        self.joined_at = len(study.get_trials(deepcopy=False))
        seed = self._sampler_seed()
        study.sampler = self._make_sampler(space, seed)
        log.info(
            "Optuna study %r in %s: %s %s, %s (seed %s), %s; %d of %d trials finished",
            self.name,
            mask_text(self.storage_url),
            "/".join(self.directions),
            ", ".join(self.objectives),
            type(study.sampler).__name__,
            "random" if seed is None else seed,
            f"{type(pruner).__name__} on {self.prune_on}",
            count_finished(study),
            self.n_trials,
        )
        log.info("search space: %s", "; ".join(f"{k}: {d}" for k, d in space.items()))
        return study

    def _storage_url(self) -> str:
        if self.storage is None:
            return f"sqlite:///{(self.sweep_dir / 'optuna.db').resolve()}"
        url = str(self.storage)
        # Jobs may run in another working dir (hydra.job.chdir): relative paths are made absolute.
        if url.startswith(JOURNAL_PREFIX):
            return JOURNAL_PREFIX + str(Path(url.removeprefix(JOURNAL_PREFIX)).expanduser().resolve())
        if url.startswith("sqlite:"):
            path, sep, query = url.removeprefix("sqlite:").removeprefix("///").partition("?")
            if path in ("", "//", ":memory:") or "mode=memory" in query:
                raise SweepError(
                    f"hydra.sweeper.storage={url}: jobs cannot reach an in-memory database; use a file"
                )
            return f"sqlite:///{Path(path).expanduser().resolve()}{sep}{query}"
        return url

    def _configured_seed(self) -> int | None:
        """``hydra.sweeper.sampler.seed`` if the sampler config sets one, else ``hydra.sweeper.seed``."""
        cfg = self.sampler_cfg
        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
        seed = cfg.get("seed") if isinstance(cfg, Mapping) else None
        return self.seed if seed is None else int(seed)

    def _sampler_seed(self, number: int | None = None, attempt: int = 0) -> int | None:
        """The seed of this process's sampler (see "Seeds" in the module docstring).

        A sweeper that opens an empty study uses the configured seed as it is (one process from an
        empty study is reproducible); one that joins a study holding N trials derives its seed from
        (seed, study, N), so a resumed sweep does not replay the first one's draws. A draw that
        repeats another trial's parameters is made again with a seed derived from (seed, study,
        trial number, attempt): trial numbers are unique in the study, so workers that started with
        the same seed part ways. No configured seed: Optuna's own random seed.
        """
        seed = self._configured_seed()
        if seed is None:
            return None
        if number is not None:
            return derive_seed(seed, self.name, "redraw", number, attempt)
        if self.joined_at == 0:
            return seed
        return derive_seed(seed, self.name, "joined", self.joined_at)

    def _make_sampler(
        self, space: Mapping[str, BaseDistribution], seed: int | None
    ) -> optuna.samplers.BaseSampler:
        if self.sampler_cfg is None:
            if self.multi_objective:
                return optuna.samplers.NSGAIISampler(seed=seed)
            return optuna.samplers.TPESampler(seed=seed)
        defaults: dict[str, Callable[[], Any]] = {
            "search_space": lambda: grid_search_space(space)
        }  # GridSampler
        force = {} if seed is None else {"seed": seed}
        return _build("sampler", self.sampler_cfg, optuna.samplers.BaseSampler, defaults, force)[0]

    def _make_pruner(self) -> tuple[optuna.pruners.BasePruner, dict[str, Any] | None]:
        """The pruner, and the config the jobs rebuild it from (None: they do not prune)."""
        if self.pruner_cfg is None:
            return optuna.pruners.NopPruner(), None
        pruner, cfg = _build("pruner", self.pruner_cfg, optuna.pruners.BasePruner, {})
        if isinstance(pruner, optuna.pruners.NopPruner):
            return pruner, None
        if self.multi_objective:
            log.warning(
                "multi-objective study: %s is ignored, Optuna prunes single-objective studies only "
                "(set hydra.sweeper.pruner=null to silence this)",
                type(pruner).__name__,
            )
            return optuna.pruners.NopPruner(), None
        return pruner, cfg

    def _ask(self, study: optuna.Study, space: Mapping[str, BaseDistribution], n: int) -> list[Trial]:
        """Ask up to ``n`` trials; give back one that another worker's concurrent ask made surplus.

        Workers that ask at the same instant may together pass ``n_trials``: the trials beyond it (by
        number, so every worker agrees which) are failed as interrupted with ``reason: surplus``,
        which do not count, and this batch asks no more.
        """
        trials: list[Trial] = []
        for _ in range(n):
            trial = self._ask_distinct(study, space)
            if trial is None:
                break
            counted = sorted(
                [
                    t.number
                    for t in study.get_trials(deepcopy=False)
                    if t.state.is_finished() and not t.user_attrs.get("interrupted")
                ]
                + [t.number for t in live_running(study, self.heartbeat_interval)]
            )
            if trial.number in counted[: self.n_trials]:
                trials.append(trial)
                continue
            trial.set_user_attr("reason", "surplus")
            interrupt(study, [trial], "interrupted: surplus (other workers asked the last trials)")
            log.info(
                "trial %d: surplus to n_trials=%d after another worker's ask; given back",
                trial.number,
                self.n_trials,
            )
            break
        return trials

    def _ask_distinct(self, study: optuna.Study, space: Mapping[str, BaseDistribution]) -> Trial | None:
        """Ask one trial whose parameters no COMPLETE, PRUNED, RUNNING or WAITING trial has.

        A repeat (another worker drew the same point from the same seed) is given back as
        interrupted with ``reason: duplicate`` and drawn again with a reseeded sampler, at most
        :data:`MAX_REDRAWS` times; then, or when a discrete space has no untried point left, the
        repeat is kept (a sampler may return to a point on purpose). A grid never repeats a point:
        a duplicate there means every point is taken, and None is returned.
        """
        grid = isinstance(study.sampler, optuna.samplers.GridSampler)
        for attempt in range(1, MAX_REDRAWS + 2):
            trial = study.ask(space)
            tried = [
                t
                for t in study.get_trials(deepcopy=False, states=TRIED)
                if t.number != trial.number and not t.user_attrs.get("interrupted")
            ]
            twin = next((t.number for t in tried if t.params == trial.params), None)
            if twin is None:
                return trial
            size = space_size(space)
            full = size is not None and len({params_key(t.params) for t in tried}) >= size
            if not grid and (full or attempt > MAX_REDRAWS):
                log.info("trial %d repeats the parameters of trial %d", trial.number, twin)
                return trial
            trial.set_user_attr("reason", "duplicate")
            interrupt(study, [trial], f"interrupted: duplicate of trial {twin}, drawn again")
            log.info("trial %d repeats the parameters of trial %d: given back", trial.number, twin)
            if grid:
                return None
            study.sampler = self._make_sampler(space, self._sampler_seed(trial.number, attempt))
        raise AssertionError("unreachable")

    def _grid_busy(self, study: optuna.Study) -> bool:
        """Whether every point of a grid is finished or running (then a new ask would only repeat one)."""
        taken = {
            t.system_attrs.get("grid_id")
            for t in study.get_trials(deepcopy=False)
            if t.state.is_finished() or t.state == TrialState.RUNNING
        }
        return len(taken - {None}) >= (space_size(self.space) or 0)

    def _frozen(self, number: int) -> FrozenTrial:
        """The trial as stored now, with what its job reported."""
        return self.storage_obj.get_trial(
            self.storage_obj.get_trial_id_from_study_id_trial_number(self.study_id, number)
        )

    # --- one trial ---------------------------------------------------------------------------------

    def _job_overrides(self, fixed: Sequence[str], trial: Trial) -> list[str]:
        values = {**trial.params, "sweep.study_name": self.name}
        return [
            *fixed,
            *(f"{key}={format_value(value)}" for key, value in values.items()),
            job_storage_override(self.storage_url),
            f"sweep.trial_number={trial.number}",
        ]

    def _values(self, result: Any) -> list[float]:
        """The objective value(s) in a job's returned dict (or a bare number, single-objective)."""
        if isinstance(result, Mapping):
            missing = [k for k in self.objectives if k not in result]
            if missing:
                raise ValueError(f"the job returned no {missing} (its keys: {sorted(map(str, result))})")
            named = {k: result[k] for k in self.objectives}
        elif isinstance(result, int | float) and not isinstance(result, bool) and not self.multi_objective:
            named = {self.objectives[0]: result}
        else:
            raise ValueError(
                f"the job must return a dict with {self.objectives}, got {type(result).__name__}"
            )
        for key, value in named.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
                raise ValueError(f"the job returned {key}={value!r}, not a number")
        return [float(v) for v in named.values()]

    def _record(self, study: optuna.Study, trial: Trial, result: JobReturn) -> None:
        """Tell Optuna how the job ended, and log one line about it."""
        reported = self._frozen(trial.number)
        error: BaseException | None = None
        if result.status == JobStatus.COMPLETED:
            try:
                values = self._values(result.return_value)
            except ValueError as e:
                error = e
            else:
                metrics = (
                    numeric_metrics(result.return_value) if isinstance(result.return_value, Mapping) else {}
                )
                step = metrics.get("best_step")
                if step is not None and float(step).is_integer():  # a step, even when returned as 400.0
                    metrics["best_step"] = int(step)
                if not self.multi_objective and "best_score" not in reported.user_attrs:
                    metrics["best_score"] = values[0]
                for key, value in metrics.items():
                    trial.set_user_attr(key, value)
                tell(study, trial, values=values)
        elif isinstance(result._return_value, optuna.TrialPruned):  # .return_value would re-raise it
            drop_traceback(result._return_value)
            scores = reported.intermediate_values
            if scores:
                trial.set_user_attr("pruned_at_step", max(scores))
            best = best_of(
                scores.items(), score=lambda kv: kv[1], step=lambda kv: kv[0], maximize=self.maximize
            )
            if "best_score" not in reported.user_attrs and best is not None:
                trial.set_user_attr("best_step", best[0])
                trial.set_user_attr("best_score", best[1])
            tell(study, trial, state=TrialState.PRUNED)
        else:
            error = result._return_value
        if error is not None:
            reason = (
                one_line(error, with_type=True)
                if isinstance(error, BaseException)
                else f"job failed: {error!r}"
            )
            trial.set_user_attr("fail_reason", reason)
            tell(study, trial, state=TrialState.FAIL)
            self.failed += 1
            self.last_failure = reason
            exc_info = error if isinstance(error, BaseException) else None
            log.warning("trial %d failed: %s", trial.number, reason, exc_info=exc_info)
            if exc_info is not None:
                drop_traceback(exc_info)
            del error, exc_info
        self.finished += 1

        done = self._frozen(trial.number)
        log.info(
            "[%d/%d] trial %d %s: %s | %s",
            count_finished(study),
            self.n_trials,
            done.number,
            done.state.name,
            outcome(done),
            " ".join(f"{k}={format_value(v)}" for k, v in done.params.items()),
        )

    # --- the end -----------------------------------------------------------------------------------

    def _check_failures(self, study: optuna.Study, *, final: bool) -> None:
        if not self.finished or (not final and self.finished < self.failure_check_after):
            return
        if self.failed / self.finished > self.max_failure_rate:
            self._write_results(study)
            raise SweepError(
                f"stopping: {self.failed} of {self.finished} trials of this sweep failed, more than "
                f"max_failure_rate={self.max_failure_rate} (last: {self.last_failure}); "
                f"see the job logs under {self.sweep_dir}"
            )

    def _write_results(self, study: optuna.Study) -> None:
        trials = study.get_trials(deepcopy=False)
        interrupted = sum(bool(t.user_attrs.get("interrupted")) for t in trials)
        counts = {
            "complete": sum(t.state == TrialState.COMPLETE for t in trials),
            "pruned": sum(t.state == TrialState.PRUNED for t in trials),
            "failed": sum(t.state == TrialState.FAIL for t in trials) - interrupted,
            "interrupted": interrupted,
            "running": sum(t.state == TrialState.RUNNING for t in trials),
        }
        results: dict[str, Any] = {
            "study_name": self.name,
            "storage": mask_text(self.storage_url),
            "directions": self.directions,
            "objectives": self.objectives,
            "trials": counts,
        }
        pruned = [t for t in trials if t.state == TrialState.PRUNED]
        if pruned:
            results["pruned_trials"] = [
                {
                    "trial": t.number,
                    "pruned_at_step": t.user_attrs.get("pruned_at_step"),
                    "best_score": t.user_attrs.get("best_score"),
                    "best_step": t.user_attrs.get("best_step"),
                    "params": t.params,
                }
                for t in pruned
            ]
        if self.multi_objective:
            results["pareto_front"] = [
                {
                    "trial": t.number,
                    "values": dict(zip(self.objectives, t.values, strict=True)),
                    "best_step": t.user_attrs.get("best_step"),
                    "params": t.params,
                }
                for t in study.best_trials
            ]
            best = f"Pareto front: trials {[t['trial'] for t in results['pareto_front']]}"
        elif counts["complete"]:
            trial = study.best_trial
            step = trial.user_attrs.get("best_step")
            results.update(
                best_value=trial.value, best_trial=trial.number, best_step=step, best_params=trial.params
            )
            params = " ".join(f"{k}={format_value(v)}" for k, v in trial.params.items())
            best = (
                f"best trial {trial.number}: {self.objectives[0]}={trial.value:.6g} at step {step} | {params}"
            )
        else:
            best = "no trial completed"
        path = self.sweep_dir / "optimization_results.yaml"
        OmegaConf.save(OmegaConf.create(results), path)
        log.info("study %r: %s", self.name, ", ".join(f"{n} {state}" for state, n in counts.items() if n))
        log.info(best)
        log.info("results: %s", path)
        log.info(
            "browse every trial: optuna-dashboard %s",
            mask_text(self.storage_url.removeprefix(JOURNAL_PREFIX)),
        )
