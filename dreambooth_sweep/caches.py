"""Work done once instead of once per step or once per trial.

* :class:`BaseModelCache` — the base model's components, loaded with ``from_pretrained`` once per
  process and handed to every trial that runs in it (Hydra's basic launcher and the Optuna sweeper run
  trials one after another in one process) as a *pristine deep copy*: what a trial trains is its own
  copy, and a fingerprint taken at load time is checked on every copy handed out.
* :class:`LatentCache` — the VAE's latent *distribution* (the encoder's mean and log-variance) of
  every view of a training image that augmentation cannot change: with center crops each image has
  one view, with ``data.random_flip`` two (flipped or not); random crops are encoded every step. The
  loop still *samples* the latents from that distribution with its own generator each step, so a run
  with the cache is bit-identical to one without.
* :class:`TextEmbeddingCache` — the text encoder's output per distinct prompt (instance prompt or
  caption, class prompt) while the text encoder does not train; any step in which it trains
  (text-encoder fine-tuning, LoRA on it, textual inversion) empties the cache.
* :class:`SampleCache` — the step-0 evaluation samples: every trial starts from the same untouched
  base model, so trials in one process that sample the same prompts and seeds with the same settings
  generate them once. The key holds the live modules' :func:`fingerprint`, so a trial whose step-0
  weights differ (a new token, LoRA adapters) never gets another's images.

Class images for prior preservation have their own on-disk cache shared by every process
(:func:`dreambooth_sweep.data.ensure_class_images`), and the metric models theirs
(:mod:`dreambooth_sweep.metrics`).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import hashlib
import logging
import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "BASE_MODELS",
    "BASE_SAMPLES",
    "BaseModelCache",
    "LatentCache",
    "SampleCache",
    "TextEmbeddingCache",
    "encode_moments",
    "encode_rows",
    "fingerprint",
    "module_names",
    "release_process_caches",
    "trim_heap",
]

log = logging.getLogger("dreambooth_sweep.caches")


# ----------------------------------------------------------------------------- base model


def fingerprint(components: Any) -> str:
    """A cheap checksum of a model's weights and vocabulary.

    Every tensor of the text encoder, VAE and UNet contributes its name, shape, dtype, float64 sum and
    an evenly strided sample of its values; the tokenizer its length. Any optimizer step, added token
    or resized embedding changes it. Costs one pass over the weights (a fraction of a second for SD-1.5).
    """
    tokens = [len(getattr(components, n)) for n in getattr(components, "tokenizer_names", ("tokenizer",))]
    digest = hashlib.sha256(f"tokens={tokens[0] if len(tokens) == 1 else tokens}".encode())
    for part in module_names(components):
        for name, tensor in getattr(components, part).state_dict().items():
            flat = tensor.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 256)].float().cpu()
            total = flat.sum(dtype=torch.float64).item() if flat.is_floating_point() else int(flat.sum())
            digest.update(f"{part}.{name}{tuple(tensor.shape)}{tensor.dtype}{total!r}".encode())
            digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def module_names(components: Any) -> tuple[str, ...]:
    """The torch modules of ``components``: its family's list (text encoders, VAE, denoiser), or
    text_encoder/vae/unet for plain namespaces."""
    names = getattr(components, "module_names", None)
    if names is not None:
        return tuple(names)
    return tuple(n for n in ("text_encoder", "vae", "unet") if hasattr(components, n))


@dataclass
class _Entry:
    components: Any  # never handed out: trials get deep copies
    fingerprint: str


class BaseModelCache:
    """Loaded base models, one at a time, keyed by (resolved source, revision, variant).

    ``get`` returns a deep copy of the pristine components and checks the copy's :func:`fingerprint`
    against the one taken right after loading: a trial can never start from weights an earlier trial
    trained. ``loads`` and ``hits`` count what happened (tests and the benchmark read them).
    """

    def __init__(self) -> None:
        self._entry: tuple[Hashable, _Entry] | None = None
        self._lock = threading.Lock()
        self.loads = 0
        self.hits = 0

    def get(self, key: Hashable, load: Callable[[], Any], *, keep: bool = True, device: Any = None) -> Any:
        """Components for ``key``: from the cache (a verified copy) or from ``load()``.

        Args:
            key: what identifies the base model.
            load: loads the components (``models.load_components``).
            keep: keep a pristine copy for later calls. False returns the loaded components themselves
                and drops whatever was cached (a single run has no later trial to save work for).
            device: where the trial's copy goes, module by module as it is made: on a GPU, host memory
                holds the pristine model plus at most one module being copied, never two whole models.
        """
        with self._lock:
            if self._entry is not None and self._entry[0] == key:
                self.hits += 1
                entry = self._entry[1]
                handed = _copy_to(entry.components, device)
                if fingerprint(handed) != entry.fingerprint:
                    self._entry = None
                    raise RuntimeError(
                        f"the cached base model {key} no longer matches the weights it was loaded with: "
                        "dropped from the cache; run again"
                    )
                log.info(
                    "base model reused from this process's cache (%d loads, %d reuses)", self.loads, self.hits
                )
                return handed
            self._entry = None  # one base model at a time: a sweep over models must not pile them up
            loaded = load()
            self.loads += 1
            if not keep:
                return loaded
            self._entry = (key, _Entry(loaded, fingerprint(loaded)))
            return _copy_to(loaded, device)

    def clear(self) -> None:
        with self._lock:
            self._entry = None


def _copy_to(components: Any, device: Any) -> Any:
    """A deep copy of ``components`` whose text encoder, VAE and UNet are each copied, then moved to
    ``device`` (None: stay where they are) before the next one is copied."""
    parts = module_names(components)
    memo: dict[int, Any] = {id(getattr(components, name)): None for name in parts}
    shell = copy.deepcopy(components, memo)  # tokenizer, schedulers, ...: everything but the modules
    for name in parts:
        module = copy.deepcopy(getattr(components, name))
        setattr(shell, name, module if device is None else module.to(device))
    return shell


BASE_MODELS = BaseModelCache()  # the process's cache


# ----------------------------------------------------------------------------- latents


def encode_moments(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
    """The VAE encoder's output (mean and log-variance, stacked on dim 1) of each image in ``pixels``.

    One image at a time, so that an image's moments never depend on which images share its batch
    (batched convolutions may round differently): cached and freshly encoded latents are bit-identical.
    """
    return torch.cat([vae.encode(x).latent_dist.parameters for x in pixels.split(1)])


class LatentCache:
    """Encoder moments per deterministic view (``DreamBoothDataset`` names them), filled on first use.

    ``keys`` is a plain set the dataset reads to skip preprocessing the views already cached.
    """

    def __init__(self, vae: Any) -> None:
        self.vae = vae
        self.keys: set[Hashable] = set()
        self._moments: dict[Hashable, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._moments)

    def moments(
        self, views: Sequence[Hashable | None], pixels: Sequence[torch.Tensor | None], device: Any, dtype: Any
    ) -> torch.Tensor:
        """Moments of a batch: cached views looked up, the others encoded (and cached when deterministic).

        Args:
            views: one key per example; None for a view augmentation made random (never cached).
            pixels: the example's pixels, or None for a view the dataset knew to be cached.
        """
        rows = []
        for view, pix in zip(views, pixels, strict=True):
            row = self._moments.get(view) if view is not None else None
            if row is None:
                if pix is None:
                    raise RuntimeError(f"view {view} has neither cached latents nor pixels")
                row = encode_moments(self.vae, pix[None].to(device, dtype=dtype))[0]
                if view is not None:
                    self._moments[view] = row
                    self.keys.add(view)
            rows.append(row)
        return torch.stack(rows)


# ----------------------------------------------------------------------------- text embeddings


class TextEmbeddingCache:
    """The text encoder's output per prompt (one row of token ids), valid while the encoder is frozen.

    One entry per distinct prompt — the instance prompt or each caption, the class prompt, the empty
    prompt of caption dropout — however the batches combine them. :func:`encode_rows` fills and reads
    it; ``hits`` and ``misses`` count rows served from it and rows encoded.
    """

    def __init__(self) -> None:
        self._states: dict[Hashable, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._states)

    def clear(self) -> None:
        self._states.clear()

    def get(self, input_ids: torch.Tensor, encode: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The output for a whole batch of ids, keyed by the batch (kept for callers that encode batches)."""
        key = (tuple(input_ids.shape), input_ids.cpu().numpy().tobytes())
        states = self._states.get(key)
        if states is None:
            states = self._states[key] = encode()
        else:
            self.hits += 1
        return states


