"""Sweep report: where subject fidelity is high and prompt fidelity has not collapsed, at a glance.

    dreambooth-sweep report outputs/multiruns/2026-01-01_12-00-00      # a Hydra multirun dir (grid or Optuna)
    dreambooth-sweep report --storage sqlite:///outputs/optuna.db --study lr-sweep
    dreambooth-sweep report <parent run id | experiment> --tracking-uri sqlite:///outputs/mlflow.db
    python -m dreambooth_sweep.report ...                              # the same, without the CLI wrapper

writes ``<sweep dir>/report/`` (or ``--out``): ``index.html`` (self-contained: figures and sample grids
are embedded, so it opens offline and inside MLflow's artifact viewer), ``heatmaps.png``, ``curves.png``,
``pareto.png``, ``trials.csv``, ``checkpoints.csv``, ``summary.json`` and the picked sample grids in
``samples/``; the folder is also logged to the sweep's MLflow parent run (``report/``) when there is one.

**Where the numbers come from.** The steps axis comes from checkpoints *inside* each run: every job
folder holds ``eval_history.jsonl`` (one line per evaluated checkpoint; a resumed run may repeat a step,
the last line wins), ``samples/step_XXXXXX.png`` and ``.hydra/``. A job is COMPLETE once it wrote
``metrics.json``. Those files are the common path for grids and Optuna sweeps alike; the Optuna study
(found through the jobs' ``sweep.*`` settings, ``optimization_results.yaml``, or ``--storage/--study``)
then gives the true trial states (COMPLETE / PRUNED / FAIL / RUNNING) and the trials that have no folder
yet, and the MLflow parent run gives states of grid jobs and histories of runs whose folders are
elsewhere. A sweep still running reports fine: its unfinished trials show as RUNNING, possibly empty.

**The sweet spot** is the trained checkpoint (step > 0) with the highest ``eval/score`` over all trials
(ties: fewer steps, then the lower trial number) — the same rule the trainer uses for a trial's value
and best step. Step 0, the untrained base model, is the baseline every score is measured against; it
is only shown as the sweet spot while no trained checkpoint has been scored yet.

To build the report automatically at the end of every sweep, register the Hydra callback::

    hydra:
      callbacks:
        report:
          _target_: dreambooth_sweep.report.ReportCallback
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import functools
import hashlib
import html
import io
import json
import logging
import math
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = [
    "PAPER_REFERENCE",
    "Pick",
    "ReportCallback",
    "ReportError",
    "Sweep",
    "Trial",
    "add_cli",
    "build_report",
    "figure_px",
    "load_sweep",
    "main",
    "pareto_front",
    "render_report",
]

log = logging.getLogger(__name__)

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
MAX_PICK_VALUES = 8  # picks per value of a swept parameter only when it takes at most this many values
MAX_CHECKPOINT_ROWS = 5000  # in the HTML table; checkpoints.csv always has every row
DPI = 100
GRID_EMBED_WIDTH = 720  # sample grids are embedded as JPEG at most this wide (the PNGs lie beside)
GRID_EMBED_HEIGHT = 4000
_INTERNAL = ("sweep.", "hydra.")  # overrides only the sweeper sets: never part of a reproduce command
_STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "FAIL": 4}


class ReportError(Exception):
    """The source cannot be read (no such folder, study or run); the CLI prints it as one line."""


# ---------------------------------------------------------------------------------------------------
# What a report is made of


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
    config_args: list[str] = field(default_factory=list)  # --config-dir/--config-name of the sweep
    cwd: str | None = None  # where the sweep was launched (relative paths in overrides start there)

    def best(self) -> tuple[int, dict[str, float]] | None:
        """The trial's best checkpoint by ``eval/score`` (ties: the earlier step)."""
        scored = [(s, m) for s, m in self.history.items() if _finite(m.get("eval/score"))]
        return max(scored, key=lambda sm: (sm[1]["eval/score"], -sm[0]), default=None)


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
            if k in self.continuous or len({repr(_param(t, k)) for t in self.trials}) > MAX_PICK_VALUES
        ]
        return [k for k in self.swept if k not in many], many

    def checkpoints(self) -> list[tuple[Trial, int, dict[str, float]]]:
        return [(t, s, t.history[s]) for t in self.trials for s in sorted(t.history)]

    def sweet_spot(self) -> tuple[Trial, int, dict[str, float]] | None:
        """Highest ``eval/score`` over trained checkpoints (step 0 only while nothing else is scored).

        Ties: fewer steps, then the lower trial number.
        """
        checkpoints = self.checkpoints()
        return _best_of([c for c in checkpoints if c[1] > 0]) or _best_of(checkpoints)


def _best_of(
    points: Iterable[tuple[Trial, int, dict[str, float]]],
) -> tuple[Trial, int, dict[str, float]] | None:
    scored = [p for p in points if _finite(p[2].get("eval/score"))]
    if not scored:
        return None
    return max(scored, key=lambda p: (p[2]["eval/score"], -p[1], -p[0].number))


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
# Small helpers


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _is_number(v: Any) -> bool:
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


def _fmt_metric(v: Any, digits: int = 4) -> str:
    return f"{v:.{digits}f}" if _finite(v) else ""


def _sort_key(v: Any) -> tuple[int, Any]:
    if v is None:
        return (2, "")
    if _is_number(v) or isinstance(v, bool):
        return (0, float(v))
    return (1, str(v))


def _short(key: str, keys: Sequence[str]) -> str:
    """``train.lr`` -> ``lr`` unless another swept key ends the same way."""
    last = key.rsplit(".", 1)[-1]
    return last if sum(k.rsplit(".", 1)[-1] == last for k in keys) == 1 else key


def _override_key(line: str) -> str:
    return line.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def _is_internal(line: str) -> bool:
    return _override_key(line).startswith(_INTERNAL)


