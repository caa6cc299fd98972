"""Subject- and prompt-fidelity metrics for DreamBooth checkpoints.

What is measured (DreamBooth paper, Ruiz et al. 2023, and its public evaluation protocol):

- ``eval/dino``: mean cosine similarity of DINO ViT-S/16 embeddings over all generated x real pairs.
  The embedding is the CLS token of the last layer after the final LayerNorm
  (``last_hidden_state[:, 0]``, never ``pooler_output``), L2-normalised.
- ``eval/clip_i``: the same all-pairs mean with CLIP image embeddings.
- ``eval/clip_t``: mean raw cosine (not x100) between each image and the CLIP embedding of its prompt,
  scored with the identifier removed (see :func:`clip_t_prompt`).
- ``eval/pres`` (lower is better): DINO between images of the plain class prompt and the real
  subject, i.e. how far the class prior has drifted towards the subject.
- ``eval/div_dino`` (higher is better): 1 - mean pairwise DINO among images of the same prompt. The
  paper uses LPIPS; its weights are not available offline, hence the honest name.
- ``eval/mem_mean`` / ``eval/mem_max``: each sample's DINO to its nearest training image, averaged
  and maximised; ``eval/mem_ceiling`` is the same statistic of the real images against each other,
  the level at which samples look as alike to the training set as the photos are to one another.

Models load by hub id, local directory or ``"tiny"`` (random weights built offline), once per
process, and images are preprocessed with PIL + numpy from the model's ``preprocessor_config.json``
(no torchvision). :class:`MetricSuite` is what the training loop uses; the ``*_score`` functions and
the command line (``python -m dreambooth_sweep.metrics --help``) score lists or folders of images.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import socket
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from dreambooth_sweep.config import ConfigError
from dreambooth_sweep.objective import BestTracker, sweet_spot_score
from dreambooth_sweep.tiny import TINY_ID, ensure_tiny

__all__ = [
    "DEFAULT_CLIP_MODEL",
    "DEFAULT_DINO_MODEL",
    "IMAGE_EXTENSIONS",
    "METRICS",
    "BestTracker",
    "ClipEncoder",
    "DinoEncoder",
    "ImagePreprocessor",
    "MetricSuite",
    "clear_model_cache",
    "clip_i_score",
    "clip_t_prompt",
    "clip_t_score",
    "dino_score",
    "div_dino_score",
    "load_clip",
    "load_dino",
    "load_image_folder",
    "main",
    "mean_cosine",
    "mean_pairwise_cosine",
    "memorisation",
    "nearest_cosine",
    "pres_score",
    "resolve_model_source",
    "sweet_spot_score",
]

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
DEFAULT_DINO_MODEL = "facebook/dino-vits16"
METRICS = ("dino", "clip_i", "clip_t", "pres", "div", "mem")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

_DINO_METRICS = frozenset({"dino", "pres", "div", "mem"})
_CLIP_METRICS = frozenset({"clip_i", "clip_t"})
_REAL_METRICS = frozenset({"dino", "clip_i", "pres", "mem"})  # metrics that compare with the subject photos
_LABELS = {"clip": "CLIP", "dino": "DINO"}

# Used only when a model folder has no preprocessor_config.json: the settings of the default models.
_FALLBACK_PREPROCESSING: dict[str, dict[str, Any]] = {
    "clip": {
        "image_processor_type": "CLIPImageProcessor",
        "size": {"shortest_edge": 224},
        "crop_size": {"height": 224, "width": 224},
        "do_center_crop": True,
        "resample": 3,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    },
    "dino": {
        "image_processor_type": "ViTImageProcessor",
        "size": {"height": 224, "width": 224},
        "do_center_crop": False,
        "resample": 2,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
    },
}

_T = TypeVar("_T")


# --------------------------------------------------------------------------------------------------
# Image preprocessing (PIL + numpy; mirrors transformers' PIL image-processor backend)
# --------------------------------------------------------------------------------------------------


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of ``image``; transparency is composited onto white, as transformers does."""
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _parse_size(size: Any, default_to_square: bool, what: str) -> int | tuple[int, int]:
    """Size entry of a preprocessor config → shortest edge (int) or fixed (height, width)."""
    if isinstance(size, int):
        # Legacy configs store a bare int; CLIP reads it as the shortest edge, ViT as a square.
        return (size, size) if default_to_square else size
    if isinstance(size, Sequence) and len(size) == 2:
        return int(size[0]), int(size[1])
    if isinstance(size, Mapping):
        if "height" in size and "width" in size:
            return int(size["height"]), int(size["width"])
        if "shortest_edge" in size and "longest_edge" not in size:
            return int(size["shortest_edge"])
    raise ConfigError(
        f"unsupported {what} {size!r} in preprocessor_config.json: use an int, {{height, width}} or {{shortest_edge}}"
    )


