"""The configured metrics of one run, with the subject photos embedded once.

What is measured (DreamBooth paper, Ruiz et al. 2023, and its evaluation protocol); names as logged
with the paper's backbones (others carry their label, see :mod:`~dreambooth_sweep.metrics.names`):

- ``eval/dino``: mean cosine of DINO embeddings over all generated x real pairs.
- ``eval/clip_i``: the same all-pairs mean with CLIP image embeddings.
- ``eval/clip_t``: mean raw cosine (not x100) between each image and the CLIP embedding of its prompt,
  scored with the identifier removed (see :func:`clip_t_prompt`).
- ``eval/pres`` (lower is better): DINO between images of the plain class prompt and the real
  subject, i.e. how far the class prior has drifted towards the subject.
- ``eval/div_dino`` (higher is better): 1 - mean pairwise DINO among images of the same prompt. The
  paper uses LPIPS; its weights are not available offline, hence the honest name.
- ``eval/mem_mean`` / ``eval/mem_max``: each sample's DINO to its nearest training image, averaged
  and maximised; ``eval/mem_ceiling`` is the same statistic of the real images against each other.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import torch
from PIL import Image

from dreambooth_sweep.errors import ConfigError
from dreambooth_sweep.metrics.backbones import Encoder, load_encoder
from dreambooth_sweep.metrics.names import MetricNames
from dreambooth_sweep.metrics.similarity import diversity, mean_cosine, memorisation
from dreambooth_sweep.tiny import TINY_ID

__all__ = ["CLIP_T_RULE", "METRICS", "MetricSuite", "clip_t_prompt", "normalise_metric_names"]

METRICS = ("dino", "clip_i", "clip_t", "pres", "div", "mem")
CLIP_T_RULE = "identifier removed: whole word, case-insensitive, whitespace folded"

_DINO_METRICS = frozenset({"dino", "pres", "div", "mem"})
_CLIP_METRICS = frozenset({"clip_i", "clip_t"})
_REAL_METRICS = frozenset({"dino", "clip_i", "pres", "mem"})  # metrics that compare with the subject photos


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


def normalise_metric_names(names: Sequence[str]) -> tuple[str, ...]:
    """``eval.metrics`` entries, lower-cased and de-duplicated in order.

    Raises:
        ConfigError: an entry that is not one of :data:`METRICS`.
    """
    out: list[str] = []
    for raw in names:
        name = str(raw).strip().lower()
        if name not in METRICS:
            raise ConfigError(f"unknown metric {raw!r} in eval.metrics: choose from {', '.join(METRICS)}")
        if name not in out:
            out.append(name)
    return tuple(out)


def _model_ref(encoder: Encoder | None, name: str) -> str:
    """``name`` as a later process can load it: a local folder as its absolute path."""
    if encoder is not None and encoder.name != TINY_ID and os.path.isdir(encoder.source):
        return encoder.source
    return str(name)


class MetricSuite:
    """The configured metrics, with the subject photos embedded once.

    Build it once per run; call :meth:`compute` at every evaluation step. Only the models the
    requested metrics need are loaded (no CLIP when only DINO metrics are asked for).

    Args:
        config: an ``EvalConfig``-like object with ``metrics`` (names from :data:`METRICS`),
            ``clip_model``, ``dino_model`` and ``dino_preprocess``.
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
        self.metrics = normalise_metric_names(list(config.metrics))
        self.batch_size = batch_size
        wanted = set(self.metrics)
        if wanted & _REAL_METRICS and not real_images:
            raise ConfigError(
                f"metrics {sorted(wanted & _REAL_METRICS)} need the subject's real images, and none were given"
            )
        self.dino: Encoder | None = None
        self.clip: Encoder | None = None
        if wanted & _DINO_METRICS:
            self.dino = load_encoder(
                "dino",
                config.dino_model,
                preprocess=str(config.dino_preprocess),
                cache_dir=cache_dir,
                device=device,
            )
        if wanted & _CLIP_METRICS:
            self.clip = load_encoder("clip", config.clip_model, cache_dir=cache_dir, device=device)
        # What the scoring record stores: enough to build this suite again (a local folder made absolute).
        self.settings = {
            "metrics": list(self.metrics),
            "dino_model": _model_ref(self.dino, config.dino_model),
            "dino_preprocess": str(config.dino_preprocess),
            "clip_model": _model_ref(self.clip, config.clip_model),
        }
        self.names = MetricNames(
            self.dino.label if self.dino is not None else "",
            self.clip.label if self.clip is not None else "",
        )
        self._real_dino: torch.Tensor | None = None
        self._real_clip: torch.Tensor | None = None
        if self.dino is not None and wanted & {"dino", "pres", "mem"}:
            self._real_dino = self.dino.embed_images(real_images, batch_size)
        if self.clip is not None and "clip_i" in wanted:
            self._real_clip = self.clip.embed_images(real_images, batch_size)

    def objective(self, objective: Any) -> SimpleNamespace:
        """``eval.objective`` with paper metric names (``eval/dino``) mapped to this suite's backbones."""
        return SimpleNamespace(
            metric=self.names.resolve(str(objective.metric)),
            prompt_metric=self.names.resolve(str(objective.prompt_metric)),
            penalty=float(objective.penalty),
            tolerance=float(objective.tolerance),
        )

    def protocol(self) -> dict[str, Any]:
        """Every setting that decides this suite's numbers: backbones, preprocessing, CLIP-T rule, names."""
        return {
            "metrics": list(self.metrics),
            "dino": self.dino.protocol() if self.dino is not None else None,
            "clip": self.clip.protocol() if self.clip is not None else None,
            "clip_t_prompt": CLIP_T_RULE,
            "metric_names": dict(self.names.keys),
        }

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
            The requested metrics under ``self.names`` (``eval/dino, clip_i, clip_t, pres, div_dino,
            mem_mean, mem_max, mem_ceiling`` with the paper's backbones). A metric that is undefined
            for the input (DIV without a prompt with two images, the ceiling with one real image, PRES
            without class samples) is left out.
        """
        prompts = [p for p, images in samples.items() if images]
        flat = [image for p in prompts for image in samples[p]]
        wanted = set(self.metrics)
        if not flat and wanted - {"pres"}:
            raise ValueError("no generated samples to score")
        key = self.names.key
        out: dict[str, float] = {}

        gen_dino = None
        if self.dino is not None and wanted & {"dino", "div", "mem"}:
            gen_dino = self.dino.embed_images(flat, self.batch_size)
        gen_clip = None
        if self.clip is not None:
            gen_clip = self.clip.embed_images(flat, self.batch_size)

        if "dino" in wanted:
            out[key("dino")] = mean_cosine(gen_dino, self._real_dino)
        if "clip_i" in wanted:
            out[key("clip_i")] = mean_cosine(gen_clip, self._real_clip)
        if "clip_t" in wanted:
            assert self.clip is not None and gen_clip is not None
            texts = self.clip.embed_texts([clip_t_prompt(p, identifier) for p in prompts])
            owner = torch.tensor([i for i, p in enumerate(prompts) for _ in samples[p]])
            out[key("clip_t")] = float((gen_clip * texts[owner]).sum(dim=-1).mean())
        if "pres" in wanted and class_samples:
            assert self.dino is not None and self._real_dino is not None
            class_dino = self.dino.embed_images(class_samples, self.batch_size)
            out[key("pres")] = mean_cosine(class_dino, self._real_dino)
        if "div" in wanted:
            assert gen_dino is not None
            groups, start = [], 0
            for p in prompts:
                groups.append(gen_dino[start : start + len(samples[p])])
                start += len(samples[p])
            div = diversity(groups)
            if div is not None:
                out[key("div_dino")] = div
        if "mem" in wanted:
            out.update({key(k): v for k, v in memorisation(gen_dino, self._real_dino).items()})
        return out
