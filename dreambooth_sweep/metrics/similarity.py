"""Cosine statistics on L2-normalised embeddings of shape (N, D): the arithmetic of every metric."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["diversity", "mean_cosine", "mean_pairwise_cosine", "memorisation", "nearest_cosine"]


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine over all pairs (i in a, j in b)."""
    return float((a @ b.T).mean())


def mean_pairwise_cosine(x: torch.Tensor) -> float | None:
    """Mean cosine over distinct pairs within ``x`` (i < j); None with fewer than two rows."""
    n = x.shape[0]
    if n < 2:
        return None
    sims = x @ x.T
    rows, cols = torch.triu_indices(n, n, offset=1)
    return float(sims[rows, cols].mean())


def nearest_cosine(
    queries: torch.Tensor, references: torch.Tensor, *, exclude_self: bool = False
) -> torch.Tensor:
    """For each query, the cosine to its most similar reference.

    With ``exclude_self`` (queries are the references), each row ignores itself: the nearest *other*.
    """
    sims = queries @ references.T
    if exclude_self:
        if references.shape[0] < 2:
            raise ValueError("the nearest other image needs at least two images")
        sims = sims.clone()
        sims.fill_diagonal_(-math.inf)
    return sims.max(dim=1).values


def diversity(groups: Sequence[torch.Tensor]) -> float | None:
    """1 - mean (over groups of two or more images, each once) of the mean within-group cosine."""
    per_group = [s for s in (mean_pairwise_cosine(g) for g in groups) if s is not None]
    return 1.0 - float(np.mean(per_group)) if per_group else None


def memorisation(generated: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
    """Each sample's cosine to its nearest training image: ``mem_mean``, ``mem_max``, ``mem_ceiling``.

    ``mem_ceiling`` is the mean, over training images, of the cosine to the nearest *other* training
    image (absent with a single training image): samples at or above it are as close to the training
    set as its photos are to each other.
    """
    nearest = nearest_cosine(generated, real)
    out = {"mem_mean": float(nearest.mean()), "mem_max": float(nearest.max())}
    if real.shape[0] >= 2:
        out["mem_ceiling"] = float(nearest_cosine(real, real, exclude_self=True).mean())
    return out