@dataclass(frozen=True)
class ImagePreprocessor:
    """Resize → center crop → rescale → normalise, like transformers' CLIP/ViT image processors.

    Attributes:
        size: shortest edge (int, aspect kept) or fixed (height, width); None skips resizing.
        crop_size: (height, width) of the center crop; None skips cropping.
        resample: PIL resampling filter (2 bilinear, 3 bicubic, ...).
        rescale_factor: multiplier to bring 0..255 to 0..1; None keeps the raw values.
        mean, std: per-channel normalisation; None skips it.
    """

    size: int | tuple[int, int] | None = 224
    crop_size: tuple[int, int] | None = None
    resample: int = Image.Resampling.BILINEAR
    rescale_factor: float | None = 1 / 255
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ImagePreprocessor:
        """Build from a ``preprocessor_config.json`` dict (current or legacy feature-extractor format).

        Defaults for missing keys follow transformers' classes: CLIP processors read a bare int size
        as the shortest edge, center crop and resample bicubic; others (ViT) resize to a square,
        bilinear, without a crop.
        """
        kind = str(config.get("image_processor_type") or config.get("feature_extractor_type") or "")
        is_clip = "CLIP" in kind
        default_to_square = bool(config.get("default_to_square", not is_clip))
        size = None
        if config.get("do_resize", True):
            size = _parse_size(config.get("size", 224), default_to_square, "size")
        crop = None
        if config.get("do_center_crop", is_clip):
            parsed = _parse_size(config.get("crop_size", 224), True, "crop_size")
            assert isinstance(parsed, tuple)  # default_to_square=True always gives a pair
            crop = parsed
        default_resample = Image.Resampling.BICUBIC if is_clip else Image.Resampling.BILINEAR
        rescale = float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else None
        mean = std = None
        if config.get("do_normalize", True):
            # transformers' class defaults when a config leaves them out: OpenAI CLIP stats, or 0.5.
            mean = tuple(
                config.get("image_mean")
                or (_FALLBACK_PREPROCESSING["clip"]["image_mean"] if is_clip else [0.5] * 3)
            )
            std = tuple(
                config.get("image_std")
                or (_FALLBACK_PREPROCESSING["clip"]["image_std"] if is_clip else [0.5] * 3)
            )
        return cls(
            size=size,
            crop_size=crop,
            resample=int(config.get("resample", default_resample)),
            rescale_factor=rescale,
            mean=mean,
            std=std,
        )

    def _resized(self, image: Image.Image) -> Image.Image:
        if self.size is None:
            return image
        width, height = image.size
        if isinstance(self.size, int):
            # Same arithmetic as transformers (and torchvision): the long side is truncated, not rounded.
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = self.size, int(self.size * long / short)
            new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
        else:
            new_h, new_w = self.size
        if (new_w, new_h) == (width, height):
            return image
        return image.resize((new_w, new_h), resample=self.resample)

    def array(self, image: Image.Image) -> np.ndarray:
        """One image → float32 array of shape (3, H, W)."""
        pixels = np.asarray(self._resized(_to_rgb(image)))
        if self.crop_size is not None:
            pixels = _center_crop(pixels, *self.crop_size)
        out = pixels.astype(np.float32)
        if self.rescale_factor is not None:
            out *= np.float32(self.rescale_factor)
        if self.mean is not None and self.std is not None:
            out = (out - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(out.transpose(2, 0, 1))

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """A batch of PIL images → ``pixel_values`` tensor of shape (N, 3, H, W)."""
        return torch.from_numpy(np.stack([self.array(image) for image in images]))


def _center_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Center crop an (H, W, C) array; an image smaller than the crop is zero-padded around (as HF does)."""
    h, w = pixels.shape[:2]
    if h < height or w < width:
        canvas = np.zeros((max(h, height), max(w, width), pixels.shape[2]), pixels.dtype)
        top, left = math.ceil((canvas.shape[0] - h) / 2), math.ceil((canvas.shape[1] - w) / 2)
        canvas[top : top + h, left : left + w] = pixels
        pixels, h, w = canvas, canvas.shape[0], canvas.shape[1]
    top, left = (h - height) // 2, (w - width) // 2
    return pixels[top : top + height, left : left + width]


# --------------------------------------------------------------------------------------------------
# Model loading: hub id, local dir or "tiny"; once per process; never hangs when offline
# --------------------------------------------------------------------------------------------------


def resolve_model_source(kind: str, name: str, cache_dir: str | os.PathLike[str] = ".cache") -> str:
    """Local directory or hub id to load a ``kind`` ("clip" | "dino") metric model from.

    ``"tiny"`` builds (once, cached under ``cache_dir``) a random-weight model offline.
    """
    name = str(name).strip()
    label = _LABELS.get(kind, kind)
    if not name:
        raise ConfigError(f"empty {label} model name: pass a hub id, a local dir, or 'tiny'")
    if name == TINY_ID:
        return str(ensure_tiny(kind, cache_dir))
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        # Clearly a path, and not there: do not let it fall through to a hub request.
        raise ConfigError(
            f"cannot load {label} model {name!r}: no such directory; pass a hub id, a local dir, or 'tiny'"
        )
    return name


def _env_true(var: str) -> bool:
    return os.environ.get(var, "").strip().lower() in {"1", "on", "yes", "true"}


def _offline() -> bool:
    """Hugging Face offline mode, read at call time (the hub library reads it at import)."""
    if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
        return True
    from huggingface_hub import constants

    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


@functools.lru_cache(maxsize=1)
def _hub_unreachable_reason() -> str | None:
    """None if the hub answers a TCP connect quickly, else why not.

    The hub client retries a dead connection for about a minute per file; this probe turns that into
    an immediate, clear error. Behind a proxy the client decides, so no probe is made.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=3):
            return None
    except OSError as exc:
        return f"{host} is unreachable ({exc.__class__.__name__})"


