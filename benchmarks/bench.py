"""Whole-process benchmark on the tiny model: this trainer against diffusers' DreamBooth script.

    make bench [DIFFUSERS=path/to/diffusers/checkout] [BENCH_ARGS="--repeats 5 --steps 200"]
    .venv/bin/python benchmarks/bench.py [--diffusers PATH] [--steps N] [--grid-steps N] [--repeats R]

Measures whole processes — wall time from launch to exit and peak resident memory (``wait4``'s
``ru_maxrss``) — so imports, model loading, class images, saving and tracking all count, as they do for
a user. Three comparisons, at equal settings (64 px, batch 2 + 2 class images, lr, seed, constant
schedule, no validation/evaluation, fp32 on the CPU):

1. **single run**, N steps, class images already cached: ``python -m dreambooth_sweep.train`` vs
   ``train_dreambooth.py``, both logging to MLflow (ours by default; the script with
   ``--report_to=mlflow``, accelerate's tracker, into its own SQLite store) and both logging nothing
   (``tracking=none``; the script's default TensorBoard tracker, which logs nothing without tensorboard);
2. **the Hugging Face DreamBooth study's 2×2 object grid** (lr 5e-6 / 2e-6 × two synthetic subjects), prior preservation with one
   shared class-image folder that starts empty: one Hydra multirun (basic launcher: the four trials run
   in one process, loading the base model once) vs four script runs, one after another;
3. **evaluation cost** (ours only): one checkpoint evaluation at the default evaluation settings (DDIM
   50 steps, guidance 7.5, 4 prompts × 2 seeds + 4 class-prompt images; all 25 prompts at step 0 and
   the last step) with the tiny CLIP/DINO models, and one fixed-noise validation loss
   (``eval.val_loss_*`` defaults), against one training step;
4. **evaluation share of a default demo trial** (ours only): one ``experiment=demo`` run (tiny model,
   prior preservation, 30 steps, images and metrics every 10 steps, validation loss every 10,
   ``tracking=none``) timed from inside: the share of its wall time (``train()``, model loading to the
   saved model) spent sampling and scoring images and computing the validation loss; targets: the
   validation loss at most 1 training step per evaluation, all evaluation at most 30 % of the trial.

Runs are interleaved (ours, script, ..., in an order reversed every repeat) after one warm-up run of
each (MLflow stores created, files in the page cache); each figure is the median of ``--repeats``;
the speed-up column is the median of the *paired* ratios (each script run over the ours run beside
it), which stays steady when other work on the machine slows everything down for a while.
Without ``--diffusers`` the script columns are skipped with a message. The diffusers checkout is only
read (``examples/dreambooth/train_dreambooth.py``), never copied into this project.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
SCRIPT_IN_CHECKOUT = Path("examples/dreambooth/train_dreambooth.py")
RUNNER = Path(__file__).with_name("run_diffusers_script.py")

# Equal settings for both trainers.
RESOLUTION = 64
BATCH = 2  # instance images per step; prior preservation adds as many class images
LR_SINGLE = 1e-4
GRID_LRS = (5e-6, 2e-6)  # the Hugging Face DreamBooth study's objects
NUM_CLASS = 8
INSTANCE_PROMPT, CLASS_PROMPT = "a photo of sks toy", "a photo of toy"
SEED = 0


THREADS = 1  # torch threads of every process (--threads); 0: torch's default (one per core)


@dataclass
class Run:
    wall: float  # seconds from launch to exit
    cpu: float  # user + system seconds
    rss_mb: float  # peak resident memory


@dataclass
class Row:
    label: str
    ours: list[Run] = field(default_factory=list)
    script: list[Run] = field(default_factory=list)

    @staticmethod
    def _median(runs: list[Run], attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in runs) if runs else float("nan")

    def summary(self) -> dict[str, float]:
        paired = [s.wall / o.wall for o, s in zip(self.ours, self.script, strict=False)]
        paired_cpu = [s.cpu / o.cpu for o, s in zip(self.ours, self.script, strict=False)]
        return {
            "ours_s": self._median(self.ours, "wall"),
            "script_s": self._median(self.script, "wall"),
            "speedup": statistics.median(paired) if paired else float("nan"),
            "ours_cpu": self._median(self.ours, "cpu"),
            "script_cpu": self._median(self.script, "cpu"),
            "cpu_speedup": statistics.median(paired_cpu) if paired_cpu else float("nan"),
            "ours_mb": self._median(self.ours, "rss_mb"),
            "script_mb": self._median(self.script, "rss_mb"),
        }


def run(cmd: list[str], log: Path, *, env: dict[str, str] | None = None) -> Run:
    """One process to completion: wall seconds and peak RSS (its own ``wait4`` usage)."""
    full = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONUNBUFFERED": "1"}
    if THREADS:
        full.update(OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS))
    full.update(env or {})
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=full)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"bench: command failed ({proc.returncode}): {' '.join(cmd)}\n--- {log} ---\n{tail}")
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)  # Linux: maxrss in KiB


# ----------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class Variant:
    """One pair of equal settings: our overrides and the script's extra arguments."""

    label: str
    ours: tuple[str, ...]
    script: tuple[str, ...]
    script_mlflow: bool = False  # the script logs to an MLflow store of its own in the bench folder

    @property
    def tag(self) -> str:  # a folder name (Hydra's override grammar refuses '=' inside a path value)
        return self.label.replace(" ", "-")