@functools.cache
def _overrides_parser() -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def _parse_overrides(lines: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Override lines -> ({key: value}, [keys of sweep overrides such as ``a=1,2``])."""
    parser = _overrides_parser()
    values: dict[str, Any] = {}
    swept: list[str] = []
    for line in lines:
        try:
            ov = parser.parse_override(line)
        except Exception:  # not Hydra syntax after all: keep the raw text
            key, _, value = line.partition("=")
            values[key.lstrip("+~")] = value
            continue
        if ov.is_delete():
            continue
        if ov.is_sweep_override():
            swept.append(ov.key_or_group)
        else:
            values[ov.key_or_group] = ov.value()
    return values, swept


def _load_yaml(path: Path) -> Any:
    try:
        return OmegaConf.load(path)
    except Exception:
        return None


def _select(cfg: Any, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    try:
        value = OmegaConf.select(cfg, key, default=default, throw_on_resolution_failure=False)
    except Exception:
        return default
    if isinstance(value, DictConfig | ListConfig):  # plain containers, interpolations left as typed
        return OmegaConf.to_container(value, resolve=False)
    return value


def read_history(path: Path) -> dict[int, dict[str, float]]:
    """``eval_history.jsonl`` -> {step: metrics}; a repeated step keeps its last line, a torn line is skipped."""
    history: dict[int, dict[str, float]] = {}
    try:
        text = path.read_text()
    except OSError:
        return history
    for line in text.splitlines():
        try:
            row = json.loads(line)
            step = int(row.pop("step"))
        except (ValueError, TypeError, KeyError, AttributeError):
            continue  # the line a running job is writing right now, or not ours
        history[step] = {str(k): float(v) for k, v in row.items() if _is_number(v)}
    return history


# ---------------------------------------------------------------------------------------------------
# Reading a Hydra multirun folder


@dataclass
class _DirInfo:
    """What a sweep folder says about the sweep beyond its jobs."""

    swept: list[str] = field(default_factory=list)
    study: tuple[str, str] | None = None
    sweep_ids: list[str] = field(default_factory=list)  # MLflow dbs.sweep_id candidates
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    objective: dict[str, Any] | None = None
    tiny: bool = False


def _job_dirs(sweep_dir: Path) -> list[Path]:
    jobs = [p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")]
    if not jobs:  # a custom hydra.sweep.subdir one level deeper
        jobs = [p.parent.parent for p in sweep_dir.glob("*/*/.hydra/overrides.yaml")]
    return sorted(jobs, key=lambda p: (len(p.parts), int(p.name) if p.name.isdigit() else 1 << 30, p.name))


def read_job(job_dir: Path) -> tuple[Trial, Any]:
    """One job folder -> (Trial, its resolved-as-far-as-possible config)."""
    hydra_dir = job_dir / ".hydra"
    overrides = [str(x) for x in _select(_load_yaml(hydra_dir / "overrides.yaml"), "", [])]
    cfg = _load_yaml(hydra_dir / "config.yaml")
    hydra_cfg = _load_yaml(hydra_dir / "hydra.yaml")
    number = _select(cfg, "sweep.trial_number")
    if number is None:
        number = _select(hydra_cfg, "hydra.job.num")
    if number is None:
        number = int(job_dir.name) if job_dir.name.isdigit() else -1
    values, _ = _parse_overrides(overrides)
    lr = _select(cfg, "train.lr")
    trial = Trial(
        number=int(number),
        overrides=overrides,
        values=values,
        history=read_history(job_dir / "eval_history.jsonl"),
        run_dir=job_dir,
        lr=float(lr) if _is_number(lr) else None,
        cwd=_select(hydra_cfg, "hydra.runtime.cwd"),
    )
    if (job_dir / "metrics.json").exists():
        trial.state = "COMPLETE"
    elif any("pruned at step" in _tail(p) for p in job_dir.glob("*.log")):
        trial.state = "PRUNED"  # the job log says so (dreambooth_sweep.sweep logs the pruning)
    # Rebuild the command line of a sweep defined in a sweep file (--config-dir sweeps --config-name x).
    name = _select(hydra_cfg, "hydra.job.config_name")
    sources = _select(hydra_cfg, "hydra.runtime.config_sources") or []
    extra = [s.get("path") for s in sources if isinstance(s, Mapping) and s.get("provider") == "command-line"]
    if extra:
        trial.config_args += ["--config-dir", str(extra[0])]
    if name and (name != "train" or extra):
        trial.config_args += ["--config-name", str(name)]
    return trial, cfg


def _tail(path: Path, size: int = 20000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - size))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def _log_dir(cfg: Any, cwd: str | None) -> Path | None:
    log_dir = _select(cfg, "paths.log_dir")
    if not isinstance(log_dir, str) or "${" in log_dir:
        return None
    path = Path(log_dir).expanduser()
    return path if path.is_absolute() or cwd is None else Path(cwd) / path


def read_sweep_dir(sweep_dir: Path) -> tuple[list[Trial], _DirInfo]:
    """Every job of a Hydra multirun folder, and what the folder says about its sweep."""
    info = _DirInfo()
    multirun = _load_yaml(sweep_dir / "multirun.yaml")
    task = _select(multirun, "hydra.overrides.task") or []
    _, info.swept = _parse_overrides([str(x) for x in task])
    params = _select(multirun, "hydra.sweeper.params") or {}
    if isinstance(params, Mapping):
        info.swept += [k for k in _flat_keys(params) if k not in info.swept]
    sweeper = _select(multirun, "hydra.sweeper") or {}  # unresolved: ${now:...} would resolve to today
    if str(sweeper.get("_target_", "")).endswith("OptunaSweeper"):
        name = sweeper.get("study_name") or _select(multirun, "hydra.job.name")
        storage = sweeper.get("storage") or f"sqlite:///{(sweep_dir / 'optuna.db').resolve()}"
        if name and "${" not in f"{name}{storage}":
            info.study = (str(name), str(storage))
    results = _load_yaml(sweep_dir / "optimization_results.yaml")
    if (
        results is not None
        and _select(results, "study_name")
        and "***" not in str(_select(results, "storage"))
    ):
        info.study = info.study or (str(_select(results, "study_name")), str(_select(results, "storage")))

    trials: list[Trial] = []
    for job_dir in _job_dirs(sweep_dir):
        trial, cfg = read_job(job_dir)
        trials.append(trial)
        if cfg is None:
            continue
        study, storage = _select(cfg, "sweep.study_name"), _select(cfg, "sweep.storage")
        if study and storage:
            info.study = (str(study), str(storage))  # the full URL: the sweeper's copy hides a password
        info.parent_run_id = info.parent_run_id or _select(cfg, "sweep.parent_run_id")
        info.objective = info.objective or _select(cfg, "eval.objective")
        info.tiny = info.tiny or "tiny" in (
            str(_select(cfg, "model.pretrained")),
            str(_select(cfg, "eval.clip_model")),
            str(_select(cfg, "eval.dino_model")),
        )
        if info.tracking_uri is None and str(_select(cfg, "tracking.backend")) == "mlflow":
            uri = _select(cfg, "tracking.uri")
            if uri and "${" not in str(uri):
                info.tracking_uri = str(uri)
            elif (log_dir := _log_dir(cfg, trial.cwd)) is not None and (log_dir / "mlflow.db").exists():
                info.tracking_uri = f"sqlite:///{(log_dir / 'mlflow.db').resolve()}"
    # The ids tracking.py gives this sweep's MLflow parent run.
    if info.study:
        info.sweep_ids.append(f"optuna:{info.study[0]}")
    hydra_cfg = (
        _load_yaml(trials[0].run_dir / ".hydra" / "hydra.yaml") if trials and trials[0].run_dir else None
    )
    configured = _select(hydra_cfg, "hydra.sweep.dir")
    cwd = _select(hydra_cfg, "hydra.runtime.cwd")
    if isinstance(configured, str) and cwd:
        info.sweep_ids.append(f"hydra:{Path(cwd, configured).resolve()}")
    info.sweep_ids.append(f"hydra:{sweep_dir.resolve()}")
    return trials, info


def _flat_keys(params: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for k, v in params.items():
        if isinstance(v, Mapping) and "type" not in v:
            keys += _flat_keys(v, f"{prefix}{k}.")
        else:
            keys.append(f"{prefix}{k}")
    return keys


# ---------------------------------------------------------------------------------------------------
# Optuna


def _check_storage(url: str) -> None:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///").split("?", 1)[0])
        if not path.exists():  # RDBStorage would silently create an empty database
            raise ReportError(f"no Optuna database at {path}")
    elif url.startswith("journal://"):
        path = Path(url.removeprefix("journal://")).expanduser()
        if not path.exists():
            raise ReportError(f"no Optuna journal at {path}")


def read_study(storage: str, study_name: str) -> list[Any]:
    """The study's trials (``optuna.trial.FrozenTrial``)."""
    import optuna

    from dreambooth_sweep.sweep import open_storage

    _check_storage(storage)
    store = open_storage(storage)
    try:
        study = optuna.load_study(study_name=study_name, storage=store)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(store)]
        raise ReportError(f"no study {study_name!r} in {storage}; studies there: {names}") from None
    return study.get_trials(deepcopy=False)


def _is_continuous(distribution: Any) -> bool:
    from optuna.distributions import FloatDistribution

    return isinstance(distribution, FloatDistribution) and distribution.step is None


