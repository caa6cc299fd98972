"""Checkpoint evaluation: fixed-seed samples, fidelity metrics, the sweet-spot score and a sample grid.

During training the loop calls an :class:`Evaluator` with an :class:`EvalContext` at step 0 (the base
model: the baseline every later score is measured against), every ``eval.every_n_steps`` and at the
last step; eval-only mode (:mod:`dreambooth_sweep.evaluate`) and checkpoint scoring
(:mod:`dreambooth_sweep.checkpoints`) call the same evaluator. Each call

1. samples every (prompt, seed) pair with ``eval.scheduler`` through a pipeline built around the *live*
   modules (no copy, no reload), one CPU ``torch.Generator`` per image: the same seed gives the same
   starting noise at every checkpoint, on every device, in any batch — and the global RNG streams are
   never touched;
2. scores the samples (:class:`~dreambooth_sweep.metrics.MetricSuite`) and the sweet-spot
   ``eval/score`` against the step-0 metrics *of the same prompts*. Every prompt is sampled at step 0
   and at the end, a fixed evenly spaced subset (``eval.num_prompts``) in between; ``eval/*`` is always
   scored on that subset, so the curve and the best step compare like with like, and ``eval_all/*``
   (every prompt: the DreamBench protocol) is added at step 0 and at the end;
3. writes ``samples/step_XXXXXX.png`` (grid) and ``samples/step_XXXXXX/`` (each image, ``prompts.json``,
   ``class/``, ``scoring.json``), which ``dreambooth-sweep score --generated DIR`` rescores to the
   logged numbers.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont

from dreambooth_sweep.config import ConfigError
from dreambooth_sweep.images import open_image
from dreambooth_sweep.metrics import MetricSuite, scoring_record, write_scoring_record
from dreambooth_sweep.models import Components, build_pipeline
from dreambooth_sweep.objective import sweet_spot_score
from dreambooth_sweep.prompts import eval_prompts, subset_indices

__all__ = [
    "COL_LABEL_H",
    "LABEL_W",
    "TILE_GAP",
    "TITLE_H",
    "EvalContext",
    "EvalResult",
    "Evaluator",
    "evaluation_prompts",
    "make_grid",
]

log = logging.getLogger("dreambooth_sweep.evaluator")

# Grid layout (pixels). Cells are the samples shrunk to at most MAX_CELL; the label column holds the
# wrapped prompt of each row; the reference strip shows the subject photos at half a cell.
MAX_CELL = 256
LABEL_W = 200
TITLE_H = 24
GAP = 4
TILE_GAP = 4  # white space between sample tiles, so neighbouring images never run into each other
COL_LABEL_H = 14  # the strip above the samples naming each column's seed
MAX_REF_ROWS = 2


# ----------------------------------------------------------------------------- evaluator


@dataclass
class EvalContext:
    """What the trainer hands over at a checkpoint.

    ``unet`` (the denoiser: UNet or transformer) and ``text_encoder`` (the first text encoder) are the
    live, unwrapped training modules (EMA weights already swapped in when EMA is on); ``modules`` holds
    every live module by pipeline name (``text_encoder_2``, ...), when the family has more; ``dtype`` is
    the inference weight dtype (autocast when not float32).
    """

    step: int
    final: bool
    components: Components
    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    device: torch.device | str
    dtype: torch.dtype = torch.float32
    label: str | None = None  # file stem instead of step_XXXXXX (eval-only mode: "base", "final")
    modules: dict[str, torch.nn.Module] | None = None

    def live(self) -> dict[str, torch.nn.Module]:
        """Every module to sample with, by pipeline name (the loaded ones where no live one is given)."""
        comps = self.components
        out = {name: getattr(comps, name) for name in comps.module_names}
        out.update(self.modules or {})
        out[comps.family.denoiser] = self.unet
        out[comps.family.text_encoders[0]] = self.text_encoder
        return out


@dataclass
class EvalResult:
    step: int
    metrics: dict[str, float]  # eval/* (fixed subset, eval/score included); eval_all/* at step 0 and the end
    grid: Image.Image
    grid_path: Path
    sample_dir: Path  # the individual images, prompts.json, scoring.json and class/
    prompts: list[str]


def evaluation_prompts(cfg: Any) -> list[str]:
    """Every prompt an :class:`Evaluator` for ``cfg`` may sample (the DreamBench set, the class prompt)."""
    if not cfg.eval.enabled:
        return []
    prompts = eval_prompts(cfg.eval, str(cfg.data.identifier), str(cfg.data.class_noun))
    return [*prompts, cfg.prior.get("class_prompt") or f"a photo of {cfg.data.class_noun}"]


class Evaluator:
    """Samples, scores and draws one checkpoint per call; keeps the step-0 baseline and the best score.

    Args:
        cfg: the run config (uses ``eval``, ``data.identifier``/``class_noun``, ``prior.class_prompt``).
        instance_images: the subject photos (embedded once for the metrics, shown on every grid).
        output_dir: the run folder; samples go to ``<output_dir>/samples``.
        cache_dir: where ``tiny`` metric models are built.
        device: where the metric models run.
    """

    def __init__(
        self,
        cfg: Any,
        instance_images: list[Image.Image],
        output_dir: str | Path,
        cache_dir: str | Path,
        device: torch.device | str,
    ) -> None:
        self.cfg = cfg
        self.eval_cfg = cfg.eval
        self.identifier = str(cfg.data.identifier)
        self.prompts = eval_prompts(cfg.eval, self.identifier, str(cfg.data.class_noun))
        self.class_prompt = cfg.prior.get("class_prompt") or f"a photo of {cfg.data.class_noun}"
        self.seeds = [int(s) for s in cfg.eval.seeds]
        if not self.seeds:
            raise ConfigError("eval.seeds is empty: list at least one seed, e.g. eval.seeds=[0,1]")
        # PRES needs class-prompt images; skip generating them when it is not asked for.
        self.num_class = int(cfg.eval.class_prompt_images) if "pres" in cfg.eval.metrics else 0
        self.instance_images = list(instance_images)
        self.sample_root = Path(output_dir) / "samples"
        self.suite = MetricSuite(cfg.eval, self.instance_images, cache_dir=cache_dir, device=device)
        # eval.objective names paper metrics (eval/dino); with another backbone they follow its names.
        self.objective = self.suite.objective(cfg.eval.objective)
        self.scoring = {  # samples/*/scoring.json: how to rescore a folder to the logged numbers
            "identifier": self.identifier,
            "real_dir": cfg.data.instance_dir,
            "real_max_images": cfg.data.get("max_images"),
        }
        # Step-0 images per prompt index (and its class images): the baseline of every later subset.
        self._base_images: dict[int, list[Image.Image]] | None = None
        self._base_class: list[Image.Image] = []
        self._baselines: dict[tuple[int, ...], dict[str, float]] = {}

    def prompt_indices(self, step: int, final: bool) -> list[int]:
        """All prompts at step 0 and at the end; a fixed, evenly spaced subset in between."""
        if step == 0 or final:
            return list(range(len(self.prompts)))
        return subset_indices(len(self.prompts), self.eval_cfg.num_prompts)

    def __call__(self, ctx: EvalContext) -> EvalResult:
        start = time.perf_counter()
        indices = self.prompt_indices(ctx.step, ctx.final)
        jobs = [(self.prompts[i], seed) for i in indices for seed in self.seeds]
        jobs += [(self.class_prompt, seed) for seed in range(self.num_class)]
        images = self._base_samples(ctx, jobs) if ctx.step == 0 else self._generate(ctx, jobs)
        n = len(self.seeds)
        samples = {i: images[k * n : (k + 1) * n] for k, i in enumerate(indices)}
        class_images = images[len(indices) * n :]

        if ctx.step == 0:
            self._base_images, self._base_class, self._baselines = dict(samples), list(class_images), {}
        # eval/*: the fixed subset, scored at every checkpoint, so the curve and the best step compare
        # like with like. eval_all/*: every prompt, at step 0 and at the end (the DreamBench protocol).
        fixed = subset_indices(len(self.prompts), self.eval_cfg.num_prompts)
        metrics = self._score(fixed, samples, class_images, base=ctx.step == 0)
        if len(indices) > len(fixed):
            full = self._score(indices, samples, class_images, base=ctx.step == 0)
            metrics.update({"eval_all/" + k.removeprefix("eval/"): v for k, v in full.items()})
        metrics["eval/seconds"] = time.perf_counter() - start

        stem = ctx.label or f"step_{ctx.step:06d}"
        sample_dir = self._save_samples(self.sample_root / stem, samples, class_images)
        # Column labels name the prompts' seeds; the class-prompt row draws seeds 0..n-1 (see _generate jobs).
        columns = [f"seed {seed}" for seed in self.seeds]
        columns += [f"seed {c}" for c in range(len(columns), self.num_class)]
        class_label = f"class prompt (PRES): {self.class_prompt}"
        if self.num_class and list(self.seeds) != list(range(len(self.seeds))):
            class_label += f" (seeds 0-{self.num_class - 1})"
        grid = make_grid(
            [(self.prompts[i], samples[i]) for i in indices]
            + ([(class_label, class_images)] if class_images else []),
            title=self._title(ctx),
            reference=self.instance_images,
            cell=min(int(self.eval_cfg.resolution), MAX_CELL),
            col_labels=columns,
        )
        grid_path = self.sample_root / f"{stem}.png"
        grid.save(grid_path)
        return EvalResult(ctx.step, metrics, grid, grid_path, sample_dir, [self.prompts[i] for i in indices])

    def _score(
        self,
        indices: list[int],
        samples: dict[int, list[Image.Image]],
        class_images: list[Image.Image],
        *,
        base: bool,
    ) -> dict[str, float]:
        """Metrics of these prompts' samples, and ``eval/score`` against step 0 on the same prompts."""
        metrics = self.suite.compute(
            {self.prompts[i]: samples[i] for i in indices}, class_images, self.identifier
        )
        key = tuple(indices)
        if base:  # step 0 is its own baseline
            self._baselines[key] = dict(metrics)
        metrics["eval/score"] = sweet_spot_score(metrics, self._baseline(key, metrics), self.objective)
        return metrics

    # -- generation

    def _base_samples(self, ctx: EvalContext, jobs: list[tuple[str, int]]) -> list[Image.Image]:
        """Step 0: the untouched base model, the same in every trial of a sweep, so trials in one process
        with the same weights (fingerprinted) and settings share one set of samples (``caches.BASE_SAMPLES``)."""
        if not self.eval_cfg.get("reuse_base_samples", True):
            return self._generate(ctx, jobs)
        from types import SimpleNamespace

        from dreambooth_sweep.caches import BASE_SAMPLES, fingerprint

        e, comps = self.eval_cfg, ctx.components
        modules = ctx.live()
        tokenizers = {name: getattr(comps, name) for name in comps.tokenizer_names}
        live = SimpleNamespace(
            **tokenizers, **modules, module_names=tuple(modules), tokenizer_names=tuple(tokenizers)
        )
        settings = (
            e.scheduler,
            int(e.num_inference_steps),
            float(e.guidance_scale),
            int(e.resolution),
            int(e.batch_size),
        )
        scheduler = json.dumps(comps.scheduler_config, sort_keys=True, default=str)
        key = (
            fingerprint(live),
            scheduler,
            settings,
            tuple(jobs),
            str(ctx.dtype),
            str(torch.device(ctx.device)),
        )
        images = BASE_SAMPLES.get(key)
        if images is None:
            images = self._generate(ctx, jobs)
            BASE_SAMPLES.put(key, images)
        else:
            log.info("step 0: base-model samples reused from an earlier trial in this process")
        return images

    @torch.no_grad()
    def _generate(self, ctx: EvalContext, jobs: list[tuple[str, int]]) -> list[Image.Image]:
        """One image per (prompt, seed), in chunks of ``eval.batch_size``; modes and RNG left as found."""
        e = self.eval_cfg
        device = torch.device(ctx.device)
        comps = ctx.components
        live = ctx.live()
        modules = list(live.values())
        modes = [[m.training for m in module.modules()] for module in modules]
        pipe = build_pipeline(comps, e.scheduler, **live)
        autocast = (
            torch.autocast(device.type, dtype=ctx.dtype) if ctx.dtype != torch.float32 else nullcontext()
        )
        # The generators below make sampling independent of the global streams; fork_rng guarantees
        # that nothing inside (a scheduler or attention kernel drawing without a generator) moves them.
        rng_devices = [device] if device.type == "cuda" else []
        images: list[Image.Image] = []
        try:
            for module in modules:
                module.eval()
            with torch.random.fork_rng(devices=rng_devices), autocast:
                for start in range(0, len(jobs), int(e.batch_size)):
                    chunk = jobs[start : start + int(e.batch_size)]
                    # CPU generators: the same seed gives the same noise on CPU and GPU alike.
                    generators = [torch.Generator("cpu").manual_seed(seed) for _, seed in chunk]
                    out = comps.family.sample(
                        pipe,
                        comps,
                        [p for p, _ in chunk],
                        num_inference_steps=int(e.num_inference_steps),
                        guidance_scale=float(e.guidance_scale),
                        height=int(e.resolution),
                        width=int(e.resolution),
                        generator=generators,
                    )
                    images.extend(out)
        finally:
            for module, flags in zip(modules, modes, strict=True):
                for m, flag in zip(module.modules(), flags, strict=True):
                    m.training = flag
        return images

    # -- baseline

    def _baseline(self, key: tuple[int, ...], metrics: dict[str, float]) -> dict[str, float]:
        """Step-0 metrics of exactly these prompts: computed once per subset from the step-0 images."""
        if key in self._baselines:
            return self._baselines[key]
        if self._base_images is None:
            self._load_base_from_disk()
        if self._base_images is None or not all(i in self._base_images for i in key):
            warnings.warn(
                "no step-0 samples to compare with (resumed without samples/step_000000?): "
                "eval/score has no prompt-fidelity penalty at this checkpoint",
                stacklevel=4,
            )
            return metrics
        base = {self.prompts[i]: self._base_images[i] for i in key}
        self._baselines[key] = self.suite.compute(base, self._base_class, self.identifier)
        return self._baselines[key]

    def _load_base_from_disk(self) -> None:
        """A resumed run never saw step 0: read its saved samples back if they match these settings."""
        folder = self.sample_root / "step_000000"
        try:
            names = json.loads((folder / "prompts.json").read_text())
        except (OSError, ValueError):
            return
        found: dict[int, list[Image.Image]] = {}
        for i, prompt in enumerate(self.prompts):
            files = [folder / _sample_name(i, seed) for seed in self.seeds]
            if not all(names.get(f.name) == prompt and f.exists() for f in files):
                return  # other prompts or seeds than this run's: no usable baseline
            found[i] = [open_image(f) for f in files]
        class_files = [folder / "class" / f"{seed}.png" for seed in range(self.num_class)]
        if not all(f.exists() for f in class_files):
            return
        self._base_class = [open_image(f) for f in class_files]
        self._base_images = found
        log.info("baseline: step-0 samples read back from %s", folder)

    # -- files

    def _save_samples(
        self, folder: Path, samples: dict[int, list[Image.Image]], class_images: list[Image.Image]
    ) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        names: dict[str, str] = {}
        for i, images in samples.items():
            for seed, image in zip(self.seeds, images, strict=True):
                name = _sample_name(i, seed)
                image.save(folder / name)
                names[name] = self.prompts[i]
        (folder / "prompts.json").write_text(json.dumps(names, indent=2))
        if class_images:
            (folder / "class").mkdir(exist_ok=True)
            for seed, image in enumerate(class_images):
                image.save(folder / "class" / f"{seed}.png")
            class_names = {f"{seed}.png": self.class_prompt for seed in range(len(class_images))}
            (folder / "class" / "prompts.json").write_text(json.dumps(class_names, indent=2))
        class_dir = "class" if class_images else None
        write_scoring_record(folder, scoring_record(self.suite, **self.scoring, class_dir=class_dir))
        return folder

    def _title(self, ctx: EvalContext) -> str:
        e = self.eval_cfg
        what = "base model" if ctx.step == 0 else "final" if ctx.final else "checkpoint"
        name = ctx.label or f"step {ctx.step} ({what})"
        return f"{name} | {e.scheduler}, {e.num_inference_steps} steps, guidance {e.guidance_scale}"


