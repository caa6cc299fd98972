"""SD-1.5-size DreamBooth on a CUDA GPU: training steps per second and peak VRAM, nothing downloaded.

    make bench-gpu [BENCH_ARGS="--steps 100"]
    .venv/bin/python benchmarks/bench_gpu.py [--steps N] [--configs 16gb,lora] [--work DIR]

Builds Stable Diffusion 1.5's architecture with random weights (``dreambooth_sweep.tiny.build_random_sd15``:
UNet 859.5 M, text encoder 123.1 M, VAE 83.7 M parameters — the real model's shapes, so the compute and
memory are the real model's) and trains it with ``python -m dreambooth_sweep.train`` at 512 px, one fresh
process per configuration, prior preservation on (one instance + one class image per step, the class
images generated first from the same random model). Each row reads the trainer's own figures from
``metrics.json``: ``perf/train_steps_per_s`` (after the first step; evaluation is off) and the CUDA
allocator's peak (allocated and reserved, model loading included).

Configurations (``--configs``, comma-separated):

* ``16gb`` — source document 1's "16 GB is possible" recipe: full UNet + text encoder, 8-bit Adam,
  gradient checkpointing, fp16 mixed precision, batch 1;
* ``16gb-bf16`` — the same in bf16;
* ``fp32`` — full UNet + text encoder, plain AdamW, no checkpointing, fp32: the reference (needs ≥ 24 GB);
* ``lora`` — source document 2's LoRA recipe: rank 4, fp16, 8-bit Adam, gradient checkpointing;
* ``sdxl-lora-1024`` — SDXL base 1.0's architecture (UNet 2.57 B, text encoders 0.12 B + 0.69 B),
  LoRA rank 4 on the UNet, bf16, 8-bit Adam, gradient checkpointing, 1024 px;
* ``flux-lora-512`` / ``flux-lora-1024`` — FLUX.1-dev's architecture (transformer 11.9 B, T5-XXL
  4.76 B, CLIP-L), LoRA rank 4 on the transformer, bf16, 8-bit Adam, gradient checkpointing, T5
  embeddings cached and T5 moved off the GPU (``train.cache_text_embeddings``), 512 / 1024 px.

The SDXL and FLUX folders (``dreambooth_sweep.families.full_size``: 7 GB and 34 GB of random weights)
are built once into ``--work``.

Without a CUDA device it prints a message and stops (exit 0). ``--model tiny --cpu`` runs the same
plumbing on the tiny model on the CPU with fp32 AdamW (what the test suite does): figures from it mean
nothing for a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the checkout's package (this script runs from benchmarks/, not the root, so an installed copy would win)
sys.path.insert(0, str(ROOT))

CONFIGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "16gb": (
        "full UNet + text encoder, 8-bit Adam, grad checkpointing, fp16",
        ("method=dreambooth", "train.train_text_encoder=true", "train.optimizer=adamw8bit",
         "train.gradient_checkpointing=true", "train.mixed_precision=fp16"),
    ),
    "16gb-bf16": (
        "full UNet + text encoder, 8-bit Adam, grad checkpointing, bf16",
        ("method=dreambooth", "train.train_text_encoder=true", "train.optimizer=adamw8bit",
         "train.gradient_checkpointing=true", "train.mixed_precision=bf16"),
    ),
    "fp32": (
        "full UNet + text encoder, AdamW, fp32 (reference)",
        ("method=dreambooth", "train.train_text_encoder=true", "train.optimizer=adamw",
         "train.gradient_checkpointing=false", "train.mixed_precision=no"),
    ),
    "lora": (
        "LoRA rank 4 on the UNet, 8-bit Adam, grad checkpointing, fp16",
        ("method=lora", "method.rank=4", "train.lr=1e-4", "train.optimizer=adamw8bit",
         "train.gradient_checkpointing=true", "train.mixed_precision=fp16"),
    ),
}  # fmt: skip
# Family configurations: (what, model kind, resolution, overrides)
FAMILY_CONFIGS: dict[str, tuple[str, str, int, tuple[str, ...]]] = {
    "sdxl-lora-1024": (
        "SDXL LoRA rank 4 on the UNet, 8-bit Adam, grad checkpointing, bf16, 1024 px", "sdxl", 1024,
        ("method=lora", "method.rank=4", "train.lr=1e-4", "train.optimizer=adamw8bit",
         "train.gradient_checkpointing=true", "train.mixed_precision=bf16"),
    ),
    "flux-lora-512": (
        "FLUX.1 LoRA rank 4, 8-bit Adam, grad checkpointing, bf16, T5 cached, 512 px", "flux", 512,
        ("method=lora", "method.rank=4", "train.lr=1e-4", "train.optimizer=adamw8bit",
         "train.gradient_checkpointing=true", "train.mixed_precision=bf16", "train.cache_text_embeddings=true"),
    ),
    "flux-lora-1024": (
        "FLUX.1 LoRA rank 4, 8-bit Adam, grad checkpointing, bf16, T5 cached, 1024 px", "flux", 1024,
        ("method=lora", "method.rank=4", "train.lr=1e-4", "train.optimizer=adamw8bit",
         "train.gradient_checkpointing=true", "train.mixed_precision=bf16", "train.cache_text_embeddings=true"),
    ),
}  # fmt: skip
ALL_CONFIGS = {**{k: v[0] for k, v in CONFIGS.items()}, **{k: v[0] for k, v in FAMILY_CONFIGS.items()}}
CPU_SAFE = ("train.optimizer=adamw", "train.mixed_precision=no")  # --cpu: what a CPU runs


def build_model(kind: str, work: Path, family: str = "sd") -> Path:
    if kind == "tiny":
        from dreambooth_sweep.tiny import ensure_tiny

        return ensure_tiny(family, ROOT / ".cache")
    if family in ("sdxl", "flux"):
        target = work / f"random-{family}"
        if not (target / "model_index.json").exists():
            from dreambooth_sweep.families import full_size

            size = {"sdxl": "7 GB", "flux": "34 GB"}[family]
            print(
                f"building {family}'s architecture with random weights in {target} ({size}) ...", flush=True
            )
            shutil.rmtree(target, ignore_errors=True)
            getattr(full_size, f"build_random_{family}")(target)
        return target
    target = work / "random-sd15"
    if not (target / "model_index.json").exists():
        from dreambooth_sweep.tiny import build_random_sd15

        print(f"building SD-1.5's architecture with random weights in {target} (4.3 GB) ...", flush=True)
        shutil.rmtree(target, ignore_errors=True)
        build_random_sd15(target)
    return target


def run_config(name: str, args: argparse.Namespace, model: Path, subject: Path, work: Path) -> dict:
    """One trainer process; its metrics.json figures plus wall time and peak host RSS."""
    if name in FAMILY_CONFIGS:
        _, family, resolution, overrides = FAMILY_CONFIGS[name]
        model_name = f"tiny_{family}" if args.model == "tiny" else family
        extra_model = ("model.vae=null",) if family == "sdxl" else ()  # the random pipeline's own VAE
    else:
        family, resolution, (_, overrides) = "sd", 512, CONFIGS[name]
        model_name, extra_model = ("tiny" if args.model == "tiny" else "sd15"), ()
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    resolution = 64 if args.model == "tiny" else resolution
    cmd = [
        sys.executable, "-m", "dreambooth_sweep.train",
        f"model={model_name}", f"model.pretrained={model}", *extra_model,
        f"model.resolution={resolution}", "data=subject", f"data.instance_dir={subject}", "data.class_noun=toy",
        "prior=on", "prior.num_class_images=2", "prior.gen_num_inference_steps=2", f"prior.class_dir={work / 'classes'}",
        "train.batch_size=1", f"train.max_steps={args.steps}", "train.lr_scheduler=constant",
        "train.lr_warmup_steps=0", "train.save_final=false", "eval.enabled=false", "tracking=none",
        f"paths.root_dir={work}", f"paths.cache_dir={ROOT / '.cache'}", f"paths.output_dir={out}",
        f"hydra.run.dir={out}", *overrides, *(CPU_SAFE if args.cpu else ()),
    ]  # fmt: skip
    log = work / f"{name}.log"
    with open(log, "w") as stream:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        return {"error": f"exit {code}: {tail[0][:200]} (log: {log})", "wall_s": wall}
    metrics = json.loads((out / "metrics.json").read_text())
    return {**metrics, "wall_s": wall, "host_rss_gb": usage.ru_maxrss / 2**20}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60, help="training steps per configuration")
    ap.add_argument(
        "--configs",
        default="16gb,16gb-bf16,fp32,lora,sdxl-lora-1024,flux-lora-512,flux-lora-1024",
        help=f"comma list of: {', '.join(ALL_CONFIGS)}",
    )
    ap.add_argument(
        "--model", choices=("sd15", "tiny"), default="sd15", help="sd15: full-size random weights"
    )
    ap.add_argument(
        "--cpu", action="store_true", help="run without CUDA (with --model tiny: a functional check)"
    )
    ap.add_argument("--work", default=str(ROOT / "outputs" / "bench_gpu"), help="scratch folder")
    args = ap.parse_args(argv)
    names = [c for c in args.configs.split(",") if c]
    unknown = [c for c in names if c not in ALL_CONFIGS]
    if unknown:
        print(
            f"error: unknown --configs {','.join(unknown)}: choose from {', '.join(ALL_CONFIGS)}",
            file=sys.stderr,
        )
        return 2

    import torch

    if not torch.cuda.is_available() and not args.cpu:
        families = sorted({FAMILY_CONFIGS[n][1] for n in names if n in FAMILY_CONFIGS})
        print(
            "bench-gpu: no CUDA device here: skipped "
            f"({', '.join(names)}{'; SDXL/FLUX figures need a GPU' if families else ''}; "
            "run it on a GPU machine; `--model tiny --cpu` checks the plumbing)"
        )
        return 0
    if args.cpu and args.model != "tiny":
        print("error: --cpu runs only with --model tiny (SD-1.5 size on a CPU takes hours)", file=sys.stderr)
        return 2
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    from dreambooth_sweep.demo_data import make_demo_data

    subject = make_demo_data(work / "subject", num_images=5, size=64 if args.model == "tiny" else 512)[
        0
    ].parent
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.cpu else "CPU"
    rows = []
    for name in names:
        family = FAMILY_CONFIGS[name][1] if name in FAMILY_CONFIGS else "sd"
        model = build_model(args.model, work, family)
        print(f"{name}: {ALL_CONFIGS[name]} ...", flush=True)
        rows.append((name, run_config(name, args, model, subject, work)))

    print()
    arch = "full-size architectures (SD-1.5, SDXL, FLUX.1)" if args.model == "sd15" else "tiny models"
    cpu_note = " (--cpu: every config ran in fp32 with plain AdamW)" if args.cpu else ""
    print(f"# DreamBooth throughput, {arch} with random weights, {device}, torch {torch.__version__}, "
          f"{args.steps} steps, batch 1 + 1 class image, SD-1.5 at {64 if args.model == 'tiny' else 512} px, "
          f"the others at the px their name says{cpu_note}")  # fmt: skip
    print()
    print(
        "| config | what | steps/s | peak VRAM allocated (GB) | peak VRAM reserved (GB) | fits 16 GB | host RSS (GB) | wall (s) |"
    )
    print("|---|---|---:|---:|---:|---|---:|---:|")
    for name, r in rows:
        if "error" in r:
            print(f"| {name} | {ALL_CONFIGS[name]} | failed: {r['error']} | | | | | {r['wall_s']:.0f} |")
            continue
        alloc, reserved = r.get("perf/peak_vram_allocated_gb"), r.get("perf/peak_vram_reserved_gb")
        fits = "—" if reserved is None else ("yes" if reserved < 16 else "no")
        print(
            f"| {name} | {ALL_CONFIGS[name]} | {r.get('perf/train_steps_per_s', float('nan')):.2f} "
            f"| {'—' if alloc is None else f'{alloc:.1f}'} | {'—' if reserved is None else f'{reserved:.1f}'} | {fits} "
            f"| {r['host_rss_gb']:.1f} | {r['wall_s']:.0f} |"
        )
    (work / "bench_gpu.json").write_text(json.dumps(dict(rows), indent=2))
    print(f"\nlogs and raw figures: {work} (bench_gpu.json, <config>.log)")
    return 1 if any("error" in r for _, r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
