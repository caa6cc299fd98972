"""The training dataset: instance examples (captions, repeats, masks, buckets), each paired with a
class example when prior preservation is on, and the collate function that makes one batch of them.

Everything random about an example — flip, random crop, caption template, caption dropout — is a pure
function of (``train.seed``, epoch, index), so a resumed run sees exactly the same pixels and prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dreambooth_sweep.data.buckets import Bucket, make_buckets, nearest_bucket
from dreambooth_sweep.data.captions import TI_TEMPLATES
from dreambooth_sweep.data.samplers import BucketBatchSampler, EpochBatchSampler
from dreambooth_sweep.data.sources import Instance
from dreambooth_sweep.data.transforms import crop_box, place, to_tensor
from dreambooth_sweep.errors import ConfigError

__all__ = ["DreamBoothDataset", "View", "batch_sampler", "collate", "dataset_buckets", "ti_templates"]

# (0 instance | 1 class, image index, flipped, bucket): what a center crop can show
View = tuple[int, int, bool, Bucket]


class DreamBoothDataset(torch.utils.data.Dataset):
    """Instance examples, each paired with a class example when prior preservation is on.

    Length is the larger of the instance examples (every photo times its repeats) and the class
    images, as in the DreamBooth reference script, cycling the smaller. Each example names its *view*
    — ``(stream, image, flipped, bucket)``, or None when the crop is random — so the trainer can cache
    the VAE latents of views augmentation cannot change; views listed in ``cached_views`` come without
    pixels (no preprocessing for work already done).

    Args:
        instances: the subject photos (:class:`~dreambooth_sweep.data.sources.Instance`, or plain images).
        instance_prompt: the prompt of photos without a caption.
        tokenizer: the text encoder's tokenizer (prompt ids per example, memoised per distinct prompt).
        resolution: the square training size; with ``buckets`` the pixel budget of each bucket.
        class_images, class_prompt: prior preservation's examples (the class prompt is never dropped).
        center_crop, random_flip: augmentation (``data.center_crop``, ``data.random_flip``).
        seed: ``train.seed``.
        caption_dropout: probability that an instance prompt is the empty prompt.
        templates: prompts drawn per example for photos without a caption (``method.ti_templates``).
        prompt_fn: turns a prompt into what the tokenizer needs (multi-vector tokens spelled out).
        tokenize: ``prompt -> ids`` instead of ``tokenizer`` (a model family's, for several tokenizers).
        buckets: aspect-ratio buckets; None: every example is the square ``resolution``.
        mask_loss_weight: the loss weight of background pixels; None: masks are not used.
    """

    def __init__(
        self,
        instances: Sequence[Instance | Image.Image],
        instance_prompt: str,
        tokenizer: Any,
        resolution: int,
        *,
        class_images: Sequence[Image.Image] = (),
        class_prompt: str | None = None,
        center_crop: bool = True,
        random_flip: bool = False,
        seed: int = 0,
        caption_dropout: float = 0.0,
        templates: Sequence[str] = (),
        prompt_fn: Callable[[str], str] | None = None,
        buckets: Sequence[Bucket] | None = None,
        mask_loss_weight: float | None = None,
        tokenize: Callable[[str], torch.Tensor] | None = None,
    ) -> None:
        self.instances = [
            i if isinstance(i, Instance) else Instance(Path(f"image-{n}"), i) for n, i in enumerate(instances)
        ]
        self.order = [n for n, inst in enumerate(self.instances) for _ in range(inst.repeats)]
        self.class_images = list(class_images)
        self.resolution = resolution
        self.center_crop, self.random_flip, self.seed = center_crop, random_flip, seed
        self.epoch = 0
        self.cached_views: Container[View] = frozenset()  # the trainer's latent cache keys
        self.instance_prompt, self.class_prompt = instance_prompt, class_prompt
        self.caption_dropout, self.templates = caption_dropout, list(templates)
        self.prompt_fn = prompt_fn or (lambda text: text)
        self.mask_loss_weight = mask_loss_weight
        self.buckets = list(buckets) if buckets else None
        square = (resolution, resolution)
        self.image_buckets = [
            nearest_bucket(i.image.size, self.buckets) if self.buckets else square for i in self.instances
        ]
        self._tokenizer = tokenizer
        self._tokenize = tokenize  # a model family's: every tokenizer's ids side by side in one row
        self._ids: dict[str, torch.Tensor] = {}

    def ids(self, prompt: str) -> torch.Tensor:
        """The prompt's token ids (padded to the tokenizer's length), tokenized once per prompt."""
        if prompt not in self._ids and self._tokenize is not None:
            self._ids[prompt] = self._tokenize(prompt)
        if prompt not in self._ids:
            tok = self._tokenizer
            self._ids[prompt] = tok(
                prompt,
                padding="max_length",
                truncation=True,
                max_length=tok.model_max_length,
                return_tensors="pt",
            ).input_ids[0]
        return self._ids[prompt]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return max(len(self.order), len(self.class_images))

    def bucket_of(self, index: int) -> Bucket:
        """The bucket of example ``index`` (its class example shares it: one forward pass per batch)."""
        return self.image_buckets[self.order[index % len(self.order)]]

    def prompt(self, index: int) -> str:
        """Example ``index``'s instance prompt this epoch: caption, template or instance prompt, maybe
        dropped to the empty prompt."""
        inst = self.instances[self.order[index % len(self.order)]]
        # Its own stream: turning captions or dropout on never changes the crops and flips.
        rng = np.random.default_rng([self.seed, self.epoch, index, 0, 1])
        pick, drop = int(rng.integers(1 << 30)), rng.random()
        text = inst.caption
        if text is None:
            text = self.templates[pick % len(self.templates)] if self.templates else self.instance_prompt
        if self.caption_dropout and drop < self.caption_dropout:
            text = ""
        return self.prompt_fn(text)

    def _example(
        self, image: Image.Image, mask: Image.Image | None, image_index: int, index: int, stream: int
    ) -> dict[str, Any]:
        # Randomness depends only on (seed, epoch, index, stream): identical after a resume.
        rng = np.random.default_rng([self.seed, self.epoch, index, stream])
        flip = bool(self.random_flip and rng.random() < 0.5)
        bucket = self.bucket_of(index)
        view = (stream, image_index, flip, bucket) if self.center_crop else None  # random crop: no fixed view
        out: dict[str, Any] = {"view": view, "mask": None}
        if view is not None and view in self.cached_views:
            (new_w, _), box = crop_box(image.size, bucket)
            out.update(
                pixels=None,
                original_size=(image.height, image.width),
                crop_top_left=(box[1], new_w - bucket[0] - box[0] if flip else box[0]),
            )
            if mask is not None:
                out["mask"] = place(mask, bucket, flip=flip).pixels
        else:
            placed = place(image, bucket, mask=mask, center_crop=self.center_crop, flip=flip, rng=rng)
            out.update(
                pixels=to_tensor(placed.pixels),
                mask=placed.mask,
                original_size=placed.original_size,
                crop_top_left=placed.crop_top_left,
            )
        if self.mask_loss_weight is not None and out["mask"] is not None:
            m = torch.from_numpy(np.asarray(out["mask"], dtype=np.float32) / 255.0)[None]
            out["mask"] = self.mask_loss_weight + (1.0 - self.mask_loss_weight) * m
        else:
            out["mask"] = None
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_index = self.order[index % len(self.order)]
        inst = self.instances[image_index]
        prompt = self.prompt(index)
        item = {
            f"instance_{k}": v for k, v in self._example(inst.image, inst.mask, image_index, index, 0).items()
        }
        item.update(instance_ids=self.ids(prompt), instance_prompt=prompt, bucket=self.bucket_of(index))
        if self.class_images:
            class_index = index % len(self.class_images)
            example = self._example(self.class_images[class_index], None, class_index, index, 1)
            item.update({f"class_{k}": v for k, v in example.items()})
            item.update(class_ids=self.ids(self.class_prompt or ""), class_prompt=self.class_prompt or "")
        return item


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Instance examples first, then class examples: one forward pass, split again for the two losses.

    Returns:
        ``pixel_values`` (stacked, or None when some example has no pixels: its latents are cached),
        per-example lists ``pixels``, ``views``, ``prompts``, ``original_sizes`` ((h, w)) and
        ``crop_top_left`` ((top, left)); ``input_ids`` stacked; ``masks`` (N×1×H×W loss weights at pixel
        resolution, 1 where an example has no mask) or None when no example has one; ``bucket``.
    """
    classes = [it for it in items if "class_ids" in it]

    def column(key: str, default: Any = None) -> list[Any]:
        return [it.get(f"instance_{key}", default) for it in items] + [
            it.get(f"class_{key}", default) for it in classes
        ]

    buckets = {it["bucket"] for it in items if "bucket" in it}
    if len(buckets) > 1:
        raise ValueError(f"a batch mixes buckets {sorted(buckets)}: use the bucket batch sampler")
    pixels = column("pixels")
    stacked = torch.stack(pixels).float() if all(p is not None for p in pixels) else None
    masks = column("mask")
    mask_values = None
    if any(m is not None for m in masks):
        shape = next(m for m in masks if m is not None).shape
        mask_values = torch.stack([m if m is not None else torch.ones(shape) for m in masks])
    return {
        "pixel_values": stacked,
        "pixels": pixels,
        "views": column("view"),
        "input_ids": torch.stack(column("ids")),
        "prompts": column("prompt", ""),
        "masks": mask_values,
        "original_sizes": column("original_size"),
        "crop_top_left": column("crop_top_left"),
        "bucket": next(iter(buckets), None),
    }


