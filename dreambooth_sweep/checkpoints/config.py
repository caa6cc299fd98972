"""Typed schema of the ``checkpoints:`` group of ``conf/evaluate.yaml`` and the ``eval.lora_scales`` axis."""

from __future__ import annotations

from dataclasses import dataclass, field

from dreambooth_sweep.config import EvalConfig

__all__ = ["CheckpointsConfig", "ScoringEvalConfig"]


@dataclass
class CheckpointsConfig:
    dir: str | None = None  # folder of checkpoints (one run, or one subfolder per run); null: off
    watch: bool = False  # keep scoring new checkpoints as another trainer writes them
    watch_idle_s: float = 600.0  # --watch stops after this long without a new checkpoint
    poll_s: float = 5.0  # --watch looks for new files this often
    settle_s: float = 2.0  # a file modified more recently than this may still be written: wait
    incomplete_s: float = 300.0  # a file shorter than its header says counts as truncated after this
    out: str | None = None  # results folder; null: the Hydra run dir


@dataclass
class ScoringEvalConfig(EvalConfig):
    lora_scales: list[float] = field(
        default_factory=lambda: [1.0]
    )  # LoRA strengths to score each checkpoint at