def _merge_study(trials: dict[int, Trial], frozen: Sequence[Any]) -> None:
    """Optuna knows the true states, the trials without a folder yet, and each trial's reported curve."""
    from dreambooth_sweep.search_space import format_value

    for ft in frozen:
        trial = trials.setdefault(ft.number, Trial(number=ft.number))
        trial.state = ft.state.name  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING
        attrs = ft.user_attrs
        trial.fail_reason = attrs.get("fail_reason") or trial.fail_reason
        for key, value in ft.params.items():
            trial.values[key] = value
            if not any(_override_key(o) == key for o in trial.overrides):
                trial.overrides.append(f"{key}={format_value(value)}")
        if trial.lr is None and _is_number(ft.params.get("train.lr")):
            trial.lr = float(ft.params["train.lr"])
        if not trial.history:  # no folder: the reported scores, and the best checkpoint's metrics
            trial.history = {int(s): {"eval/score": float(v)} for s, v in ft.intermediate_values.items()}
            step = attrs.get("best_step")
            if _is_number(step):
                best = trial.history.setdefault(int(step), {})
                best.update(
                    {k: float(v) for k, v in attrs.items() if k.startswith("eval/") and _is_number(v)}
                )
                if "eval/score" not in best and _is_number(attrs.get("best_score")):
                    best["eval/score"] = float(attrs["best_score"])


# ---------------------------------------------------------------------------------------------------
# MLflow


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise ReportError(f"no MLflow database at {uri.removeprefix('sqlite:///')}")
    return MlflowClient(tracking_uri=uri)


def _find_parent(client: Any, sweep_ids: Sequence[str]) -> str | None:
    experiments = [e.experiment_id for e in client.search_experiments()]
    for sweep_id in sweep_ids:
        runs = client.search_runs(
            experiments,
            filter_string=f"tags.`dbs.sweep_id` = '{sweep_id}' and tags.`dbs.role` = 'parent'",
            max_results=1,
        )
        if runs:
            return runs[0].info.run_id
    return None


def _resolve_parent(client: Any, source: str) -> str:
    """A run id, or an experiment name whose newest parent run is taken."""
    if re.fullmatch(r"[0-9a-f]{32}", source):
        try:
            return client.get_run(source).info.run_id
        except Exception as e:
            raise ReportError(f"no MLflow run {source}: {e}") from None
    exp = client.get_experiment_by_name(source)
    if exp is None:
        raise ReportError(f"{source!r} is neither a folder, an MLflow run id nor an MLflow experiment")
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string="tags.`dbs.role` = 'parent'",
        order_by=["attributes.start_time DESC"],
    )
    if not runs:
        raise ReportError(f"MLflow experiment {source!r} has no sweep parent run (tag dbs.role=parent)")
    return runs[0].info.run_id


def _children(client: Any, parent_id: str) -> list[Any]:
    experiment = client.get_run(parent_id).info.experiment_id
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment], f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=1000, page_token=token
        )
        runs += list(page)
        token = page.token
        if not token:
            return sorted(runs, key=lambda r: r.info.start_time or 0)


@dataclass
class _MlflowSweep:
    """A sweep's parent run and its children in an MLflow store."""

    client: Any
    uri: str
    parent_id: str
    runs: list[Any]
    name: str = ""

    @classmethod
    def open(cls, source: str, uri: str | None) -> _MlflowSweep:
        """The sweep given on the command line as a parent run id or an experiment name."""
        uri = (
            uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('outputs/mlflow.db').resolve()}"
        )
        try:
            client = _client(uri)
            parent_id = _resolve_parent(client, source)
        except ReportError as e:
            raise ReportError(f"{source} is not a sweep folder, nor an MLflow sweep at {uri} ({e})") from None
        name = client.get_experiment(client.get_run(parent_id).info.experiment_id).name
        return cls(client, uri, parent_id, _children(client, parent_id), name)

    @classmethod
    def find(
        cls, uri: str, parent_id: str | None, sweep_ids: Sequence[str], notes: list[str]
    ) -> _MlflowSweep | None:
        """The parent run of a sweep read from its folder (tag ``dbs.sweep_id``); None if there is none."""
        try:
            client = _client(uri)
            parent_id = parent_id or _find_parent(client, sweep_ids)
            return cls(client, uri, parent_id, _children(client, parent_id)) if parent_id else None
        except Exception as e:  # the report does not need MLflow
            log.warning("MLflow at %s not readable (%s): report without it", uri, e)
            notes.append(f"MLflow at {uri} not readable: {type(e).__name__}")
            return None

    def local_dirs(self) -> list[Path]:
        """Sweep folders of the child runs that are on this machine (read like any multirun folder)."""
        dirs: list[Path] = []
        for run in self.runs:
            out = run.data.tags.get("output_dir")
            if out and (Path(out) / ".hydra").is_dir() and Path(out).resolve().parent not in dirs:
                dirs.append(Path(out).resolve().parent)
        return dirs


def _mlflow_state(run: Any) -> str:
    status = run.info.status
    if status == "FINISHED":
        return "PRUNED" if run.data.tags.get("pruned") == "true" else "COMPLETE"
    return "FAIL" if status in ("FAILED", "KILLED") else "RUNNING"


def _run_number(run: Any, default: int) -> int:
    tags = run.data.tags
    for key in ("optuna.trial_number", "hydra.job_num"):
        if str(tags.get(key, "")).lstrip("-").isdigit():
            return int(tags[key])
    return default


def _split_overrides(text: str) -> list[str]:
    """The ``hydra.overrides`` tag joins overrides with spaces: glue back pieces of values with spaces."""
    out: list[str] = []
    for piece in text.split(" "):
        if out and not re.match(r"^[+~]{0,2}[\w./@-]+=", piece):
            out[-1] += " " + piece
        elif piece:
            out.append(piece)
    return out


def _trial_from_run(client: Any, run: Any, number: int) -> Trial:
    """A child run whose folder is not on this machine: overrides from tags, curves from metric history."""
    overrides = _split_overrides(run.data.tags.get("hydra.overrides", ""))
    values, _ = _parse_overrides(overrides)
    lr = run.data.params.get("train.lr")
    trial = Trial(number=number, overrides=overrides, values=values)
    with contextlib.suppress(TypeError, ValueError):
        trial.lr = float(lr)
    for key in sorted(k for k in run.data.metrics if k.startswith("eval/")):
        for m in client.get_metric_history(run.info.run_id, key):
            trial.history.setdefault(int(m.step), {})[key] = float(m.value)
    return trial


def _merge_mlflow(trials: dict[int, Trial], client: Any, runs: Sequence[Any], states: bool) -> None:
    by_dir = {t.run_dir.resolve(): t for t in trials.values() if t.run_dir is not None}
    for index, run in enumerate(runs):
        number = _run_number(run, index)
        out = run.data.tags.get("output_dir")
        trial = by_dir.get(Path(out).resolve()) if out else None
        if trial is None and number in trials and trials[number].run_dir is None:
            trial = trials[number]
        if trial is None:
            if number in trials:  # a number clash between sweep folders: do not overwrite
                number = max(trials) + 1
            trial = trials[number] = _trial_from_run(client, run, number)
            states = True
        trial.run_id = run.info.run_id
        if states:
            trial.state = _mlflow_state(run)
            if trial.state == "FAIL":
                trial.fail_reason = run.data.tags.get("error") or trial.fail_reason


# ---------------------------------------------------------------------------------------------------
# Putting the sources together


