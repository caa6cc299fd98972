"""``dreambooth-sweep report`` / ``python -m dreambooth_sweep.report``: build a sweep's report."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from dreambooth_sweep.report.build import build_report
from dreambooth_sweep.report.model import ReportError

__all__ = ["add_cli", "main"]

USAGE = """\
    dreambooth-sweep report outputs/multiruns/2026-01-01_12-00-00      # a Hydra multirun dir (grid or Optuna)
    dreambooth-sweep report --storage sqlite:///outputs/optuna.db --study lr-sweep
    dreambooth-sweep report <parent run id | experiment> --tracking-uri sqlite:///outputs/mlflow.db

writes <sweep dir>/report/ (or --out): index.html (self-contained), heatmaps.png, curves.png,
pareto.png, trials.csv, checkpoints.csv, summary.json and the picked sample grids in samples/; the
folder is also logged to the sweep's MLflow parent run (report/) when there is one.
"""


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "source", nargs="?", help="Hydra multirun folder, or MLflow parent run id / sweep experiment"
    )
    parser.add_argument(
        "--storage", help="Optuna storage URL (with --study), e.g. sqlite:///outputs/optuna.db"
    )
    parser.add_argument("--study", help="Optuna study name")
    parser.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: the sweep's own, or MLFLOW_TRACKING_URI)"
    )
    parser.add_argument(
        "--sweep-dir",
        action="append",
        default=[],
        help="another multirun folder of the same study (repeatable)",
    )
    parser.add_argument("--out", help="report folder (default: <sweep dir>/report)")
    parser.add_argument(
        "--no-mlflow", action="store_true", help="do not log the report to the MLflow parent run"
    )
    parser.set_defaults(func=_run)
    return parser


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``report`` to a ``dreambooth-sweep`` subparsers object; its ``func(args)`` returns the exit code."""
    return _configure(subparsers.add_parser("report", help="HTML report of a sweep: heatmaps, curves, picks"))


def _run(args: argparse.Namespace) -> int:
    if args.source is None and not (args.storage and args.study):
        print("error: give a sweep folder, --storage URL --study NAME, or an MLflow run id", file=sys.stderr)
        return 2
    if bool(args.storage) != bool(args.study):
        print("error: --storage and --study go together", file=sys.stderr)
        return 2
    try:
        page = build_report(
            args.source,
            storage=args.storage,
            study=args.study,
            tracking_uri=args.tracking_uri,
            sweep_dirs=args.sweep_dir,
            out=args.out,
            log_mlflow=not args.no_mlflow,
        )
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    page = page.resolve()
    print(f"report: {page}")
    print(f"open it: xdg-open {page}   (or {page.as_uri()} in a browser)")
    # Loopback only: the report may show paths and settings that are nobody else's business.
    print(
        f"over SSH: python -m http.server --bind 127.0.0.1 -d {page.parent} 8000 on the server, "
        "ssh -L 8000:127.0.0.1:8000 <server> here, then http://localhost:8000/"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dreambooth_sweep.report ...``: the same as ``dreambooth-sweep report ...``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(
        prog="dreambooth-sweep report",
        description=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    args = _configure(parser).parse_args(argv)
    return args.func(args)
