"""``dreambooth-sweep`` helper commands (training itself is ``python -m dreambooth_sweep.train``).

dreambooth-sweep make-tiny-model DIR [--kind sd|sdxl|sd3|flux|clip|dino]   random-weight model, diffusers/transformers format
dreambooth-sweep make-demo-data DIR [--num-images N]          the synthetic demo subject
dreambooth-sweep wait-for-url URL [--timeout S]               wait for a server (used by make sweep WORKERS=N)
dreambooth-sweep report SWEEP_DIR [--out DIR]                 HTML sweep report (heatmaps, curves, Pareto front, picks)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]


def _make_tiny_model(args: argparse.Namespace) -> int:
    from dreambooth_sweep import tiny
    from dreambooth_sweep.families import tiny as family_tiny

    builders = {
        "sd": tiny.build_tiny_sd,
        "sdxl": family_tiny.build_tiny_sdxl,
        "sd3": family_tiny.build_tiny_sd3,
        "flux": family_tiny.build_tiny_flux,
        "clip": tiny.build_tiny_clip,
        "dino": tiny.build_tiny_dino,
    }
    out = Path(args.dir)
    if out.exists() and any(out.iterdir()):
        print(f"error: {out} is not empty: choose a new folder", file=sys.stderr)
        return 2
    builders[args.kind](out, seed=args.seed)
    loader = {
        "sd": "StableDiffusionPipeline.from_pretrained",
        "sdxl": "StableDiffusionXLPipeline.from_pretrained",
        "sd3": "StableDiffusion3Pipeline.from_pretrained",
        "flux": "FluxPipeline.from_pretrained",
        "clip": "CLIPModel.from_pretrained",
        "dino": "ViTModel.from_pretrained",
    }[args.kind]
    print(f"wrote a tiny random {args.kind} model to {out} (load it with {loader}({str(out)!r}))")
    if args.kind in ("sd", "sdxl", "sd3", "flux"):
        model = "tiny" if args.kind == "sd" else f"tiny_{args.kind}"
        print(f"train on it: python -m dreambooth_sweep.train model={model} model.pretrained={out} eval=tiny")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dreambooth-sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-tiny-model", help="write a tiny random-weight model (offline)")
    p.add_argument("dir")
    p.add_argument("--kind", choices=["sd", "sdxl", "sd3", "flux", "clip", "dino"], default="sd")
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

    from dreambooth_sweep.report import add_cli as add_report_cli

    add_report_cli(sub)  # dreambooth-sweep report SWEEP_DIR | --storage URL --study NAME | RUN_ID
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
