"""The frozen image (and text) backbones the fidelity metrics embed with, loaded once per process.

Which transformers class loads a checkpoint is read from its ``config.json`` (``model_type``), per
slot:

- ``eval.dino_model`` (DINO, PRES, DIV, memorisation): DINO v1 (``vit`` → ``ViTModel``, no pooler)
  and DINOv2 (``dinov2`` → ``Dinov2Model``, ``dinov2_with_registers``). The embedding is the CLS
  token of ``last_hidden_state`` — after the final LayerNorm, never ``pooler_output`` — L2-normalised.
- ``eval.clip_model`` (CLIP-I, CLIP-T): CLIP of any size (``clip`` → ``CLIPModel``), SigLIP
  (``siglip`` → ``SiglipModel``) and SigLIP2 (``siglip2`` → ``Siglip2Model``): the projected image
  and text embeddings of ``get_image_features`` / ``get_text_features``, L2-normalised. SigLIP's text
  tower is fed prompts padded to its full length, as it was trained.

Images are preprocessed by transformers' own image processor, PIL backend (see
:mod:`~dreambooth_sweep.metrics.preprocess`); texts by the checkpoint's own tokenizer.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from dreambooth_sweep.errors import ConfigError, one_line
from dreambooth_sweep.images import to_rgb
from dreambooth_sweep.metrics.hub import local_first, resolve_model_source
from dreambooth_sweep.metrics.names import backbone_label
from dreambooth_sweep.metrics.preprocess import (
    DINO_PREPROCESS,
    describe_processor,
    dino_eval_processor,
    load_image_processor,
)
from dreambooth_sweep.tiny import TINY_ID

__all__ = [
    "FAMILIES",
    "Encoder",
    "Family",
    "clear_model_cache",
    "load_encoder",
]


@dataclass(frozen=True)
class Family:
    """A backbone family: the slot it serves, its transformers class and how it reads text."""

    name: str  # label prefix: "dino", "dinov2", "clip", ...
    slot: str  # "dino" | "clip"
    title: str
    model_class: str
    text_padding: str | None = None  # "longest" (CLIP) | "max_length" (SigLIP); None: no text tower


# By config.json model_type.
FAMILIES: dict[str, Family] = {
    "vit": Family("dino", "dino", "DINO v1 (vit)", "ViTModel"),
    "dinov2": Family("dinov2", "dino", "DINOv2 (dinov2)", "Dinov2Model"),
    "dinov2_with_registers": Family(
        "dinov2reg", "dino", "DINOv2 with registers (dinov2_with_registers)", "Dinov2WithRegistersModel"
    ),
    "clip": Family("clip", "clip", "CLIP (clip)", "CLIPModel", "longest"),
    "siglip": Family("siglip", "clip", "SigLIP (siglip)", "SiglipModel", "max_length"),
    "siglip2": Family("siglip2", "clip", "SigLIP2 (siglip2)", "Siglip2Model", "max_length"),
}
_SLOT_LABELS = {"dino": "DINO", "clip": "CLIP"}


def _features(output: Any) -> torch.Tensor:
    """Projected embeddings from ``get_*_features`` (a tensor before transformers 5, an output after)."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    raise TypeError(f"unexpected feature output {type(output).__name__}")


