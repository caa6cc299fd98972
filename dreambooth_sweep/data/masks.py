"""Masked loss: per-pixel weights from a mask, brought to the latents' resolution.

The dataset turns a mask (white = subject) into loss weights ``w = b + (1 - b) · m`` with ``b`` =
``data.mask_loss_weight`` and ``m`` in [0, 1]; the trainer averages them over each latent pixel's
footprint (area interpolation: 8×8 pixels for SD's VAE) and multiplies the per-element MSE with them
before the mean — kohya's masked loss, unnormalised, so a mostly-background photo weighs less.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["latent_weights"]


def latent_weights(
    masks: torch.Tensor | None, size: tuple[int, int], device: torch.device
) -> torch.Tensor | None:
    """N×1×H×W pixel weights → N×1×h×w at latent size ``size``; None stays None (no masks)."""
    if masks is None:
        return None
    return F.interpolate(masks.to(device, dtype=torch.float32), size=size, mode="area")
