"""Put one checkpoint onto the once-loaded base model, and take it off again.

* **LoRA** (kohya / ai-toolkit / OneTrainer key names or diffusers') goes through diffusers'
  ``load_lora_weights`` on a pipeline over the live modules — diffusers converts the kohya names and
  folds in their ``alpha`` — as adapter ``checkpoint``; ``set_adapters`` sets the strength and
  ``unload_lora_weights`` takes the adapter layers out again. The base weights never change: a checksum
  taken at load time is compared after every unload.
* **Full weights** (``unet/``/``transformer/`` folders, pipeline folders, accelerate's ``model.safetensors``,
  single-file checkpoints) load into a *copy* of the UNet (and text encoder), freed after scoring.
* **Embeddings** load with ``load_textual_inversion`` into copies of the tokenizer and text encoder,
  under ``data.identifier`` (the token the evaluation prompts use).

A checkpoint made for another base is refused before anything is loaded: its cross-attention width
(or embedding width, or metadata) is compared with the base model's, in one line naming both.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dreambooth_sweep.checkpoints import fit
from dreambooth_sweep.checkpoints.discover import Checkpoint
from dreambooth_sweep.errors import ConfigError, one_line

__all__ = ["ADAPTER", "Applied", "Applier", "load_base", "pipeline_over"]

log = logging.getLogger("dreambooth_sweep.checkpoints")

ADAPTER = "checkpoint"


# ----------------------------------------------------------------------------- the base model
# The two calls into model loading, kept here so they can be re-pointed when loading moves.


def load_base(cfg: Any) -> Any:
    """The base model's components (``models.load_components``), loaded once per scoring process."""
    from dreambooth_sweep.models import load_components

    return load_components(cfg.model, cfg.paths.cache_dir)


def pipeline_over(components: Any, scheduler: str | None = None) -> Any:
    """A pipeline over the live modules (``models.build_pipeline``): nothing is copied or reloaded."""
    from dreambooth_sweep.models import build_pipeline

    return build_pipeline(components, scheduler)


# ----------------------------------------------------------------------------- applying


@dataclass
class Applied:
    """The modules to sample with while a checkpoint is on, and its strength control."""

    components: Any  # tokenizer/text encoder/UNet as the checkpoint needs them (copies where changed)
    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    set_scale: Callable[[float], None]  # LoRA strength; a no-op for other checkpoints


