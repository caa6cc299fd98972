"""The checkpoints worth a look: the sweet spot and the best trained one per value of a swept key,
each with its reproduce command and its sample grids (next to the base model's) copied beside the report."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from dreambooth_sweep.report.model import (
    Checkpoint,
    Pick,
    Sweep,
    best_checkpoint,
    fmt_value,
    param,
    short,
    sort_key,
)
from dreambooth_sweep.report.overrides import reproduce_command
from dreambooth_sweep.report.runs import download_grid

__all__ = ["copy_grids", "make_picks"]


def make_picks(sweep: Sweep) -> list[Pick]:
    """The sweet spot first, then the best trained checkpoint at each value of each few-valued swept key."""
    spot = sweep.sweet_spot()
    if spot is None:
        return []
    picks: dict[tuple[int, int], Pick] = {}

    def add(label: str, best: Checkpoint | None) -> None:
        if best is None:
            return
        trial, step, metrics = best
        pick = picks.get((trial.number, step))
        if pick is None:
            command = reproduce_command(trial, step, sweep.continuous)
            picks[(trial.number, step)] = Pick([label], trial, step, metrics, command)
        else:
            pick.labels.append(label)

    add("sweet spot: best checkpoint overall", spot)
    checkpoints = sweep.checkpoints()
    for key in sweep.pick_keys()[0]:
        values = {repr(param(t, key)): param(t, key) for t in sweep.trials if t.history}
        if len(values) < 2:
            continue
        for value in sorted(values.values(), key=sort_key):
            matching = [c for c in checkpoints if param(c[0], key) == value]
            add(f"best at {short(key, sweep.swept)}={fmt_value(value)}", best_checkpoint(matching))
    return list(picks.values())


def copy_grids(picks: Sequence[Pick], folder: Path, sweep: Sweep) -> None:
    """Copy (or download from MLflow) each pick's step-0 and step grids into ``folder``."""
    for old in folder.glob("trial-*_step-*.png"):  # only what an earlier report copied
        old.unlink()
    for pick in picks:
        found: list[Path | None] = []
        for step in (0, pick.step):
            dest = folder / f"trial-{pick.trial.number}_step-{step:06d}.png"
            src = pick.trial.run_dir / "samples" / f"step_{step:06d}.png" if pick.trial.run_dir else None
            if src is not None and src.exists():
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest)
                found.append(dest)
            elif (
                sweep.tracking
                and pick.trial.run_id
                and download_grid(sweep.tracking[0], pick.trial.run_id, step, dest)
            ):
                found.append(dest)
            else:
                found.append(None)
        pick.grids = (found[0], found[1])
