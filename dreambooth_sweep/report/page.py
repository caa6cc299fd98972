"""``index.html``: one self-contained page (figures and grids embedded, CSS/JS inlined from ``static/``)
that opens offline and inside MLflow's artifact viewer.

Every piece of text goes through :func:`_esc`, which masks URL passwords and secret ``key=value``
pairs before escaping: nothing on the page can carry a credential.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import math
import time
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from dreambooth_sweep.report.model import (
    MAX_PICK_VALUES,
    STATE_ORDER,
    Pick,
    Sweep,
    Trial,
    finite,
    fmt_metric,
    fmt_value,
    is_number,
    main_metrics,
    metric_label,
    param,
    pareto_checkpoints,
    short,
    state_counts,
)
from dreambooth_sweep.tracking.secrets import mask_text

__all__ = ["render_html", "static_text"]

MAX_CHECKPOINT_ROWS = 5000  # in the HTML table; checkpoints.csv always has every row
GRID_EMBED_WIDTH = 720  # sample grids are embedded as JPEG at most this wide (the PNGs lie beside)
GRID_EMBED_HEIGHT = 4000


def static_text(name: str) -> str:
    """A file of the package's ``static/`` folder (``report.css``, ``report.js``)."""
    return resources.files("dreambooth_sweep.report").joinpath("static", name).read_text(encoding="utf-8")


def _esc(v: Any) -> str:
    return html.escape(mask_text(str(v)), quote=True)


def _img_png(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img class="fig" alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _img_grid(path: Path, alt: str, cache: dict[str, str]) -> str:
    """A sample grid as an embedded JPEG (shrunk to ``GRID_EMBED_WIDTH``); identical grids encoded once."""
    from PIL import Image

    raw = path.read_bytes()
    digest = hashlib.sha1(raw).hexdigest()
    if digest not in cache:
        image = Image.open(io.BytesIO(raw)).convert("RGB")
        scale = min(1.0, GRID_EMBED_WIDTH / image.width, GRID_EMBED_HEIGHT / image.height)
        if scale < 1.0:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.LANCZOS)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=88)
        cache[digest] = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="{_esc(alt)}" src="data:image/jpeg;base64,{cache[digest]}">'


def _td(value: Any, *, left: bool = False, digits: int = 4) -> str:
    cls = ' class="l"' if left else ""
    if is_number(value) and math.isfinite(value):
        text = fmt_metric(value, digits) if isinstance(value, float) else str(value)
        return f'<td{cls} data-v="{value!r}">{_esc(text)}</td>'
    return f"<td{cls}>{_esc('' if value is None else value)}</td>"


def _th(label: str, col: str, *, left: bool = False) -> str:
    return f'<th{" class=l" if left else ""} data-col="{_esc(col)}">{_esc(label)}</th>'


def _param_td(trial: Trial, key: str) -> str:
    value = param(trial, key)
    sort = f' data-v="{float(value)!r}"' if is_number(value) else ""
    return f'<td class="l"{sort}>{_esc(fmt_value(value))}</td>'


def _state_td(t: Trial) -> str:
    return f'<td class="l" data-v="{STATE_ORDER.get(t.state, 9)}"><span class="st {_esc(t.state)}">{_esc(t.state)}</span></td>'


