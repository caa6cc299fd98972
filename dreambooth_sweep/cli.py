"""``dreambooth-sweep`` helper commands (training itself is ``python -m dreambooth_sweep.train``).

dreambooth-sweep make-tiny-model DIR [--kind sd|clip|dino]   random-weight model, diffusers/transformers format
dreambooth-sweep make-demo-data DIR [--num-images N]          the synthetic demo subject
dreambooth-sweep wait-for-url URL [--timeout S]               wait for a server (used by make sweep WORKERS=N)
dreambooth-sweep report SWEEP_DIR [--out DIR]                 HTML sweep report (heatmaps, curves, Pareto front, picks)
dreambooth-sweep check-data DIR [DIR ...] [--resolution N] [--buckets] [--sheet PNG]
                                                              photos checked as training reads them, plus a contact sheet
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]


def _make_tiny_model(args: argparse.Namespace) -> int:
    from dreambooth_sweep import tiny

    builders = {"sd": tiny.build_tiny_sd, "clip": tiny.build_tiny_clip, "dino": tiny.build_tiny_dino}
    out = Path(args.dir)
    if out.exists() and any(out.iterdir()):
        print(f"error: {out} is not empty: choose a new folder", file=sys.stderr)
        return 2
    builders[args.kind](out, seed=args.seed)
    loader = {
        "sd": "StableDiffusionPipeline.from_pretrained",
        "clip": "CLIPModel.from_pretrained",
        "dino": "ViTModel.from_pretrained",
    }[args.kind]
    print(f"wrote a tiny random {args.kind} model to {out} (load it with {loader}({str(out)!r}))")
    if args.kind == "sd":
        print(f"train on it: python -m dreambooth_sweep.train model=tiny model.pretrained={out} eval=tiny")
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
    p.add_argument("--kind", choices=["sd", "clip", "dino"], default="sd")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
