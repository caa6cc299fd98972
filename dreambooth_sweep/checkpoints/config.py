"""Typed schema of the ``checkpoints:`` group of ``conf/evaluate.yaml`` and the ``eval.lora_scales`` axis.

Types only: the values (and what each means) are in ``conf/evaluate.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from dreambooth_sweep.config import EvalConfig

__all__ = ["CheckpointsConfig", "ScoringEvalConfig"]


@dataclass
class CheckpointsConfig:
    dir: str | None = MISSING
    watch: bool = MISSING
    watch_idle_s: float = MISSING
    poll_s: float = MISSING
    settle_s: float = MISSING
    incomplete_s: float = MISSING
    out: str | None = MISSING


@dataclass
class ScoringEvalConfig(EvalConfig):
    lora_scales: list[float] = MISSING