def _local_first(load: Callable[..., _T], source: str) -> _T:
    """``load(source)`` from a local dir, else from the HF cache, else from the hub if reachable."""
    if Path(source).is_dir():
        return load(source)
    try:
        # Cached files need no network round-trip (and work offline).
        return load(source, local_files_only=True)
    except OSError:
        if _offline():
            raise OSError("not in the local Hugging Face cache and HF_HUB_OFFLINE is set") from None
        reason = _hub_unreachable_reason()
        if reason is not None:
            raise OSError(f"not in the local Hugging Face cache and {reason}") from None
    return load(source)


def _read_preprocessor_config(kind: str, source: str) -> dict[str, Any]:
    """The model's preprocessor_config.json, or the default model's settings when it has none."""
    if Path(source).is_dir():
        path = Path(source) / "preprocessor_config.json"
        return json.loads(path.read_text()) if path.is_file() else dict(_FALLBACK_PREPROCESSING[kind])
    from huggingface_hub import errors, hf_hub_download

    def fetch(repo: str, **kwargs: Any) -> str:
        return hf_hub_download(repo, "preprocessor_config.json", **kwargs)

    try:
        return json.loads(Path(_local_first(fetch, source)).read_text())
    except errors.EntryNotFoundError as exc:
        # "Not in the cache" (Local...) is an error; "not in the repository" means use the defaults.
        if isinstance(exc, getattr(errors, "LocalEntryNotFoundError", ())):
            raise
        return dict(_FALLBACK_PREPROCESSING[kind])


def _features(output: Any) -> torch.Tensor:
    """Projected embeddings from ``get_*_features``.

    transformers < 5 returns the tensor; 5.x returns a ``BaseModelOutputWithPooling`` whose
    ``pooler_output`` holds the projected embedding.
    """
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    raise TypeError(f"unexpected CLIP feature output {type(output).__name__}")


class _ImageEncoder:
    """A frozen vision model plus its preprocessing; subclasses say which features to take."""

    kind = ""

    def __init__(
        self,
        name: str,
        model: torch.nn.Module,
        preprocess: ImagePreprocessor,
        device: str | torch.device = "cpu",
    ) -> None:
        self.name = name
        self.device = torch.device(device)
        self.model = model.float().to(self.device).eval().requires_grad_(False)
        self.preprocess = preprocess

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> torch.Tensor:
        """L2-normalised embeddings, shape (N, D), float32 on the CPU."""
        if not images:
            raise ValueError(f"no images to embed with the {_LABELS[self.kind]} model")
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                pixels = self.preprocess(images[start : start + batch_size]).to(self.device)
                chunks.append(self._image_features(pixels).float().cpu())
        return F.normalize(torch.cat(chunks), dim=-1)


