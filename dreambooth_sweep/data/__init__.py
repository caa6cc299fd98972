"""Subject photos, class images and the training dataset.

* :mod:`.sources` — folders (recursive, several, kohya ``N_name`` repeats), captions, masks;
* :mod:`.captions` — sidecar ``.txt``/``.caption`` and ``metadata.jsonl`` captions, the identifier
  rule, textual inversion's prompt templates;
* :mod:`.transforms` — resize to cover, crop, flip (masks with the pixels);
* :mod:`.buckets` and :mod:`.samplers` — aspect-ratio buckets, deterministic resumable batch order;
* :mod:`.dataset` — the dataset and its collate function;
* :mod:`.class_images` — the shared class-image cache for prior preservation;
* :mod:`.check` — ``dreambooth-sweep check-data``: what to fix before spending GPU hours.
"""

from __future__ import annotations

from dreambooth_sweep.data.buckets import Bucket, make_buckets, nearest_bucket
from dreambooth_sweep.data.captions import TI_TEMPLATES, with_identifier
from dreambooth_sweep.data.check import DataCheck, check_run_data, run_check
from dreambooth_sweep.data.class_images import class_cache_dir, ensure_class_images, metadata_path
from dreambooth_sweep.data.dataset import (
    DreamBoothDataset,
    View,
    batch_sampler,
    collate,
    dataset_buckets,
    ti_templates,
)
from dreambooth_sweep.data.masks import latent_weights
from dreambooth_sweep.data.samplers import BucketBatchSampler, EpochBatchSampler, EpochSampler
from dreambooth_sweep.data.sources import (
    DEMO_DIRNAME,
    Instance,
    load_images,
    load_instance_images,
    load_instance_set,
)
from dreambooth_sweep.data.transforms import place, preprocess
from dreambooth_sweep.images import IMAGE_SUFFIXES

__all__ = [
    "DEMO_DIRNAME",
    "IMAGE_SUFFIXES",
    "TI_TEMPLATES",
    "Bucket",
    "BucketBatchSampler",
    "DataCheck",
    "DreamBoothDataset",
    "EpochBatchSampler",
    "EpochSampler",
    "Instance",
    "View",
    "batch_sampler",
    "check_run_data",
    "class_cache_dir",
    "collate",
    "dataset_buckets",
    "ensure_class_images",
    "latent_weights",
    "load_images",
    "load_instance_images",
    "load_instance_set",
    "make_buckets",
    "metadata_path",
    "nearest_bucket",
    "place",
    "preprocess",
    "run_check",
    "ti_templates",
    "with_identifier",
]
