"""The report shows each sweep's own metric names: another backbone's (``eval/dinov2_s14``,
``eval/clip_t_siglip_b16``) in the paper metric's place, and the validation losses as their own figure."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from report_helpers import read_csv

from dreambooth_sweep import report
from dreambooth_sweep.report.figures import draw_pareto
from dreambooth_sweep.report.model import MAIN_METRICS, main_metrics

DINOV2 = {
    "eval/dino": "eval/dinov2_s14",
    "eval/clip_i": "eval/clip_i_siglip_b16",
    "eval/clip_t": "eval/clip_t_siglip_b16",
}


def _sweep(names: dict[str, str]) -> report.Sweep:
    """Two trials, images scored at steps 0/4/8, validation losses every 2 steps (rows of val/* only between)."""
    trials = []
    for n, lr in enumerate((1e-4, 1e-5)):
        history: dict[int, dict[str, float]] = {}
        for s in (0, 2, 4, 6, 8):
            row = {"val/instance_loss": 1.0 - 0.01 * s * (n + 1), "val/instance_loss_by_t/low": 0.5}
            if s % 4 == 0:
                dino = 0.5 + 0.01 * s * (n + 1)
                row.update({names.get("eval/dino", "eval/dino"): dino, "eval/score": dino})
                row[names.get("eval/clip_i", "eval/clip_i")] = 0.8
                row[names.get("eval/clip_t", "eval/clip_t")] = 0.3 - 0.001 * s
            history[s] = row
        trials.append(report.Trial(number=n, state="COMPLETE", history=history, lr=lr))
    return report.Sweep(name="names", source="test", trials=trials, swept=["train.lr"])


def test_backbone_names_fill_the_paper_slots(tmp_path: Path) -> None:
    sweep = _sweep(DINOV2)
    assert main_metrics(sweep) == {**DINOV2, "eval/score": "eval/score"}
    page = report.render_report(sweep, tmp_path)
    rows = read_csv(tmp_path / "trials.csv")
    assert [float(r["eval/dinov2_s14"]) for r in rows] == [0.58, 0.66]  # each trial's best step (8)
    assert float(rows[0]["eval/clip_t_siglip_b16"]) == 0.3 - 0.008
    html = page.read_text()
    assert "DINO (dinov2_s14) @best" in html and "CLIP-T (clip_t_siglip_b16) @best" in html
    assert "eval/dino</" not in html  # no empty column under the paper's name
    # the paper's point (other backbones, other units) is not drawn next to these
    texts = [t.get_text() for t in draw_pareto(sweep).axes[0].texts]
    assert not any("paper" in t for t in texts)
    # heatmap columns: the image steps only; the losses have their own figure
    with Image.open(tmp_path / "heatmaps.png") as image:
        assert image.size == report.figure_px("heatmaps", n_rows=2, n_steps=3)
    with Image.open(tmp_path / "val_loss.png") as image:
        assert image.size == report.figure_px("val_loss", n_rows=1)
    assert "val_loss.png" in html


def test_paper_names_stay_as_they_were(tmp_path: Path) -> None:
    sweep = _sweep({})
    assert main_metrics(sweep) == {k: k for k in MAIN_METRICS}
    report.render_report(sweep, tmp_path)
    header = list(read_csv(tmp_path / "trials.csv")[0])
    assert header[header.index("best_score") + 1 : header.index("best_score") + 4] == [
        "eval/dino", "eval/clip_i", "eval/clip_t",
    ]  # fmt: skip
    assert any("paper" in t.get_text() for t in draw_pareto(sweep).axes[0].texts)
