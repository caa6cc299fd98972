"""The report's figures, drawn with matplotlib's object API (no pyplot, no global backend switch).

``heatmaps.png``: trials (by swept values) × steps for DINO, CLIP-I, CLIP-T and the score;
``curves.png``: each metric against the step; ``pareto.png``: DINO vs CLIP-T of every checkpoint;
``val_loss.png`` (when the jobs logged ``val/*``): the fixed-noise validation losses against the step.
Each figure shows a sweep's own metric names (``eval/dinov2_s14`` in DINO's place, see
:func:`~dreambooth_sweep.report.model.main_metrics`); the paper's reference point only next to the
paper's backbones.
Every label that shows a value goes through the report's secret mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dreambooth_sweep.report.model import (
    NOTICEABLE,
    PAPER_REFERENCE,
    Sweep,
    Trial,
    finite,
    main_metrics,
    metric_label,
    paper_comparable,
    pareto_checkpoints,
    rows,
)
from dreambooth_sweep.tracking.secrets import mask_text

__all__ = [
    "draw_heatmaps",
    "draw_pareto",
    "figure_px",
    "label_digits",
    "plot_curves",
    "plot_heatmaps",
    "plot_pareto",
    "plot_val_loss",
    "val_loss_keys",
]

# The validation losses (val_loss.py) in panel order; a sweep shows those its histories hold.
VAL_LOSS_KEYS = (
    "val/instance_loss",
    "val/prior_loss",
    "val/instance_loss_by_t/low",
    "val/instance_loss_by_t/mid",
    "val/instance_loss_by_t/high",
)

DPI = 100


def figure_px(kind: str, n_rows: int = 1, n_steps: int = 1) -> tuple[int, int]:
    """Pixel size of a report figure: ``heatmaps`` grows with rows and steps, the others are fixed."""
    if kind == "heatmaps":
        panel_w = min(max(180 + 48 * n_steps, 360), 900)
        panel_h = min(max(110 + 26 * n_rows, 240), 1100)
        return 2 * panel_w + 360, 2 * panel_h + 80  # + row labels (left column only), colour bars
    if kind == "curves":
        return 1300, 940
    if kind == "pareto":
        return 1200, 700
    if kind == "val_loss":
        return 1300, 520 * n_rows + 120
    raise ValueError(f"unknown figure {kind!r}")


def label_digits(lo: float, hi: float) -> int:
    """Decimals that tell apart values spread over ``[lo, hi]``: one more than the range's first digit.

    A range of 0.3 gets 2 decimals, 0.004 gets 4; at most 6 (values closer than that are equal here).
    """
    spread = hi - lo
    if not math.isfinite(spread) or spread <= 0:
        return 3
    return min(6, max(2, math.ceil(-math.log10(spread)) + 1))


def _figure(kind: str, n_rows: int = 1, n_steps: int = 1) -> Any:
    from matplotlib.figure import Figure

    w, h = figure_px(kind, n_rows, n_steps)
    return Figure(figsize=(w / DPI, h / DPI), dpi=DPI, layout="constrained")


def _clip(label: str, width: int = 44) -> str:
    """Figure labels stay short enough for the plots to keep their size (the tables show everything)."""
    label = mask_text(label)
    return label if len(label) <= width else label[: width - 1] + "…"


def _colors(n: int) -> list[Any]:
    import matplotlib

    if n <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(n)]
    cmap = matplotlib.colormaps["viridis"]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


def _empty(ax: Any, text: str = "no values (yet)") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")


def plot_heatmaps(sweep: Sweep, path: Path) -> Path:
    """2×2 heatmaps (DINO, CLIP-I, CLIP-T, score): rows = trials by swept values, columns = steps."""
    draw_heatmaps(sweep).savefig(path, dpi=DPI)
    return path


def draw_heatmaps(sweep: Sweep) -> Any:
    """The figure of :func:`plot_heatmaps`."""
    import matplotlib
    import numpy as np
    from matplotlib.patches import Rectangle

    ordered, spot, keys = rows(sweep), sweep.sweet_spot(), main_metrics(sweep)
    # image-evaluation steps only: a step with validation losses alone would be an all-grey column
    steps = (
        sorted({s for t in sweep.trials for s, m in t.history.items() if any(k in m for k in keys.values())})
        or sweep.steps()
    )
    fig = _figure("heatmaps", len(ordered), len(steps))
    row_axis = "learning rate" if sweep.swept == ["train.lr"] else "swept parameters"
    col = {s: j for j, s in enumerate(steps)}
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#e8e8e8")  # grey: not evaluated (yet)
    for n, (ax, (paper, key)) in enumerate(
        zip(fig.subplots(2, 2, squeeze=False).ravel(), keys.items(), strict=True)
    ):
        left = n % 2 == 0  # the right column shares the rows: no second copy of the labels
        ax.set_title(f"{metric_label(paper, key)} ({key})", fontsize=11)
        matrix = np.full((max(len(ordered), 1), max(len(steps), 1)), np.nan)
        for i, (_, trial) in enumerate(ordered):
            for step, metrics in trial.history.items():
                if step in col:
                    matrix[i, col[step]] = metrics.get(key, np.nan)
        if not np.isfinite(matrix).any():
            _empty(ax)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        fig.colorbar(ax.imshow(np.ma.masked_invalid(matrix), aspect="auto", cmap=cmap), ax=ax, shrink=0.9)
        ax.set_xticks(range(len(steps)), map(str, steps), rotation=45 if len(steps) > 12 else 0, fontsize=8)
        ax.set_yticks(
            range(len(ordered)), [_clip(label, 60) for label, _ in ordered] if left else [], fontsize=8
        )
        ax.set(xlabel="step (checkpoint inside the run)", ylabel=row_axis if left else "")
        if len(ordered) * len(steps) <= 160:  # small enough to print every value
            lo, hi = np.nanmin(matrix), np.nanmax(matrix)
            digits = label_digits(float(lo), float(hi))
            size = 7 if digits <= 4 or len(steps) <= 8 else 6
            for (i, j), v in np.ndenumerate(matrix):
                if np.isfinite(v):
                    dark = hi == lo or (v - lo) / (hi - lo) <= 0.6  # viridis is dark at the low end
                    color = "w" if dark else "k"
                    ax.text(j, i, f"{v:.{digits}f}", ha="center", va="center", fontsize=size, c=color)
        for i, (_, trial) in enumerate(ordered):  # each row's best trained step (by score): a small dot
            if (best := trial.best()) is not None and best[0] in col:
                ax.plot(col[best[0]] + 0.36, i - 0.32, "o", ms=4, mfc="white", mec="black", mew=0.8)
        if spot is not None:
            i = next(i for i, (_, t) in enumerate(ordered) if t is spot[0])
            ax.add_patch(Rectangle((col[spot[1]] - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2.5))
    title = f"{row_axis} × steps — red box: sweet spot (best eval/score overall); dot: best trained step of each row"
    fig.suptitle(title, fontsize=12)
    return fig


def plot_curves(sweep: Sweep, path: Path) -> Path:
    """Each metric against the step, one line per trial; the base model (step 0) dashed."""
    from matplotlib.ticker import MaxNLocator

    ordered, spot = rows(sweep), sweep.sweet_spot()
    fig = _figure("curves")
    axes = fig.subplots(2, 2, squeeze=False).ravel()
    for ax, (paper, key) in zip(axes, main_metrics(sweep).items(), strict=True):
        ax.set(title=f"{metric_label(paper, key)} vs step", xlabel="step", ylabel=key)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        base = [t.history[0][key] for _, t in ordered if finite(t.history.get(0, {}).get(key))]
        shared = bool(base) and max(base) - min(base) <= 1e-6 * max(1.0, abs(max(base)))
        if shared:  # one base model for all trials (the usual case): one dashed line
            ax.axhline(base[0], ls="--", color="gray", lw=1.2, label="base model (step 0)")
        for color, xs, ys in _trial_lines(ax, ordered, key, marker_size=3):
            if not shared and xs[0] == 0:  # each trial its own base model (e.g. the model is swept)
                ax.axhline(ys[0], ls="--", color=color, lw=0.8, alpha=0.7)
        if spot is not None and finite(spot[2].get(key)):
            ax.plot(spot[1], spot[2][key], "*", ms=16, color="red", mec="black", zorder=5, label="sweet spot")
        if not ax.lines:
            _empty(ax)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles and len(ordered) <= 16:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(3, len(handles)), fontsize=8)
    fig.suptitle(
        "Overfitting shows as CLIP-T falling while DINO rises; dashed: base model (step 0); dotted: pruned/failed",
        fontsize=12,
    )
    fig.savefig(path, dpi=DPI)
    return path


def _trial_lines(ax: Any, ordered: list[tuple[str, Trial]], key: str, *, marker_size: float) -> list:
    """One line per trial of ``key`` against the step (dotted: pruned or failed), in the trials' colours;
    returns each drawn line's ``(color, steps, values)``."""
    drawn = []
    for (label, trial), color in zip(ordered, _colors(len(ordered)), strict=True):
        points = [(s, m[key]) for s, m in sorted(trial.history.items()) if finite(m.get(key))]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        style = ":" if trial.state in ("PRUNED", "FAIL") else "-"
        name = f"{_clip(label)} ({trial.state.lower()})"
        ax.plot(xs, ys, style, marker="o", ms=marker_size, color=color, label=name)
        drawn.append((color, xs, ys))
    return drawn


