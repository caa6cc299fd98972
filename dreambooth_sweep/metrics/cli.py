"""``dreambooth-sweep score`` (alias ``python -m dreambooth_sweep.metrics``): rescore a folder of images.

A run's ``samples/step_XXXXXX/`` folder rescores to the logged ``eval/*`` numbers with no other flag::

    dreambooth-sweep score --generated outputs/runs/<run>/samples/step_000100

because its ``scoring.json`` names the subject photos, the identifier, the class-prompt images, the
backbones and the preprocessing protocol (see :mod:`~dreambooth_sweep.metrics.record`); a flag given
on the command line wins over the record. The step-0 and final folders hold every prompt: they rescore
to the logged ``eval_all/*``. Any other folder works too, with ``--real`` and a prompt source; unset
settings then take the values of ``conf/eval/default.yaml``. Images are read by the project's one
loader (:func:`dreambooth_sweep.images.open_image`): the pixels training and evaluation saw.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from PIL import Image

from dreambooth_sweep.errors import ConfigError, one_line
from dreambooth_sweep.images import IMAGE_SUFFIXES, open_image, unreadable_reason
from dreambooth_sweep.metrics.preprocess import DINO_PREPROCESS
from dreambooth_sweep.metrics.record import read_scoring_record
from dreambooth_sweep.metrics.suite import METRICS, MetricSuite, normalise_metric_names

__all__ = ["add_cli", "main", "score_folder"]


def _eval_defaults() -> Any:
    """``conf/eval/default.yaml``: the one place the default backbones and protocol are written."""
    from omegaconf import OmegaConf

    from dreambooth_sweep.runtime import conf_dir

    return OmegaConf.load(Path(conf_dir()) / "eval" / "default.yaml")


def read_image_folder(folder: str | Path, what: str) -> dict[str, Image.Image]:
    """The images of ``folder`` (not recursive) by file name, sorted, through the project's loader.

    Raises:
        ConfigError: the folder does not exist, holds no images, or an image cannot be read.
    """
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ConfigError(f"image folder {str(folder)!r} ({what}) does not exist: pass a directory of images")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(
            f"no images in {str(folder)!r} ({what}): expected files ending in {', '.join(IMAGE_SUFFIXES)}"
        )
    images = {}
    for file in files:
        try:
            images[file.name] = open_image(file)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise ConfigError(f"cannot read image {str(file)!r}: {unreadable_reason(file, exc)}") from exc
    return images


def _read_prompt_map(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read prompts file {str(path)!r}: {one_line(exc, 200)}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ConfigError(
            f"prompts file {str(path)!r} must be a JSON object mapping image file name to prompt"
        )
    return data


def _group_by_prompt(
    images: Mapping[str, Image.Image], prompt_map: Mapping[str, str] | None, prompt: str | None
) -> dict[str, list[Image.Image]] | None:
    """prompt → images; None when no prompts are known at all."""
    if prompt_map is None and prompt is None:
        return None
    groups: dict[str, list[Image.Image]] = {}
    for filename, image in images.items():
        text = (prompt_map or {}).get(filename, prompt)
        if text is None:
            raise ConfigError(f"no prompt for {filename!r}: add it to the prompts file or pass --prompt")
        groups.setdefault(text, []).append(image)
    return groups


def _real_images(args: argparse.Namespace, record: dict[str, Any] | None) -> list[Image.Image]:
    """The subject photos: ``--real``, else the record's, read exactly as the run read them."""
    from dreambooth_sweep.data import load_images

    if args.real:
        return [im for _, im in load_images(args.real, what="--real")]
    if record is None or not record.get("real_dir"):
        raise ConfigError("no subject photos: pass --real DIR (the folder has no scoring.json naming them)")
    return [
        im
        for _, im in load_images(
            record["real_dir"], record.get("real_max_images"), what="real_dir of scoring.json"
        )
    ]


