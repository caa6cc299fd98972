"""Sweep report: where subject fidelity is high and prompt fidelity has not collapsed, at a glance.

The data flows one way through the modules:

- :mod:`.sources` reads Hydra multirun folders and an Optuna study, :mod:`.runs` an MLflow parent
  run and its children; they merge into
- :mod:`.model`: :class:`Trial`, :class:`Sweep`, :class:`Pick` (every "best" through the one rule of
  :mod:`dreambooth_sweep.objective`: step 0 never, NaN never, ties to the earlier step);
- :mod:`.picks` and :mod:`.overrides` choose the checkpoints to show and their reproduce commands;
- :mod:`.figures` draws the heatmaps, curves and Pareto plot, :mod:`.tables` writes the CSVs and
  ``summary.json``, :mod:`.page` the self-contained ``index.html`` (CSS/JS in ``static/``);
- :mod:`.build` puts it together (and holds the Hydra :class:`ReportCallback`), :mod:`.cli` is the
  command line.

Every file the report writes masks URL passwords and secret ``key=value`` pairs
(:mod:`dreambooth_sweep.tracking.secrets`): the folder is uploaded to MLflow and shared.

The sweet spot is the trained checkpoint (step > 0) with the highest ``eval/score`` over all trials
(ties: fewer steps, then the lower trial number). Step 0, the untrained base model, is the baseline
every score is measured against, never a pick.

To build the report automatically at the end of every sweep, register the Hydra callback::

    hydra:
      callbacks:
        report:
          _target_: dreambooth_sweep.report.ReportCallback
"""

from __future__ import annotations

from dreambooth_sweep.report.build import ReportCallback, build_report, render_report
from dreambooth_sweep.report.cli import add_cli, main
from dreambooth_sweep.report.figures import figure_px, label_digits
from dreambooth_sweep.report.model import (
    PAPER_REFERENCE,
    Pick,
    ReportError,
    Sweep,
    Trial,
    best_checkpoint,
    pareto_front,
)
from dreambooth_sweep.report.overrides import reproduce_command
from dreambooth_sweep.report.runs import log_to_mlflow
from dreambooth_sweep.report.sources import TRIAL_STATE_FILE, load_sweep

__all__ = [
    "PAPER_REFERENCE",
    "TRIAL_STATE_FILE",
    "Pick",
    "ReportCallback",
    "ReportError",
    "Sweep",
    "Trial",
    "add_cli",
    "best_checkpoint",
    "build_report",
    "figure_px",
    "label_digits",
    "load_sweep",
    "log_to_mlflow",
    "main",
    "pareto_front",
    "render_report",
    "reproduce_command",
]
