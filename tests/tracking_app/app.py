"""A tiny Hydra app for tests/tracking/: each job is a tracked "training" run.

    python tests/tracking_app/app.py -m train.lr=1e-6,2e-6 model.name=tiny ...

Its score is ``train.lr * 1e6``, so the best job of a sweep is known in advance.
"""

from __future__ import annotations

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from dreambooth_sweep.config import load_config
from dreambooth_sweep.tracking import start_tracking

# the project's own composed run config (conf/train.yaml): the schema alone has no values
ConfigStore.instance().store(name="tracking_app", node=load_config())


@hydra.main(version_base="1.3", config_path=None, config_name="tracking_app")
def main(cfg: DictConfig) -> float:
    score = float(cfg.train.lr) * 1e6
    with start_tracking(cfg, system_metrics=False) as tracker:
        for step in range(1, cfg.train.max_steps + 1):
            tracker.log_train(step, {"train/loss": 1.0 / step})
        tracker.log_metrics({"eval/dino": score}, step=cfg.train.max_steps)
        tracker.log_summary({"best/score": score, "best/step": cfg.train.max_steps})
    return score


if __name__ == "__main__":
    main()
