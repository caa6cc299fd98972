"""Structured config of the Optuna sweeper, registered as ``hydra/sweeper: optuna``.

Select it with ``hydra/sweeper=optuna`` on the command line or ``override /hydra/sweeper: optuna`` in a
sweep file, and set the fields below under ``hydra.sweeper``::

    # @package _global_
    defaults:
      - override /hydra/sweeper: optuna
    hydra:
      mode: MULTIRUN
      sweeper:
        storage: sqlite:///${paths.log_dir}/optuna.db
        study_name: lr-sweep
        n_trials: 30
        pruner: {_target_: optuna.pruners.MedianPruner, n_startup_trials: 5}
        prune_on: val/instance_loss   # decide every eval.val_loss_every_n_steps (default: eval/score)
        params:
          train.lr: tag(log, interval(1e-7, 1e-5))
          train.text_encoder_steps: choice(0, 100, 200)
          prior.loss_weight: {type: float, low: 0.1, high: 1.0, step: 0.1}

Search-space syntax of ``params`` (and of sweep overrides on the command line, which extend it):

- ``choice(a, b)`` or ``a,b`` or a YAML list: categorical.
- ``range(1, 5)``: int 1..4, ``stop`` excluded as in Hydra's basic sweeper; ``range(0, 1, 0.25)``: float with a step.
- ``interval(lo, hi)``: float; ``tag(log, interval(lo, hi))``: log-uniform float; ``tag(log, range(1, 65))``: log int.
- ``{type: float|int, low: .., high: .., log: .., step: ..}`` or ``{type: categorical, choices: [..]}``.
- a plain value: a fixed override, passed to every job.

On the command line, new keys need ``+`` or ``++`` (Hydra's struct mode), e.g.
``'++hydra.sweeper.pruner={_target_: optuna.pruners.SuccessiveHalvingPruner, min_resource: 100}'`` or
``'+hydra.sweeper.params.train.lr={type: float, low: 1e-7, high: 1e-5, log: true}'``; plain sweep
overrides (``train.lr='interval(1e-7, 1e-5)'``) need nothing.
"""

# No `from __future__ import annotations` here: Hydra loads plugin modules without putting them in
# sys.modules, and dataclasses then cannot resolve string annotations.
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

__all__ = ["OptunaSweeperConf"]


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.dreambooth_sweep_optuna.optuna_sweeper.OptunaSweeper"
    # sampler/pruner stay configs until the sweeper builds them (a GridSampler needs the search space)
    _recursive_: bool = False

    # None: the Hydra job name; the same name + storage resumes a study
    study_name: str | None = None
    # sqlite:///abs.db | postgresql://.. | journal:///path.log; None: sqlite in the sweep dir
    storage: str | None = None
    direction: str = "maximize"  # single objective: maximize | minimize
    # multi-objective, e.g. [maximize, maximize]; replaces `direction`
    directions: list[str] | None = None
    objective: str = "objective"  # key of the job's returned dict holding the trial's value
    # multi-objective: one key per direction, e.g. [eval/dino, eval/clip_t]
    objectives: list[str] | None = None
    # TOTAL finished trials (complete, pruned, failed) the study should reach: a resumed sweep runs the rest
    n_trials: int = 20
    # trials asked and launched together per batch, through whatever hydra/launcher is configured
    n_jobs: int = 1
    # sampler seed (a configured sampler's own `seed` wins): used as given by a sweeper that opens an
    # empty study; one joining a study with N trials derives its seed from (seed, study name, N)
    seed: int | None = None
    # stop when more than this fraction of this sweep's finished trials failed; 1.0: never
    max_failure_rate: float = 0.5
    # that check starts once this sweep finished this many trials (and runs at the end)
    failure_check_after: int = 4
    # seconds between "alive" stamps; a RUNNING trial silent for 3x this is failed as interrupted
    heartbeat_interval: int = 60
    # {_target_: optuna.samplers.X, ...}; None: TPESampler, or NSGAIISampler when multi-objective
    sampler: Any = None
    # null: no pruning
    pruner: Any = field(default_factory=lambda: {"_target_": "optuna.pruners.MedianPruner"})
    # the metric the pruner decides on: eval/score (every eval.every_n_steps) or e.g. val/instance_loss
    # (every eval.val_loss_every_n_steps, cheap); a loss goes to Optuna negated in a maximize study.
    # The trial's value is still `objective` (its best eval/score)
    prune_on: str = "eval/score"
    params: dict[str, Any] = field(default_factory=dict)  # the search space: key -> syntax above


ConfigStore.instance().store(
    group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="dreambooth_sweep"
)
