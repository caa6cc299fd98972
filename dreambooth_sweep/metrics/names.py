"""Metric names that say which backbone scored them, so curves of different backbones never mix.

The DreamBooth paper's backbones — DINO ViT-S/16 for ``eval.dino_model`` and CLIP ViT-B/32 at 224 px
for ``eval.clip_model`` (and the ``tiny`` stand-ins of both) — keep the paper's names: ``eval/dino``,
``eval/pres``, ``eval/div_dino``, ``eval/mem_mean``/``mem_max``/``mem_ceiling``, ``eval/clip_i``,
``eval/clip_t``. Any other backbone gets a label ``<family>_<size><patch>[_<pixels>]`` (size from
the embedding width: ti s b l h g so400m, else ``w<width>p``; pixels only when not 224, CLIP/SigLIP
only) that replaces ``dino`` in a name that has it and is appended to every other name of its slot:

==========================  ================================================================
backbone                    names
==========================  ================================================================
DINO v1 ViT-S/16 (paper)    ``eval/dino``, ``eval/pres``, ``eval/div_dino``, ``eval/mem_max``
DINO v1 ViT-B/16            ``eval/dino_b16``, ``eval/pres_dino_b16``, ``eval/div_dino_b16``
DINOv2 ViT-S/14             ``eval/dinov2_s14``, ``eval/pres_dinov2_s14``, ``eval/mem_max_dinov2_s14``
CLIP ViT-B/32 (paper)       ``eval/clip_i``, ``eval/clip_t``
CLIP ViT-L/14 at 336 px     ``eval/clip_i_clip_l14_336``, ``eval/clip_t_clip_l14_336``
SigLIP B/16                 ``eval/clip_i_siglip_b16``, ``eval/clip_t_siglip_b16``
==========================  ================================================================

Settings that name a paper metric (``eval.objective.metric: eval/dino``, ``prompt_metric:
eval/clip_t``) follow the configured backbone through :meth:`MetricNames.resolve`. Plain Python (no
torch): the report and the sweeper can import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["SLOT_METRICS", "MetricNames", "backbone_label", "metric_key"]

# The metric bases each model slot produces (``mem`` expands to three statistics).
SLOT_METRICS: dict[str, tuple[str, ...]] = {
    "dino": ("dino", "pres", "div_dino", "mem_mean", "mem_max", "mem_ceiling"),
    "clip": ("clip_i", "clip_t"),
}

# (family, width, patch, pixels) of the paper's backbones; pixels None: not part of the identity.
_PAPER = {"dino": ("dino", 384, 16, None), "clip": ("clip", 768, 32, 224)}
_SIZES = {192: "ti", 384: "s", 768: "b", 1024: "l", 1152: "so400m", 1280: "h", 1536: "g"}
# DINO and DINOv2 read images at any size (the released checkpoints at 224 px): no pixels in the label.
_PIXELS_IN_LABEL = frozenset({"clip", "siglip", "siglip2"})


def backbone_label(slot: str, family: str, width: int, patch: int, pixels: int | None) -> str:
    """The label a backbone's metric names carry; ``""`` for the paper's backbone of ``slot``.

    Args:
        slot: "dino" or "clip".
        family: "dino" (DINO v1 ViT), "dinov2", "dinov2reg", "clip", "siglip" or "siglip2".
        width: the vision tower's embedding width (``hidden_size``).
        patch: its patch size in pixels.
        pixels: its input size (``image_size``); None when unknown.
    """
    if family not in _PIXELS_IN_LABEL:
        pixels = None
    if (family, width, patch, pixels) == _PAPER[slot]:
        return ""
    label = f"{family}_{_SIZES.get(width, f'w{width}p')}{patch}"
    return f"{label}_{pixels}" if pixels not in (None, 224) else label


def metric_key(base: str, label: str) -> str:
    """``eval/<base>`` of the paper's backbone, or the name with ``label`` (see the module doc)."""
    if not label:
        return f"eval/{base}"
    parts = base.split("_")
    if "dino" in parts:
        return "eval/" + "_".join(label if p == "dino" else p for p in parts)
    return f"eval/{base}_{label}"


@dataclass(frozen=True)
class MetricNames:
    """The names one suite's metrics are logged under, by the backbone labels of its two slots."""

    dino_label: str = ""
    clip_label: str = ""
    keys: Mapping[str, str] = field(init=False)

    def __post_init__(self) -> None:
        keys = {}
        for slot, label in (("dino", self.dino_label), ("clip", self.clip_label)):
            keys.update({f"eval/{base}": metric_key(base, label) for base in SLOT_METRICS[slot]})
        object.__setattr__(self, "keys", keys)

    def key(self, base: str) -> str:
        """The logged name of metric ``base`` ("dino", "clip_t", "mem_max", ...)."""
        return self.keys[f"eval/{base}"]

    def resolve(self, name: str) -> str:
        """A paper name (``eval/dino``) → this suite's name for it; any other name is returned as is."""
        return self.keys.get(name, name)