def load_sweep(
    source: str | os.PathLike[str] | None = None,
    *,
    storage: str | None = None,
    study: str | None = None,
    tracking_uri: str | None = None,
    sweep_dirs: Sequence[str | os.PathLike[str]] = (),
) -> Sweep:
    """Read a sweep from a multirun folder, an Optuna study and/or an MLflow parent run.

    Args:
        source: a Hydra multirun folder, or an MLflow parent run id / sweep experiment name.
        storage: Optuna storage URL (with ``study``); read from the jobs' configs when omitted.
        study: Optuna study name.
        tracking_uri: MLflow tracking URI; default: the jobs' ``tracking.uri`` (or their SQLite file),
            else ``MLFLOW_TRACKING_URI``, else ``sqlite:///outputs/mlflow.db``.
        sweep_dirs: more multirun folders of the same study (a study resumed in a new folder).

    Raises:
        ReportError: nothing to read at the given source.
    """
    dirs = [Path(d).expanduser().resolve() for d in sweep_dirs]
    mlflow: _MlflowSweep | None = None
    if source is not None and Path(source).expanduser().is_dir():
        dirs.insert(0, Path(source).expanduser().resolve())
    elif source is not None:
        mlflow = _MlflowSweep.open(str(source), tracking_uri)
        dirs += [d for d in mlflow.local_dirs() if d not in dirs]
    elif not (storage and study):
        raise ReportError("give a sweep folder, --storage URL --study NAME, or an MLflow run id / experiment")
    elif storage.startswith("sqlite:///") and not dirs:
        folder = Path(storage.removeprefix("sqlite:///").split("?", 1)[0]).resolve().parent
        if (folder / "multirun.yaml").exists():  # the sweeper's default: optuna.db in the sweep folder
            dirs.append(folder)

    # 1. The job folders: histories, overrides, and where to find the study and the MLflow runs.
    trials: dict[int, Trial] = {}
    infos: list[_DirInfo] = []
    notes: list[str] = []
    for d in dirs:
        found, info = read_sweep_dir(d)
        infos.append(info)
        for trial in found:
            if trial.number in trials and trials[trial.number].run_dir != trial.run_dir:
                notes.append(f"trial {trial.number} appears in two folders: {trial.run_dir} is shown")
            trials[trial.number] = trial
    declared = [k for i in infos for k in i.swept]

    # 2. Optuna: the true states, and the trials without a folder.
    continuous: set[str] = set()
    study_ref = (study, storage) if study and storage else next((i.study for i in infos if i.study), None)
    if study_ref is not None:
        try:
            frozen = read_study(study_ref[1], study_ref[0])
        except ReportError:
            if study and storage:
                raise
            notes.append(
                f"Optuna study {study_ref[0]!r} not readable at {study_ref[1]}: states from the folders"
            )
            study_ref = None
        else:
            _merge_study(trials, frozen)
            declared += [k for ft in frozen for k in ft.params]
            continuous = {k for ft in frozen for k, d in ft.distributions.items() if _is_continuous(d)}

    # 3. MLflow: states of grid jobs, runs whose folders are elsewhere, and where to log the report.
    if mlflow is None:
        uri = tracking_uri or next((i.tracking_uri for i in infos if i.tracking_uri), None)
        if uri is None and study_ref is not None:
            uri = os.environ.get("MLFLOW_TRACKING_URI")
        ids = [s for i in infos for s in i.sweep_ids] + ([f"optuna:{study_ref[0]}"] if study_ref else [])
        parent = next((i.parent_run_id for i in infos if i.parent_run_id), None)
        mlflow = _MlflowSweep.find(uri, parent, ids, notes) if uri else None
    if mlflow is not None:
        _merge_mlflow(trials, mlflow.client, mlflow.runs, states=study_ref is None)
    elif study_ref is None and any(t.state == "RUNNING" for t in trials.values()):
        notes.append(
            "States come from the job folders: a job without metrics.json is shown RUNNING, "
            "but it may have crashed (see its train.log)."
        )
    if dirs and not trials and not (dirs[0] / "multirun.yaml").exists():
        inside = sorted(p.parent.name for p in dirs[0].glob("*/multirun.yaml"))[-5:]
        hint = f"; sweep folders inside: {', '.join(inside)}" if inside else ""
        raise ReportError(
            f"{dirs[0]} is not a Hydra multirun folder (no multirun.yaml, no job folders){hint}"
        )

    ordered = sorted(trials.values(), key=lambda t: t.number)
    if study_ref:
        name = study_ref[0]
    elif dirs:
        top = dirs[0].parent.name
        name = dirs[0].name if top in ("", "multirun", "multiruns") else f"{top}/{dirs[0].name}"
    else:
        name = mlflow.name if mlflow else "sweep"
    sources = [str(d) for d in dirs]
    sources += [f"Optuna study {study_ref[0]!r}"] if study_ref else []
    sources += [f"MLflow parent run {mlflow.parent_id}"] if mlflow else []
    return Sweep(
        name=name,
        source=", ".join(sources),
        trials=ordered,
        swept=_swept_keys(ordered, declared),
        continuous=continuous,
        sweep_dirs=dirs,
        study=study_ref,
        tracking=(mlflow.uri, mlflow.parent_id) if mlflow else None,
        objective=next((i.objective for i in infos if i.objective), None),
        tiny=any(i.tiny for i in infos),
        notes=notes,
    )


def _swept_keys(trials: Sequence[Trial], declared: Sequence[str]) -> list[str]:
    """Declared sweep keys plus any override that differs between trials; ``train.lr`` first."""
    keys = list(dict.fromkeys(k for k in declared if not k.startswith(_INTERNAL)))
    seen = [k for t in trials for k in t.values if not k.startswith(_INTERNAL)]
    for key in dict.fromkeys(seen):
        # Trials read from Optuna or MLflow alone may lack the fixed overrides: compare those that have it.
        if key not in keys and len({repr(t.values[key]) for t in trials if key in t.values}) > 1:
            keys.append(key)
    priority = {"train.lr": 0, "method": 1}
    return sorted(keys, key=lambda k: priority.get(k, 2))


# ---------------------------------------------------------------------------------------------------
# Rows (the heatmap's y axis, the curves' legend): trials ordered by their swept values


def _rows(sweep: Sweep) -> list[tuple[str, Trial]]:
    keys = sweep.swept
    ordered = sorted(sweep.trials, key=lambda t: ([_sort_key(_param(t, k)) for k in keys], t.number))
    labels = [", ".join(f"{_short(k, keys)}={fmt_value(_param(t, k))}" for k in keys) for t in ordered]
    labels = [label or f"trial {t.number}" for label, t in zip(labels, ordered, strict=True)]
    counts = {label: labels.count(label) for label in labels}
    return [
        (f"{label} #{t.number}" if counts[label] > 1 else label, t)
        for label, t in zip(labels, ordered, strict=True)
    ]


def _clip(label: str, width: int = 44) -> str:
    """Figure labels stay short enough for the plots to keep their size (the tables show everything)."""
    return label if len(label) <= width else label[: width - 1] + "…"


def _steps(sweep: Sweep) -> list[int]:
    return sorted({s for t in sweep.trials for s in t.history})


# ---------------------------------------------------------------------------------------------------
# Figures (matplotlib's object API: no pyplot, no global backend switch)


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
    raise ValueError(f"unknown figure {kind!r}")