class Encoder:
    """A frozen backbone with its image processor (and tokenizer): L2-normalised embeddings.

    Attributes:
        name: the model as configured (hub id, folder or "tiny"); ``source`` is what was loaded.
        family: the backbone family; ``label`` the metric-name label ("" for the paper's backbone).
        processor: the transformers image processor the pixels go through.
    """

    def __init__(
        self,
        name: str,
        source: str,
        family: Family,
        model: torch.nn.Module,
        processor: Any,
        *,
        tokenizer: Any = None,
        preprocess: str = "model_config",
        device: str | torch.device = "cpu",
    ) -> None:
        self.name, self.source, self.family = name, source, family
        self.device = torch.device(device)
        self.model = model.float().to(self.device).eval().requires_grad_(False)
        self.processor, self.tokenizer, self.preprocess = processor, tokenizer, preprocess
        vision = getattr(model.config, "vision_config", model.config)
        self.label = (
            ""
            if name == TINY_ID  # the tiny models stand in for the paper's backbones
            else backbone_label(
                family.slot,
                family.name,
                int(vision.hidden_size),
                int(vision.patch_size),
                getattr(vision, "image_size", None),
            )
        )
        self.max_length = 0
        if family.text_padding is not None:
            text_cfg = getattr(model.config, "text_config", None)
            limit = int(getattr(text_cfg, "max_position_embeddings", 77))
            self.max_length = int(min(limit, getattr(tokenizer, "model_max_length", limit) or limit))

    def pixel_inputs(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        """The processor's output for a batch (``pixel_values``; SigLIP2 adds its patch masks)."""
        rgb = [image if image.mode == "RGB" else to_rgb(image) for image in images]
        out = self.processor(images=rgb, return_tensors="pt")
        return {k: v.to(self.device) for k, v in out.items() if isinstance(v, torch.Tensor)}

    def image_features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Un-normalised embeddings of processed images."""
        if self.family.slot == "dino":
            return self.model(pixel_values=inputs["pixel_values"]).last_hidden_state[:, 0]
        return _features(self.model.get_image_features(**inputs))

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> torch.Tensor:
        """L2-normalised image embeddings, shape (N, D), float32 on the CPU."""
        if not images:
            raise ValueError(f"no images to embed with the {_SLOT_LABELS[self.family.slot]} model")
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                inputs = self.pixel_inputs(images[start : start + batch_size])
                chunks.append(self.image_features(inputs).float().cpu())
        return F.normalize(torch.cat(chunks), dim=-1)

    def text_inputs(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenised prompts, padded the way the family was trained; longer ones truncated."""
        tokens = self.tokenizer(
            list(texts),
            padding=self.family.text_padding,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {k: tokens[k].to(self.device) for k in ("input_ids", "attention_mask") if k in tokens}

    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """L2-normalised text embeddings, shape (N, D), float32 on the CPU."""
        if self.tokenizer is None:
            raise ValueError(f"{self.family.title} has no text tower")
        if not texts:
            raise ValueError("no texts to embed with the CLIP model")
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                inputs = self.text_inputs(texts[start : start + batch_size])
                chunks.append(_features(self.model.get_text_features(**inputs)).float().cpu())
        return F.normalize(torch.cat(chunks), dim=-1)

    def protocol(self) -> dict[str, Any]:
        """What decides this backbone's numbers, for the scoring record."""
        out: dict[str, Any] = {
            "model": self.name,
            "source": self.source,
            "family": self.family.name,
            "label": self.label,
            "preprocess": self.preprocess,
            "processor": describe_processor(self.processor),
        }
        if self.tokenizer is not None:
            out["text"] = {"padding": self.family.text_padding, "max_length": self.max_length}
        return out


def _family(slot: str, name: str, config: Any) -> Family:
    model_type = str(getattr(config, "model_type", "") or "")
    family = FAMILIES.get(model_type)
    if family is None or family.slot != slot:
        supported = ", ".join(f.title for f in FAMILIES.values() if f.slot == slot)
        raise ConfigError(
            f"eval.{slot}_model={name!r} is a {model_type or 'unknown'!r} checkpoint: the "
            f"{_SLOT_LABELS[slot]} metrics support {supported}"
        )
    return family


def _complete(loaded: tuple[Any, dict[str, Any]], expected: str) -> Any:
    """The model of ``from_pretrained(..., output_loading_info=True)``, if no weight was left random."""
    model, info = loaded
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise ValueError(f"not a {expected} checkpoint: {len(missing)} weights missing (e.g. {missing[0]})")
    return model


def _build(slot: str, name: str, source: str, preprocess: str, device: str) -> Encoder:
    import transformers

    config = local_first(transformers.AutoConfig.from_pretrained, source)
    family = _family(slot, name, config)
    model_class = getattr(transformers, family.model_class)
    extra = {"add_pooling_layer": False} if family.model_class == "ViTModel" else {}

    def load(src: str, **kwargs: Any) -> Any:
        return model_class.from_pretrained(src, output_loading_info=True, **extra, **kwargs)

    model = _complete(local_first(load, source), family.title)
    if slot == "dino" and preprocess == "dino_eval":
        processor = dino_eval_processor(getattr(config, "image_size", None))
    else:
        processor = load_image_processor(source)
    tokenizer = None
    if family.text_padding is not None:
        tokenizer = local_first(transformers.AutoTokenizer.from_pretrained, source)
    return Encoder(
        name, source, family, model, processor, tokenizer=tokenizer, preprocess=preprocess, device=device
    )


_MODELS: dict[tuple[str, str, str, str, bool], Encoder] = {}
_MODELS_LOCK = threading.Lock()


def load_encoder(
    slot: str,
    name: str,
    *,
    preprocess: str = "model_config",
    cache_dir: str | os.PathLike[str] = ".cache",
    device: str | torch.device = "cpu",
) -> Encoder:
    """The ``slot`` ("dino" | "clip") backbone ``name`` (hub id, local dir or "tiny"), once per process.

    Args:
        preprocess: ``dino_eval`` or ``model_config`` (DINO slot; the CLIP slot always uses the model's).

    Raises:
        ConfigError: one line, when the model cannot be found or loaded, or is of an unsupported family.
    """
    if preprocess not in DINO_PREPROCESS:
        raise ConfigError(
            f"eval.dino_preprocess={preprocess!r} is not a protocol: choose {' or '.join(DINO_PREPROCESS)}"
        )
    if slot != "dino":
        preprocess = "model_config"
    label = _SLOT_LABELS[slot]
    source = resolve_model_source(slot, name, cache_dir, label=label)
    device_str = str(torch.device(device))
    # "tiny" and the path of its folder load the same weights under different names (and labels).
    key = (slot, source, device_str, preprocess, str(name).strip() == TINY_ID)
    with _MODELS_LOCK:  # one load per (model, device, protocol), even with threads
        encoder = _MODELS.get(key)
        if encoder is None:
            try:
                encoder = _build(slot, str(name).strip(), source, preprocess, device_str)
            except ConfigError:
                raise
            except Exception as exc:
                raise ConfigError(
                    f"cannot load {label} model {name!r}: {one_line(exc, 300)}; "
                    "pass a hub id, a local dir, or 'tiny'"
                ) from exc
            _MODELS[key] = encoder
    return encoder


def clear_model_cache() -> None:
    """Forget every loaded metric model (frees their memory once nothing else holds them)."""
    with _MODELS_LOCK:
        _MODELS.clear()