def _data_limits(values: Sequence[float]) -> tuple[float, float]:
    """Axis limits around the data alone, with a margin (a single value gets a small window)."""
    lo, hi = min(values), max(values)
    pad = 0.08 * (hi - lo) if hi > lo else max(0.01, 0.05 * abs(hi))
    return lo - pad, hi + pad


def _mark_reference(ax: Any, x: float, y: float, text: str) -> None:
    """The paper's point: a marker when it lies inside the data's axes, else an arrow at the edge
    pointing towards it (the axes stay on the checkpoints instead of stretching to a far-off point)."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    u, v = (x - x0) / (x1 - x0), (y - y0) / (y1 - y0)  # axes fraction
    if 0 <= u <= 1 and 0 <= v <= 1:
        ax.plot(x, y, "D", ms=9, color="black", mfc="white", zorder=4)
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(8, 6), fontsize=8)
        return
    # Arrow from inside the axes to the edge (or corner) on the point's side; the text sits at its tail.
    side_u = -1 if u < 0 else (1 if u > 1 else 0)
    side_v = -1 if v < 0 else (1 if v > 1 else 0)
    tip = (min(max(u, 0.02), 0.98), min(max(v, 0.02), 0.98))
    tail = (tip[0] - 0.1 * side_u, tip[1] - 0.1 * side_v)
    ax.annotate(
        f"{text}\n(outside this view)",
        xy=tip,
        xytext=tail,
        xycoords="axes fraction",
        textcoords="axes fraction",
        ha={-1: "left", 0: "center", 1: "right"}[side_u],
        va={-1: "bottom", 0: "center", 1: "top"}[side_v],
        fontsize=8,
        bbox={"boxstyle": "round", "fc": "white", "ec": "gray", "alpha": 0.9},
        arrowprops={"arrowstyle": "-|>", "color": "black", "lw": 1.2},
        zorder=6,
    )


def plot_pareto(sweep: Sweep, path: Path) -> Path:
    """DINO vs CLIP-T of every checkpoint, the Pareto front, the sweet spot and the paper's point."""
    draw_pareto(sweep).savefig(path, dpi=DPI)
    return path