def score_folder(args: argparse.Namespace) -> dict[str, float]:
    """The metrics of ``args.generated``, settings from flags, else its ``scoring.json``, else defaults."""
    generated_dir = Path(args.generated)
    generated = read_image_folder(generated_dir, "--generated")
    record = read_scoring_record(generated_dir)
    settings = dict(record["settings"]) if record else {}
    defaults = _eval_defaults()

    def setting(flag: str | None, key: str) -> Any:
        return flag if flag is not None else settings.get(key, defaults[key])

    class_dir = args.class_images
    if class_dir is None and record and record.get("class_dir"):
        class_dir = str(generated_dir / record["class_dir"])
    class_images = list(read_image_folder(class_dir, "--class-images").values()) if class_dir else []
    real = _real_images(args, record)
    prompts_file = Path(args.prompts_file) if args.prompts_file else generated_dir / "prompts.json"
    if args.prompts_file and not prompts_file.is_file():
        raise ConfigError(f"prompts file {args.prompts_file!r} does not exist")
    prompt_map = _read_prompt_map(prompts_file) if prompts_file.is_file() else None
    groups = _group_by_prompt(generated, prompt_map, args.prompt)

    unavailable = {}
    if groups is None:
        unavailable.update(
            clip_t="no prompts (pass --prompt or a prompts file)", div="no prompts to group images by"
        )
    if not class_images:
        unavailable["pres"] = "no class images (pass --class-images)"
    if args.metrics:
        metrics = normalise_metric_names([m for m in args.metrics.split(",") if m.strip()])
        for name in metrics:
            if name in unavailable:
                raise ConfigError(f"cannot compute {name}: {unavailable[name]}")
    else:
        # The record's (or every) metric the inputs allow, as the evaluator skips PRES without class images.
        metrics = tuple(m for m in settings.get("metrics", METRICS) if m not in unavailable)

    identifier = args.identifier if args.identifier is not None else (record or {}).get("identifier", "sks")
    config = SimpleNamespace(
        metrics=metrics,
        clip_model=setting(args.clip_model, "clip_model"),
        dino_model=setting(args.dino_model, "dino_model"),
        dino_preprocess=setting(args.dino_preprocess, "dino_preprocess"),
    )
    suite = MetricSuite(
        config, real, cache_dir=args.cache_dir, device=args.device, batch_size=args.batch_size
    )
    samples = groups if groups is not None else {"": list(generated.values())}
    return suite.compute(samples, class_images, identifier=identifier)


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.description = (
        "Score a folder of generated images against the subject's photos; prints a JSON dict."
    )
    parser.add_argument(
        "--generated", required=True, help="folder of generated images (e.g. samples/step_000100)"
    )
    parser.add_argument("--real", help="folder of the subject's photos (default: the one scoring.json names)")
    parser.add_argument(
        "--prompts-file", help="JSON file name → prompt (default: prompts.json in --generated, if present)"
    )
    parser.add_argument(
        "--prompt", help="prompt of every generated image without an entry in the prompts file"
    )
    parser.add_argument(
        "--identifier", help="rare token removed from prompts for CLIP-T (default: scoring.json's, else sks)"
    )
    parser.add_argument(
        "--class-images",
        help="folder of images of the plain class prompt, enables PRES (default: scoring.json's)",
    )
    parser.add_argument(
        "--metrics", help=f"comma-separated subset of {','.join(METRICS)} (default: all that apply)"
    )
    parser.add_argument(
        "--clip-model", help="hub id, local dir, or 'tiny' (default: scoring.json's, else eval's)"
    )
    parser.add_argument(
        "--dino-model", help="hub id, local dir, or 'tiny' (default: scoring.json's, else eval's)"
    )
    parser.add_argument(
        "--dino-preprocess",
        choices=DINO_PREPROCESS,
        help="DINO preprocessing protocol (default: scoring.json's, else eval's)",
    )
    parser.add_argument(
        "--cache-dir", default=".cache", help="where 'tiny' models are built (default: .cache)"
    )
    parser.add_argument("--device", default="cpu", help="torch device for the metric models (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.set_defaults(func=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    try:
        result = score_folder(args)
    except (ConfigError, ValueError) as exc:
        print(f"error: {one_line(exc, 500)}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, sort_keys=False))
    return 0


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``score`` to a ``dreambooth-sweep`` subparsers object; its ``func(args)`` returns the exit code."""
    return _configure(
        subparsers.add_parser("score", help="score a folder of images (DINO, CLIP-I, CLIP-T, ...)")
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dreambooth_sweep.metrics``; returns the exit status (2 with a one-line error on bad input)."""
    args = _configure(argparse.ArgumentParser(prog="python -m dreambooth_sweep.metrics")).parse_args(argv)
    return args.func(args)