def _table(table_id: str, head: Sequence[str], body: Sequence[str]) -> str:
    return (
        f'<table class="sortable" id="{table_id}"><thead><tr>{"".join(head)}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _trials_table(sweep: Sweep) -> str:
    spot = sweep.sweet_spot()
    head = [_th("trial", "trial"), _th("state", "state", left=True)]
    head += [_th(short(k, sweep.swept), k, left=True) for k in sweep.swept]
    head += [_th("best step", "best_step"), _th("best score", "best_score")]
    main = list(main_metrics(sweep).items())
    head += [_th(f"{metric_label(paper, k)} @best", k) for paper, k in main[:3]]
    head += [
        _th("checkpoints", "checkpoints"),
        _th("last step", "last_step"),
        _th("run / note", "note", left=True),
    ]
    body = []
    for t in sweep.trials:
        best = t.best()
        m = best[1] if best else {}
        cls = ' class="best"' if spot and spot[0] is t else ""
        stopped = f"pruned at step {t.stopped_at}" if t.state == "PRUNED" and t.stopped_at is not None else ""
        where = (
            t.fail_reason
            or (str(t.run_dir) if t.run_dir else "")
            or (f"MLflow {t.run_id}" if t.run_id else "")
        )
        cells = [
            _td(t.number),
            _state_td(t),
            *(_param_td(t, k) for k in sweep.swept),
            _td(best[0] if best else None),
            _td(m.get("eval/score")),
            *(_td(m.get(k)) for _, k in main[:3]),
            _td(len(t.history)),
            _td(max(t.history) if t.history else None),
            _td(" · ".join(x for x in (stopped, where) if x), left=True),
        ]
        body.append(f'<tr data-trial="{t.number}" data-state="{_esc(t.state)}"{cls}>{"".join(cells)}</tr>')
    return _table("trials-table", head, body)


def _checkpoints_table(sweep: Sweep) -> str:
    spot = sweep.sweet_spot()
    pts, front = pareto_checkpoints(sweep)
    on_front = {(pts[i][0].number, pts[i][1]) for i in front}
    head = [_th("trial", "trial")] + [_th(short(k, sweep.swept), k, left=True) for k in sweep.swept]
    head += (
        [_th("step", "step")]
        + [_th(metric_label(paper, k), k) for paper, k in main_metrics(sweep).items()]
        + [_th("mark", "mark", left=True)]
    )
    body = []
    for trial, step, m in sweep.checkpoints()[:MAX_CHECKPOINT_ROWS]:
        best = trial.best()
        marks = []
        if spot and spot[0] is trial and spot[1] == step:
            marks.append("sweet spot")
        elif best and best[0] == step:
            marks.append("trial best")
        if (trial.number, step) in on_front:
            marks.append("Pareto")
        cls = ' class="best"' if "sweet spot" in marks else ""
        cells = [_td(trial.number), *(_param_td(trial, k) for k in sweep.swept), _td(step)]
        cells += [_td(m.get(k)) for k in main_metrics(sweep).values()] + [_td(", ".join(marks), left=True)]
        body.append(f'<tr data-trial="{trial.number}" data-step="{step}"{cls}>{"".join(cells)}</tr>')
    return _table("checkpoints-table", head, body)


def _delta(metrics: Mapping[str, float], base: Mapping[str, float] | None, key: str) -> str:
    v = metrics.get(key)
    if not finite(v):
        return "–"
    text = f"{v:.4f}"
    if base is not None and finite(base.get(key)):
        text += f" ({v - base[key]:+.4f} vs step 0)"
    return text


def _params(trial: Trial, sweep: Sweep) -> str:
    return ", ".join(f"{short(k, sweep.swept)}={fmt_value(param(trial, k))}" for k in sweep.swept) or "—"


def _reproduce(trial: Trial, command: str) -> str:
    where = f" (from {_esc(trial.cwd)})" if trial.cwd else ""
    return f"<p>Reproduce{where}:</p><pre>{_esc(command)}</pre>"


def _pick_card(pick: Pick, sweep: Sweep, cache: dict[str, str], out: Path) -> str:
    t, step, m = pick.trial, pick.step, pick.metrics
    metrics = " · ".join(
        f"{metric_label(paper, k)} {_delta(m, t.history.get(0), k)}"
        for paper, k in main_metrics(sweep).items()
    )
    figures = []
    for path, caption in ((pick.grids[0], "base model (step 0)"), (pick.grids[1], f"step {step}")):
        if path is None:
            figures.append(f"<figure><figcaption>{_esc(caption)}: no sample grid found</figcaption></figure>")
            continue
        rel = path.relative_to(out).as_posix()
        figures.append(
            f'<figure><figcaption>{_esc(caption)} — <a href="{_esc(rel)}">full size</a></figcaption>'
            f'<div class="scroll">{_img_grid(path, caption, cache)}</div></figure>'
        )
    return (
        f'<div class="card" data-trial="{t.number}" data-step="{step}">'
        f"<h3>{_esc(' · '.join(pick.labels))}</h3>"
        f'<p>trial {t.number} <span class="st {_esc(t.state)}">{_esc(t.state)}</span> · {_esc(_params(t, sweep))} · '
        f"step <b>{step}</b><br>{_esc(metrics)}</p>{_reproduce(t, pick.command)}"
        f'<div class="pair">{"".join(figures)}</div></div>'
    )


def _score_definition(objective: Mapping[str, Any] | None) -> str:
    if not objective:
        return "eval/score: the sweet-spot score of each checkpoint (higher is better)."
    metric = objective.get("metric", "eval/dino")
    prompt = objective.get("prompt_metric", "eval/clip_t")
    return (
        f"eval/score = {metric} − {objective.get('penalty')} · max(0, {prompt}₀ − {prompt} − "
        f"{objective.get('tolerance')}): subject fidelity, minus a penalty once prompt fidelity falls "
        f"more than the tolerance below the base model's (step 0)."
    )


def _header(sweep: Sweep) -> list[str]:
    counts = state_counts(sweep)
    states = ", ".join(f"{n} {s}" for s, n in counts.items()) or "no trials yet"
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">',
        f"<title>Sweep report — {_esc(sweep.name)}</title><style>{static_text('report.css')}</style></head><body>",
        f"<h1>Sweep report — {_esc(sweep.name)}</h1>",
        f'<p class="meta">{len(sweep.trials)} trials: {_esc(states)} · swept: '
        f"{_esc(', '.join(sweep.swept) or 'nothing')} · source: {_esc(sweep.source)} · "
        f"generated {_esc(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>",
    ]
    active = counts.get("RUNNING", 0) + counts.get("WAITING", 0)
    if active:
        parts.append(
            f'<p class="note running">Sweep in progress: {active} trial(s) not finished, shown with the '
            "checkpoints they have so far. Build the report again to refresh it.</p>"
        )
    if sweep.tiny:
        parts.append(
            '<p class="note">Tiny random models (model/eval = tiny): the pipeline runs end to end, but these '
            "numbers mean nothing. Compare the paper's reference only with real models.</p>"
        )
    parts += [f'<p class="note">{_esc(n)}</p>' for n in sweep.notes]
    return parts