def _figure(kind: str, n_rows: int = 1, n_steps: int = 1) -> Any:
    from matplotlib.figure import Figure

    w, h = figure_px(kind, n_rows, n_steps)
    return Figure(figsize=(w / DPI, h / DPI), dpi=DPI, layout="constrained")


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
    import matplotlib
    import numpy as np
    from matplotlib.patches import Rectangle

    rows, steps, spot = _rows(sweep), _steps(sweep), sweep.sweet_spot()
    fig = _figure("heatmaps", len(rows), len(steps))
    row_axis = "learning rate" if sweep.swept == ["train.lr"] else "swept parameters"
    col = {s: j for j, s in enumerate(steps)}
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#e8e8e8")  # grey: not evaluated (yet)
    for n, (ax, key) in enumerate(zip(fig.subplots(2, 2, squeeze=False).ravel(), MAIN_METRICS, strict=True)):
        left = n % 2 == 0  # the right column shares the rows: no second copy of the labels
        ax.set_title(f"{LABELS[key]} ({key})", fontsize=11)
        matrix = np.full((max(len(rows), 1), max(len(steps), 1)), np.nan)
        for i, (_, trial) in enumerate(rows):
            for step, metrics in trial.history.items():
                matrix[i, col[step]] = metrics.get(key, np.nan)
        if not np.isfinite(matrix).any():
            _empty(ax)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        fig.colorbar(ax.imshow(np.ma.masked_invalid(matrix), aspect="auto", cmap=cmap), ax=ax, shrink=0.9)
        ax.set_xticks(range(len(steps)), map(str, steps), rotation=45 if len(steps) > 12 else 0, fontsize=8)
        ax.set_yticks(range(len(rows)), [_clip(label, 60) for label, _ in rows] if left else [], fontsize=8)
        ax.set(xlabel="step (checkpoint inside the run)", ylabel=row_axis if left else "")
        if len(rows) * len(steps) <= 160:  # small enough to print every value
            lo, hi = np.nanmin(matrix), np.nanmax(matrix)
            for (i, j), v in np.ndenumerate(matrix):
                if np.isfinite(v):
                    dark = hi == lo or (v - lo) / (hi - lo) <= 0.6  # viridis is dark at the low end
                    ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=7, c="w" if dark else "k")
        for i, (_, trial) in enumerate(rows):  # each row's best step (by score): a small dot
            if (best := trial.best()) is not None:
                ax.plot(col[best[0]] + 0.36, i - 0.32, "o", ms=4, mfc="white", mec="black", mew=0.8)
        if spot is not None:
            i = next(i for i, (_, t) in enumerate(rows) if t is spot[0])
            ax.add_patch(Rectangle((col[spot[1]] - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2.5))
    title = f"{row_axis} × steps — red box: sweet spot (best eval/score overall); dot: best step of each row"
    fig.suptitle(title, fontsize=12)
    fig.savefig(path, dpi=DPI)
    return path


def plot_curves(sweep: Sweep, path: Path) -> Path:
    """Each metric against the step, one line per trial; the base model (step 0) dashed."""
    from matplotlib.ticker import MaxNLocator

    rows, spot = _rows(sweep), sweep.sweet_spot()
    fig = _figure("curves")
    axes = fig.subplots(2, 2, squeeze=False).ravel()
    for ax, key in zip(axes, MAIN_METRICS, strict=True):
        ax.set(title=f"{LABELS[key]} vs step", xlabel="step", ylabel=key)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        base = [t.history[0][key] for _, t in rows if _finite(t.history.get(0, {}).get(key))]
        shared = bool(base) and max(base) - min(base) <= 1e-6 * max(1.0, abs(max(base)))
        if shared:  # one base model for all trials (the usual case): one dashed line
            ax.axhline(base[0], ls="--", color="gray", lw=1.2, label="base model (step 0)")
        for (label, trial), color in zip(rows, _colors(len(rows)), strict=True):
            points = [(s, m[key]) for s, m in sorted(trial.history.items()) if _finite(m.get(key))]
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            style = ":" if trial.state in ("PRUNED", "FAIL") else "-"
            name = f"{_clip(label)} ({trial.state.lower()})"
            ax.plot(xs, ys, style, marker="o", ms=3, color=color, label=name)
            if not shared and xs[0] == 0:  # each trial its own base model (e.g. the model is swept)
                ax.axhline(ys[0], ls="--", color=color, lw=0.8, alpha=0.7)
        if spot is not None and _finite(spot[2].get(key)):
            ax.plot(spot[1], spot[2][key], "*", ms=16, color="red", mec="black", zorder=5, label="sweet spot")
        if not ax.lines:
            _empty(ax)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles and len(rows) <= 16:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(3, len(handles)), fontsize=8)
    fig.suptitle(
        "Overfitting shows as CLIP-T falling while DINO rises; dashed: base model (step 0); dotted: pruned/failed",
        fontsize=12,
    )
    fig.savefig(path, dpi=DPI)
    return path


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


def _pareto_checkpoints(sweep: Sweep) -> tuple[list[tuple[Trial, int, dict[str, float]]], set[int]]:
    pts = [
        c for c in sweep.checkpoints() if _finite(c[2].get("eval/dino")) and _finite(c[2].get("eval/clip_t"))
    ]
    front = pareto_front([(c[2]["eval/dino"], c[2]["eval/clip_t"]) for c in pts])
    return pts, set(front)


def plot_pareto(sweep: Sweep, path: Path) -> Path:
    """DINO vs CLIP-T of every checkpoint, the Pareto front, the sweet spot and the paper's point."""
    from matplotlib.patches import Ellipse

    rows, spot = _rows(sweep), sweep.sweet_spot()
    color = {id(t): c for (_, t), c in zip(rows, _colors(len(rows)), strict=True)}
    label = {id(t): _clip(lab) for lab, t in rows}
    fig = _figure("pareto")
    ax = fig.subplots()
    pts, front = _pareto_checkpoints(sweep)
    labelled: set[int] = set()
    for k, (trial, step, m) in enumerate(pts):
        name = None
        if step > 0 and id(trial) not in labelled and len(rows) <= 16:
            name = label[id(trial)]
            labelled.add(id(trial))
        style = {"marker": "x", "color": "gray"} if step == 0 else {"marker": "o", "color": color[id(trial)]}
        ax.scatter(
            m["eval/dino"], m["eval/clip_t"], s=18 + 60 * (k in front), alpha=0.85, label=name, **style
        )
    if front:
        xs, ys = zip(*sorted((pts[i][2]["eval/dino"], pts[i][2]["eval/clip_t"]) for i in front), strict=True)
        ax.plot(xs, ys, "-", color="black", lw=1, label=f"Pareto front ({len(front)} checkpoints)")
    ax.scatter([], [], marker="x", color="gray", label="base model (step 0)")
    if spot is not None and _finite(spot[2].get("eval/dino")) and _finite(spot[2].get("eval/clip_t")):
        x, y = spot[2]["eval/dino"], spot[2]["eval/clip_t"]
        near = "not noticeably different (paper's user study: ΔDINO 0.1, ΔCLIP-T 0.05)"
        size = (2 * NOTICEABLE["eval/dino"], 2 * NOTICEABLE["eval/clip_t"])
        ax.add_patch(Ellipse((x, y), *size, fc="red", alpha=0.07, ec="red", ls="--", label=near))
        name = f"sweet spot: trial {spot[0].number}, step {spot[1]}"
        ax.plot(x, y, "*", ms=20, color="red", mec="black", zorder=5, label=name)
    px, py = PAPER_REFERENCE["eval/dino"], PAPER_REFERENCE["eval/clip_t"]
    name = "paper reference: DreamBooth-SD (context only)"
    ax.plot(px, py, "D", ms=9, color="black", mfc="white", zorder=4, label=name)
    ax.annotate(
        f"paper: DINO {px}, CLIP-T {py}", (px, py), textcoords="offset points", xytext=(8, 6), fontsize=8
    )
    if sweep.tiny:
        warning = "tiny random models: these numbers are meaningless"
        ax.text(0.01, 0.01, warning, transform=ax.transAxes, color="firebrick", fontsize=10)
    if not pts:
        _empty(ax, "no checkpoint with both DINO and CLIP-T yet")
    ax.set(xlabel="DINO: subject fidelity →", ylabel="CLIP-T: prompt fidelity →")
    ax.set_title("Every checkpoint of every trial: up and right is better")
    ax.grid(alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    fig.savefig(path, dpi=DPI)
    return path


# ---------------------------------------------------------------------------------------------------
# Picks and reproduce commands


def reproduce_command(trial: Trial, step: int) -> str:
    """``python -m dreambooth_sweep.train <the trial's overrides, sweep.* dropped> train.max_steps=<step>``."""
    args = [o for o in trial.overrides if not _is_internal(o) and _override_key(o) != "train.max_steps"]
    parts = ["python -m dreambooth_sweep.train", *map(_shell_quote, [*trial.config_args, *args])]
    return " ".join([*parts, f"train.max_steps={step}"])


def _shell_quote(arg: str) -> str:
    """Like ``shlex.quote``, but Hydra's single-quoted values go in readable double quotes."""
    if "'" in arg and not any(c in arg for c in '"$`\\!'):
        return f'"{arg}"'
    return shlex.quote(arg)


def _picks(sweep: Sweep) -> list[Pick]:
    spot = sweep.sweet_spot()
    if spot is None:
        return []
    picks: dict[tuple[int, int], Pick] = {}

    def add(label: str, best: tuple[Trial, int, dict[str, float]] | None) -> None:
        if best is None:
            return
        trial, step, metrics = best
        pick = picks.get((trial.number, step))
        if pick is None:
            picks[(trial.number, step)] = Pick([label], trial, step, metrics, reproduce_command(trial, step))
        else:
            pick.labels.append(label)

    add("sweet spot: best checkpoint overall", spot)
    # Step 0 is the same base model in every trial: the other picks are trained checkpoints.
    trained = [c for c in sweep.checkpoints() if c[1] > 0]
    if spot[1] == 0:
        add("best trained checkpoint (step > 0)", _best_of(trained))
    for key in sweep.pick_keys()[0]:
        values = {repr(_param(t, key)): _param(t, key) for t in sweep.trials if t.history}
        if len(values) < 2:
            continue
        for value in sorted(values.values(), key=_sort_key):
            matching = [c for c in trained if _param(c[0], key) == value]
            add(f"best at {_short(key, sweep.swept)}={fmt_value(value)}", _best_of(matching))
    return list(picks.values())


def _copy_grids(picks: Sequence[Pick], folder: Path, sweep: Sweep) -> None:
    for pick in picks:
        found = []
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
                and _download_grid(sweep.tracking[0], pick.trial.run_id, step, dest)
            ):
                found.append(dest)
            else:
                found.append(None)
        pick.grids = (found[0], found[1])