# Both trainers log to MLflow (ours by default; the script through accelerate's MLflow tracker, loss and
# lr every step), or neither does. The script's default tracker is TensorBoard: when it is not installed
# accelerate logs nothing, which is the fair opposite of tracking=none.
VARIANTS = (
    Variant("MLflow", (), ("--report_to=mlflow",), script_mlflow=True),
    Variant("no tracking", ("tracking=none",), ("--report_to=tensorboard",)),
)


def ours_cmd(
    work: Path,
    out: Path,
    subject: Path | str,
    class_dir: Path,
    *,
    steps: int,
    lr: float | str,
    extra: tuple[str, ...] = (),
    multirun: bool = False,
) -> list[str]:
    where = [f"hydra.sweep.dir={out}"] if multirun else [f"paths.output_dir={out}", f"hydra.run.dir={out}"]
    return [
        PY, "-m", "dreambooth_sweep.train", *(["-m"] if multirun else []),
        "model=tiny", "data=subject", f"data.instance_dir={subject}", "data.class_noun=toy", "data.identifier=sks",
        "prior=on", f"prior.num_class_images={NUM_CLASS}", f"prior.class_dir={class_dir}",
        f"train.max_steps={steps}", f"train.batch_size={BATCH}", f"train.lr={lr}", f"train.seed={SEED}",
        "train.lr_scheduler=constant", "train.lr_warmup_steps=0", "eval.enabled=false",
        f"paths.root_dir={work}", f"paths.cache_dir={ROOT / '.cache'}", *where,
        *([f"train.num_threads={THREADS}"] if THREADS else []), *extra,
    ]  # fmt: skip


def script_cmd(
    script: Path,
    model: Path,
    out: Path,
    subject: Path,
    class_dir: Path,
    *,
    steps: int,
    lr: float,
    extra: tuple[str, ...] = (),
) -> list[str]:
    return [
        PY, str(RUNNER), str(script),
        f"--pretrained_model_name_or_path={model}", f"--instance_data_dir={subject}",
        f"--instance_prompt={INSTANCE_PROMPT}", "--with_prior_preservation", f"--class_data_dir={class_dir}",
        f"--class_prompt={CLASS_PROMPT}", f"--num_class_images={NUM_CLASS}", f"--resolution={RESOLUTION}",
        "--center_crop", f"--train_batch_size={BATCH}", f"--max_train_steps={steps}", f"--learning_rate={lr}",
        "--lr_scheduler=constant", "--lr_warmup_steps=0", f"--seed={SEED}", f"--output_dir={out}",
        f"--checkpointing_steps={steps + 1}", *extra,
    ]  # fmt: skip


