"""MLflow as a report source: a sweep's parent run, its child runs, and the grids they logged.

A child run whose job folder is on this machine (tag ``output_dir``) is read from that folder like
any other job; the others come from their tags (overrides) and metric histories. Grid sweeps have no
Optuna study: their states come from the runs' status here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreambooth_sweep.report.model import ReportError, Trial
from dreambooth_sweep.report.overrides import parse_overrides
from dreambooth_sweep.tracking.secrets import mask_text
from dreambooth_sweep.tracking.store import default_uri
from dreambooth_sweep.tracking.tags import (
    ROLE_PARENT,
    TAG_ERROR,
    TAG_HYDRA_JOB_NUM,
    TAG_HYDRA_OVERRIDES,
    TAG_OPTUNA_TRIAL,
    TAG_OUTPUT_DIR,
    TAG_PARENT,
    TAG_PRUNED,
    TAG_ROLE,
    TAG_SWEEP_ID,
)

__all__ = ["MlflowSweep", "download_grid", "log_to_mlflow", "merge_mlflow"]

log = logging.getLogger(__name__)


def client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise ReportError(f"no MLflow database at {uri.removeprefix('sqlite:///')}")
    return MlflowClient(tracking_uri=uri)


def _find_parent(mlflow: Any, sweep_ids: Sequence[str]) -> str | None:
    experiments = [e.experiment_id for e in mlflow.search_experiments()]
    for sweep_id in sweep_ids:
        runs = mlflow.search_runs(
            experiments,
            filter_string=f"tags.`{TAG_SWEEP_ID}` = '{sweep_id}' and tags.`{TAG_ROLE}` = '{ROLE_PARENT}'",
            max_results=1,
        )
        if runs:
            return runs[0].info.run_id
    return None


def _resolve_parent(mlflow: Any, source: str) -> str:
    """A run id, or an experiment name whose newest parent run is taken."""
    if re.fullmatch(r"[0-9a-f]{32}", source):
        try:
            return mlflow.get_run(source).info.run_id
        except Exception as e:
            raise ReportError(f"no MLflow run {source}: {e}") from None
    exp = mlflow.get_experiment_by_name(source)
    if exp is None:
        raise ReportError(f"{source!r} is neither a folder, an MLflow run id nor an MLflow experiment")
    runs = mlflow.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{TAG_ROLE}` = '{ROLE_PARENT}'",
        order_by=["attributes.start_time DESC"],
    )
    if not runs:
        raise ReportError(
            f"MLflow experiment {source!r} has no sweep parent run (tag {TAG_ROLE}={ROLE_PARENT})"
        )
    return runs[0].info.run_id


def _children(mlflow: Any, parent_id: str) -> list[Any]:
    experiment = mlflow.get_run(parent_id).info.experiment_id
    runs: list[Any] = []
    token = None
    while True:
        page = mlflow.search_runs(
            [experiment], f"tags.`{TAG_PARENT}` = '{parent_id}'", max_results=1000, page_token=token
        )
        runs += list(page)
        token = page.token
        if not token:
            return sorted(runs, key=lambda r: r.info.start_time or 0)


@dataclass
class MlflowSweep:
    """A sweep's parent run and its children in an MLflow store."""

    client: Any
    uri: str
    parent_id: str
    runs: list[Any]
    name: str = ""

    @classmethod
    def open(cls, source: str, uri: str | None) -> MlflowSweep:
        """The sweep given on the command line as a parent run id or an experiment name."""
        uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri("outputs")
        try:
            mlflow = client(uri)
            parent_id = _resolve_parent(mlflow, source)
        except ReportError as e:
            raise ReportError(
                f"{source} is not a sweep folder, nor an MLflow sweep at {mask_text(uri)} ({e})"
            ) from None
        name = mlflow.get_experiment(mlflow.get_run(parent_id).info.experiment_id).name
        return cls(mlflow, uri, parent_id, _children(mlflow, parent_id), name)

    @classmethod
    def find(
        cls, uri: str, parent_id: str | None, sweep_ids: Sequence[str], notes: list[str]
    ) -> MlflowSweep | None:
        """The parent run of a sweep read from its folder (tag ``dbs.sweep_id``); None if there is none."""
        try:
            mlflow = client(uri)
            parent_id = parent_id or _find_parent(mlflow, sweep_ids)
            return cls(mlflow, uri, parent_id, _children(mlflow, parent_id)) if parent_id else None
        except Exception as e:  # the report does not need MLflow
            log.warning(
                "MLflow at %s not readable (%s): report without it", mask_text(uri), mask_text(str(e))
            )
            notes.append(f"MLflow at {mask_text(uri)} not readable: {type(e).__name__}")
            return None

    def local_dirs(self) -> list[Path]:
        """Sweep folders of the child runs that are on this machine (read like any multirun folder)."""
        dirs: list[Path] = []
        for run in self.runs:
            out = run.data.tags.get(TAG_OUTPUT_DIR)
            if out and (Path(out) / ".hydra").is_dir() and Path(out).resolve().parent not in dirs:
                dirs.append(Path(out).resolve().parent)
        return dirs


