"""Load a base model's components through its family, and build samplers/pipelines around them.

One loading path for everyone: a hub id (``stable-diffusion-v1-5/stable-diffusion-v1-5``), a local
diffusers folder, or a tiny offline build (``tiny``, ``tiny_sdxl``, ``tiny_sd3``, ``tiny_flux``:
random weights, built once and cached) all go through ``from_pretrained``. The family
(:mod:`dreambooth_sweep.families`) is read from the pipeline's ``model_index.json``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dreambooth_sweep.config import ConfigError
from dreambooth_sweep.families import Components, ModelFamily, detect_family
from dreambooth_sweep.samplers import FLOW_SCHEDULERS, SCHEDULERS, make_scheduler
from dreambooth_sweep.tiny import TINY_IDS, ensure_tiny

__all__ = [
    "FLOW_SCHEDULERS",
    "SCHEDULERS",
    "Components",
    "build_pipeline",
    "load_components",
    "make_scheduler",
    "model_family",
    "resolve_pretrained",
]


def resolve_pretrained(pretrained: str, cache_dir: str | os.PathLike[str]) -> str:
    """The string to hand to ``from_pretrained``: a tiny id becomes its cached offline build."""
    if pretrained in TINY_IDS:
        return str(ensure_tiny(TINY_IDS[pretrained], cache_dir))
    return pretrained


def _check_folder(source: str) -> None:
    local = Path(source)
    if (source.startswith((".", "/")) or local.exists()) and not (local / "model_index.json").exists():
        raise ConfigError(
            f"model.pretrained={source!r} is not a diffusers pipeline folder (no model_index.json): "
            "point it at a folder written by save_pretrained, a hub id, or use model=tiny"
        )


def model_family(model_cfg: Any, cache_dir: str | os.PathLike[str]) -> ModelFamily:
    """The family of ``model_cfg.pretrained`` (reads model_index.json only, no weights)."""
    source = resolve_pretrained(model_cfg.pretrained, cache_dir)
    _check_folder(source)
    return detect_family(source, model_cfg.get("revision"))


def load_components(model_cfg: Any, cache_dir: str | os.PathLike[str]) -> Components:
    """Every component of ``model_cfg.pretrained`` and its training noise schedule, by its family."""
    source = resolve_pretrained(model_cfg.pretrained, cache_dir)
    _check_folder(source)
    family = detect_family(source, model_cfg.get("revision"))
    return family.load(model_cfg, source)


def build_pipeline(components: Components, scheduler: str | None = None, **live: Any) -> Any:
    """The family's diffusers pipeline over the live modules (no copy, no reload, no safety checker).

    Args:
        components: loaded components.
        scheduler: short sampler name; None: the pipeline's own (PNDM for SD-1.5).
        live: modules by pipeline name overriding the loaded ones (``unet=`` / ``transformer=``,
            ``text_encoder=``, ...: e.g. the unwrapped training modules); None values are ignored.
    """
    return components.family.pipeline(
        components, scheduler, **{k: v for k, v in live.items() if v is not None}
    )