def script_env(work: Path, variant: Variant) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": f"sqlite:///{work / 'script_mlflow.db'}"} if variant.script_mlflow else {}


# ----------------------------------------------------------------------------- benchmarks


def _interleaved(
    rows: list[Row],
    repeats: int,
    ours: Callable[[int, Variant], Run],
    theirs: Callable[[int, Variant], Run] | None,
) -> None:
    """Every variant's ours and script runs, in an order reversed every repeat (drift hits both sides)."""
    order = [(k, side) for k in range(len(VARIANTS)) for side in ("ours", "script")]
    for i in range(repeats):
        for k, side in order if i % 2 == 0 else order[::-1]:
            if side == "ours":
                rows[k].ours.append(ours(i, VARIANTS[k]))
            elif theirs is not None:
                rows[k].script.append(theirs(i, VARIANTS[k]))
        figures = []
        for row, variant in zip(rows, VARIANTS, strict=True):
            script_s = f" vs script {row.script[-1].wall:.1f}s" if row.script else ""
            figures.append(f"{variant.label}: ours {row.ours[-1].wall:.1f}s{script_s}")
        print(f"  repeat {i + 1}/{repeats}: " + "; ".join(figures), flush=True)


def warm_up(work: Path, model: Path, subjects: list[Path], script: Path | None) -> None:
    """One short run of each trainer and variant: MLflow stores created, files in the page cache."""
    folder = work / "warm_up"
    folder.mkdir(parents=True)
    print("warm-up runs (MLflow stores, file cache) ...", flush=True)
    for v in VARIANTS:  # each trainer keeps its own class-image folder (ours adds a cache.json)
        run(ours_cmd(work, folder / f"ours_{v.tag}", subjects[0], folder / "classes_ours", steps=2, lr=LR_SINGLE, extra=v.ours),
            folder / f"ours_{v.tag}.log")  # fmt: skip
        if script is not None:
            cmd = script_cmd(script, model, folder / f"script_{v.tag}", subjects[0], folder / "classes_script", steps=2,
                             lr=LR_SINGLE, extra=v.script)  # fmt: skip
            run(cmd, folder / f"script_{v.tag}.log", env=script_env(work, v))


def bench_single(
    args: argparse.Namespace, steps: int, work: Path, model: Path, subjects: list[Path], script: Path | None
) -> list[Row]:
    """One training run each, class images already generated (each trainer's own folder, made before)."""
    folder = work / f"single_{steps}"
    folder.mkdir(parents=True)
    ours_classes, script_classes = folder / "classes_ours", folder / "classes_script"
    rows = [Row(f"single run, {steps} steps, {v.label}") for v in VARIANTS]

    def ours(i: int, v: Variant) -> Run:
        name = f"ours_{v.tag}_{i}"
        cmd = ours_cmd(
            work, folder / name, subjects[0], ours_classes, steps=steps, lr=LR_SINGLE, extra=v.ours
        )
        return run(cmd, folder / f"{name}.log")

    def theirs(i: int, v: Variant) -> Run:
        name = f"script_{v.tag}_{i}"
        cmd = script_cmd(script, model, folder / name, subjects[0], script_classes, steps=steps, lr=LR_SINGLE,
                         extra=v.script)  # type: ignore[arg-type]  # fmt: skip
        return run(cmd, folder / f"{name}.log", env=script_env(work, v))

    print(f"single run, {steps} steps: class images first (not timed) ...", flush=True)
    ours(-1, VARIANTS[-1])
    if script is not None:
        theirs(-1, VARIANTS[-1])
    _interleaved(rows, args.repeats, ours, theirs if script is not None else None)
    return rows


