"""The report's machine-readable files: ``trials.csv``, ``checkpoints.csv`` and ``summary.json``.

Every cell and value passes the secret mask: the report folder is uploaded to MLflow and shared.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dreambooth_sweep.files import atomic_write
from dreambooth_sweep.report.model import (
    Pick,
    Sweep,
    Trial,
    fmt_value,
    main_metrics,
    metric_keys,
    param,
    pareto_checkpoints,
    state_counts,
)
from dreambooth_sweep.report.overrides import reproduce_command
from dreambooth_sweep.tracking.secrets import mask_secrets, mask_text

__all__ = ["summary", "write_checkpoints_csv", "write_summary", "write_trials_csv"]


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([mask_text(str(h)) for h in header])
        for row in rows:
            w.writerow(
                [
                    mask_text(v) if isinstance(v, str) else v
                    for v in (str(c) if isinstance(c, Path) else c for c in row)
                ]
            )
    return path


def write_trials_csv(sweep: Sweep, path: Path) -> Path:
    """One row per trial: state, swept values, its best trained checkpoint and the command to retrain it."""
    spot = sweep.sweet_spot()
    main = list(main_metrics(sweep).values())[:3]
    header = ["trial", "state", *sweep.swept, "best_step", "best_score", *main, "checkpoints",
              "last_step", "stopped_at", "sweet_spot", "run_dir", "mlflow_run_id", "fail_reason", "command"]  # fmt: skip

    def row(trial: Trial) -> list[Any]:
        best = trial.best()
        m = best[1] if best else {}
        return [
            trial.number,
            trial.state,
            *(fmt_value(param(trial, k)) for k in sweep.swept),
            best[0] if best else "",
            m.get("eval/score", ""),
            *(m.get(k, "") for k in main),
            len(trial.history),
            max(trial.history) if trial.history else "",
            "" if trial.stopped_at is None else trial.stopped_at,
            bool(spot and spot[0] is trial),
            trial.run_dir or "",
            trial.run_id or "",
            trial.fail_reason or "",
            reproduce_command(trial, best[0], sweep.continuous) if best else "",
        ]

    return _write_csv(path, header, map(row, sweep.trials))


def write_checkpoints_csv(sweep: Sweep, path: Path) -> Path:
    """One row per evaluated checkpoint, with every metric and its marks (trial best, sweet spot, Pareto)."""
    spot = sweep.sweet_spot()
    keys = metric_keys(sweep)
    pts, front = pareto_checkpoints(sweep)
    on_front = {(pts[i][0].number, pts[i][1]) for i in front}
    header = ["trial", "state", *sweep.swept, "step", *keys, "trial_best", "sweet_spot", "pareto"]
    rows = []
    for trial, step, m in sweep.checkpoints():
        best = trial.best()
        rows.append(
            [
                trial.number,
                trial.state,
                *(fmt_value(param(trial, k)) for k in sweep.swept),
                step,
                *(m.get(k, "") for k in keys),
                bool(best and best[0] == step),
                bool(spot and spot[0] is trial and spot[1] == step),
                (trial.number, step) in on_front,
            ]
        )
    return _write_csv(path, header, rows)


def summary(sweep: Sweep, picks: Sequence[Pick]) -> dict[str, Any]:
    """``summary.json``'s content: states, swept keys, the sweet spot and the picks (secrets masked)."""
    spot = sweep.sweet_spot()

    def describe(trial: Trial, step: int, metrics: Mapping[str, float]) -> dict[str, Any]:
        return {
            "trial": trial.number,
            "step": step,
            "state": trial.state,
            "params": {k: param(trial, k) for k in sweep.swept},
            "metrics": dict(metrics),
            "run_dir": str(trial.run_dir) if trial.run_dir else None,
            "command": reproduce_command(trial, step, sweep.continuous),
        }

    return mask_secrets(
        {
            "name": sweep.name,
            "source": sweep.source,
            "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
            "states": state_counts(sweep),
            "swept": sweep.swept,
            "sweet_spot": describe(*spot) if spot else None,
            "picks": [{"labels": p.labels, **describe(p.trial, p.step, p.metrics)} for p in picks],
            "notes": sweep.notes,
        }
    )


def write_summary(sweep: Sweep, picks: Sequence[Pick], path: Path) -> Path:
    with atomic_write(path) as tmp:
        Path(tmp).write_text(json.dumps(summary(sweep, picks), indent=2, default=str))
    return path
