"""What a report is made of: trials with their checkpoints, the sweep, and the picked checkpoints.

The data model knows nothing about where the numbers came from (folders, Optuna, MLflow: see
:mod:`.sources`) nor how they are drawn (:mod:`.figures`, :mod:`.page`). Every "best" it names goes
through :func:`dreambooth_sweep.objective.best_of`, the rule the trainer and the sweeper use too:
step 0 (the untouched base model) is never a candidate, a NaN score never wins, ties go to the
earlier step, then to the lower trial number.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreambooth_sweep.objective import best_of

__all__ = [
    "INTERNAL",
    "LABELS",
    "MAIN_METRICS",
    "MAX_PICK_VALUES",
    "NOTICEABLE",
    "PAPER_REFERENCE",
    "STATE_ORDER",
    "Checkpoint",
    "Pick",
    "ReportError",
    "Sweep",
    "Trial",
    "best_checkpoint",
    "finite",
    "fmt_metric",
    "fmt_value",
    "is_internal",
    "is_number",
    "main_metrics",
    "metric_keys",
    "metric_label",
    "override_key",
    "param",
    "pareto_checkpoints",
    "pareto_front",
    "paper_comparable",
    "rows",
    "short",
    "sort_key",
    "state_counts",
]

MAIN_METRICS = ("eval/dino", "eval/clip_i", "eval/clip_t", "eval/score")
LABELS = {
    "eval/dino": "DINO",
    "eval/clip_i": "CLIP-I",
    "eval/clip_t": "CLIP-T",
    "eval/score": "sweet-spot score",
}
# DreamBooth on Stable Diffusion, Ruiz et al. 2023 (Table 1): context only, other models/subjects differ.
PAPER_REFERENCE = {"eval/dino": 0.668, "eval/clip_t": 0.305}
# Differences the paper's user study found noticeable to people.
NOTICEABLE = {"eval/dino": 0.1, "eval/clip_t": 0.05}
# A paper name's slot: the names the same metric takes with another backbone (metrics/names.py), e.g.
# eval/dinov2_s14 for eval/dino, eval/clip_t_siglip_b16 for eval/clip_t.
_SLOT = {
    "eval/dino": re.compile(r"eval/dino[^/]*"),
    "eval/clip_i": re.compile(r"eval/clip_i(_[^/]+)?"),
    "eval/clip_t": re.compile(r"eval/clip_t(_[^/]+)?"),
}
MAX_PICK_VALUES = 8  # picks per value of a swept parameter only when it takes at most this many values
INTERNAL = ("sweep.", "hydra.")  # overrides only the sweeper sets: never part of a reproduce command
STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "FAIL": 4}


class ReportError(Exception):
    """The source cannot be read (no such folder, study or run); the CLI prints it as one line."""


@dataclass
class Trial:
    """One job / Optuna trial / MLflow child run, and its checkpoints."""

    number: int  # Optuna trial number, else the Hydra job number
    state: str = "RUNNING"  # COMPLETE | PRUNED | FAIL | RUNNING | WAITING
    overrides: list[str] = field(default_factory=list)  # the job's task overrides, as Hydra saved them
    values: dict[str, Any] = field(default_factory=dict)  # override key -> parsed value
    history: dict[int, dict[str, float]] = field(default_factory=dict)  # step -> eval/* metrics
    run_dir: Path | None = None
    lr: float | None = None  # train.lr as the job resolved it
    run_id: str | None = None  # MLflow child run
    fail_reason: str | None = None
    stopped_at: int | None = None  # the step a pruned trial stopped at (trial_state.json)
    state_file: bool = False  # the state came from the job's own trial_state.json
    config_args: list[str] = field(default_factory=list)  # --config-dir/--config-name of the sweep
    cwd: str | None = None  # where the sweep was launched (relative paths in overrides start there)

    def best(self) -> tuple[int, dict[str, float]] | None:
        """The trial's best trained checkpoint by ``eval/score`` (the shared rule: never step 0)."""
        return best_of(
            sorted(self.history.items()), score=lambda sm: sm[1].get("eval/score"), step=lambda sm: sm[0]
        )


# (trial, step, that step's metrics)
Checkpoint = tuple[Trial, int, dict[str, float]]


def best_checkpoint(points: Iterable[Checkpoint]) -> Checkpoint | None:
    """Highest ``eval/score`` among checkpoints of several trials: ties to fewer steps, then the lower trial."""
    ordered = sorted(points, key=lambda p: (p[0].number, p[1]))
    return best_of(ordered, score=lambda p: p[2].get("eval/score"), step=lambda p: p[1])


@dataclass
class Sweep:
    """Every trial of one sweep, from whichever sources were found."""

    name: str
    source: str  # human-readable: where the data came from
    trials: list[Trial]
    swept: list[str]  # override keys that vary between trials (train.lr first)
    sweep_dirs: list[Path] = field(default_factory=list)
    study: tuple[str, str] | None = None  # (study name, storage URL)
    tracking: tuple[str, str] | None = None  # (tracking URI, parent run id)
    objective: dict[str, Any] | None = None  # eval.objective of the jobs, for the score's definition
    tiny: bool = False  # tiny random models somewhere: the numbers mean nothing
    notes: list[str] = field(default_factory=list)
    continuous: set[str] = field(default_factory=set)  # searched over a range: no pick per value

    def pick_keys(self) -> tuple[list[str], list[str]]:
        """Swept keys worth one pick per value (a few discrete values), and those that are not."""
        many = [
            k
            for k in self.swept
            if k in self.continuous or len({repr(param(t, k)) for t in self.trials}) > MAX_PICK_VALUES
        ]
        return [k for k in self.swept if k not in many], many

    def checkpoints(self) -> list[Checkpoint]:
        return [(t, s, t.history[s]) for t in self.trials for s in sorted(t.history)]

    def sweet_spot(self) -> Checkpoint | None:
        """The best trained checkpoint over all trials (None while no trained checkpoint is scored)."""
        return best_checkpoint(self.checkpoints())

    def steps(self) -> list[int]:
        return sorted({s for t in self.trials for s in t.history})


