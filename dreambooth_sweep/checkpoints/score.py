"""Score a folder of checkpoints (× LoRA strengths) with the training evaluator; write a sweep's files.

    dreambooth-sweep score-checkpoints DIR model=sd15 data.instance_dir=... data.class_noun=dog
    python -m dreambooth_sweep.evaluate checkpoints.dir=DIR eval.lora_scales=[0.6,0.8,1.0,1.2]

The base model is loaded once; step 0 is scored on it untouched (the baseline of ``eval/score``), then
every checkpoint is applied (:mod:`~dreambooth_sweep.checkpoints.apply`), scored at each strength with
the same :class:`~dreambooth_sweep.evaluator.Evaluator` training uses (prompts, seeds, sampler,
metrics; all prompts at the last checkpoint of a run, the fixed subset in between) and taken off.

**What is written** (``<out>`` is the Hydra run dir, or ``checkpoints.out``): one *job folder* per
(run, strength), laid out like a Hydra multirun's, so the sweep report reads it like a sweep:
``<out>/<n>/eval_history.jsonl`` (a line per checkpoint: ``step``, ``lora_scale``, ``eval/*``),
``samples/step_XXXXXX.png`` grids and image folders, ``metrics.json`` (``objective``, ``best_step``) and
``.hydra/`` (the overrides that tell the jobs apart: ``checkpoints.run``, ``eval.lora_scale``). At the
top: every row in one ``eval_history.jsonl`` (with ``run`` and ``checkpoint``), ``checkpoints.json``
(step → file of every run), ``metrics.json`` (``objective``, ``best_step``, ``best_scale``,
``best_checkpoint``, the command to use it) and ``report/index.html``, whose step × strength heatmap is
the report's trials × steps heatmap.

**MLflow.** One (run, strength): one run whose step axis is the checkpoints' steps (grids on the image
step slider). Several: a parent run (the folder) and a child per (run, strength), named like
``lr1e-4 @ 0.8`` — strengths compare as lines in the UI and as rows in the report.

**--watch** (``checkpoints.watch=true``) scans every ``checkpoints.poll_s`` and scores new or changed
checkpoints as they are completed, until none came for ``checkpoints.watch_idle_s``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shlex
import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from dreambooth_sweep.checkpoints.apply import Applier, load_base
from dreambooth_sweep.checkpoints.discover import Checkpoint, Discovery, check, discover
from dreambooth_sweep.errors import ConfigError
from dreambooth_sweep.objective import best_of

__all__ = ["Job", "run_scoring", "score_checkpoints", "use_command"]

log = logging.getLogger("dreambooth_sweep.checkpoints")


@dataclass
class Job:
    """One (run, strength): a job folder, its tracker and its history."""

    number: int
    run: str
    scale: float
    folder: Path
    tracker: Any = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    files: dict[int, str] = field(default_factory=dict)  # step -> checkpoint path


def use_command(ckpt_path: str, kind: str, scale: float, cfg: Any) -> str:
    """The command that evaluates (and so loads) one checkpoint with this project's eval-only mode."""
    key = {"lora": "weights.lora", "embedding": "weights.embedding"}.get(kind, "weights.model_dir")
    parts = ["python -m dreambooth_sweep.evaluate", f"model={cfg.model.name}", f"{key}={ckpt_path}"]
    if kind == "lora" and scale != 1.0:
        parts.append(
            f"# LoRA strength {scale:g}: pipe.set_adapters(['default'], adapter_weights=[{scale:g}])"
        )
    return " ".join(shlex.quote(p) if not p.startswith("#") else p for p in parts)


