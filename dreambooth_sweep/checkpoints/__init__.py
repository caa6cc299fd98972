"""Score checkpoints another trainer wrote (kohya sd-scripts, ai-toolkit, OneTrainer, SimpleTuner,
diffusers' scripts) or this project's own, with the evaluator training uses.

* :mod:`~dreambooth_sweep.checkpoints.discover` — find them in a folder, with their step and run;
* :mod:`~dreambooth_sweep.checkpoints.apply` — put one onto the once-loaded base model and take it off;
* :mod:`~dreambooth_sweep.checkpoints.score` — score every checkpoint (× LoRA strength) and write what a
  training run writes (``eval_history.jsonl``, grids, MLflow, ``metrics.json``, the report).
"""

from __future__ import annotations

from dreambooth_sweep.checkpoints.discover import Checkpoint, Discovery, discover

__all__ = ["Checkpoint", "Discovery", "discover"]