def encode_rows(
    input_ids: torch.Tensor,
    encode: Callable[[torch.Tensor], Any],
    cache: TextEmbeddingCache | None = None,
) -> Any:
    """A frozen text encoder's output for a batch, one distinct prompt at a time (a tensor, or a model
    family's conditioning object: ``first_row`` / ``stack``).

    Each prompt is encoded alone (``encode`` gets 1×L ids), so its states never depend on which prompts
    share its batch (batched matmuls may round differently): with or without ``cache`` the result is
    bit-identical, and the cache needs one entry per prompt, not per combination of prompts.
    """
    rows: dict[bytes, torch.Tensor] = {}
    keys = [row.cpu().numpy().tobytes() for row in input_ids]
    for key, row in zip(keys, input_ids, strict=True):
        if key in rows:
            continue
        states = cache._states.get(("row", key)) if cache is not None else None
        if states is None:
            states = _first_row(encode(row[None]))
            if cache is not None:
                cache._states[("row", key)] = states
                cache.misses += 1
        elif cache is not None:
            cache.hits += 1
        rows[key] = states
    return _stack_rows([rows[k] for k in keys])


def _first_row(out: Any) -> Any:
    """Row 0 of an encoder output: a tensor, or a conditioning object with ``first_row``."""
    return out[0] if isinstance(out, torch.Tensor) else out.first_row()