def _state(run: Any) -> str:
    status = run.info.status
    if status == "FINISHED":
        return "PRUNED" if run.data.tags.get(TAG_PRUNED) == "true" else "COMPLETE"
    return "FAIL" if status in ("FAILED", "KILLED") else "RUNNING"


def _run_number(run: Any, default: int) -> int:
    tags = run.data.tags
    for key in (TAG_OPTUNA_TRIAL, TAG_HYDRA_JOB_NUM):
        if str(tags.get(key, "")).lstrip("-").isdigit():
            return int(tags[key])
    return default


def _optuna_number(run: Any) -> int | None:
    """The run's Optuna trial number (unique within its study), when it has one."""
    value = str(run.data.tags.get(TAG_OPTUNA_TRIAL, ""))
    return int(value) if value.isdigit() else None


def _split_overrides(text: str) -> list[str]:
    """The ``hydra.overrides`` tag joins overrides with spaces: glue back pieces of values with spaces."""
    out: list[str] = []
    for piece in text.split(" "):
        if out and not re.match(r"^[+~]{0,2}[\w./@-]+=", piece):
            out[-1] += " " + piece
        elif piece:
            out.append(piece)
    return out


def _trial_from_run(mlflow: Any, run: Any, number: int) -> Trial:
    """A child run whose folder is not on this machine: overrides from tags, curves from metric history."""
    overrides = _split_overrides(run.data.tags.get(TAG_HYDRA_OVERRIDES, ""))
    values, _ = parse_overrides(overrides)
    lr = run.data.params.get("train.lr")
    trial = Trial(number=number, overrides=overrides, values=values)
    with contextlib.suppress(TypeError, ValueError):
        trial.lr = float(lr)
    for key in sorted(k for k in run.data.metrics if k.startswith(("eval/", "val/"))):
        for m in mlflow.get_metric_history(run.info.run_id, key):
            trial.history.setdefault(int(m.step), {})[key] = float(m.value)
    return trial


def merge_mlflow(trials: dict[int, Trial], mlflow: Any, runs: Sequence[Any], states: bool) -> None:
    """Attach child runs to the trials read from folders; add the runs that have none (with states)."""
    by_dir = {t.run_dir.resolve(): t for t in trials.values() if t.run_dir is not None}
    for index, run in enumerate(runs):
        number = _run_number(run, index)
        out = run.data.tags.get(TAG_OUTPUT_DIR)
        trial = by_dir.get(Path(out).resolve()) if out else None
        if trial is None and number in trials and trials[number].run_dir is None:
            trial = trials[number]
        if (
            trial is None
            and _optuna_number(run) == number
            and number in trials
            and trials[number].run_id is None
        ):
            # Optuna numbers are unique in the study: the same trial, its folder moved or copied since
            trial = trials[number]
        if trial is None:
            if number in trials:  # a number clash between sweep folders: do not overwrite
                number = max(trials) + 1
            trial = trials[number] = _trial_from_run(mlflow, run, number)
            states = True
        trial.run_id = run.info.run_id
        if states and not trial.state_file:
            trial.state = _state(run)
            if trial.state == "FAIL":
                trial.fail_reason = run.data.tags.get(TAG_ERROR) or trial.fail_reason


def download_grid(uri: str, run_id: str, step: int, dest: Path) -> bool:
    """The grid the tracker logged with ``log_image(key="samples", step=...)`` (``images/`` artifacts)."""
    try:
        mlflow = client(uri)
        names = [f.path for f in mlflow.list_artifacts(run_id, "images")]
        # MLflow names them samples+step+<step>+timestamp+<ms>+<uuid>.png (older versions: % for +).
        pattern = re.compile(rf"samples[+%]step[+%]{step}[+%].*(?<!compressed)\.png")
        match = sorted(n for n in names if pattern.fullmatch(Path(n).name))
        if not match:
            return False
        local = mlflow.download_artifacts(run_id, match[-1], str(dest.parent / ".download"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(local, dest)
        shutil.rmtree(dest.parent / ".download", ignore_errors=True)
        return True
    except Exception as e:
        log.debug("no grid for run %s step %d: %s", run_id, step, e)
        return False


def log_to_mlflow(report_dir: Path, tracking_uri: str, parent_run_id: str) -> None:
    """Upload the report folder to ``report/`` of the sweep's parent run."""
    client(tracking_uri).log_artifacts(parent_run_id, str(report_dir), artifact_path="report")