class _Scorer:
    def __init__(self, cfg: DictConfig, out: Path) -> None:
        from dreambooth_sweep.data import load_instance_images
        from dreambooth_sweep.runtime import weight_dtype

        self.cfg, self.out = cfg, out
        self.scales = [float(s) for s in cfg.eval.lora_scales]
        if not self.scales or any(not math.isfinite(s) for s in self.scales):
            raise ConfigError("eval.lora_scales is empty or not finite: e.g. eval.lora_scales=[0.6,0.8,1.0]")
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = weight_dtype(cfg.train.mixed_precision)
        self.dtype = torch.float32 if self.device.type == "cpu" else dtype
        self.instance_images = load_instance_images(cfg.data)
        self.jobs: dict[tuple[str, float], Job] = {}
        self.stack = ExitStack()
        self.parent: Any = None
        self.base_result: Any = None
        self.scored: dict[Path, tuple[int, float]] = {}
        self.components: Any = None
        self.kinds: dict[str, str] = {}  # checkpoint path -> lora | full | embedding

    # -- setup

    def load(self) -> None:
        from dreambooth_sweep.evaluator import Evaluator

        comps = load_base(self.cfg)
        comps.family.check_sampler(self.cfg)
        for name in comps.module_names:
            module = getattr(comps, name)
            module.requires_grad_(False).to(self.device)
            if self.dtype != torch.float32:
                module.to(self.dtype)
        self.components = comps
        self.applier = Applier(comps, str(self.cfg.data.identifier), str(self.cfg.model.pretrained))
        self.evaluator = Evaluator(
            self.cfg, self.instance_images, self.out, Path(self.cfg.paths.cache_dir), self.device
        )

    def open_parent(self, many: bool) -> None:
        """The folder's parent MLflow run when there will be more than one job."""
        from dreambooth_sweep.tracking import start_tracking

        if not many or str(self.cfg.tracking.backend).lower() == "none":
            return
        cfg = self._cfg(
            self.out, run_name=self.cfg.tracking.run_name or f"score {Path(self.cfg.checkpoints.dir).name}"
        )
        self.parent = self.stack.enter_context(start_tracking(cfg))
        self.parent.set_tags({"dbs.role": "parent", "dbs.sweep_id": f"score:{self.out.resolve()}",
                              "checkpoints.dir": str(Path(self.cfg.checkpoints.dir).resolve())})  # fmt: skip

    def _cfg(
        self, output_dir: Path, *, run_name: str | None = None, parent: str | None = None, **extra: Any
    ) -> DictConfig:
        cfg = copy.deepcopy(self.cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir.resolve())
            cfg.tracking.run_name = run_name
            if parent:
                cfg.sweep.parent_run_id = parent
            for key, value in extra.items():
                OmegaConf.update(cfg, key, value, force_add=True)
        return cfg

    def job(self, run: str, scale: float, many: bool) -> Job:
        """The job of (run, strength), created with its folder, ``.hydra/`` and tracker on first use."""
        from dreambooth_sweep.tracking import start_tracking

        key = (run, scale)
        if key in self.jobs:
            return self.jobs[key]
        number = len(self.jobs)
        folder = self.out / str(number) if many else self.out / "0"
        job = self.jobs[key] = Job(number, run, scale, folder)
        folder.mkdir(parents=True, exist_ok=True)
        overrides = [f"checkpoints.dir={Path(self.cfg.checkpoints.dir).resolve()}"]
        if run:
            overrides.append(f"checkpoints.run={_quote(run)}")
        if len(self.scales) > 1:
            overrides.append(f"eval.lora_scale={scale:g}")
        name = " @ ".join(p for p in (run, f"{scale:g}" if len(self.scales) > 1 else "") if p) or None
        cfg = self._cfg(
            folder,
            run_name=name or self.cfg.tracking.run_name,
            parent=self.parent.run_id if self.parent is not None else None,
        )
        (folder / ".hydra").mkdir(exist_ok=True)
        (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        (folder / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=False))
        (folder / ".hydra" / "hydra.yaml").write_text(
            yaml.safe_dump(
                {
                    "hydra": {
                        "job": {"num": number, "name": "score_checkpoints"},
                        "runtime": {"cwd": str(Path.cwd())},
                    }
                }
            )
        )
        (folder / "eval_history.jsonl").write_text("")
        job.tracker = self.stack.enter_context(start_tracking(cfg))
        job.tracker.set_tags(
            {"hydra.job_num": str(number), "checkpoints.run": run, "lora_scale": f"{scale:g}"}
        )
        job.tracker.log_params({"eval.lora_scale": scale, "checkpoints.run": run or "."})
        self._record(job, self._base_row(job), self.base_result, None)
        return job

    # -- scoring

    def score_base(self) -> None:
        from dreambooth_sweep.evaluator import EvalContext

        comps = self.components
        self.evaluator.sample_root = self.out / "base" / "samples"
        self.evaluator.sample_root.mkdir(parents=True, exist_ok=True)
        live = {name: getattr(comps, name) for name in comps.module_names}
        first = live[comps.family.text_encoders[0]]
        ctx = EvalContext(0, False, comps, comps.denoiser, first, self.device, self.dtype, modules=live)
        self.base_result = self.evaluator(ctx)

    def _base_row(self, job: Job) -> dict[str, Any]:
        samples = job.folder / "samples"
        samples.mkdir(exist_ok=True)
        shutil.copy2(self.base_result.grid_path, samples / "step_000000.png")
        shutil.copytree(self.base_result.sample_dir, samples / "step_000000", dirs_exist_ok=True)
        return {"step": 0, "lora_scale": job.scale, **self.base_result.metrics}

    def _record(self, job: Job, row: dict[str, Any], result: Any, ckpt: Checkpoint | None) -> None:
        step = int(row["step"])
        job.rows.append(row)
        with open(job.folder / "eval_history.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        top = {**row, "run": job.run, "checkpoint": str(ckpt.path) if ckpt else "base model"}
        with open(self.out / "eval_history.jsonl", "a") as fh:
            fh.write(json.dumps(top) + "\n")
        metrics = {k: v for k, v in row.items() if k not in ("step", "lora_scale")}
        job.tracker.log_metrics(metrics, step=step)
        if result is not None and getattr(result, "grid", None) is not None:
            job.tracker.log_image(result.grid, key="samples", step=step)
        if ckpt is not None:  # the file to load (a folder's LoRA / embedding file, else the folder)
            job.files[step] = str(ckpt.parts.get("lora") or ckpt.parts.get("embedding") or ckpt.path)

    def score(self, ckpt: Checkpoint, final: bool, many: bool, bar: Any) -> None:
        from dreambooth_sweep.evaluator import EvalContext

        scales = self.scales if ckpt.kind == "lora" else [1.0]
        with self.applier.applied(ckpt) as on:
            for scale in scales:
                job = self.job(ckpt.run, scale, many)
                on.set_scale(scale)
                self.evaluator.sample_root = job.folder / "samples"
                ctx = EvalContext(
                    int(ckpt.step or 0),
                    final,
                    on.components,
                    on.unet,
                    on.text_encoder,
                    self.device,
                    self.dtype,
                    modules=on.modules,
                )
                result = self.evaluator(ctx)
                row = {"step": int(ckpt.step or 0), "lora_scale": scale, **result.metrics}
                self._record(job, row, result, ckpt)
                bar.update(1)
                bar.set_postfix_str(
                    f"{ckpt.label} @ {scale:g}: score {result.metrics.get('eval/score', float('nan')):.4f}"
                )
        self.scored[ckpt.path] = ckpt.signature

    # -- results

    def finish(self) -> dict[str, Any]:
        maximize = True
        cells = [(job, row) for job in self.jobs.values() for row in job.rows]
        for job in self.jobs.values():
            best = best_of(
                job.rows,
                score=lambda r: r.get("eval/score"),
                step=lambda r: int(r["step"]),
                maximize=maximize,
            )
            last = job.rows[-1]
            results = {
                "objective": float(best["eval/score"]) if best else float("nan"),
                "best_step": float(best["step"]) if best else float("nan"),
                "final_step": float(last["step"]),
                "lora_scale": job.scale,
                **{k: v for k, v in last.items() if k.startswith("eval")},
            }
            (job.folder / "metrics.json").write_text(json.dumps(results, indent=2, sort_keys=True))
            (job.folder / "checkpoints.json").write_text(json.dumps(job.files, indent=2))
            job.tracker.log_summary({"best/score": results["objective"], "best/step": results["best_step"],
                                     "best/lora_scale": job.scale})  # fmt: skip
        best = best_of(
            cells, score=lambda c: c[1].get("eval/score"), step=lambda c: int(c[1]["step"]), maximize=maximize
        )
        summary: dict[str, Any] = {"objective": float("nan"), "best_step": float("nan")}
        if best is not None:
            job, row = best
            path = job.files[int(row["step"])]
            summary = {
                "objective": float(row["eval/score"]),
                "best_step": float(row["step"]),
                "best_scale": job.scale,
                "best_run": job.run,
                "best_checkpoint": path,
                "command": use_command(path, self.kinds.get(path, ""), job.scale, self.cfg),
            }
        runs = {job.run: job.files for job in self.jobs.values()}
        (self.out / "checkpoints.json").write_text(json.dumps(runs, indent=2))
        (self.out / "metrics.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
        if self.parent is not None and best is not None:
            self.parent.log_summary({"best/score": summary["objective"], "best/step": summary["best_step"],
                                     "best/lora_scale": summary["best_scale"], "best/checkpoint": summary["best_checkpoint"]})  # fmt: skip
        return summary


def _quote(value: str) -> str:
    return value if all(c.isalnum() or c in "._-/" for c in value) else "'" + value.replace("'", "") + "'"


def _scan(cfg: Any, *, strict: bool) -> Discovery:
    c = cfg.checkpoints
    return discover(c.dir, settle_s=float(c.settle_s), incomplete_s=float(c.incomplete_s), strict=strict)


def score_checkpoints(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Score ``cfg.checkpoints.dir`` into ``out`` (see the module docstring); returns the top metrics."""
    from tqdm.auto import tqdm

    c = cfg.checkpoints
    watch = bool(c.watch)
    found = _scan(cfg, strict=not watch)
    if not watch and found.pending:  # a trainer may be finishing a file: give it one settle period
        time.sleep(float(c.settle_s))
        found = _scan(cfg, strict=True)
        for path in found.pending:
            log.warning("skipped %s: still being written (score it later, or use --watch)", path)
    scales = [float(s) for s in cfg.eval.lora_scales]
    if len(scales) > 1 and any(ck.kind != "lora" for ck in found.checkpoints):
        other = next(ck for ck in found.checkpoints if ck.kind != "lora")
        raise ConfigError(
            f"eval.lora_scales={scales} needs LoRA checkpoints, but {other.path.name} is a {other.kind} "
            "checkpoint: leave eval.lora_scales at [1.0] for this folder"
        )
    (out / "eval_history.jsonl").write_text("")
    scorer = _Scorer(cfg, out)
    many = (
        watch
        or len(found.runs()) * (len(scales) if any(ck.kind == "lora" for ck in found.checkpoints) else 1) > 1
    )
    with scorer.stack:
        scorer.load()
        for ckpt in found.checkpoints:  # before step 0: a folder for another base fails at once
            scorer.applier.check_fit(ckpt)
        scorer.open_parent(many)
        total = 1 + sum(len(scales) if ck.kind == "lora" else 1 for ck in found.checkpoints)
        with tqdm(total=total, desc="score", unit="ckpt", dynamic_ncols=True) as bar:
            scorer.score_base()
            bar.update(1)
            _score_all(scorer, found, many, bar, watch=False)
            if watch:
                _watch(scorer, cfg, many, bar)
        if not scorer.jobs:
            check(Discovery(root=Path(c.dir), checkpoints=[], pending=found.pending))
        summary = scorer.finish()
    summary["report"] = _report(out)  # after the runs are closed: the report reads their final states
    return summary


def _score_all(scorer: _Scorer, found: Discovery, many: bool, bar: Any, *, watch: bool) -> int:
    n = 0
    for members in found.runs().values():
        for index, ckpt in enumerate(members):
            if scorer.scored.get(ckpt.path) == ckpt.signature:
                continue
            scorer.applier.check_fit(ckpt)
            scorer.kinds[str(ckpt.parts.get("lora") or ckpt.parts.get("embedding") or ckpt.path)] = ckpt.kind
            final = ckpt.final if watch else index == len(members) - 1
            log.info("%s: step %s (%s, %s)", ckpt.label, ckpt.step, ckpt.format, ckpt.step_source)
            scorer.score(ckpt, final, many, bar)
            n += 1
    return n


def _watch(scorer: _Scorer, cfg: Any, many: bool, bar: Any) -> None:
    """Score checkpoints as they appear until none came for ``checkpoints.watch_idle_s``."""
    c = cfg.checkpoints
    idle_since = time.monotonic()
    scales = len(scorer.scales)
    while time.monotonic() - idle_since < float(c.watch_idle_s):
        time.sleep(float(c.poll_s))
        found = _scan(cfg, strict=False)
        new = [ck for ck in found.checkpoints if scorer.scored.get(ck.path) != ck.signature]
        waiting = len(found.pending)
        bar.set_description(f"score (watching, {waiting} being written)" if waiting else "score (watching)")
        if not new:
            continue
        check(Discovery(root=found.root, checkpoints=[*found.checkpoints]))  # mixed bases: stop with one line
        bar.total += sum(scales if ck.kind == "lora" else 1 for ck in new)
        bar.refresh()
        _score_all(scorer, Discovery(root=found.root, checkpoints=new), many, bar, watch=True)
        idle_since = time.monotonic()


def _report(out: Path) -> str | None:
    from dreambooth_sweep.report import build_report

    try:
        return str(build_report(out))
    except (
        Exception
    ) as exc:  # the scores are written; the report can be rebuilt with `dreambooth-sweep report`
        log.warning("could not build the report of %s: %s", out, exc)
        return None


def run_scoring(cfg: DictConfig) -> dict[str, float]:
    """The ``checkpoints.dir`` mode of ``python -m dreambooth_sweep.evaluate``: score, print where it all is."""
    from dreambooth_sweep.config import validate
    from dreambooth_sweep.runtime import resolve_output_dir, set_cpu_threads
    from dreambooth_sweep.tracking import resolve_uri

    validate(cfg)
    set_cpu_threads(cfg.train.num_threads)
    if cfg.checkpoints.out:
        out = Path(cfg.checkpoints.out).expanduser()
        out.mkdir(parents=True, exist_ok=True)
    else:
        out = resolve_output_dir(cfg)
    summary = score_checkpoints(cfg, out)
    lines = [f"scored {Path(cfg.checkpoints.dir)} into {out} (eval_history.jsonl, samples/, metrics.json)"]
    if summary.get("best_checkpoint"):
        scale = f", LoRA strength {summary['best_scale']:g}" if len(cfg.eval.lora_scales) > 1 else ""
        lines.append(
            f"sweet spot: {summary['best_checkpoint']} (step {int(summary['best_step'])}{scale}, "
            f"eval/score {summary['objective']:.4f})"
        )
        lines.append(f"use it:     {summary['command']}")
    if summary.get("report"):
        lines.append(f"report:     {summary['report']}")
    if str(cfg.tracking.backend).lower() == "mlflow":
        lines.append(f"MLflow:     make ui   (or: mlflow ui --backend-store-uri {resolve_uri(cfg)})")
    print("\n".join(lines))
    return {k: float(v) for k, v in summary.items() if isinstance(v, int | float)}