def draw_pareto(sweep: Sweep) -> Any:
    """The figure of :func:`plot_pareto`; its axes span the checkpoints only."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Ellipse

    ordered, spot, keys = rows(sweep), sweep.sweet_spot(), main_metrics(sweep)
    dino, clip_t = keys["eval/dino"], keys["eval/clip_t"]
    color = {id(t): c for (_, t), c in zip(ordered, _colors(len(ordered)), strict=True)}
    label = {id(t): _clip(lab) for lab, t in ordered}
    fig = _figure("pareto")
    ax = fig.subplots()
    pts, front = pareto_checkpoints(sweep)
    labelled: set[int] = set()
    for k, (trial, step, m) in enumerate(pts):
        name = None
        if step > 0 and id(trial) not in labelled and len(ordered) <= 16:
            name = label[id(trial)]
            labelled.add(id(trial))
        style = {"marker": "x", "color": "gray"} if step == 0 else {"marker": "o", "color": color[id(trial)]}
        ax.scatter(m[dino], m[clip_t], s=18 + 60 * (k in front), alpha=0.85, label=name, **style)
    if front:
        xs, ys = zip(*sorted((pts[i][2][dino], pts[i][2][clip_t]) for i in front), strict=True)
        ax.plot(xs, ys, "-", color="black", lw=1, label=f"Pareto front ({len(front)} checkpoints)")
    ax.scatter([], [], marker="x", color="gray", label="base model (step 0)")
    if pts:  # the axes show the checkpoints; nothing else may stretch them
        ax.set_xlim(*_data_limits([m[dino] for _, _, m in pts]))
        ax.set_ylim(*_data_limits([m[clip_t] for _, _, m in pts]))
    comparable = paper_comparable(keys)  # the paper's thresholds and point are in its backbones' units
    if spot is not None and finite(spot[2].get(dino)) and finite(spot[2].get(clip_t)):
        x, y = spot[2][dino], spot[2][clip_t]
        if comparable:
            near = "not noticeably different (paper's user study: ΔDINO 0.1, ΔCLIP-T 0.05)"
            size = (2 * NOTICEABLE["eval/dino"], 2 * NOTICEABLE["eval/clip_t"])
            ax.add_patch(Ellipse((x, y), *size, fc="red", alpha=0.07, ec="red", ls="--", label=near))
        name = f"sweet spot: trial {spot[0].number}, step {spot[1]}"
        ax.plot(x, y, "*", ms=20, color="red", mec="black", zorder=5, label=name)
    px, py = PAPER_REFERENCE["eval/dino"], PAPER_REFERENCE["eval/clip_t"]
    if pts and comparable:
        _mark_reference(ax, px, py, f"paper: DINO {px}, CLIP-T {py}")
    handles, labels = ax.get_legend_handles_labels()
    if comparable:
        handles.append(Line2D([], [], ls="", marker="D", ms=9, color="black", mfc="white"))
        labels.append("paper reference: DreamBooth-SD (context only)")
    if sweep.tiny:
        warning = "tiny random models: these numbers are meaningless"
        ax.text(0.01, 0.01, warning, transform=ax.transAxes, color="firebrick", fontsize=10)
    if not pts:
        _empty(ax, "no checkpoint with both DINO and CLIP-T yet")
    ax.set(
        xlabel=f"{metric_label('eval/dino', dino)}: subject fidelity →",
        ylabel=f"{metric_label('eval/clip_t', clip_t)}: prompt fidelity →",
    )
    ax.set_title("Every checkpoint of every trial: up and right is better")
    ax.grid(alpha=0.3)
    fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    return fig


def val_loss_keys(sweep: Sweep) -> list[str]:
    """The validation losses the sweep's histories hold, in panel order (empty: no val_loss.png)."""
    found = {k for t in sweep.trials for m in t.history.values() for k in m}
    return [k for k in VAL_LOSS_KEYS if k in found]


def plot_val_loss(sweep: Sweep, path: Path) -> Path:
    """Each validation loss against the step, one line per trial (lower is better)."""
    from matplotlib.ticker import MaxNLocator

    keys, ordered = val_loss_keys(sweep), rows(sweep)
    n_rows = max(1, math.ceil(len(keys) / 3))
    fig = _figure("val_loss", n_rows)
    axes = fig.subplots(n_rows, 3, squeeze=False).ravel()
    for ax, key in zip(axes, keys, strict=False):
        ax.set(title=key.removeprefix("val/"), xlabel="step", ylabel="loss (lower is better)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        _trial_lines(ax, ordered, key, marker_size=2.5)
        if not ax.lines:
            _empty(ax)
    for ax in axes[len(keys) :]:
        ax.set_axis_off()
    handles, labels = axes[0].get_legend_handles_labels()
    if handles and len(ordered) <= 16:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(3, len(handles)), fontsize=8)
    fig.suptitle(
        "Fixed-noise validation loss (same latents, noise and noise levels at every step); "
        "low/mid/high: noise bands; dotted: pruned/failed",
        fontsize=12,
    )
    fig.savefig(path, dpi=DPI)
    return path