def _sweet_spot(sweep: Sweep, command: str | None) -> list[str]:
    parts = ['<h2 id="sweet-spot">Sweet spot</h2>']
    spot = sweep.sweet_spot()
    if spot is None or command is None:
        parts.append(
            "<p>No trained checkpoint has been scored yet (step 0 is the base model, the baseline).</p>"
        )
    else:
        t, step, m = spot
        main = list(main_metrics(sweep).items())[:3]
        deltas = " · ".join(f"{metric_label(paper, k)} {_delta(m, t.history.get(0), k)}" for paper, k in main)
        parts.append(
            f'<div class="spot" id="sweet-spot-box" data-trial="{t.number}" data-step="{step}" '
            f'data-score="{m["eval/score"]!r}"><b>Trial {t.number}</b> ({_esc(_params(t, sweep))}) at '
            f"<b>step {step}</b>: score {m['eval/score']:.4f} · {_esc(deltas)}{_reproduce(t, command)}</div>"
        )
    parts.append(f'<p class="caption">{_esc(_score_definition(sweep.objective))}</p>')
    return parts


def render_html(sweep: Sweep, figures: Mapping[str, Path], picks: Sequence[Pick], out: Path) -> str:
    """The page's HTML: header and notes, sweet spot, figures, pick cards, tables, links to the files."""
    spot_command = picks[0].command if picks else None  # the first pick is the sweet spot
    parts = _header(sweep) + _sweet_spot(sweep, spot_command)
    row_axis = "Learning rate" if "train.lr" in sweep.swept else "Swept parameters"
    parts += [
        f'<h2 id="heatmaps">1. {row_axis} × steps</h2>',
        '<p class="caption">Each row is a trial (labelled by its swept values), each column a checkpoint '
        "inside the run. Look for the score's bright cells: a row that peaks early and fades is "
        "overfitting, one that is still rising wants more steps. Grey: not evaluated (yet).</p>",
        _img_png(figures["heatmaps"], "heatmaps"),
        '<h2 id="curves">2. Curves</h2>',
        '<p class="caption">Each metric against the step, one line per trial; dashed: the base model at '
        "step 0. Overfitting is visible where CLIP-T (prompt fidelity) falls while DINO (subject "
        "fidelity) still rises.</p>",
        _img_png(figures["curves"], "curves"),
        *(
            [
                '<p class="caption">The fixed-noise validation loss (eval.val_loss_every_n_steps): the '
                "denoising loss on the instance photos (and class images) with the same latents, noise and "
                "noise levels at every step, lower is better; cheap enough to evaluate often, and what "
                "hydra.sweeper.prune_on=val/instance_loss prunes on.</p>",
                _img_png(figures["val_loss"], "val_loss"),
            ]
            if "val_loss" in figures
            else []
        ),
        '<h2 id="pareto">3. DINO vs CLIP-T</h2>',
        '<p class="caption">Every checkpoint of every trial; the Pareto front joins those no other '
        "checkpoint beats on both. The axes stay on the checkpoints: the paper's DreamBooth-SD point "
        "(DINO 0.668, CLIP-T 0.305; Ruiz et al. 2023) is marked by an arrow when it lies outside. It is "
        "context only: other models, subjects and prompts give other numbers.</p>",
        _img_png(figures["pareto"], "pareto"),
        '<h2 id="picks">4. Picks</h2>',
        '<p class="caption">The best trained checkpoint overall and per value of each swept parameter, with '
        "its sample grid beside the base model's (same prompts and seeds). The command retrains the trial "
        "up to that step (with a constant learning rate, the default, the same weights up to "
        "nondeterminism); values searched over a continuous range are rounded to 2 significant digits "
        "(the exact ones are in trials.csv), passwords are masked as ***.</p>",
    ]
    many = sweep.pick_keys()[1]
    if many:
        parts.append(
            f'<p class="caption">No pick per value of {_esc(", ".join(many))}: searched over a range or more '
            f"than {MAX_PICK_VALUES} values; sort the trials table by it instead.</p>"
        )
    cache: dict[str, str] = {}
    cards = "".join(_pick_card(p, sweep, cache, out) for p in picks)
    parts.append(f'<div class="cards">{cards}</div>' if picks else "<p>No picks yet.</p>")
    n_ckpt = len(sweep.checkpoints())
    more = f" (first {MAX_CHECKPOINT_ROWS}; all in checkpoints.csv)" if n_ckpt > MAX_CHECKPOINT_ROWS else ""
    files = ("trials.csv", "checkpoints.csv", "summary.json", *(p.name for p in figures.values()))
    parts += [
        '<h2 id="trials">5. Trials</h2>',
        '<p class="caption">Click a column header to sort. Metrics are those of each trial\'s best trained '
        "checkpoint (step 0 is the baseline, never a trial's best).</p>",
        _trials_table(sweep),
        f"<details><summary>All {n_ckpt} checkpoints{more}</summary>{_checkpoints_table(sweep)}</details>",
        '<h2 id="files">Files</h2><p>' + " · ".join(f'<a href="{n}">{n}</a>' for n in files) + "</p>",
        f"<script>{static_text('report.js')}</script></body></html>",
    ]
    return "\n".join(parts)