def _download_grid(uri: str, run_id: str, step: int, dest: Path) -> bool:
    """The grid the tracker logged with ``log_image(key="samples", step=...)`` (``images/`` artifacts)."""
    try:
        client = _client(uri)
        names = [f.path for f in client.list_artifacts(run_id, "images")]
        # MLflow names them samples+step+<step>+timestamp+<ms>+<uuid>.png (older versions: % for +).
        pattern = re.compile(rf"samples[+%]step[+%]{step}[+%].*(?<!compressed)\.png")
        match = sorted(n for n in names if pattern.fullmatch(Path(n).name))
        if not match:
            return False
        local = client.download_artifacts(run_id, match[-1], str(dest.parent / ".download"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(local, dest)
        shutil.rmtree(dest.parent / ".download", ignore_errors=True)
        return True
    except Exception as e:
        log.debug("no grid for run %s step %d: %s", run_id, step, e)
        return False


# ---------------------------------------------------------------------------------------------------
# CSV and JSON


def _metric_keys(sweep: Sweep) -> list[str]:
    keys = {k for t in sweep.trials for m in t.history.values() for k in m}
    return [k for k in MAIN_METRICS if k in keys] + sorted(keys - set(MAIN_METRICS))


def _param(trial: Trial, key: str) -> Any:
    return trial.lr if key == "train.lr" and trial.lr is not None else trial.values.get(key)


def write_trials_csv(sweep: Sweep, path: Path) -> Path:
    spot = sweep.sweet_spot()
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            ["trial", "state", *sweep.swept, "best_step", "best_score", *MAIN_METRICS[:3], "checkpoints", "last_step",
             "sweet_spot", "run_dir", "mlflow_run_id", "fail_reason", "command"]
        )  # fmt: skip
        for trial in sweep.trials:
            best = trial.best()
            m = best[1] if best else {}
            w.writerow(
                [
                    trial.number,
                    trial.state,
                    *(fmt_value(_param(trial, k)) for k in sweep.swept),
                    best[0] if best else "",
                    m.get("eval/score", ""),
                    *(m.get(k, "") for k in MAIN_METRICS[:3]),
                    len(trial.history),
                    max(trial.history) if trial.history else "",
                    bool(spot and spot[0] is trial),
                    trial.run_dir or "",
                    trial.run_id or "",
                    trial.fail_reason or "",
                    reproduce_command(trial, best[0]) if best and best[0] > 0 else "",
                ]
            )
    return path


def write_checkpoints_csv(sweep: Sweep, path: Path) -> Path:
    spot = sweep.sweet_spot()
    keys = _metric_keys(sweep)
    pts, front = _pareto_checkpoints(sweep)
    on_front = {(pts[i][0].number, pts[i][1]) for i in front}
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["trial", "state", *sweep.swept, "step", *keys, "trial_best", "sweet_spot", "pareto"])
        for trial, step, m in sweep.checkpoints():
            best = trial.best()
            w.writerow(
                [
                    trial.number,
                    trial.state,
                    *(fmt_value(_param(trial, k)) for k in sweep.swept),
                    step,
                    *(m.get(k, "") for k in keys),
                    bool(best and best[0] == step),
                    bool(spot and spot[0] is trial and spot[1] == step),
                    (trial.number, step) in on_front,
                ]
            )
    return path


def _summary(sweep: Sweep, picks: Sequence[Pick]) -> dict[str, Any]:
    spot = sweep.sweet_spot()

    def describe(trial: Trial, step: int, metrics: Mapping[str, float]) -> dict[str, Any]:
        return {
            "trial": trial.number,
            "step": step,
            "state": trial.state,
            "params": {k: _param(trial, k) for k in sweep.swept},
            "metrics": dict(metrics),
            "run_dir": str(trial.run_dir) if trial.run_dir else None,
            "command": reproduce_command(trial, step) if step > 0 else None,
        }

    return {
        "name": sweep.name,
        "source": sweep.source,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "states": _state_counts(sweep),
        "swept": sweep.swept,
        "sweet_spot": describe(*spot) if spot else None,
        "picks": [{"labels": p.labels, **describe(p.trial, p.step, p.metrics)} for p in picks],
    }


def _state_counts(sweep: Sweep) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in sorted(sweep.trials, key=lambda t: _STATE_ORDER.get(t.state, 9)):
        counts[t.state] = counts.get(t.state, 0) + 1
    return counts