def bench_grid(
    args: argparse.Namespace, work: Path, model: Path, subjects: list[Path], script: Path | None
) -> list[Row]:
    """Our one Hydra multirun (the basic launcher runs the four trials in its one process, loading the base
    model once) vs four script runs one after another; each repeat starts with an empty class-image folder
    that all four trials share."""
    folder = work / "grid"
    folder.mkdir(parents=True)
    steps = args.grid_steps
    rows = [Row(f"2x2 grid (lr 5e-6,2e-6 x 2 subjects), {steps} steps/trial, {v.label}") for v in VARIANTS]
    lrs = ",".join(str(lr) for lr in GRID_LRS)
    both = ",".join(str(s) for s in subjects)

    def ours(i: int, v: Variant) -> Run:
        rep = folder / f"ours_{v.tag}_{i}"
        cmd = ours_cmd(work, rep, both, rep / "classes", steps=steps, lr=lrs, extra=v.ours, multirun=True)
        return run(cmd, folder / f"{rep.name}.log")

    def theirs(i: int, v: Variant) -> Run:
        rep = folder / f"script_{v.tag}_{i}"
        runs = []
        for s, subject in enumerate(subjects):
            for lr in GRID_LRS:
                name = f"{s}_{lr}"
                cmd = script_cmd(script, model, rep / name, subject, rep / "classes", steps=steps, lr=lr,
                                 extra=v.script)  # type: ignore[arg-type]  # fmt: skip
                runs.append(run(cmd, folder / f"{rep.name}_{name}.log", env=script_env(work, v)))
        return Run(sum(r.wall for r in runs), sum(r.cpu for r in runs), max(r.rss_mb for r in runs))

    print(f"2x2 grid, {steps} steps per trial, class images generated in each repeat:", flush=True)
    _interleaved(rows, args.repeats, ours, theirs if script is not None else None)
    return rows


def bench_eval(args: argparse.Namespace, work: Path, subjects: list[Path]) -> dict[str, float]:
    """Seconds per checkpoint evaluation and per training step, from inside one run (the child below)."""
    folder = work / "eval"
    folder.mkdir(parents=True)
    results = []
    for i in range(args.repeats):
        out = folder / f"run{i}"
        cmd = [
            PY,
            str(Path(__file__)),
            "--eval-child",
            str(out),
            str(subjects[0]),
            str(work),
            str(args.eval_every),
        ]
        cmd += ["--threads", str(THREADS)]
        run(cmd, folder / f"run{i}.log")
        results.append(json.loads((out / "eval_timing.json").read_text()))
    return {k: statistics.median(r[k] for r in results) for k in results[0]}