@dataclass
class Pick:
    """A checkpoint worth looking at: the sweet spot, or the best one at one value of a swept parameter."""

    labels: list[str]
    trial: Trial
    step: int
    metrics: dict[str, float]
    command: str
    grids: tuple[Path | None, Path | None] = (None, None)  # (base model step 0, this step), copied


# ---------------------------------------------------------------------------------------------------
# Small helpers shared by the writers


def finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def fmt_value(v: Any) -> str:
    """Compact display of a parameter value: ``1e-4``, ``2.5e-6``, ``0.3``, ``true``, ``on``."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, float):
        if v != 0 and abs(v) < 1e-2:
            mantissa, exponent = f"{v:.2e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return f"{v:.4g}"
    return str(v)


def fmt_metric(v: Any, digits: int = 4) -> str:
    return f"{v:.{digits}f}" if finite(v) else ""


def sort_key(v: Any) -> tuple[int, Any]:
    if v is None:
        return (2, "")
    if is_number(v) or isinstance(v, bool):
        return (0, float(v))
    return (1, str(v))


def short(key: str, keys: Sequence[str]) -> str:
    """``train.lr`` -> ``lr`` unless another swept key ends the same way."""
    last = key.rsplit(".", 1)[-1]
    return last if sum(k.rsplit(".", 1)[-1] == last for k in keys) == 1 else key


def override_key(line: str) -> str:
    return line.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def is_internal(line: str) -> bool:
    return override_key(line).startswith(INTERNAL)


def param(trial: Trial, key: str) -> Any:
    """A trial's value of a swept key (``train.lr`` as the job resolved it)."""
    return trial.lr if key == "train.lr" and trial.lr is not None else trial.values.get(key)


def rows(sweep: Sweep) -> list[tuple[str, Trial]]:
    """Trials ordered by their swept values, each with its label (the heatmap's y axis, the legends)."""
    keys = sweep.swept
    ordered = sorted(sweep.trials, key=lambda t: ([sort_key(param(t, k)) for k in keys], t.number))
    labels = [", ".join(f"{short(k, keys)}={fmt_value(param(t, k))}" for k in keys) for t in ordered]
    labels = [label or f"trial {t.number}" for label, t in zip(labels, ordered, strict=True)]
    counts = {label: labels.count(label) for label in labels}
    return [
        (f"{label} #{t.number}" if counts[label] > 1 else label, t)
        for label, t in zip(labels, ordered, strict=True)
    ]


def state_counts(sweep: Sweep) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in sorted(sweep.trials, key=lambda t: STATE_ORDER.get(t.state, 9)):
        counts[t.state] = counts.get(t.state, 0) + 1
    return counts


def main_metrics(sweep: Sweep) -> dict[str, str]:
    """Each paper name of :data:`MAIN_METRICS` -> the key this sweep's histories hold it under.

    The paper's name when present (the default backbones), else its backbone-labelled variant (the
    most frequent one, should trials mix backbones), else the paper's name (nothing to show).
    """
    counts = Counter(k for t in sweep.trials for m in t.history.values() for k in m)
    out = {}
    for paper in MAIN_METRICS:
        slot = _SLOT.get(paper)
        found = [] if paper in counts or slot is None else [k for k in counts if slot.fullmatch(k)]
        out[paper] = min(found, key=lambda k: (-counts[k], k)) if found else paper
    return out


def metric_label(paper: str, key: str) -> str:
    """``DINO`` for the paper's key, ``DINO (dinov2_s14)`` for another backbone's."""
    label = LABELS.get(paper, paper)
    return label if key == paper else f"{label} ({key.removeprefix('eval/')})"


def paper_comparable(keys: dict[str, str]) -> bool:
    """Whether DINO and CLIP-T come from the paper's backbones (its reference point means something)."""
    return keys["eval/dino"] == "eval/dino" and keys["eval/clip_t"] == "eval/clip_t"


def metric_keys(sweep: Sweep) -> list[str]:
    keys = {k for t in sweep.trials for m in t.history.values() for k in m}
    main = [k for k in main_metrics(sweep).values() if k in keys]
    return main + sorted(keys - set(main))


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (both maximised), by x descending."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    front: list[int] = []
    best_y = -math.inf
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return front


def pareto_checkpoints(sweep: Sweep) -> tuple[list[Checkpoint], set[int]]:
    """Checkpoints with both DINO and CLIP-T (whichever backbones), and the indices of those on the
    Pareto front."""
    keys = main_metrics(sweep)
    dino, clip_t = keys["eval/dino"], keys["eval/clip_t"]
    pts = [c for c in sweep.checkpoints() if finite(c[2].get(dino)) and finite(c[2].get(clip_t))]
    return pts, set(pareto_front([(c[2][dino], c[2][clip_t]) for c in pts]))
