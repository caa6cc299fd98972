"""The report's figures: their sizes, heatmap labels that tell cells apart, Pareto axes on the data."""

# The shared fixtures are imported from report_helpers (a conftest.py here would shadow tests/conftest.py
# for `from conftest import ...`); pytest injects them by name, which ruff reads as redefinitions.
# ruff: noqa: F811
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from report_helpers import built, cli_run, sweep_dir  # noqa: F401

from dreambooth_sweep import report
from dreambooth_sweep.report.figures import draw_heatmaps, draw_pareto

pytestmark = pytest.mark.filterwarnings("error:constrained_layout not applied:UserWarning")


def test_figures_open_at_their_sizes(built: Path) -> None:
    for kind in ("heatmaps", "curves", "pareto"):
        with Image.open(built.parent / f"{kind}.png") as image:
            image.verify()
        with Image.open(built.parent / f"{kind}.png") as image:
            assert image.format == "PNG"
            assert image.size == report.figure_px(kind, n_rows=2, n_steps=3)  # 2 trials, steps 0/2/4
            assert image.width >= 600 and image.height >= 500


def _close_sweep() -> report.Sweep:
    """Two trials whose checkpoints differ only in the fourth decimal, far from the paper's point."""
    trials = []
    for n, lr in enumerate((1e-4, 1e-5)):
        history = {
            s: {
                "eval/dino": 0.9500 + 0.0002 * s * (n + 1),
                "eval/clip_i": 0.9,
                "eval/clip_t": -0.09 + 0.0001 * s,
            }
            for s in (0, 2, 4)
        }
        for m in history.values():
            m["eval/score"] = m["eval/dino"]
        trials.append(report.Trial(number=n, state="COMPLETE", history=history, lr=lr))
    return report.Sweep(name="close", source="test", trials=trials, swept=["train.lr"])


def test_heatmap_labels_tell_close_cells_apart() -> None:
    assert report.label_digits(0.0, 0.3) == 2 and report.label_digits(0.95, 0.954) == 4
    assert report.label_digits(0.5, 0.5) == 3  # one value: the usual three decimals
    fig = draw_heatmaps(_close_sweep())
    dino = fig.axes[0]
    labels = [t.get_text() for t in dino.texts]
    values = {round(m["eval/dino"], 9) for t in _close_sweep().trials for m in t.history.values()}
    assert len(labels) == 6 and len(set(labels)) == len(values) == 4  # different values, different labels
    assert len({f"{v:.3f}" for v in values}) < len(values)  # three fixed decimals would merge cells


def test_pareto_axes_stay_on_the_checkpoints() -> None:
    ax = draw_pareto(_close_sweep()).axes[0]
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert 0.949 < x0 < 0.95 and 0.9516 < x1 < 0.953  # the data (DINO 0.950..0.9516), not 0.668
    assert -0.091 < y0 < -0.09 and -0.0896 < y1 < -0.089
    notes = [t for t in ax.texts if "paper" in t.get_text()]
    assert notes and "outside this view" in notes[0].get_text()  # the paper point is pointed at, not plotted


def test_pareto_front_keeps_the_non_dominated_points() -> None:
    points = [(0.5, 0.30), (0.6, 0.28), (0.55, 0.25), (0.7, 0.20), (0.4, 0.30), (0.7, 0.10)]
    assert report.pareto_front(points) == [3, 1, 0]