def eval_child(out: Path, subject: Path, work: Path, every: int) -> None:
    """Child process of bench_eval: one run with the default evaluation (tiny metric models), timed."""
    from hydra import compose, initialize_config_dir

    from dreambooth_sweep import evaluate
    from dreambooth_sweep.train import train

    overrides = [
        "model=tiny", "eval=default", "eval.clip_model=tiny", "eval.dino_model=tiny", f"eval.every_n_steps={every}",
        "data=subject", f"data.instance_dir={subject}", "data.class_noun=toy", "tracking=none", "prior=off",
        f"train.max_steps={2 * every}", f"train.batch_size={BATCH}", f"train.lr={LR_SINGLE}", "train.save_final=false",
        f"paths.root_dir={work}", f"paths.cache_dir={ROOT / '.cache'}", f"paths.output_dir={out}",
        *([f"train.num_threads={THREADS}"] if THREADS else []),
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
        second = compose(
            "train", overrides=[*overrides, f"train.lr={LR_SINGLE / 2}", f"paths.output_dir={out}_2"]
        )
    from dreambooth_sweep.val_loss import ValidationLoss

    spans: list[tuple[int, float, float]] = []  # (step, start, end) of each evaluation
    val_spans: list[float] = []  # seconds of each validation loss
    _time_calls(evaluate.Evaluator, lambda ctx, b, e: spans.append((ctx.step, b, e)))
    _time_calls(ValidationLoss, lambda live, b, e: val_spans.append(e - b))
    results = train(cfg)
    (s0, b0, e0), (s1, b1, e1), (s2, b2, e2) = spans
    # a step's wall time from the run's own counter (evaluation and checkpoints left out)
    step_s = 1.0 / results["perf/train_steps_per_s"]
    timing = {"train_step_s": step_s, "eval_full_s": e0 - b0, "eval_checkpoint_s": e1 - b1}
    timing["val_loss_s"] = statistics.median(val_spans)
    spans.clear()
    train(second)  # the next trial in this process: its step 0 reuses the first one's samples
    timing["eval_step0_reused_s"] = spans[0][2] - spans[0][1]
    (out / "eval_timing.json").write_text(json.dumps(timing))


def _time_calls(cls: type, record: Callable[..., None]) -> None:
    """Wrap ``cls.__call__`` so each call reports ``record(first_arg, start, end)``."""
    real = cls.__call__

    def timed(self, arg):  # noqa: ANN001
        start = time.perf_counter()
        result = real(self, arg)
        record(arg, start, time.perf_counter())
        return result

    cls.__call__ = timed  # type: ignore[method-assign]


def bench_demo(args: argparse.Namespace, work: Path) -> dict[str, float]:
    """The evaluation share of a default demo trial, from inside one run per repeat (the child below)."""
    folder = work / "demo"
    folder.mkdir(parents=True)
    results = []
    for i in range(args.repeats + 1):  # run 0 fills the class-image cache: a sweep's later trials reuse it
        out = folder / f"run{i}"
        cmd = [PY, str(Path(__file__)), "--demo-child", str(out), str(work), "--threads", str(THREADS)]
        run(cmd, folder / f"run{i}.log")
        if i > 0:
            results.append(json.loads((out / "demo_timing.json").read_text()))
    return {k: statistics.median(r[k] for r in results) for k in results[0]}


def demo_child(out: Path, work: Path) -> None:
    """Child process of bench_demo: one ``experiment=demo`` trial, its evaluation timed."""
    from hydra import compose, initialize_config_dir

    from dreambooth_sweep import evaluate
    from dreambooth_sweep.train import train
    from dreambooth_sweep.val_loss import ValidationLoss

    overrides = [
        "experiment=demo", "tracking=none", f"paths.root_dir={work}", f"paths.cache_dir={ROOT / '.cache'}",
        f"paths.output_dir={out}", *([f"train.num_threads={THREADS}"] if THREADS else []),
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    images: list[float] = []
    val: list[float] = []
    _time_calls(evaluate.Evaluator, lambda ctx, b, e: images.append(e - b))
    _time_calls(ValidationLoss, lambda live, b, e: val.append(e - b))
    real_init = ValidationLoss.__init__
    built: list[float] = []
    examples: list[int] = []

    def timed_init(self, *a, **kw):  # noqa: ANN001, ANN002, ANN003
        start = time.perf_counter()
        real_init(self, *a, **kw)
        built.append(time.perf_counter() - start)
        examples.append(len(self.examples))

    ValidationLoss.__init__ = timed_init  # type: ignore[method-assign]
    start = time.perf_counter()
    results = train(cfg)
    wall = time.perf_counter() - start
    timing = {
        "wall_s": wall,
        "images_s": sum(images),
        "image_evals": len(images),
        "val_s": sum(val) + sum(built),
        "val_build_s": sum(built),
        "val_evals": len(val),
        "val_per_eval_s": statistics.median(val) if val else float("nan"),
        "val_examples": examples[0] if examples else 0,
        "train_step_s": 1.0 / results["perf/train_steps_per_s"],
        "steps": results["final_step"],
    }
    (out / "demo_timing.json").write_text(json.dumps(timing))


# ----------------------------------------------------------------------------- report


def fmt(x: float, spec: str = ".1f") -> str:
    return "—" if x != x else format(x, spec)  # NaN: not measured


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--diffusers", default="", help="diffusers checkout (git clone): examples/dreambooth/ is read from it"
    )
    ap.add_argument(
        "--steps", type=lambda v: [int(x) for x in v.split(",")], default=[100, 400],
        help="training steps of the single runs, comma-separated (one comparison each)",
    )  # fmt: skip
    ap.add_argument("--grid-steps", type=int, default=50, help="training steps of each 2x2 grid trial")
    ap.add_argument("--repeats", type=int, default=3, help="runs per figure (medians are reported)")
    ap.add_argument(
        "--eval-every", type=int, default=10, help="steps between checkpoints in the eval-cost run"
    )
    ap.add_argument("--only", default="single,grid,eval,demo", help="comma list of: single, grid, eval, demo")
    ap.add_argument(
        "--threads", type=int, default=1,
        help="torch threads of every process, both trainers (0: one per core). 1 by default: on a shared machine a "
        "2-thread team stalls whenever another process holds a core, which swings timings 10x",
    )  # fmt: skip
    ap.add_argument("--work", default=str(ROOT / "outputs" / "bench"), help="scratch folder (emptied first)")
    ap.add_argument("--eval-child", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--demo-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    global THREADS
    THREADS = args.threads
    if args.eval_child:
        out, subject, work, every = args.eval_child
        eval_child(Path(out), Path(subject), Path(work), int(every))
        return
    if args.demo_child:
        demo_child(Path(args.demo_child[0]), Path(args.demo_child[1]))
        return

    from dreambooth_sweep.demo_data import make_demo_data
    from dreambooth_sweep.tiny import ensure_tiny

    script = None
    if args.diffusers:
        script = Path(args.diffusers).expanduser() / SCRIPT_IN_CHECKOUT
        if not script.is_file():
            raise SystemExit(f"bench: {script} not found: DIFFUSERS must be a diffusers checkout (git clone)")
    else:
        print("bench: no diffusers checkout given (make bench DIFFUSERS=path): script columns skipped")
    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    model = ensure_tiny("sd", ROOT / ".cache")
    subjects = [
        make_demo_data(work / f"subject_{seed}", num_images=8, seed=seed)[0].parent for seed in (1, 2)
    ]
    only = set(args.only.split(","))
    started = time.perf_counter()

    if script is not None and importlib.util.find_spec("tensorboard") is not None:
        print("bench: tensorboard is installed, so the script's 'no tracking' runs log to TensorBoard")
    if only & {"single", "grid"}:
        warm_up(work, model, subjects, script)
    rows: list[Row] = []
    if "single" in only:
        for steps in args.steps:
            rows += bench_single(args, steps, work, model, subjects, script)
    if "grid" in only:
        rows += bench_grid(args, work, model, subjects, script)
    evaluation = bench_eval(args, work, subjects) if "eval" in only else None
    demo = bench_demo(args, work) if "demo" in only else None

    import platform

    import torch

    print()
    threads = f"{THREADS} torch thread(s) per process" if THREADS else "torch's default threads"
    print(
        f"# dreambooth-sweep vs diffusers train_dreambooth.py — tiny model, CPU ({os.cpu_count()} cores, {threads}, "
        f"torch {torch.__version__}, Python {platform.python_version()}), median of {args.repeats}"
    )
    print()
    print(
        "| comparison | ours wall (s) | script wall (s) | speed-up (wall) | ours CPU (s) | script CPU (s) "
        "| speed-up (CPU) | ours peak RSS (MB) | script peak RSS (MB) | memory ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    summaries = {}
    for row in rows:
        s = summaries[row.label] = row.summary()
        print(f"| {row.label} | {fmt(s['ours_s'])} | {fmt(s['script_s'])} | {fmt(s['speedup'], '.2f')}x "
              f"| {fmt(s['ours_cpu'])} | {fmt(s['script_cpu'])} | {fmt(s['cpu_speedup'], '.2f')}x "
              f"| {fmt(s['ours_mb'], '.0f')} | {fmt(s['script_mb'], '.0f')} | {fmt(s['ours_mb'] / s['script_mb'], '.2f')} |")  # fmt: skip
    if evaluation:
        e = evaluation
        print()
        print("| evaluation (ours, default settings, tiny CLIP/DINO) | seconds | in training steps |")
        print("|---|---:|---:|")
        print(f"| one training step (batch {BATCH}) | {e['train_step_s']:.3f} | 1 |")
        print(
            f"| checkpoint: 4 prompts x 2 seeds + 4 class images, DDIM 50 | {e['eval_checkpoint_s']:.2f} | {e['eval_checkpoint_s'] / e['train_step_s']:.0f} |"
        )
        print(
            f"| step 0 / last step: 25 prompts x 2 seeds + 4 class images | {e['eval_full_s']:.2f} | {e['eval_full_s'] / e['train_step_s']:.0f} |"
        )
        print(f"| step 0 of a later trial in the same process (samples reused, scored anew) | {e['eval_step0_reused_s']:.2f} | {e['eval_step0_reused_s'] / e['train_step_s']:.0f} |")  # fmt: skip
        print(f"| validation loss (eval.val_loss_* defaults) | {e['val_loss_s']:.3f} | {e['val_loss_s'] / e['train_step_s']:.2f} |")  # fmt: skip
    if demo:
        d = demo
        total = d["images_s"] + d["val_s"]
        print()
        print(f"| default demo trial (experiment=demo, {d['steps']:.0f} steps, tracking=none) | seconds | share of the trial |")  # fmt: skip
        print("|---|---:|---:|")
        print(f"| whole trial: train(), model loading to saved model | {d['wall_s']:.2f} | 100 % |")
        print(f"| images: sampling + metrics, {d['image_evals']:.0f} evaluations | {d['images_s']:.2f} | {100 * d['images_s'] / d['wall_s']:.1f} % |")  # fmt: skip
        print(f"| validation loss: {d['val_evals']:.0f} evaluations + fixed inputs ({d['val_build_s']:.2f} s) | {d['val_s']:.2f} | {100 * d['val_s'] / d['wall_s']:.1f} % |")  # fmt: skip
        print(f"| evaluation in all | {total:.2f} | {100 * total / d['wall_s']:.1f} % |")
        print(f"| validation loss per evaluation ({d['val_examples']:.0f} forward-only examples) | {d['val_per_eval_s']:.3f} | {d['val_per_eval_s'] / d['train_step_s']:.2f} training steps |")  # fmt: skip
        per_eval = d["val_per_eval_s"] / d["train_step_s"]
        share = total / d["wall_s"]
        print(f"target: validation loss <= 1 training step per evaluation: {per_eval:.2f} steps ({d['val_per_eval_s']:.3f} s, a step {d['train_step_s']:.3f} s): {'met' if per_eval <= 1 else 'NOT met'}")  # fmt: skip
        print(f"target: evaluation <= 30 % of a default demo trial: {100 * share:.1f} %: {'met' if share <= 0.3 else 'NOT met'}")  # fmt: skip
    if script is not None and rows:
        print()
        for label, sm in summaries.items():
            goal = 1.5 if label.startswith("2x2") else 1.2
            print(
                f"target: {label}: >= {goal}x the script's speed: {sm['speedup']:.2f}x "
                f"(CPU {sm['cpu_speedup']:.2f}x): {'met' if sm['speedup'] >= goal else 'NOT met'}"
            )
        for label, sm in summaries.items():
            ratio = sm["ours_mb"] / sm["script_mb"]
            print(
                f"target: peak memory not above the script's, {label}: {sm['ours_mb']:.1f} vs {sm['script_mb']:.1f} MB "
                f"({ratio:.3f}): {'met' if ratio <= 1.0 else 'NOT met'}"
            )
    print(f"\n(bench took {time.perf_counter() - started:.0f} s; raw numbers: {work / 'bench.json'})")
    raw = {
        row.label: {"ours": [vars(r) for r in row.ours], "script": [vars(r) for r in row.script]}
        for row in rows
    }
    (work / "bench.json").write_text(
        json.dumps({"rows": raw, "summary": summaries, "eval": evaluation, "demo": demo}, indent=2)
    )


if __name__ == "__main__":
    main()
