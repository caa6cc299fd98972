"""Checkpoint files written the way other trainers write them (keys, metadata, names), for tests.

Key names follow the public formats: kohya's sd-scripts name a LoRA module after the diffusers module
path with dots as underscores (``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k``)
and store ``.lora_down.weight`` (rank × in), ``.lora_up.weight`` (out × rank) and ``.alpha``;
ai-toolkit writes the same keys on SD-1/2 with its ``training_info`` metadata; A1111 embeddings are
``{"string_to_param": {"*": vectors}, "name", "step"}``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

__all__ = ["a1111_embedding", "fake_kohya", "kohya_lora", "kohya_metadata"]

ATTN = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")  # fmt: skip


def kohya_metadata(step: int, epoch: int, rank: int, alpha: float, base: str = "sd_v1") -> dict[str, str]:
    return {
        "ss_steps": str(step),
        "ss_epoch": str(epoch),
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_base_model_version": base,
        "ss_output_name": "subject",
        "ss_network_module": "networks.lora",
    }


def kohya_lora(
    unet: torch.nn.Module,
    path: Path,
    *,
    rank: int = 4,
    alpha: float = 2.0,
    seed: int = 0,
    scale: float = 0.5,
    metadata: dict[str, str] | None = None,
) -> Path:
    """A kohya-format LoRA for every attention projection of ``unet`` (random, clearly non-zero)."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(ATTN):
            key = "lora_unet_" + name.replace(".", "_")
            state[f"{key}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=gen) * scale
            state[f"{key}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=gen) * scale
            state[f"{key}.alpha"] = torch.tensor(float(alpha))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)
    return path


def fake_kohya(path: Path, *, context: int = 768, metadata: dict[str, str] | None = None) -> Path:
    """A small kohya-format LoRA whose cross-attention expects ``context`` wide text states."""
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    state = {
        f"{key}.lora_down.weight": torch.zeros(2, context),
        f"{key}.lora_up.weight": torch.zeros(8, 2),
        f"{key}.alpha": torch.tensor(2.0),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)
    return path


def ai_toolkit_metadata(step: int, epoch: int) -> dict[str, str]:
    return {
        "name": "subject",
        "version": "1.0",
        "training_info": json.dumps({"step": step, "epoch": epoch}),
        "software": json.dumps({"name": "ai-toolkit", "repo": "https://github.com/ostris/ai-toolkit"}),
    }


def a1111_embedding(path: Path, vectors: torch.Tensor, *, step: int, name: str = "subject") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "string_to_token": {"*": 265},
            "string_to_param": {"*": vectors},
            "name": name,
            "step": step,
            "sd_checkpoint": "0123abcd",
            "sd_checkpoint_name": "base",
        },
        path,
    )
    return path