def batch_sampler(
    dataset: DreamBoothDataset, batch_size: int, seed: int, *, num_replicas: int = 1, rank: int = 0
) -> EpochBatchSampler | BucketBatchSampler:
    """The batches of an epoch: one bucket per batch when the dataset has buckets, else shuffled."""
    if dataset.buckets:
        buckets = [dataset.bucket_of(i) for i in range(len(dataset))]
        return BucketBatchSampler(buckets, batch_size, seed, num_replicas=num_replicas, rank=rank)
    return EpochBatchSampler(len(dataset), batch_size, seed, num_replicas=num_replicas, rank=rank)


def dataset_buckets(data_cfg: Any) -> list[Bucket] | None:
    """The buckets ``data`` asks for, or None (square crops)."""
    if not data_cfg.get("buckets", False):
        return None
    return make_buckets(data_cfg.resolution, data_cfg.bucket_step, data_cfg.bucket_max_aspect)


def ti_templates(cfg: Any, instances: Sequence[Instance]) -> list[str]:
    """Textual inversion's prompts for ``method.ti_templates`` (``{}`` → ``data.identifier``), or [].

    Raises:
        ConfigError: templates were asked for but photos have their own captions (choose one).
    """
    kind = cfg.method.get("ti_templates", "none")
    if kind == "none":
        return []
    captioned = [i.path.name for i in instances if i.caption is not None]
    if captioned:
        raise ConfigError(
            f"method.ti_templates={kind} but {len(captioned)} photos have captions ({captioned[0]}, ...): "
            "set method.ti_templates=none to train on the captions, or data.captions=false for the templates"
        )
    return [t.format(cfg.data.identifier) for t in TI_TEMPLATES[kind]]
