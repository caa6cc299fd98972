"""``dreambooth-sweep`` helper commands (training itself is ``python -m dreambooth_sweep.train``).

dreambooth-sweep make-tiny-model DIR [--kind KIND]           random-weight model (sd sdxl sd3 flux clip dino dinov2 siglip)
dreambooth-sweep make-demo-data DIR [--num-images N]          the synthetic demo subject
dreambooth-sweep wait-for-url URL [--timeout S]               wait for a server (used by make sweep WORKERS=N)
dreambooth-sweep report SWEEP_DIR [--out DIR]                 HTML sweep report (heatmaps, curves, Pareto front, picks)
dreambooth-sweep score --generated DIR [--real DIR]           rescore a folder of samples (DINO, CLIP-I, CLIP-T, ...)
dreambooth-sweep score-checkpoints DIR [--watch] [overrides]   score any trainer's checkpoints (kohya, diffusers, ...)
dreambooth-sweep check-data DIR [DIR ...] [--resolution N] [--buckets] [--sheet PNG]
                                                              photos checked as training reads them, plus a contact sheet
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dreambooth_sweep import tiny

__all__ = ["main"]

# The kinds make-tiny-model writes (kept in step with tiny.ensure_tiny's builders).
_TINY_KINDS = {
    "sd": tiny.build_tiny_sd,
    "clip": tiny.build_tiny_clip,
    "dino": tiny.build_tiny_dino,
    "dinov2": tiny.build_tiny_dinov2,
    "siglip": tiny.build_tiny_siglip,
    # SDXL / SD3 / FLUX builders import the family layer (torch) only when asked for
    **{
        kind: (lambda k: lambda d, **kw: tiny.build_family(k, d, **kw))(kind)
        for kind in ("sdxl", "sd3", "flux")
    },
}


def _make_tiny_model(args: argparse.Namespace) -> int:
    out = Path(args.dir)
    if out.exists() and any(out.iterdir()):
        print(f"error: {out} is not empty: choose a new folder", file=sys.stderr)
        return 2
    _TINY_KINDS[args.kind](out, seed=args.seed)
    loader = {
        "sd": "StableDiffusionPipeline.from_pretrained",
        "sdxl": "StableDiffusionXLPipeline.from_pretrained",
        "sd3": "StableDiffusion3Pipeline.from_pretrained",
        "flux": "FluxPipeline.from_pretrained",
        "clip": "CLIPModel.from_pretrained",
        "dino": "ViTModel.from_pretrained",
        "dinov2": "Dinov2Model.from_pretrained",
        "siglip": "SiglipModel.from_pretrained",
    }[args.kind]
    print(f"wrote a tiny random {args.kind} model to {out} (load it with {loader}({str(out)!r}))")
    if args.kind in ("sd", "sdxl", "sd3", "flux"):
        model = "tiny" if args.kind == "sd" else f"tiny_{args.kind}"
        print(f"train on it: python -m dreambooth_sweep.train model={model} model.pretrained={out} eval=tiny")
    elif args.kind in ("dinov2", "siglip"):
        key = "eval.dino_model" if args.kind == "dinov2" else "eval.clip_model"
        print(f"score with it: python -m dreambooth_sweep.train model=tiny eval=tiny {key}={out}")
    return 0


def _make_demo_data(args: argparse.Namespace) -> int:
    from dreambooth_sweep.demo_data import make_demo_data

    try:
        paths = make_demo_data(args.dir, num_images=args.num_images, size=args.size, seed=args.seed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} images of the demo toy to {args.dir}")
    print(f"train on it: python -m dreambooth_sweep.train data.instance_dir={args.dir} data.class_noun=toy")
    return 0


def _wait_for_url(args: argparse.Namespace) -> int:
    import time
    import urllib.request

    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(args.url, timeout=2):
                return 0
        except OSError:
            time.sleep(0.5)
    print(
        f"error: {args.url} did not answer within {args.timeout:g} s: check the server's log", file=sys.stderr
    )
    return 1


def _score_checkpoints(args: argparse.Namespace) -> int:
    """``python -m dreambooth_sweep.evaluate checkpoints.dir=DIR [checkpoints.watch=true] OVERRIDES`` in-process."""
    from dreambooth_sweep.evaluate import main as task
    from dreambooth_sweep.runtime import run_hydra_entry

    overrides = [f"checkpoints.dir={Path(args.dir).expanduser().resolve()}", *args.overrides]
    if args.watch:
        overrides.append("checkpoints.watch=true")
    argv = sys.argv
    sys.argv = ["dreambooth_sweep.evaluate", *overrides]
    try:
        run_hydra_entry(task, "dreambooth_sweep.evaluate")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
    return 0


def _check_data(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from dreambooth_sweep.data.check import run_check
    from dreambooth_sweep.errors import ConfigError

    data_cfg = OmegaConf.create(
        {
            "instance_dir": args.dirs[0],
            "instance_dirs": args.dirs[1:],
            "identifier": args.identifier,
            "class_noun": args.class_noun,
            "resolution": args.resolution,
            "buckets": args.buckets,
            "bucket_step": args.bucket_step,
            "mask_loss_weight": 0.0 if args.masks else None,
        }
    )
    try:
        _, check = run_check(data_cfg, Path(args.sheet))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(check.table())
    print(f"contact sheet (what training sees): {args.sheet}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dreambooth-sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-tiny-model", help="write a tiny random-weight model (offline)")
    p.add_argument("dir")
    p.add_argument("--kind", choices=list(_TINY_KINDS), default="sd")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_make_tiny_model)

    p = sub.add_parser("make-demo-data", help="write the synthetic demo subject")
    p.add_argument("dir")
    p.add_argument("--num-images", type=int, default=12)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=1234)
    p.set_defaults(func=_make_demo_data)

    p = sub.add_parser("wait-for-url", help="wait until a URL answers (e.g. a tracking server's /health)")
    p.add_argument("url")
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(func=_wait_for_url)

    p = sub.add_parser(
        "score-checkpoints",
        help="score a folder of checkpoints (kohya, ai-toolkit, OneTrainer, SimpleTuner, diffusers, ours)",
        description="Score every checkpoint in DIR with the training evaluator and find the sweet spot; the "
        "overrides are those of python -m dreambooth_sweep.evaluate (model=, data.instance_dir=, "
        "data.class_noun=, data.identifier=, eval.lora_scales=[0.6,0.8,1.0], ...).",
    )
    p.add_argument("dir", help="the folder the trainer saved into (one subfolder per run works too)")
    p.add_argument("--watch", action="store_true", help="keep scoring new checkpoints as they are written")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=sd15 data.class_noun=dog")
    p.set_defaults(func=_score_checkpoints)
    p = sub.add_parser("check-data", help="check subject photos before training; write a contact sheet")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="data.instance_dir (then data.instance_dirs)")
    p.add_argument("--resolution", type=int, default=512, help="data.resolution (default 512)")
    p.add_argument("--buckets", action="store_true", help="as with data.buckets=true")
    p.add_argument("--bucket-step", type=int, default=64)
    p.add_argument("--identifier", default="sks", help="data.identifier (captions get it inserted)")
    p.add_argument("--class-noun", default="", help="data.class_noun")
    p.add_argument(
        "--masks", action="store_true", help="read .mask.png / alpha masks (and check their sizes)"
    )
    p.add_argument(
        "--sheet", default="data_check.png", help="where the contact sheet goes (default ./data_check.png)"
    )
    p.set_defaults(func=_check_data)

    from dreambooth_sweep.report import add_cli as add_report_cli

    add_report_cli(sub)  # dreambooth-sweep report SWEEP_DIR | --storage URL --study NAME | RUN_ID

    from dreambooth_sweep.metrics.cli import add_cli as add_score_cli

    add_score_cli(sub)  # dreambooth-sweep score --generated DIR [--real DIR]
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
