"""Which family a saved LoRA file belongs to: our files carry it in their safetensors metadata, files
written elsewhere are judged by their key names. Evaluating a LoRA on another family's base model is
then a one-line error instead of a shape mismatch deep inside diffusers.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["FAMILY_METADATA_KEY", "file_family", "guess_lora_family", "tag_file"]

# Written into every LoRA file we save, so a file meant for one family never silently loads into another.
FAMILY_METADATA_KEY = "dreambooth_sweep.family"


def tag_file(path: Path, family: str) -> None:
    """Add the family to a safetensors file's metadata (the tensors and other metadata unchanged)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    metadata[FAMILY_METADATA_KEY] = family
    save_file(tensors, str(path), metadata=metadata)


def file_family(path: Path) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get(FAMILY_METADATA_KEY)
    except Exception:  # not a safetensors file: the loader will say what is wrong
        return None


def guess_lora_family(path: Path) -> tuple[str, ...] | None:
    """Families a LoRA file written elsewhere fits, from its key names (None: cannot tell)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except Exception:
        return None
    if any(k.startswith("transformer.single_transformer_blocks") for k in keys):
        return ("flux",)
    if any(k.startswith("transformer.") for k in keys):
        return ("sd3", "flux")
    if any(k.startswith(("text_encoder_2.", "lora_te2_")) for k in keys):
        return ("sdxl",)
    if any(k.startswith(("unet.", "lora_unet_")) for k in keys):
        return ("sd", "sdxl")
    return None