# ---------------------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1320px;padding:16px 24px;color:#1d1d1f}
h1{font-size:22px;margin:4px 0}h2{font-size:18px;margin:28px 0 6px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555}.note{background:#fff6e0;border-left:4px solid #e0a000;padding:6px 10px;margin:8px 0}
.running{background:#e8f1ff;border-left-color:#2b6cd4}
.spot{background:#fff0f0;border:1px solid #f3b4b4;border-radius:6px;padding:10px 14px;margin:10px 0}
img.fig{max-width:100%;border:1px solid #eee}
pre{background:#f5f5f7;padding:8px 10px;border-radius:4px;white-space:pre-wrap;word-break:break-all;font-size:12px}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0}th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f0f0f3;cursor:pointer;user-select:none;position:sticky;top:0}th[aria-sort=ascending]::after{content:" ▲"}
th[aria-sort=descending]::after{content:" ▼"}td.l,th.l{text-align:left}tr.best td{background:#fff0f0;font-weight:600}
tbody tr:nth-child(even){background:#fafafa}
.st{border-radius:3px;padding:0 5px;font-size:11px;font-weight:600;color:#fff}
.COMPLETE{background:#2e8540}.PRUNED{background:#b7791f}.FAIL{background:#c53030}.RUNNING,.WAITING{background:#2b6cd4}
.cards{display:flex;flex-direction:column;gap:18px}.card{border:1px solid #ddd;border-radius:6px;padding:10px 14px}
.card h3{margin:0 0 4px;font-size:15px}.pair{display:flex;gap:12px;align-items:flex-start}
.pair figure{margin:0;flex:1;min-width:0}.pair .scroll{max-height:640px;overflow:auto;border:1px solid #eee}
.pair img{max-width:100%;display:block}figcaption{font-size:12px;color:#555;margin:2px 0}
.caption{color:#444;max-width:1000px}
"""

# Sortable tables: click a header; ``index.html#sort=<column>`` (or ``#sort=-<column>``) sorts on load.
_JS = """
(function () {
  function key(cell) {
    var v = cell.getAttribute("data-v");
    if (v === null) { v = cell.textContent; }
    var n = parseFloat(v);
    return (v.trim() !== "" && isFinite(n)) ? [0, n] : [v.trim() === "" ? 2 : 1, v.toLowerCase()];
  }
  function sortBy(table, col, ascending) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[col]), y = key(b.cells[col]);
      if (x[0] !== y[0]) { return x[0] - y[0]; }
      var c = x[1] < y[1] ? -1 : (x[1] > y[1] ? 1 : 0);
      return ascending ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h, i) {
      if (i === col) { h.setAttribute("aria-sort", ascending ? "ascending" : "descending"); }
      else { h.removeAttribute("aria-sort"); }
    });
  }
  var tables = document.querySelectorAll("table.sortable");
  Array.prototype.forEach.call(tables, function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.addEventListener("click", function () {
        sortBy(table, col, th.getAttribute("aria-sort") !== "ascending");
      });
    });
  });
  var m = /sort=(-?)([^&]+)/.exec(window.location.hash);
  if (m) {
    Array.prototype.forEach.call(tables, function (table) {
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
        if (th.getAttribute("data-col") === decodeURIComponent(m[2])) { sortBy(table, col, m[1] !== "-"); }
      });
    });
  }
})();
"""


def _esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


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
            image = image.resize(
                (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS
            )
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=88)
        cache[digest] = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="{_esc(alt)}" src="data:image/jpeg;base64,{cache[digest]}">'


def _td(value: Any, *, left: bool = False, digits: int = 4) -> str:
    cls = ' class="l"' if left else ""
    if _is_number(value) and math.isfinite(value):
        text = _fmt_metric(value, digits) if isinstance(value, float) else str(value)
        return f'<td{cls} data-v="{value!r}">{_esc(text)}</td>'
    return f"<td{cls}>{_esc('' if value is None else value)}</td>"


def _th(label: str, col: str, *, left: bool = False) -> str:
    return f'<th{" class=l" if left else ""} data-col="{_esc(col)}">{_esc(label)}</th>'


def _param_td(trial: Trial, key: str) -> str:
    value = _param(trial, key)
    sort = f' data-v="{float(value)!r}"' if _is_number(value) else ""
    return f'<td class="l"{sort}>{_esc(fmt_value(value))}</td>'


def _trials_table(sweep: Sweep) -> str:
    spot = sweep.sweet_spot()
    head = [_th("trial", "trial"), _th("state", "state", left=True)]
    head += [_th(_short(k, sweep.swept), k, left=True) for k in sweep.swept]
    head += [_th("best step", "best_step"), _th("best score", "best_score")]
    head += [_th(f"{LABELS[k]} @best", k) for k in MAIN_METRICS[:3]]
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
        where = (
            t.fail_reason
            or (str(t.run_dir) if t.run_dir else "")
            or (f"MLflow {t.run_id}" if t.run_id else "")
        )
        cells = [
            _td(t.number),
            f'<td class="l" data-v="{_STATE_ORDER.get(t.state, 9)}"><span class="st {_esc(t.state)}">{_esc(t.state)}</span></td>',
            *(_param_td(t, k) for k in sweep.swept),
            _td(best[0] if best else None),
            _td(m.get("eval/score")),
            *(_td(m.get(k)) for k in MAIN_METRICS[:3]),
            _td(len(t.history)),
            _td(max(t.history) if t.history else None),
            _td(where, left=True),
        ]
        body.append(f'<tr data-trial="{t.number}" data-state="{_esc(t.state)}"{cls}>{"".join(cells)}</tr>')
    return (
        f'<table class="sortable" id="trials-table"><thead><tr>{"".join(head)}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _checkpoints_table(sweep: Sweep) -> str:
    spot = sweep.sweet_spot()
    pts, front = _pareto_checkpoints(sweep)
    on_front = {(pts[i][0].number, pts[i][1]) for i in front}
    head = [_th("trial", "trial")] + [_th(_short(k, sweep.swept), k, left=True) for k in sweep.swept]
    head += (
        [_th("step", "step")] + [_th(LABELS[k], k) for k in MAIN_METRICS] + [_th("mark", "mark", left=True)]
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
        cells += [_td(m.get(k)) for k in MAIN_METRICS] + [_td(", ".join(marks), left=True)]
        body.append(f'<tr data-trial="{trial.number}" data-step="{step}"{cls}>{"".join(cells)}</tr>')
    return (
        f'<table class="sortable" id="checkpoints-table"><thead><tr>{"".join(head)}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _delta(metrics: Mapping[str, float], base: Mapping[str, float] | None, key: str) -> str:
    v = metrics.get(key)
    if not _finite(v):
        return "–"
    text = f"{v:.4f}"
    if base is not None and _finite(base.get(key)):
        text += f" ({v - base[key]:+.4f} vs step 0)"
    return text


def _pick_card(pick: Pick, sweep: Sweep, cache: dict[str, str], out: Path) -> str:
    t, step, m = pick.trial, pick.step, pick.metrics
    base = t.history.get(0)
    params = ", ".join(f"{_short(k, sweep.swept)}={fmt_value(_param(t, k))}" for k in sweep.swept) or "—"
    metrics = " · ".join(f"{LABELS[k]} {_delta(m, base, k)}" for k in MAIN_METRICS)
    figures = []
    shown = [(pick.grids[0], "base model (step 0)")]
    if step > 0:
        shown.append((pick.grids[1], f"step {step}"))
    for path, caption in shown:
        if path is None:
            figures.append(f"<figure><figcaption>{_esc(caption)}: no sample grid found</figcaption></figure>")
            continue
        rel = path.relative_to(out).as_posix()
        figures.append(
            f'<figure><figcaption>{_esc(caption)} — <a href="{_esc(rel)}">full size</a></figcaption>'
            f'<div class="scroll">{_img_grid(path, caption, cache)}</div></figure>'
        )
    if step == 0:
        command = "<p>Step 0 is the untrained base model: training never beat it in this trial.</p>"
    else:
        where = f" (from {_esc(t.cwd)})" if t.cwd else ""
        command = f"<p>Reproduce{where}:</p><pre>{_esc(pick.command)}</pre>"
    return (
        f'<div class="card" data-trial="{t.number}" data-step="{step}">'
        f"<h3>{_esc(' · '.join(pick.labels))}</h3>"
        f'<p>trial {t.number} <span class="st {_esc(t.state)}">{_esc(t.state)}</span> · {_esc(params)} · '
        f"step <b>{step}</b><br>{_esc(metrics)}</p>{command}"
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


def render_html(sweep: Sweep, figures: Mapping[str, Path], picks: Sequence[Pick], out: Path) -> str:
    spot = sweep.sweet_spot()
    counts = _state_counts(sweep)
    states = ", ".join(f"{n} {s}" for s, n in counts.items()) or "no trials yet"
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">',
        f"<title>Sweep report — {_esc(sweep.name)}</title><style>{_CSS}</style></head><body>",
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

    parts.append('<h2 id="sweet-spot">Sweet spot</h2>')
    if spot is None:
        parts.append("<p>No checkpoint has been scored yet.</p>")
    else:
        t, step, m = spot
        params = ", ".join(f"{_short(k, sweep.swept)}={fmt_value(_param(t, k))}" for k in sweep.swept)
        base = t.history.get(0)
        cmd = (
            f"<pre>{_esc(reproduce_command(t, step))}</pre>"
            if step > 0
            else "<p>It is step 0, the untrained base model: no trained checkpoint has been scored yet.</p>"
        )
        parts.append(
            f'<div class="spot" id="sweet-spot-box" data-trial="{t.number}" data-step="{step}" '
            f'data-score="{m["eval/score"]!r}"><b>Trial {t.number}</b> ({_esc(params or "—")}) at '
            f"<b>step {step}</b>: score {m['eval/score']:.4f} · "
            + _esc(" · ".join(f"{LABELS[k]} {_delta(m, base, k)}" for k in MAIN_METRICS[:3]))
            + f"{cmd}</div>"
        )
    parts.append(f'<p class="caption">{_esc(_score_definition(sweep.objective))}</p>')

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
        '<h2 id="pareto">3. DINO vs CLIP-T</h2>',
        '<p class="caption">Every checkpoint of every trial; the Pareto front joins those no other '
        "checkpoint beats on both. The paper's DreamBooth-SD point (DINO 0.668, CLIP-T 0.305; "
        "Ruiz et al. 2023) is context only: other models, subjects and prompts give other numbers.</p>",
        _img_png(figures["pareto"], "pareto"),
        '<h2 id="picks">4. Picks</h2>',
        '<p class="caption">The best checkpoint overall and per value of each swept parameter, with its '
        "sample grid beside the base model's (same prompts and seeds). The command retrains the trial "
        "up to that step (with a constant learning rate, the default, the same weights up to "
        "nondeterminism).</p>",
    ]
    many = sweep.pick_keys()[1]
    if many:
        parts.append(
            f'<p class="caption">No pick per value of {_esc(", ".join(many))}: searched over a range or more '
            f"than {MAX_PICK_VALUES} values; sort the trials table by it instead.</p>"
        )
    cache: dict[str, str] = {}
    parts.append(
        '<div class="cards">' + "".join(_pick_card(p, sweep, cache, out) for p in picks) + "</div>"
        if picks
        else "<p>No picks yet.</p>"
    )
    n_ckpt = len(sweep.checkpoints())
    figures_png = [p.name for p in figures.values()]
    parts += [
        '<h2 id="trials">5. Trials</h2>',
        '<p class="caption">Click a column header to sort. Metrics are those of each trial\'s best '
        "checkpoint.</p>",
        _trials_table(sweep),
        f"<details><summary>All {n_ckpt} checkpoints"
        + (f" (first {MAX_CHECKPOINT_ROWS}; all in checkpoints.csv)" if n_ckpt > MAX_CHECKPOINT_ROWS else "")
        + f"</summary>{_checkpoints_table(sweep)}</details>",
        '<h2 id="files">Files</h2><p>'
        + " · ".join(
            f'<a href="{n}">{n}</a>' for n in ("trials.csv", "checkpoints.csv", "summary.json", *figures_png)
        )
        + "</p>",
        f"<script>{_JS}</script></body></html>",
    ]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------------
# The report


def render_report(sweep: Sweep, out: str | os.PathLike[str]) -> Path:
    """Write every file of the report into ``out``; returns the path of ``index.html``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "heatmaps": plot_heatmaps(sweep, out / "heatmaps.png"),
        "curves": plot_curves(sweep, out / "curves.png"),
        "pareto": plot_pareto(sweep, out / "pareto.png"),
    }
    picks = _picks(sweep)
    for old in (out / "samples").glob("trial-*_step-*.png"):  # only what an earlier report copied
        old.unlink()
    _copy_grids(picks, out / "samples", sweep)
    write_trials_csv(sweep, out / "trials.csv")
    write_checkpoints_csv(sweep, out / "checkpoints.csv")
    (out / "summary.json").write_text(json.dumps(_summary(sweep, picks), indent=2, default=str))
    page = out / "index.html"
    tmp = out / ".index.html.tmp"
    tmp.write_text(render_html(sweep, figures, picks, out), encoding="utf-8")
    os.replace(tmp, page)  # a browser refreshing during a rebuild never sees half a page
    return page


def _default_out(sweep: Sweep) -> Path:
    if sweep.sweep_dirs:
        return sweep.sweep_dirs[0] / "report"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", sweep.name).strip("_") or "sweep"
    return Path("outputs") / "reports" / slug


def log_to_mlflow(report_dir: Path, tracking_uri: str, parent_run_id: str) -> None:
    """Upload the report folder to ``report/`` of the sweep's parent run."""
    _client(tracking_uri).log_artifacts(parent_run_id, str(report_dir), artifact_path="report")


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
    """Read a sweep (see :func:`load_sweep`) and write its report; returns the path of ``index.html``.

    Args:
        source: a Hydra multirun folder, or an MLflow parent run id / sweep experiment name.
        storage: Optuna storage URL, with ``study``.
        study: Optuna study name.
        tracking_uri: MLflow tracking URI (see :func:`load_sweep`).
        sweep_dirs: more multirun folders of the same Optuna study.
        out: report folder; default ``<sweep dir>/report`` (else ``outputs/reports/<name>``).
        log_mlflow: also log the folder to the sweep's MLflow parent run, when there is one.
    """
    sweep = load_sweep(source, storage=storage, study=study, tracking_uri=tracking_uri, sweep_dirs=sweep_dirs)
    page = render_report(sweep, Path(out) if out is not None else _default_out(sweep))
    if log_mlflow and sweep.tracking is not None:
        try:
            log_to_mlflow(page.parent, *sweep.tracking)
            log.info("report logged to MLflow run %s (artifacts: report/)", sweep.tracking[1])
        except Exception as e:  # the files are written; MLflow is a copy
            log.warning("could not log the report to MLflow run %s: %s", sweep.tracking[1], e)
    return page


class ReportCallback(Callback):
    """Hydra callback: build the sweep report when a multirun ends (grid or Optuna sweeper).

    Register it under ``hydra.callbacks`` (see the module docstring). A failing report never fails
    the sweep: it is logged as a warning with the command to retry.
    """

    def __init__(self, enabled: bool = True, log_mlflow: bool = True) -> None:
        self.enabled = enabled
        self.log_mlflow = log_mlflow

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled:
            return
        sweep_dir = Path(str(config.hydra.sweep.dir)).expanduser()
        if "dreambooth_sweep.caches" in sys.modules:  # trials ran in this process: free what they kept
            sys.modules["dreambooth_sweep.caches"].release_process_caches()
        try:
            page = build_report(sweep_dir, log_mlflow=self.log_mlflow)
        except Exception as e:
            log.warning(
                "sweep report failed (%s: %s); retry: dreambooth-sweep report %s",
                type(e).__name__,
                e,
                sweep_dir,
            )
            return
        log.info("sweep report: %s", page)


# ---------------------------------------------------------------------------------------------------
# Command line


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "source", nargs="?", help="Hydra multirun folder, or MLflow parent run id / sweep experiment"
    )
    parser.add_argument(
        "--storage", help="Optuna storage URL (with --study), e.g. sqlite:///outputs/optuna.db"
    )
    parser.add_argument("--study", help="Optuna study name")
    parser.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: the sweep's own, or MLFLOW_TRACKING_URI)"
    )
    parser.add_argument(
        "--sweep-dir",
        action="append",
        default=[],
        help="another multirun folder of the same study (repeatable)",
    )
    parser.add_argument("--out", help="report folder (default: <sweep dir>/report)")
    parser.add_argument(
        "--no-mlflow", action="store_true", help="do not log the report to the MLflow parent run"
    )
    parser.set_defaults(func=_run)
    return parser


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``report`` to a ``dreambooth-sweep`` subparsers object; its ``func(args)`` returns the exit code."""
    return _configure(subparsers.add_parser("report", help="HTML report of a sweep: heatmaps, curves, picks"))


def _run(args: argparse.Namespace) -> int:
    if args.source is None and not (args.storage and args.study):
        print("error: give a sweep folder, --storage URL --study NAME, or an MLflow run id", file=sys.stderr)
        return 2
    if bool(args.storage) != bool(args.study):
        print("error: --storage and --study go together", file=sys.stderr)
        return 2
    try:
        page = build_report(
            args.source,
            storage=args.storage,
            study=args.study,
            tracking_uri=args.tracking_uri,
            sweep_dirs=args.sweep_dir,
            out=args.out,
            log_mlflow=not args.no_mlflow,
        )
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    page = page.resolve()
    print(f"report: {page}")
    print(f"open it: xdg-open {page}   (or {page.as_uri()} in a browser)")
    print(f"over SSH: python -m http.server -d {page.parent} 8000, then http://localhost:8000/")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dreambooth_sweep.report ...``: the same as ``dreambooth-sweep report ...``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(
        prog="dreambooth-sweep report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    args = _configure(parser).parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