class DinoEncoder(_ImageEncoder):
    """DINO ViT: CLS token of ``last_hidden_state`` (after the final LayerNorm), never the pooler."""

    kind = "dino"

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).last_hidden_state[:, 0]


class ClipEncoder(_ImageEncoder):
    """CLIP image and text towers with their projections (``get_image_features``/``get_text_features``)."""

    kind = "clip"

    def __init__(
        self,
        name: str,
        model: torch.nn.Module,
        preprocess: ImagePreprocessor,
        tokenizer: Any,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(name, model, preprocess, device)
        self.tokenizer = tokenizer
        limit = getattr(getattr(model.config, "text_config", None), "max_position_embeddings", 77)
        tok_limit = getattr(tokenizer, "model_max_length", limit) or limit
        self.max_length = int(min(limit, tok_limit))

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _features(self.model.get_image_features(pixel_values=pixel_values))

    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """L2-normalised text embeddings, shape (N, D); prompts beyond 77 tokens are truncated like CLIP's."""
        if not texts:
            raise ValueError("no texts to embed with the CLIP model")
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                tokens = self.tokenizer(
                    list(texts[start : start + batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                out = self.model.get_text_features(
                    input_ids=tokens["input_ids"].to(self.device),
                    attention_mask=tokens["attention_mask"].to(self.device),
                )
                chunks.append(_features(out).float().cpu())
        return F.normalize(torch.cat(chunks), dim=-1)


def _complete(loaded: tuple[Any, Mapping[str, Any]], expected: str) -> Any:
    """The model of ``from_pretrained(..., output_loading_info=True)``, if no weight was left random.

    transformers loads a checkpoint of another architecture (a CLIP id given as the DINO model) with
    only a warning, leaving the weights random; a metric on random weights must fail instead.
    """
    model, info = loaded
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise ValueError(f"not a {expected} checkpoint: {len(missing)} weights missing (e.g. {missing[0]})")
    return model


def _build_dino(source: str, device: str) -> DinoEncoder:
    from transformers import ViTModel

    def load(src: str, **kwargs: Any) -> Any:
        return ViTModel.from_pretrained(src, add_pooling_layer=False, output_loading_info=True, **kwargs)

    model = _complete(_local_first(load, source), "ViT (DINO)")
    preprocess = ImagePreprocessor.from_config(_read_preprocessor_config("dino", source))
    return DinoEncoder(source, model, preprocess, device)


def _build_clip(source: str, device: str) -> ClipEncoder:
    from transformers import AutoTokenizer, CLIPModel

    def load(src: str, **kwargs: Any) -> Any:
        return CLIPModel.from_pretrained(src, output_loading_info=True, **kwargs)

    model = _complete(_local_first(load, source), "CLIP")
    tokenizer = _local_first(AutoTokenizer.from_pretrained, source)
    preprocess = ImagePreprocessor.from_config(_read_preprocessor_config("clip", source))
    return ClipEncoder(source, model, preprocess, tokenizer, device)


_BUILDERS: dict[str, Callable[[str, str], _ImageEncoder]] = {"clip": _build_clip, "dino": _build_dino}
_MODELS: dict[tuple[str, str, str], _ImageEncoder] = {}
_MODELS_LOCK = threading.Lock()


def _one_line(exc: BaseException, limit: int = 300) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else exc.__class__.__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _load(
    kind: str, name: str, cache_dir: str | os.PathLike[str], device: str | torch.device
) -> _ImageEncoder:
    source = resolve_model_source(kind, name, cache_dir)
    device_str = str(torch.device(device))
    key = (kind, source, device_str)
    with _MODELS_LOCK:  # one load per (model, device), even with threads
        encoder = _MODELS.get(key)
        if encoder is None:
            try:
                encoder = _BUILDERS[kind](source, device_str)
            except ConfigError:
                raise
            except Exception as exc:
                raise ConfigError(
                    f"cannot load {_LABELS[kind]} model {name!r}: {_one_line(exc)}; pass a hub id, a local dir, or 'tiny'"
                ) from exc
            _MODELS[key] = encoder
    return encoder


def load_dino(
    name: str = DEFAULT_DINO_MODEL,
    *,
    cache_dir: str | os.PathLike[str] = ".cache",
    device: str | torch.device = "cpu",
) -> DinoEncoder:
    """The DINO encoder for ``name`` (hub id, local dir or "tiny"), loaded once per process and device.

    Raises:
        ConfigError: one line, when the model cannot be found or loaded.
    """
    encoder = _load("dino", name, cache_dir, device)
    assert isinstance(encoder, DinoEncoder)
    return encoder


def load_clip(
    name: str = DEFAULT_CLIP_MODEL,
    *,
    cache_dir: str | os.PathLike[str] = ".cache",
    device: str | torch.device = "cpu",
) -> ClipEncoder:
    """The CLIP encoder for ``name`` (hub id, local dir or "tiny"), loaded once per process and device.

    Raises:
        ConfigError: one line, when the model cannot be found or loaded.
    """
    encoder = _load("clip", name, cache_dir, device)
    assert isinstance(encoder, ClipEncoder)
    return encoder


def clear_model_cache() -> None:
    """Forget every loaded metric model (frees their memory once nothing else holds them)."""
    with _MODELS_LOCK:
        _MODELS.clear()


# --------------------------------------------------------------------------------------------------
# Metrics on embeddings (all inputs L2-normalised, shape (N, D))
# --------------------------------------------------------------------------------------------------


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


def _div_from_groups(groups: Sequence[torch.Tensor]) -> float | None:
    """1 - mean (over groups with two or more images) of the mean within-group pairwise cosine."""
    per_group = [s for s in (mean_pairwise_cosine(g) for g in groups) if s is not None]
    return 1.0 - float(np.mean(per_group)) if per_group else None


def _memorisation(generated: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
    nearest = nearest_cosine(generated, real)
    out = {"mem_mean": float(nearest.mean()), "mem_max": float(nearest.max())}
    if real.shape[0] >= 2:
        out["mem_ceiling"] = float(nearest_cosine(real, real, exclude_self=True).mean())
    return out


# --------------------------------------------------------------------------------------------------
# Metrics on images
# --------------------------------------------------------------------------------------------------


def clip_t_prompt(prompt: str, identifier: str | None) -> str:
    """The text CLIP-T scores ``prompt`` with: the identifier removed, whitespace cleaned.

    The identifier (``sks``, ``aawxbc``, ``<cat-toy>``) is a rare token that means nothing to CLIP,
    so keeping it only adds noise; ``"a sks dog in the jungle"`` is scored as ``"a dog in the jungle"``.
    Whole-word, case-insensitive matches only (CLIP lower-cases text): ``"sksdog"`` is left alone.
    """
    text = prompt
    if identifier and identifier.strip():
        pattern = rf"(?<!\w){re.escape(identifier.strip())}(?!\w)"
        text = re.sub(pattern, " ", text, flags=re.IGNORECASE)
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"\s+([,.;:!?])", r"\1", text)  # "a sks, dog" → "a, dog", not "a , dog"


def _dino(
    model: str | DinoEncoder, cache_dir: str | os.PathLike[str], device: str | torch.device
) -> DinoEncoder:
    return model if isinstance(model, DinoEncoder) else load_dino(model, cache_dir=cache_dir, device=device)


def _clip(
    model: str | ClipEncoder, cache_dir: str | os.PathLike[str], device: str | torch.device
) -> ClipEncoder:
    return model if isinstance(model, ClipEncoder) else load_clip(model, cache_dir=cache_dir, device=device)


def _require_images(images: Sequence[Image.Image], what: str) -> None:
    if not images:
        raise ValueError(f"no {what} images given")


def dino_score(
    generated: Sequence[Image.Image],
    real: Sequence[Image.Image],
    *,
    model: str | DinoEncoder = DEFAULT_DINO_MODEL,
    cache_dir: str | os.PathLike[str] = ".cache",
    device: str | torch.device = "cpu",
) -> float:
    """DINO: mean cosine of DINO CLS embeddings over all generated x real pairs (higher: more like the subject)."""
    _require_images(generated, "generated")
    _require_images(real, "real")
    encoder = _dino(model, cache_dir, device)
    return mean_cosine(encoder.embed_images(generated), encoder.embed_images(real))


def clip_i_score(
    generated: Sequence[Image.Image],
    real: Sequence[Image.Image],
    *,
    model: str | ClipEncoder = DEFAULT_CLIP_MODEL,
    cache_dir: str | os.PathLike[str] = ".cache",
    device: str | torch.device = "cpu",
) -> float:
    """CLIP-I: mean cosine of CLIP image embeddings over all generated x real pairs."""
    _require_images(generated, "generated")
    _require_images(real, "real")
    encoder = _clip(model, cache_dir, device)
    return mean_cosine(encoder.embed_images(generated), encoder.embed_images(real))


def clip_t_score(
    images: Sequence[Image.Image],
    prompts: str | Sequence[str],
    *,
    identifier: str | None = None,
    model: str | ClipEncoder = DEFAULT_CLIP_MODEL,
    cache_dir: str | os.PathLike[str] = ".cache",
    device: str | torch.device = "cpu",
) -> float:
    """CLIP-T: mean raw cosine (not x100) between each image and its prompt.

    Args:
        images: generated images.
        prompts: one prompt for all images, or one per image.
        identifier: removed from each prompt before scoring (see :func:`clip_t_prompt`).
    """
    _require_images(images, "generated")
    prompt_list = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
    if len(prompt_list) != len(images):
        raise ValueError(f"{len(images)} images but {len(prompt_list)} prompts")
    encoder = _clip(model, cache_dir, device)
    texts = [clip_t_prompt(p, identifier) for p in prompt_list]
    return float((encoder.embed_images(images) * encoder.embed_texts(texts)).sum(dim=-1).mean())


def pres_score(
    class_images: Sequence[Image.Image],
    real: Sequence[Image.Image],
    *,
    model: str | DinoEncoder = DEFAULT_DINO_MODEL,
    cache_dir: str | os.PathLike[str] = ".cache",
    device: str | torch.device = "cpu",
) -> float:
    """PRES (lower is better): mean DINO between images of the plain class prompt and the real subject."""
    return dino_score(class_images, real, model=model, cache_dir=cache_dir, device=device)


def div_dino_score(
    groups: Mapping[str, Sequence[Image.Image]] | Sequence[Sequence[Image.Image]],
    *,
    model: str | DinoEncoder = DEFAULT_DINO_MODEL,
    cache_dir: str | os.PathLike[str] = ".cache",
    device: str | torch.device = "cpu",
) -> float:
    """DIV-DINO (higher is better): 1 - mean pairwise DINO among images of the same prompt.

    Pairs are formed within a prompt only; each prompt's mean counts once. Prompts with fewer than
    two images are skipped.

    Raises:
        ValueError: no prompt has two or more images.
    """
    encoder = _dino(model, cache_dir, device)
    image_groups = list(groups.values()) if isinstance(groups, Mapping) else list(groups)
    embeddings = [encoder.embed_images(g) for g in image_groups if len(g) >= 2]
    value = _div_from_groups(embeddings)
    if value is None:
        raise ValueError("diversity needs a prompt with at least two images")
    return value


def memorisation(
    generated: Sequence[Image.Image],
    train: Sequence[Image.Image],
    *,
    model: str | DinoEncoder = DEFAULT_DINO_MODEL,
    cache_dir: str | os.PathLike[str] = ".cache",
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Nearest-training-image DINO of each sample: ``mem_mean``, ``mem_max`` and ``mem_ceiling``.

    ``mem_ceiling`` is the mean, over training images, of the DINO to the nearest *other* training
    image (absent with a single training image): samples at or above it are as close to the training
    set as its photos are to each other.
    """
    _require_images(generated, "generated")
    _require_images(train, "training")
    encoder = _dino(model, cache_dir, device)
    return _memorisation(encoder.embed_images(generated), encoder.embed_images(train))


def load_image_folder(folder: str | os.PathLike[str]) -> dict[str, Image.Image]:
    """Images of a folder (not recursive), by file name in sorted order, RGB, EXIF rotation applied.

    Raises:
        ConfigError: the folder does not exist, holds no images, or an image cannot be read.
    """
    path = Path(folder)
    if not path.is_dir():
        raise ConfigError(
            f"image folder {str(folder)!r} does not exist: pass a directory of jpg/png/webp images"
        )
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ConfigError(
            f"no images in {str(folder)!r}: expected files ending in {', '.join(IMAGE_EXTENSIONS)}"
        )
    images = {}
    for file in files:
        try:
            with Image.open(file) as im:
                # Phone photos store rotation in EXIF; the pixels must be upright before embedding.
                images[file.name] = _to_rgb(ImageOps.exif_transpose(im))
        except OSError as exc:
            raise ConfigError(f"cannot read image {str(file)!r}: {_one_line(exc)}") from exc
    return images


# --------------------------------------------------------------------------------------------------
# The suite used during training
# --------------------------------------------------------------------------------------------------


def _normalise_metric_names(names: Sequence[str]) -> tuple[str, ...]:
    out: list[str] = []
    for raw in names:
        name = str(raw).strip().lower()
        if name not in METRICS:
            raise ConfigError(f"unknown metric {raw!r} in eval.metrics: choose from {', '.join(METRICS)}")
        if name not in out:
            out.append(name)
    return tuple(out)


class MetricSuite:
    """The configured metrics, with the subject photos embedded once.

    Build it once per run; call :meth:`compute` at every evaluation step. Only the models the
    requested metrics need are loaded (no CLIP when only DINO metrics are asked for).

    Args:
        config: an ``EvalConfig``-like object with ``metrics`` (names from :data:`METRICS`),
            ``clip_model`` and ``dino_model``.
        real_images: the subject's training photos (they do not change, so their embeddings are cached).
        cache_dir: where ``"tiny"`` models are built.
        device: where the metric models run.
        batch_size: images per forward pass.
    """

    def __init__(
        self,
        config: Any,
        real_images: Sequence[Image.Image],
        *,
        cache_dir: str | os.PathLike[str] = ".cache",
        device: str | torch.device = "cpu",
        batch_size: int = 32,
    ) -> None:
        self.metrics = _normalise_metric_names(list(getattr(config, "metrics", METRICS)))
        self.batch_size = batch_size
        wanted = set(self.metrics)
        if wanted & _REAL_METRICS and not real_images:
            raise ConfigError(
                f"metrics {sorted(wanted & _REAL_METRICS)} need the subject's real images, and none were given"
            )
        self.dino: DinoEncoder | None = None
        self.clip: ClipEncoder | None = None
        if wanted & _DINO_METRICS:
            self.dino = load_dino(
                getattr(config, "dino_model", DEFAULT_DINO_MODEL), cache_dir=cache_dir, device=device
            )
        if wanted & _CLIP_METRICS:
            self.clip = load_clip(
                getattr(config, "clip_model", DEFAULT_CLIP_MODEL), cache_dir=cache_dir, device=device
            )
        self._real_dino: torch.Tensor | None = None
        self._real_clip: torch.Tensor | None = None
        if self.dino is not None and wanted & {"dino", "pres", "mem"}:
            self._real_dino = self.dino.embed_images(real_images, batch_size)
        if self.clip is not None and "clip_i" in wanted:
            self._real_clip = self.clip.embed_images(real_images, batch_size)

    def compute(
        self,
        samples: Mapping[str, Sequence[Image.Image]],
        class_samples: Sequence[Image.Image] = (),
        identifier: str | None = None,
    ) -> dict[str, float]:
        """Score one checkpoint's samples.

        Args:
            samples: prompt → its images (one per seed), prompts as given to the pipeline.
            class_samples: images of the plain class prompt, for PRES; empty skips PRES.
            identifier: the subject's rare token, removed from prompts for CLIP-T.

        Returns:
            ``eval/``-prefixed metrics among ``dino, clip_i, clip_t, pres, div_dino, mem_mean, mem_max,
            mem_ceiling``. A metric that is undefined for the input (DIV without a prompt with two
            images, the ceiling with one real image, PRES without class samples) is left out.
        """
        prompts = [p for p, images in samples.items() if images]
        flat = [image for p in prompts for image in samples[p]]
        wanted = set(self.metrics)
        if not flat and wanted - {"pres"}:
            raise ValueError("no generated samples to score")
        out: dict[str, float] = {}

        gen_dino = None
        if self.dino is not None and wanted & {"dino", "div", "mem"}:
            gen_dino = self.dino.embed_images(flat, self.batch_size)
        gen_clip = None
        if self.clip is not None:
            gen_clip = self.clip.embed_images(flat, self.batch_size)

        if "dino" in wanted:
            out["eval/dino"] = mean_cosine(gen_dino, self._real_dino)
        if "clip_i" in wanted:
            out["eval/clip_i"] = mean_cosine(gen_clip, self._real_clip)
        if "clip_t" in wanted:
            assert self.clip is not None and gen_clip is not None
            texts = self.clip.embed_texts([clip_t_prompt(p, identifier) for p in prompts])
            owner = torch.tensor([i for i, p in enumerate(prompts) for _ in samples[p]])
            out["eval/clip_t"] = float((gen_clip * texts[owner]).sum(dim=-1).mean())
        if "pres" in wanted and class_samples:
            assert self.dino is not None and self._real_dino is not None
            out["eval/pres"] = mean_cosine(
                self.dino.embed_images(class_samples, self.batch_size), self._real_dino
            )
        if "div" in wanted:
            assert gen_dino is not None
            groups, start = [], 0
            for p in prompts:
                groups.append(gen_dino[start : start + len(samples[p])])
                start += len(samples[p])
            div = _div_from_groups(groups)
            if div is not None:
                out["eval/div_dino"] = div
        if "mem" in wanted:
            out.update({f"eval/{k}": v for k, v in _memorisation(gen_dino, self._real_dino).items()})
        return out


# --------------------------------------------------------------------------------------------------
# The sweet-spot objective
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def _read_prompt_map(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read prompts file {str(path)!r}: {_one_line(exc)}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ConfigError(
            f"prompts file {str(path)!r} must be a JSON object mapping image file name to prompt"
        )
    return data


def _group_by_prompt(
    images: Mapping[str, Image.Image], prompt_map: Mapping[str, str] | None, prompt: str | None
) -> dict[str, list[Image.Image]] | None:
    """prompt → images; None when no prompts are known at all."""
    if prompt_map is None and prompt is None:
        return None
    groups: dict[str, list[Image.Image]] = {}
    for filename, image in images.items():
        text = (prompt_map or {}).get(filename, prompt)
        if text is None:
            raise ConfigError(f"no prompt for {filename!r}: add it to the prompts file or pass --prompt")
        groups.setdefault(text, []).append(image)
    return groups


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dreambooth_sweep.metrics",
        description="Score a folder of generated images against the subject's photos; prints a JSON dict.",
    )
    parser.add_argument("--generated", required=True, help="folder of generated images")
    parser.add_argument("--real", required=True, help="folder of the subject's real (training) photos")
    parser.add_argument(
        "--prompts-file", help="JSON file name → prompt (default: prompts.json in --generated, if present)"
    )
    parser.add_argument(
        "--prompt", help="prompt of every generated image without an entry in the prompts file"
    )
    parser.add_argument(
        "--identifier", default="sks", help="rare token removed from prompts for CLIP-T (default: sks)"
    )
    parser.add_argument("--class-images", help="folder of images of the plain class prompt (enables PRES)")
    parser.add_argument(
        "--metrics", help=f"comma-separated subset of {','.join(METRICS)} (default: all that apply)"
    )
    parser.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL, help="hub id, local dir, or 'tiny'")
    parser.add_argument("--dino-model", default=DEFAULT_DINO_MODEL, help="hub id, local dir, or 'tiny'")
    parser.add_argument(
        "--cache-dir", default=".cache", help="where 'tiny' models are built (default: .cache)"
    )
    parser.add_argument("--device", default="cpu", help="torch device for the metric models (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=32)
    return parser


def _run_cli(args: argparse.Namespace) -> dict[str, float]:
    generated = load_image_folder(args.generated)
    real = load_image_folder(args.real)
    class_images = list(load_image_folder(args.class_images).values()) if args.class_images else []
    prompts_file = Path(args.prompts_file) if args.prompts_file else Path(args.generated) / "prompts.json"
    if args.prompts_file and not prompts_file.is_file():
        raise ConfigError(f"prompts file {args.prompts_file!r} does not exist")
    prompt_map = _read_prompt_map(prompts_file) if prompts_file.is_file() else None
    groups = _group_by_prompt(generated, prompt_map, args.prompt)

    unavailable = {}
    if groups is None:
        unavailable.update(
            clip_t="no prompts (pass --prompt or a prompts file)", div="no prompts to group images by"
        )
    if not class_images:
        unavailable["pres"] = "no class images (pass --class-images)"
    if args.metrics:
        metrics = _normalise_metric_names([m for m in args.metrics.split(",") if m.strip()])
        for name in metrics:
            if name in unavailable:
                raise ConfigError(f"cannot compute {name}: {unavailable[name]}")
    else:
        metrics = tuple(m for m in METRICS if m not in unavailable)

    config = argparse.Namespace(metrics=metrics, clip_model=args.clip_model, dino_model=args.dino_model)
    suite = MetricSuite(
        config, list(real.values()), cache_dir=args.cache_dir, device=args.device, batch_size=args.batch_size
    )
    samples = groups if groups is not None else {"": list(generated.values())}
    return suite.compute(samples, class_images, identifier=args.identifier)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 with a one-line error on bad input)."""
    args = _parser().parse_args(argv)
    try:
        result = _run_cli(args)
    except (ConfigError, ValueError) as exc:
        print(f"error: {_one_line(exc, limit=500)}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