def _sample_name(prompt_index: int, seed: int) -> str:
    return f"{prompt_index:02d}_{seed}.png"


# ----------------------------------------------------------------------------- grid


def _wrap(text: str, font: Any, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` px; the last line ends in '...' when the text is cut."""
    words: list[str] = []
    for word in text.split():
        while len(word) > 1 and font.getlength(word) > width:  # hard-split words wider than the column
            cut = len(word) - 1
            while cut > 1 and font.getlength(word[:cut]) > width:
                cut -= 1
            words.append(word[:cut])
            word = word[cut:]
        words.append(word)
    lines: list[str] = []
    for word in words:
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and font.getlength(last + "...") > width:
            last = last[:-1]
        lines[-1] = last + "..."
    return lines or [""]


def make_grid(
    rows: list[tuple[str, list[Image.Image]]],
    *,
    title: str,
    reference: Sequence[Image.Image] = (),
    cell: int = 128,
    col_labels: Sequence[str] = (),
    gap: int = TILE_GAP,
) -> Image.Image:
    """A labelled sample grid: title, a strip of reference photos, column labels, then one row per prompt.

    Layout: width ``LABEL_W + cols·cell + (cols-1)·gap``; height ``TITLE_H + ref_rows·(cell//2) + GAP
    + head + len(rows)·cell + (len(rows)-1)·gap`` where ``cols`` is the longest row, ``head`` is
    ``COL_LABEL_H`` when ``col_labels`` are given (one per column, e.g. ``seed 0``) and 0 otherwise,
    and the reference strip holds as many half-cell photos per row as fit the samples' width, at most
    ``MAX_REF_ROWS`` rows (``ref_rows`` is 0 without reference photos). Tiles are ``gap`` pixels apart
    on the white background.
    """
    font = ImageFont.load_default()
    cols = max((len(images) for _, images in rows), default=1)
    inner = cols * cell + (cols - 1) * gap
    thumb = max(cell // 2, 1)
    per_ref_row = max(1, inner // thumb)
    ref_rows = min(MAX_REF_ROWS, math.ceil(len(reference) / per_ref_row))
    shown = list(reference)[: ref_rows * per_ref_row]
    ref_h = ref_rows * thumb
    head = COL_LABEL_H if col_labels else 0
    width = LABEL_W + inner
    height = TITLE_H + ref_h + GAP + head + len(rows) * cell + max(len(rows) - 1, 0) * gap
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    line_h = font.getbbox("Ag")[3] + 3

    draw.text((4, (TITLE_H - line_h) // 2 + 1), _wrap(title, font, width - 8, 1)[0], fill="black", font=font)
    if shown:
        ref_label = f"subject photos ({len(shown)} of {len(reference)})"
        for k, line in enumerate(_wrap(ref_label, font, LABEL_W - 8, max(1, ref_h // line_h))):
            draw.text((4, TITLE_H + 2 + k * line_h), line, fill="black", font=font)
        for k, image in enumerate(shown):
            r, c = divmod(k, per_ref_row)
            grid.paste(_fit(image, thumb), (LABEL_W + c * thumb, TITLE_H + r * thumb))
    top = TITLE_H + ref_h + GAP
    draw.line([(0, top - GAP // 2), (width, top - GAP // 2)], fill=(160, 160, 160), width=1)
    for c, text in enumerate(list(col_labels)[:cols]):
        line = _wrap(text, font, cell - 4, 1)[0]
        x = LABEL_W + c * (cell + gap) + max(0, (cell - int(font.getlength(line))) // 2)
        draw.text((x, top + (head - line_h) // 2 + 1), line, fill=(90, 90, 90), font=font)
    top += head
    for r, (label, images) in enumerate(rows):
        y = top + r * (cell + gap)
        for k, line in enumerate(_wrap(label, font, LABEL_W - 8, max(1, (cell - 4) // line_h))):
            draw.text((4, y + 2 + k * line_h), line, fill="black", font=font)
        for c, image in enumerate(images):
            grid.paste(_fit(image, cell), (LABEL_W + c * (cell + gap), y))
    return grid


def _fit(image: Image.Image, size: int) -> Image.Image:
    """Center-crop to a square and resize to ``size``."""
    w, h = image.size
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    return image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC, box=box)
