"""A fixed-noise validation loss: the denoising loss of the live model on inputs that never change.

Voronov et al. (NeurIPS 2023, "Is This Loss Informative?") show that the diffusion loss on a *fixed*
set of latents, noises and timesteps tracks DreamBooth / textual inversion quality well enough to stop
on, at a fraction of the cost of sampling and scoring images. Every ``eval.val_loss_every_n_steps`` the
trainer asks :class:`ValidationLoss` for

* ``val/instance_loss``: the mean loss over every instance photo at ``eval.val_loss_timesteps`` noise
  levels each, with the photo's training prompt (its caption, else the instance prompt);
* ``val/prior_loss`` (prior preservation on): the same on class images with the class prompt — prior
  drift in loss space;
* ``val/instance_loss_by_t/{low,mid,high}``: the instance loss over the examples in each third of the
  noise-level distribution.

The inputs are built once per run: each photo's center crop at its training size (bucket) is
VAE-encoded and its latent distribution's *mean* taken (no sampling); noise comes from a
``torch.Generator`` of its own (``eval.val_loss_seed``, else ``train.seed``), never the global or the
training generator. The noise levels are stratified over a whole stream, not repeated per image: the
``M = images × levels`` examples of a stream sit at the centres of ``M`` equal-probability bins of the
levels training draws (DDPM: timesteps uniform over the schedule; flow matching: σ at quantiles of
``train.weighting_scheme``'s density, through the family's :meth:`~ModelFamily.noise_at`), and image
``i`` of ``n`` takes bins ``i, i + n, i + 2n, ...`` — one level per image already covers the schedule,
several give each image one level per stratum. The instance stream takes at least 3 examples (more
levels per image when there are fewer than 3 photos), so each band has one. The loss is training's
(the family's target and flow-matching weighting), without Min-SNR weights, masks or offset noise,
which would make it depend on training options rather than the model.

Cost: one forward pass per example and no backward pass. In the demo (12 photos + 8 class images, one
level each) the 20 examples cost 0.75 of a training step (``make bench BENCH_ARGS="--only eval,demo"``).
Prior preservation uses the first class images, as many as there are instance photos (at least 1):
enough for a drift signal, at a bounded cost. Examples go through the denoiser in fixed batches of
``eval.val_loss_batch_size`` (same-shaped latents together), each prompt is encoded once per call, and
per-example losses are summed in a fixed order: the same weights give bit-identical values.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from dreambooth_sweep.caches import TextEmbeddingCache, encode_moments, encode_rows
from dreambooth_sweep.data.transforms import place, to_tensor
from dreambooth_sweep.families.base import pick

__all__ = ["BANDS", "ValidationLoss", "band_of", "level_quantiles", "stream_levels"]

log = logging.getLogger("dreambooth_sweep.val_loss")

BANDS = ("low", "mid", "high")  # noise bands: the least noisy third of the levels first


def level_quantiles(k: int) -> torch.Tensor:
    """The centres of ``k`` equal-probability bins of the noise-level distribution, least noise first."""
    return (torch.arange(k, dtype=torch.float64) + 0.5) / k


def band_of(quantile: float) -> str:
    """The noise band of a level at ``quantile`` of the distribution: its lower, middle or upper third."""
    return BANDS[min(int(quantile * len(BANDS)), len(BANDS) - 1)]


def stream_levels(n_images: int, per_image: int) -> list[list[float]]:
    """Each image's noise-level quantiles: the ``n_images × per_image`` bins of the stream, image ``i``
    taking bins ``i, i + n_images, ...`` (one per stratum of ``n_images`` bins)."""
    quantiles = level_quantiles(n_images * per_image).tolist()
    return [quantiles[i::n_images] for i in range(n_images)]


@dataclass
class _Example:
    latents: torch.Tensor  # (C, h, w), the mean latent
    noise: torch.Tensor  # (C, h, w), fixed
    quantile: float
    band: str
    ids: torch.Tensor  # the prompt's token ids (every tokenizer's, one row)
    stream: str  # "instance" | "prior"
    original_size: tuple[int, int]
    crop_top_left: tuple[int, int]


class ValidationLoss:
    """The run's fixed validation inputs and the loss of the live model on them.

    Args:
        cfg: the run config (``eval.val_loss_*``, ``train.seed``, the flow-matching ``train`` keys).
        comps: the loaded base model (family, VAE, tokenizers, noise schedule).
        instances: the subject photos (anything with ``image``: ``data.Instance``).
        sizes: each photo's training size (width, height): its bucket, or the square resolution.
        prompts: each photo's training prompt as the tokenizer needs it (caption, else instance prompt).
        class_images: prior preservation's class images (empty: no ``val/prior_loss``).
        class_prompt: their prompt.
        device, dtype: where and in which dtype the VAE encodes.
    """

    def __init__(
        self,
        cfg: Any,
        comps: Any,
        instances: Sequence[Any],
        sizes: Sequence[tuple[int, int]],
        prompts: Sequence[str],
        class_images: Sequence[Any] = (),
        class_prompt: str | None = None,
        *,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        e = cfg.eval
        self.comps, self.family, self.device = comps, comps.family, device
        self.train_cfg = cfg.train
        self.k = int(e.val_loss_timesteps)
        self.batch_size = int(e.val_loss_batch_size)
        seed = e.val_loss_seed if e.val_loss_seed is not None else cfg.train.seed
        generator = torch.Generator("cpu").manual_seed(int(seed))  # the loss's own: no other stream moves
        resolution = int(cfg.data.resolution)
        n_class = min(max(1, len(instances)), len(class_images))
        # at least 3 instance examples, so that every noise band has one
        instance_k = max(self.k, -(-len(BANDS) // max(1, len(instances))))
        streams = [
            ("instance", instance_k, [(i.image, size) for i, size in zip(instances, sizes, strict=True)],
             list(prompts)),
            ("prior", self.k, [(im, (resolution, resolution)) for im in list(class_images)[:n_class]],
             [class_prompt or ""] * n_class),
        ]  # fmt: skip
        self.examples: list[_Example] = []
        vae = comps.vae
        ids: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for stream, per_image, images, stream_prompts in streams:
                levels = stream_levels(len(images), per_image)
                for (image, size), prompt, image_levels in zip(images, stream_prompts, levels, strict=True):
                    placed = place(image, size, center_crop=True)
                    pixels = to_tensor(placed.pixels)[None].to(device, dtype=dtype)
                    latents = self.family.latent_mean(comps, encode_moments(vae, pixels))[0]
                    if prompt not in ids:
                        ids[prompt] = self.family.tokenize(comps, prompt)
                    for q in image_levels:
                        noise = torch.randn(latents.shape, generator=generator).to(device)
                        self.examples.append(
                            _Example(
                                latents,
                                noise,
                                q,
                                band_of(q),
                                ids[prompt],
                                stream,
                                placed.original_size,
                                placed.crop_top_left,
                            )
                        )
        log.info(
            "validation loss: %d instance images x %d + %d class images x %d noise levels (%d forward "
            "examples), seed %d", len(instances), instance_k, n_class, self.k, len(self.examples), seed,
        )  # fmt: skip

    def metric_names(self) -> list[str]:
        """The metric names a call returns."""
        keys = {f"val/{ex.stream}_loss" for ex in self.examples}
        keys |= {f"val/instance_loss_by_t/{ex.band}" for ex in self.examples if ex.stream == "instance"}
        return sorted(keys)

    def _batches(self) -> list[list[_Example]]:
        """Fixed batches of same-shaped examples (buckets differ in size), always the same ones."""
        by_shape: dict[tuple[int, ...], list[_Example]] = {}
        for ex in self.examples:
            by_shape.setdefault(tuple(ex.latents.shape), []).append(ex)
        return [
            group[i : i + self.batch_size]
            for group in by_shape.values()
            for i in range(0, len(group), self.batch_size)
        ]

    def __call__(self, live: dict[str, torch.nn.Module]) -> dict[str, float]:
        """The losses of the live modules (by pipeline name; missing ones are the loaded ones).

        Call it under ``torch.no_grad`` with the modules in eval mode
        (:func:`dreambooth_sweep.runtime.untouched_training_state`), inside the training autocast.
        """
        family, comps = self.family, self.comps
        denoiser = pick(comps, live, family.denoiser)
        encoders = {name: pick(comps, live, name) for name in family.text_encoders}
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        prompts = TextEmbeddingCache()  # each prompt encoded once per call (the encoders may train)
        for batch in self._batches():
            latents = torch.stack([ex.latents for ex in batch])
            noise = torch.stack([ex.noise for ex in batch])
            quantiles = torch.tensor([ex.quantile for ex in batch], dtype=torch.float64)
            noised = family.noise_at(comps, latents, noise, quantiles, self.train_cfg)
            input_ids = torch.stack([ex.ids for ex in batch]).to(self.device)

            def encode(row: torch.Tensor) -> Any:
                return family.encode_prompt(comps, row, encoders)

            cond = encode_rows(input_ids, encode, prompts)  # each prompt alone: independent of the batch
            extra = {
                "original_sizes": [ex.original_size for ex in batch],
                "crop_top_left": [ex.crop_top_left for ex in batch],
            }
            pred = family.predict(denoiser, comps, noised, cond, extra)
            per_element = F.mse_loss(pred.float(), noised.target.float(), reduction="none")
            if noised.weighting is not None:
                per_element = noised.weighting.float() * per_element
            per_example = per_element.mean(dim=tuple(range(1, per_element.ndim))).tolist()
            for ex, value in zip(batch, per_example, strict=True):
                keys = [f"val/{ex.stream}_loss"]
                if ex.stream == "instance":
                    keys.append(f"val/instance_loss_by_t/{ex.band}")
                for key in keys:
                    sums[key] = sums.get(key, 0.0) + value
                    counts[key] = counts.get(key, 0) + 1
        return {key: sums[key] / counts[key] for key in sorted(sums)}
