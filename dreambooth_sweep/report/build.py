"""Build a report: read a sweep (:mod:`.sources`), write its folder, log it to the MLflow parent run;
and the Hydra callback that does so when a multirun ends."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from dreambooth_sweep.files import atomic_write
from dreambooth_sweep.report.figures import (
    plot_curves,
    plot_heatmaps,
    plot_pareto,
    plot_val_loss,
    val_loss_keys,
)
from dreambooth_sweep.report.model import Sweep
from dreambooth_sweep.report.page import render_html
from dreambooth_sweep.report.picks import copy_grids, make_picks
from dreambooth_sweep.report.runs import log_to_mlflow
from dreambooth_sweep.report.sources import load_sweep
from dreambooth_sweep.report.tables import write_checkpoints_csv, write_summary, write_trials_csv
from dreambooth_sweep.tracking.secrets import mask_text

__all__ = ["ReportCallback", "build_report", "render_report"]

log = logging.getLogger(__name__)


def render_report(sweep: Sweep, out: str | os.PathLike[str]) -> Path:
    """Write every file of the report into ``out``; returns the path of ``index.html``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "heatmaps": plot_heatmaps(sweep, out / "heatmaps.png"),
        "curves": plot_curves(sweep, out / "curves.png"),
        "pareto": plot_pareto(sweep, out / "pareto.png"),
    }
    if val_loss_keys(sweep):
        figures["val_loss"] = plot_val_loss(sweep, out / "val_loss.png")
    picks = make_picks(sweep)
    copy_grids(picks, out / "samples", sweep)
    write_trials_csv(sweep, out / "trials.csv")
    write_checkpoints_csv(sweep, out / "checkpoints.csv")
    write_summary(sweep, picks, out / "summary.json")
    page = out / "index.html"
    with atomic_write(page) as tmp:  # a browser refreshing during a rebuild never sees half a page
        tmp.write_text(render_html(sweep, figures, picks, out), encoding="utf-8")
    return page


def _default_out(sweep: Sweep) -> Path:
    if sweep.sweep_dirs:
        return sweep.sweep_dirs[0] / "report"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", sweep.name).strip("_") or "sweep"
    return Path("outputs") / "reports" / slug


def build_report(
    source: str | os.PathLike[str] | None = None,
    *,
    storage: str | None = None,
    study: str | None = None,
    tracking_uri: str | None = None,
    sweep_dirs: Sequence[str | os.PathLike[str]] = (),
    out: str | os.PathLike[str] | None = None,
    log_mlflow: bool = True,
) -> Path:
    """Read a sweep (see :func:`~dreambooth_sweep.report.sources.load_sweep`) and write its report.

    Args:
        source: a Hydra multirun folder, or an MLflow parent run id / sweep experiment name.
        storage: Optuna storage URL, with ``study``.
        study: Optuna study name.
        tracking_uri: MLflow tracking URI (see ``load_sweep``).
        sweep_dirs: more multirun folders of the same Optuna study.
        out: report folder; default ``<sweep dir>/report`` (else ``outputs/reports/<name>``).
        log_mlflow: also log the folder to the sweep's MLflow parent run, when there is one.

    Returns:
        The path of ``index.html``.
    """
    sweep = load_sweep(source, storage=storage, study=study, tracking_uri=tracking_uri, sweep_dirs=sweep_dirs)
    page = render_report(sweep, Path(out) if out is not None else _default_out(sweep))
    if log_mlflow and sweep.tracking is not None:
        try:
            log_to_mlflow(page.parent, *sweep.tracking)
            log.info("report logged to MLflow run %s (artifacts: report/)", sweep.tracking[1])
        except Exception as e:  # the files are written; MLflow is a copy
            log.warning("could not log the report to MLflow run %s: %s", sweep.tracking[1], mask_text(str(e)))
    return page


class ReportCallback(Callback):
    """Hydra callback: build the sweep report when a multirun ends (grid or Optuna sweeper).

    Register it under ``hydra.callbacks`` (``conf/train.yaml`` does). A failing report never fails the
    sweep: it is logged as a warning with the command to retry.

    When the launcher ran the jobs in this process (Hydra's basic launcher calls ``on_job_end`` on this
    same object), the caches the trials kept for each other — the pristine base model, step-0 samples,
    metric models — are released before the report is built: the report needs the memory, the jobs
    are done. Jobs launched elsewhere (joblib, submitit) leave nothing here to release, and the
    report then never imports the training stack.
    """

    def __init__(self, enabled: bool = True, log_mlflow: bool = True) -> None:
        self.enabled = enabled
        self.log_mlflow = log_mlflow
        self.jobs_here = False  # a job ran in this process

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        self.jobs_here = True

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled:
            return
        sweep_dir = Path(str(config.hydra.sweep.dir)).expanduser()
        if self.jobs_here:
            from dreambooth_sweep.caches import release_process_caches

            release_process_caches()
        try:
            page = build_report(sweep_dir, log_mlflow=self.log_mlflow)
        except Exception as e:
            log.warning(
                "sweep report failed (%s: %s); retry: dreambooth-sweep report %s",
                type(e).__name__,
                mask_text(str(e)),
                sweep_dir,
            )
            return
        log.info("sweep report: %s", page)