def _stack_rows(rows: list[Any]) -> Any:
    return torch.stack(rows) if isinstance(rows[0], torch.Tensor) else type(rows[0]).stack(rows)


# ----------------------------------------------------------------------------- step-0 samples


class SampleCache:
    """Evaluation samples of the untouched base model, per (weights fingerprint, settings, prompts, seeds).

    Holds the ``max_entries`` most recent sets (a sweep over subjects with one class noun shares one).
    """

    def __init__(self, max_entries: int = 4) -> None:
        self.max_entries = max_entries
        self._sets: dict[Hashable, list[Any]] = {}
        self.hits = 0

    def get(self, key: Hashable) -> list[Any] | None:
        images = self._sets.pop(key, None)
        if images is None:
            return None
        self._sets[key] = images  # most recently used last
        self.hits += 1
        return [im.copy() for im in images]

    def put(self, key: Hashable, images: list[Any]) -> None:
        self._sets[key] = [im.copy() for im in images]
        while len(self._sets) > self.max_entries:
            self._sets.pop(next(iter(self._sets)))

    def clear(self) -> None:
        self._sets.clear()


BASE_SAMPLES = SampleCache()  # the process's cache


# ----------------------------------------------------------------------------- releasing


def trim_heap() -> None:
    """Give the heap memory Python and torch have freed back to the OS (glibc's ``malloc_trim``): the
    process's resident size falls to what it really holds. A no-op where glibc is not the allocator."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def release_process_caches() -> None:
    """Drop what this process kept for later trials — the pristine base model (4 GB of RAM for SD-1.5),
    step-0 samples, metric models — and return the memory: called once a sweep's trials are done,
    before its report is built."""
    BASE_MODELS.clear()
    BASE_SAMPLES.clear()
    # Imported here: a process that never scored (the report alone) need not import the metric stack.
    from dreambooth_sweep.metrics.backbones import clear_model_cache

    clear_model_cache()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    trim_heap()
