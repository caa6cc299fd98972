"""Subject- and prompt-fidelity metrics for DreamBooth checkpoints.

The package follows the data flow of one score:

- :mod:`.hub` — where a model comes from (hub id, local folder, ``"tiny"``), never hanging offline;
- :mod:`.preprocess` — transformers' own image processors (PIL backend) and DINO's evaluation
  transform (``eval.dino_preprocess``);
- :mod:`.backbones` — DINO v1 / DINOv2 / CLIP / SigLIP loaded by their ``config.json``, embeddings;
- :mod:`.similarity` — the cosine statistics every metric is made of;
- :mod:`.names` — metric names that carry the backbone (``eval/dino`` vs ``eval/dinov2_s14``);
- :mod:`.suite` — :class:`MetricSuite`, what the evaluator calls at each checkpoint;
- :mod:`.record` — ``scoring.json``, how a sample folder was scored;
- :mod:`.cli` — ``dreambooth-sweep score`` / ``python -m dreambooth_sweep.metrics``.

``sweet_spot_score`` and ``BestTracker`` live in :mod:`dreambooth_sweep.objective`; they are
re-exported here for code written against the former single ``metrics`` module.
"""

from __future__ import annotations

from dreambooth_sweep.metrics.backbones import FAMILIES, Encoder, clear_model_cache, load_encoder
from dreambooth_sweep.metrics.cli import add_cli, main
from dreambooth_sweep.metrics.hub import resolve_model_source
from dreambooth_sweep.metrics.names import MetricNames, backbone_label, metric_key
from dreambooth_sweep.metrics.preprocess import DINO_PREPROCESS, dino_eval_processor, load_image_processor
from dreambooth_sweep.metrics.record import (
    SCORING_FILE,
    read_scoring_record,
    scoring_record,
    write_scoring_record,
)
from dreambooth_sweep.metrics.similarity import (
    diversity,
    mean_cosine,
    mean_pairwise_cosine,
    memorisation,
    nearest_cosine,
)
from dreambooth_sweep.metrics.suite import CLIP_T_RULE, METRICS, MetricSuite, clip_t_prompt
from dreambooth_sweep.objective import BestTracker, sweet_spot_score

__all__ = [
    "CLIP_T_RULE",
    "DINO_PREPROCESS",
    "FAMILIES",
    "METRICS",
    "SCORING_FILE",
    "BestTracker",
    "Encoder",
    "MetricNames",
    "MetricSuite",
    "add_cli",
    "backbone_label",
    "clear_model_cache",
    "clip_t_prompt",
    "dino_eval_processor",
    "diversity",
    "load_encoder",
    "load_image_processor",
    "main",
    "mean_cosine",
    "mean_pairwise_cosine",
    "memorisation",
    "metric_key",
    "nearest_cosine",
    "read_scoring_record",
    "resolve_model_source",
    "scoring_record",
    "sweet_spot_score",
    "write_scoring_record",
]
