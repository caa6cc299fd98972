"""Which base model a checkpoint was trained for, from its metadata or its tensor shapes.

Trainers record the base in their metadata (kohya ``ss_base_model_version``, the SAI model spec's
``modelspec.architecture``, ai-toolkit's copy of both); without it the shapes say it: the
cross-attention *context* width of the UNet's ``attn2.to_k`` (the text encoder's hidden size) is 768
on SD-1.x, 1024 on SD-2.x, 2048 on SDXL (two text encoders side by side), and a token embedding is as
wide as the text encoder. FLUX / SD3 LoRAs adapt a ``transformer`` instead of a ``unet``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["CONTEXT_FAMILIES", "context_dim", "describe", "family_from_keys", "family_from_metadata"]

CONTEXT_FAMILIES = {768: "SD-1.x", 1024: "SD-2.x", 2048: "SDXL", 4096: "FLUX/SD3"}

# kohya: attn2_to_k.lora_down.weight; diffusers/peft: attn2.to_k.lora_A.weight, attn2.to_k.lora.down.weight
# (older), attn2.processor.to_k_lora.down.weight (oldest); full weights: attn2.to_k.weight.
_TO_K = re.compile(
    r"attn2[._](?:processor[._])?to_k(?:_lora)?[._](?:lora_down|lora_A|lora[._]down|down|weight)"
)


def context_dim(shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    """The cross-attention context width the weights expect (the input width of ``attn2.to_k``)."""
    for key, shape in shapes.items():
        if _TO_K.search(key) and "lora_B" not in key and "lora_up" not in key and len(shape) >= 2:
            return int(shape[1])
    return None


def family_from_metadata(metadata: Mapping[str, str]) -> str | None:
    """The base family a trainer wrote into the file's metadata, if any."""
    text = " ".join(
        metadata.get(k, "") for k in ("ss_base_model_version", "modelspec.architecture", "ss_sd_model_name")
    ).lower()
    if not text.strip():
        return None
    for needle, family in (
        ("flux", "FLUX"),
        ("sd3", "SD3"),
        ("stable-diffusion-3", "SD3"),
        ("sdxl", "SDXL"),
        ("stable-diffusion-xl", "SDXL"),
        ("sd_v2", "SD-2.x"),
        ("stable-diffusion-v2", "SD-2.x"),
        ("sd_v1", "SD-1.x"),
        ("stable-diffusion-v1", "SD-1.x"),
    ):
        if needle in text:
            return family
    return None


def family_from_keys(keys: list[str], shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """The base family the key names and shapes point to (None: nothing telling)."""
    if any(k.startswith(("lora_te1_", "lora_te2_", "conditioner.embedders.1")) for k in keys) or any(
        k in ("clip_g", "clip_l") for k in keys
    ):
        return "SDXL"
    if any(k.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_")) for k in keys):
        return "FLUX"
    if any(k.startswith(("transformer.", "lora_transformer_")) for k in keys):
        return "FLUX/SD3"
    dim = context_dim(shapes)
    if dim is not None:
        return CONTEXT_FAMILIES.get(dim, f"a model with cross-attention width {dim}")
    return None


def describe(family: str | None, dim: int | None) -> str:
    """``SD-1.x (cross-attention width 768)``-style text for error lines."""
    if family and dim:
        return f"{family} (cross-attention width {dim})"
    return family or (f"cross-attention width {dim}" if dim else "an unknown base")
