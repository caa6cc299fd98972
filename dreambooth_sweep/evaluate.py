"""Eval-only mode: score saved weights, the base model, or a folder of checkpoints, outside training.

Saved weights (a trained model folder, a LoRA file or a textual-inversion embedding)::

    python -m dreambooth_sweep.evaluate model=tiny eval=tiny weights.model_dir=outputs/runs/<run>/model

It first evaluates the base model (the baseline, ``base.png``), then the weights (``final.png``), and
writes ``metrics.json`` (the weights' metrics) and ``metrics_base.json``. With no weights it evaluates
the base model alone, whose score is then its DINO (nothing to lose prompt fidelity against).

``checkpoints.dir=DIR`` scores every checkpoint in a folder instead, any trainer's
(:mod:`dreambooth_sweep.checkpoints`; ``dreambooth-sweep score-checkpoints DIR``). Both run the
:class:`~dreambooth_sweep.evaluator.Evaluator` that training uses.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from dreambooth_sweep.config import (
    ConfigError,
    EvaluateConfig,
    WeightsConfig,
    register_configs,
    validate,
)
from dreambooth_sweep.evaluator import (  # re-exported: the evaluator's old home
    COL_LABEL_H,
    LABEL_W,
    TILE_GAP,
    TITLE_H,
    EvalContext,
    EvalResult,
    Evaluator,
    evaluation_prompts,
    make_grid,
)
from dreambooth_sweep.models import Components, build_pipeline
from dreambooth_sweep.runtime import conf_dir, resolve_output_dir, run_task, set_cpu_threads, weight_dtype

__all__ = [
    "COL_LABEL_H",
    "LABEL_W",
    "TILE_GAP",
    "TITLE_H",
    "EvalContext",
    "EvalResult",
    "EvaluateConfig",
    "Evaluator",
    "WeightsConfig",
    "evaluate",
    "evaluation_prompts",
    "main",
    "make_grid",
]

log = logging.getLogger("dreambooth_sweep.evaluate")

register_configs()  # evaluate_schema, first in conf/evaluate.yaml


# ----------------------------------------------------------------------------- eval-only config


# ----------------------------------------------------------------------------- eval-only mode


def _has_weights(w: Any) -> bool:
    return bool(w.model_dir or w.lora or w.embedding)


def _lora_file(w: Any, family: Any) -> Path:
    """``weights.lora`` as a file, checked to be a LoRA for this family (one-line errors otherwise)."""
    path = Path(w.lora).expanduser()
    if path.is_dir():
        path = path / "pytorch_lora_weights.safetensors"
    if not path.is_file():
        raise ConfigError(
            f"weights.lora={str(path)!r} does not exist: pass the .safetensors file or its folder"
        )
    family.check_lora_file(path)
    return path


def _load_weights(
    cfg: DictConfig, components: Components, device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    """Apply ``cfg.weights`` on top of the base components; returns the modules to sample, by name."""
    w, family = cfg.weights, components.family
    live = {name: getattr(components, name) for name in components.module_names}
    if w.model_dir:
        root = Path(w.model_dir).expanduser()
        if not (root / family.denoiser).is_dir():
            raise ConfigError(
                f"weights.model_dir={str(root)!r} has no {family.denoiser}/ folder: point it at a run's "
                f"model/ folder trained on a {family.label} model"
            )
        for name in components.module_names:
            if (root / name).is_dir():  # the saved pipeline's own copy of every module it has
                cls = type(live[name])
                live[name] = cls.from_pretrained(root, subfolder=name, torch_dtype=dtype).to(device)
        for name in components.tokenizer_names:
            if (root / name).is_dir():  # new tokens (textual inversion → DreamBooth) live here
                tokenizer = getattr(components, name)
                setattr(components, name, type(tokenizer).from_pretrained(root, subfolder=name))
    if w.lora or w.embedding:
        pipe = build_pipeline(components, **live)
        if w.lora:
            path = _lora_file(w, family)
            pipe.load_lora_weights(str(path.parent), weight_name=path.name)
        if w.embedding:
            path = Path(w.embedding).expanduser()
            if not path.is_file():
                raise ConfigError(
                    f"weights.embedding={str(path)!r} is not a file: pass the learned embedding file"
                )
            family.load_embeddings(pipe, path, w.token)
        live = {name: getattr(pipe, name) for name in components.module_names}
        for name in components.tokenizer_names:
            setattr(components, name, getattr(pipe, name))
    return live


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Score saved weights (or the base model) once with every prompt; return the metrics.

    Writes ``samples/{base,final}.png`` (+ image folders) and ``metrics.json`` in the run folder.
    """
    from dreambooth_sweep.data import load_instance_images
    from dreambooth_sweep.models import load_components

    if cfg.get("checkpoints") is not None and cfg.checkpoints.dir:
        if _has_weights(cfg.weights):
            raise ConfigError(
                "checkpoints.dir and weights.* are both set: score a folder or one set of weights"
            )
        from dreambooth_sweep.checkpoints.score import run_scoring

        return run_scoring(cfg)
    validate(cfg)
    cfg = copy.deepcopy(cfg)
    cfg.eval.num_prompts = None  # one final-style evaluation: eval/* over every prompt
    set_cpu_threads(cfg.train.num_threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = weight_dtype(cfg.train.mixed_precision)
    if device.type == "cpu":
        dtype = torch.float32  # half-precision sampling on a CPU is slow and gains nothing here
    out = resolve_output_dir(cfg)
    instance_images = load_instance_images(cfg.data)
    components = load_components(cfg.model, cfg.paths.cache_dir)
    for name in components.module_names:
        module = getattr(components, name)
        module.requires_grad_(False).to(device)
        if dtype != torch.float32:
            module.to(dtype)
    evaluator = Evaluator(cfg, instance_images, out, Path(cfg.paths.cache_dir), device)

    family = components.family
    family.check_sampler(cfg)
    if cfg.weights.lora:  # a LoRA for another family fails now, before the base model is sampled
        _lora_file(cfg.weights, family)

    def run(step: int, label: str, live: dict[str, Any]) -> EvalResult:
        first = live[family.text_encoders[0]]
        ctx = EvalContext(
            step, True, components, live[family.denoiser], first, device, dtype, label=label, modules=live
        )
        result = evaluator(ctx)
        log.info("%s: %s", label, json.dumps({k: round(v, 4) for k, v in result.metrics.items()}))
        return result

    # The base model first: it is the baseline, and LoRA / embeddings change the modules in place.
    base = run(0, "base", {name: getattr(components, name) for name in components.module_names})
    result = base
    if _has_weights(cfg.weights):
        (out / "metrics_base.json").write_text(json.dumps(base.metrics, indent=2, sort_keys=True))
        result = run(1, "final", _load_weights(cfg, components, device, dtype))
    (out / "metrics.json").write_text(json.dumps(result.metrics, indent=2, sort_keys=True))
    print(f"grid:    {result.grid_path}\nsamples: {result.sample_dir}\nmetrics: {out / 'metrics.json'}")
    return dict(result.metrics)


@hydra.main(config_path=conf_dir(), config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> dict[str, float]:
    """``python -m dreambooth_sweep.evaluate``: eval-only mode, prints where the results are."""
    return run_task(evaluate, cfg)


if __name__ == "__main__":
    # Run the importable module's `main`, not this __main__ copy: launchers that pickle the task
    # (submitit) then pickle it by reference instead of dragging this module's globals along.
    from dreambooth_sweep.evaluate import main as task
    from dreambooth_sweep.runtime import run_hydra_entry

    run_hydra_entry(task, "dreambooth_sweep.evaluate")