class Applier:
    """Applies checkpoints to ``components`` one at a time (see the module docstring).

    Args:
        components: the base model, placed on its device in its dtype; never changed for good.
        identifier: the token the prompts use (an embedding is loaded under it).
        base_name: how error lines name the base model (``model.pretrained``).
    """

    def __init__(self, components: Any, identifier: str, base_name: str) -> None:
        from dreambooth_sweep.caches import fingerprint

        self.base = components
        self.identifier = identifier
        self.base_name = base_name
        self.context = int(components.unet.config.cross_attention_dim)
        self.hidden = int(components.text_encoder.config.hidden_size)
        self.family = fit.CONTEXT_FAMILIES.get(self.context)
        self._fingerprint = fingerprint(components)

    def base_description(self) -> str:
        return fit.describe(self.family, self.context)

    def check_fit(self, ckpt: Checkpoint) -> None:
        """Refuse a checkpoint made for another base model (one line: the file, both bases, the fix)."""
        if ckpt.kind == "embedding":
            mismatch = ckpt.embed_dim is not None and ckpt.embed_dim != self.hidden
            made_for = fit.describe(ckpt.family, None) + f" (embedding width {ckpt.embed_dim})"
            base = f"{self.base_description()}, text width {self.hidden}"
        else:
            if ckpt.context is not None:  # shapes decide when the file has them
                mismatch = ckpt.context != self.context
            else:
                mismatch = ckpt.family is not None and self.family is not None and ckpt.family != self.family
            made_for, base = fit.describe(ckpt.family, ckpt.context), self.base_description()
        if mismatch:
            raise self._mismatch(ckpt, made_for, base)

    def _mismatch(self, ckpt: Checkpoint, made_for: str, base: str) -> ConfigError:
        return ConfigError(
            f"{ckpt.path} seems made for {made_for}, but the base model {self.base_name} is {base}: "
            "set model=... (or model.pretrained=...) to the base it was trained on"
        )

    @contextmanager
    def applied(self, ckpt: Checkpoint) -> Iterator[Applied]:
        """The base model with ``ckpt`` on it for the ``with`` block; the base as it was afterwards."""
        self.check_fit(ckpt)
        base = self.base
        unet, text_encoder, tokenizer = base.unet, base.text_encoder, base.tokenizer
        lora_on = False
        try:
            try:
                if "embedding" in ckpt.parts:
                    text_encoder, tokenizer = copy.deepcopy(text_encoder), copy.deepcopy(tokenizer)
                if any(k in ckpt.parts for k in ("unet", "transformer", "single_file")):
                    unet = self._full_unet(ckpt)
                if "text_encoder" in ckpt.parts:
                    text_encoder = copy.deepcopy(text_encoder)
                    _load_into(text_encoder, ckpt.parts["text_encoder"])
                comps = dataclasses.replace(base, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer)
                pipe = pipeline_over(comps)
                if "embedding" in ckpt.parts:
                    self._embedding(pipe, ckpt)
                if "lora" in ckpt.parts:
                    lora_on = True
                    file = ckpt.parts["lora"]
                    pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name=ADAPTER)
            except ConfigError:
                raise
            except (RuntimeError, ValueError, KeyError) as exc:
                if "size mismatch" in str(exc) or "shape" in str(exc):
                    raise self._mismatch(
                        ckpt, fit.describe(ckpt.family, ckpt.context), self.base_description()
                    ) from exc
                raise ConfigError(
                    f"cannot load {ckpt.path} ({ckpt.format}): {one_line(exc, 300, with_type=True)}: "
                    "check that it is a complete checkpoint for this base model"
                ) from exc

            def set_scale(scale: float) -> None:
                if lora_on:
                    pipe.set_adapters([ADAPTER], adapter_weights=[float(scale)])

            yield Applied(comps, pipe.unet, pipe.text_encoder, set_scale)
        finally:
            if lora_on:
                pipe.unload_lora_weights()
            self._check_base()

    def _check_base(self) -> None:
        from dreambooth_sweep.caches import fingerprint

        if fingerprint(self.base) != self._fingerprint:
            raise RuntimeError("the base model's weights changed while a checkpoint was applied")

    def _full_unet(self, ckpt: Checkpoint) -> torch.nn.Module:
        base_unet = self.base.unet
        if "single_file" in ckpt.parts:
            return self._single_file(ckpt.parts["single_file"])
        unet = copy.deepcopy(base_unet)
        part = ckpt.parts.get("unet") or ckpt.parts["transformer"]
        _load_into(unet, part)
        return unet

    def _single_file(self, path: Path) -> torch.nn.Module:
        """An original-layout checkpoint through diffusers' converter, with the base model's UNet config."""
        from diffusers import UNet2DConditionModel

        param = next(self.base.unet.parameters())
        unet = UNet2DConditionModel.from_single_file(
            str(path), config=str(self.base.source), subfolder="unet", torch_dtype=param.dtype
        )
        return unet.to(param.device)

    def _embedding(self, pipe: Any, ckpt: Checkpoint) -> None:
        try:
            pipe.load_textual_inversion(str(ckpt.parts["embedding"]), token=self.identifier)
        except ValueError as exc:
            if "already in tokenizer vocabulary" in str(exc):
                raise ConfigError(
                    f"data.identifier={self.identifier!r} is a word the tokenizer already knows, so "
                    f"{ckpt.path.name} cannot be loaded under it: set data.identifier to a new token, "
                    f"e.g. \"data.identifier='<{ckpt.token or 'sks'}>'\""
                ) from exc
            raise


def _load_into(module: torch.nn.Module, part: Path) -> None:
    """Load a folder's (``diffusion_pytorch_model*.safetensors``) or a file's weights into ``module``."""
    from safetensors.torch import load_file

    files = [part] if part.is_file() else sorted(part.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{part} holds no .safetensors weights: save with safe_serialization=True")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"{part} does not match the base model's {type(module).__name__} "
            f"({len(missing)} weights missing, e.g. {missing[:1]}; {len(unexpected)} unexpected, e.g. "
            f"{unexpected[:1]}): set model= to the base it was trained on"
        )
