"""A tiny Hydra app with the training app's contract, for the Optuna sweeper tests.

Like ``train(cfg)`` it reports one score per checkpoint to its trial (the last one as final, never
pruned on), writes ``trial_state.json`` into its Hydra output dir, runs under the same entry wrapper
(one ``error:`` line, exit 2) and returns
``{"objective": best score, "best_step": ..., "eval/dino": ..., "eval/clip_t": ...}``. The curve has a
sweet spot: subject fidelity (``eval/dino``) saturates with lr × steps while prompt fidelity
(``eval/clip_t``) keeps falling, and the score penalises the loss of prompt fidelity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dreambooth_sweep.config import SweepContext
from dreambooth_sweep.runtime import run_hydra_entry
from dreambooth_sweep.sweep import TrialReporter


@dataclass
class AppConfig:
    lr: float = 0.1
    steps: int = 50
    eval_every: int = 10
    opt: str = "adam"
    batch_size: int = 1
    fail_above: float | None = None
    decay_per_trial: float = 0.0
    sweep: SweepContext = field(default_factory=SweepContext)


ConfigStore.instance().store(name="app_schema", node=AppConfig)


def checkpoint_metrics(rate: float, step: int, offset: float) -> dict[str, float]:
    x = rate * step
    dino = 0.8 * (1 - math.exp(-x)) - offset
    clip_t = 0.30 - 0.05 * x
    score = dino - 2.0 * max(0.0, 0.30 - clip_t - 0.01)
    return {"objective": score, "eval/dino": dino, "eval/clip_t": clip_t}


def simulate(cfg: DictConfig) -> dict[str, float]:
    if cfg.fail_above is not None and cfg.lr > cfg.fail_above:
        raise RuntimeError(f"CUDA out of memory (simulated) at lr={cfg.lr}")
    rate = cfg.lr * (0.5 if cfg.opt == "sgd" else 1.0) * cfg.batch_size
    offset = cfg.decay_per_trial * (cfg.sweep.trial_number or 0)
    run_dir = HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else None
    reporter = TrialReporter.from_context(cfg.sweep, run_dir=run_dir)
    best: dict[str, float] = {}
    for step in range(0, cfg.steps + 1, cfg.eval_every):
        metrics = checkpoint_metrics(rate, step, offset)
        reporter.report(metrics["objective"], step, metrics, final=step + cfg.eval_every > cfg.steps)
        if reporter.best_step == step:
            best = metrics
    reporter.write_state("COMPLETE", cfg.steps)
    return {**best, "objective": reporter.best_score, "best_step": reporter.best_step}


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict[str, float]:
    return simulate(cfg)


if __name__ == "__main__":
    run_hydra_entry(main, "tests/sweep_app/app.py")
