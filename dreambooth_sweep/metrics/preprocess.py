"""How images reach a metric backbone: transformers' own image processors, PIL backend, no torchvision.

Two protocols exist for the DINO slot (``eval.dino_preprocess``):

- ``dino_eval`` (default): DINO's own evaluation transform, the one its k-NN and linear evaluations
  (and the DINOv2 repository's) use — resize the short side to 256 px bicubic, center crop 224 px,
  ImageNet mean/std. The DreamBooth paper scores DINO ViT-S/16 features; this is the transform those
  features are defined with, so it is the protocol the README's paper figures are compared under.
  A backbone whose input is smaller than 224 px (the tiny test models) keeps the same 256:224 ratio.
- ``model_config``: whatever the checkpoint's ``preprocessor_config.json`` says. For the hub's
  ``facebook/dino-vits16`` that is a legacy ``ViTFeatureExtractor`` file written by transformers'
  DINO conversion script with its defaults: a 224x224 bilinear resize of the whole image (aspect
  ratio not kept, no crop) and mean = std = 0.5 — not DINO's statistics.

The CLIP slot always follows the checkpoint's own file (CLIP's and SigLIP's are their papers').
Known difference to torchvision: an odd crop margin is split rounding down, where torchvision's
``CenterCrop`` rounds half to even — a one-pixel shift at most.
"""

from __future__ import annotations

from typing import Any

from dreambooth_sweep.config import DINO_PREPROCESS
from dreambooth_sweep.errors import ConfigError
from dreambooth_sweep.metrics.hub import local_first

__all__ = [
    "DINO_PREPROCESS",
    "describe_processor",
    "dino_eval_processor",
    "load_image_processor",
]

# DINO's evaluation transform (facebookresearch/dino eval_linear.py / eval_knn.py).
_DINO_CROP, _DINO_RESIZE = 224, 256
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_BICUBIC = 3


def dino_eval_processor(input_size: int | None = None) -> Any:
    """DINO's evaluation transform as a transformers image processor (``BitImageProcessorPil``).

    Args:
        input_size: the backbone's input size; only a size below 224 (a tiny model) changes the crop.
    """
    from transformers import BitImageProcessorPil

    crop = min(_DINO_CROP, int(input_size or _DINO_CROP))
    resize = round(crop * _DINO_RESIZE / _DINO_CROP)
    return BitImageProcessorPil(
        do_resize=True,
        size={"shortest_edge": resize},
        resample=_BICUBIC,
        do_center_crop=True,
        crop_size={"height": crop, "width": crop},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(_IMAGENET_MEAN),
        image_std=list(_IMAGENET_STD),
        do_convert_rgb=True,
    )


def load_image_processor(source: str) -> Any:
    """The checkpoint's own image processor (``AutoImageProcessor``, PIL backend).

    Raises:
        ConfigError: the checkpoint has no ``preprocessor_config.json``.
    """
    from transformers import AutoImageProcessor

    def load(src: str, **kwargs: Any) -> Any:
        # The PIL backend: the same pixels with or without torchvision installed.
        return AutoImageProcessor.from_pretrained(src, backend="pil", **kwargs)

    try:
        return local_first(load, source)
    except OSError as exc:
        if "preprocessor_config.json" in str(exc) or "image processor" in str(exc):
            raise ConfigError(
                f"model {source!r} has no preprocessor_config.json: add the file of the checkpoint it "
                "was converted from (for the DINO slot, eval.dino_preprocess=dino_eval needs none)"
            ) from exc
        raise


def describe_processor(processor: Any) -> dict[str, Any]:
    """The settings that decide the pixels, for the scoring record (``scoring.json``, MLflow params)."""

    def plain(value: Any) -> Any:
        if hasattr(value, "items"):
            return {k: v for k, v in value.items() if v is not None}
        if hasattr(value, "height") or hasattr(value, "shortest_edge"):  # transformers' SizeDict
            sides = ("height", "width", "shortest_edge", "longest_edge")
            return {k: getattr(value, k) for k in sides if getattr(value, k, None) is not None}
        if isinstance(value, (list, tuple)):
            return [float(v) for v in value]
        return value

    keys = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor")
    keys += ("do_normalize", "image_mean", "image_std")
    out = {"class": type(processor).__name__}
    for key in keys:
        value = getattr(processor, key, None)
        if value is not None:
            out[key] = int(value) if key == "resample" else plain(value)
    return out
