"""Where a report's numbers come from: Hydra multirun folders, an Optuna study, an MLflow parent run.

The steps axis comes from checkpoints *inside* each run: every job folder holds
``eval_history.jsonl`` (one line per evaluated checkpoint; a resumed run may repeat a step, the last
line wins), ``samples/step_XXXXXX.png`` and ``.hydra/``. Those files are the common path for grids
and Optuna sweeps alike. A job's state, in order of trust:

1. ``<job dir>/trial_state.json``, the terminal state the job wrote itself when it stopped
   (``{"state": "PRUNED", "step": 12}``; ``state`` one of COMPLETE, PRUNED, FAIL; ``step`` optional):
   the job knows first, even when it died before the study heard of it;
2. the Optuna study (found through the jobs' ``sweep.*`` settings, ``optimization_results.yaml`` or
   ``--storage/--study``): COMPLETE / PRUNED / FAIL / RUNNING / WAITING, and the trials that have no
   folder yet;
3. ``metrics.json`` (written when a job finishes): COMPLETE; else RUNNING.

Log text is never searched for a state.
The MLflow parent run then gives the states of grid jobs and the histories of runs whose folders
are elsewhere (:mod:`.runs`). A sweep still running reports fine: its unfinished trials show as
RUNNING, possibly empty.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreambooth_sweep.errors import one_line
from dreambooth_sweep.report.model import INTERNAL, ReportError, Sweep, Trial, is_number, override_key
from dreambooth_sweep.report.overrides import load_yaml, parse_overrides, select
from dreambooth_sweep.report.runs import MlflowSweep, merge_mlflow
from dreambooth_sweep.tracking.secrets import mask_text
from dreambooth_sweep.tracking.store import default_uri
from dreambooth_sweep.tracking.tags import grid_sweep_id, optuna_sweep_id

__all__ = ["TRIAL_STATE_FILE", "load_sweep", "read_history", "read_job", "read_study", "read_sweep_dir"]

log = logging.getLogger(__name__)

TRIAL_STATE_FILE = "trial_state.json"  # written by the job into its run dir when it stops (e.g. pruned)
_TERMINAL = ("COMPLETE", "PRUNED", "FAIL")


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
        history[step] = {str(k): float(v) for k, v in row.items() if is_number(v)}
    return history


def read_trial_state(job_dir: Path) -> tuple[str, int | None] | None:
    """``(state, step)`` from the job's ``trial_state.json``; None when there is none (or it is unreadable)."""
    path = job_dir / TRIAL_STATE_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        state = str(data["state"]).upper()
        step = data.get("step")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        log.warning("%s unreadable (%s): state from the other sources", path, e)
        return None
    if state not in _TERMINAL:
        log.warning("%s says state %r (expected one of %s): ignored", path, state, ", ".join(_TERMINAL))
        return None
    return state, int(step) if is_number(step) else None


# ---------------------------------------------------------------------------------------------------
# A Hydra multirun folder


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
    overrides = [str(x) for x in select(load_yaml(hydra_dir / "overrides.yaml"), "", [])]
    cfg = load_yaml(hydra_dir / "config.yaml")
    hydra_cfg = load_yaml(hydra_dir / "hydra.yaml")
    number = select(cfg, "sweep.trial_number")
    if number is None:
        number = select(hydra_cfg, "hydra.job.num")
    if number is None:
        number = int(job_dir.name) if job_dir.name.isdigit() else -1
    values, _ = parse_overrides(overrides)
    lr = select(cfg, "train.lr")
    trial = Trial(
        number=int(number),
        overrides=overrides,
        values=values,
        history=read_history(job_dir / "eval_history.jsonl"),
        run_dir=job_dir,
        lr=float(lr) if is_number(lr) else None,
        cwd=select(hydra_cfg, "hydra.runtime.cwd"),
    )
    if (stopped := read_trial_state(job_dir)) is not None:
        (trial.state, trial.stopped_at), trial.state_file = stopped, True
    elif (job_dir / "metrics.json").exists():
        trial.state = "COMPLETE"
    # Rebuild the command line of a sweep defined in a sweep file (--config-dir sweeps --config-name x).
    name = select(hydra_cfg, "hydra.job.config_name")
    sources = select(hydra_cfg, "hydra.runtime.config_sources") or []
    extra = [s.get("path") for s in sources if isinstance(s, Mapping) and s.get("provider") == "command-line"]
    if extra:
        trial.config_args += ["--config-dir", str(extra[0])]
    if name and (name != "train" or extra):
        trial.config_args += ["--config-name", str(name)]
    return trial, cfg


def _log_dir(cfg: Any, cwd: str | None) -> Path | None:
    log_dir = select(cfg, "paths.log_dir")
    if not isinstance(log_dir, str) or "${" in log_dir:
        return None
    path = Path(log_dir).expanduser()
    return path if path.is_absolute() or cwd is None else Path(cwd) / path


def _flat_keys(params: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for k, v in params.items():
        if isinstance(v, Mapping) and "type" not in v:
            keys += _flat_keys(v, f"{prefix}{k}.")
        else:
            keys.append(f"{prefix}{k}")
    return keys


def read_sweep_dir(sweep_dir: Path) -> tuple[list[Trial], _DirInfo]:
    """Every job of a Hydra multirun folder, and what the folder says about its sweep."""
    info = _DirInfo()
    multirun = load_yaml(sweep_dir / "multirun.yaml")
    task = select(multirun, "hydra.overrides.task") or []
    _, info.swept = parse_overrides([str(x) for x in task])
    params = select(multirun, "hydra.sweeper.params") or {}
    if isinstance(params, Mapping):
        info.swept += [k for k in _flat_keys(params) if k not in info.swept]
    sweeper = select(multirun, "hydra.sweeper") or {}  # unresolved: ${now:...} would resolve to today
    if str(sweeper.get("_target_", "")).endswith("OptunaSweeper"):
        name = sweeper.get("study_name") or select(multirun, "hydra.job.name")
        storage = sweeper.get("storage") or f"sqlite:///{(sweep_dir / 'optuna.db').resolve()}"
        if name and "${" not in f"{name}{storage}":
            info.study = (str(name), str(storage))
    results = load_yaml(sweep_dir / "optimization_results.yaml")
    if results is not None and select(results, "study_name") and "***" not in str(select(results, "storage")):
        info.study = info.study or (str(select(results, "study_name")), str(select(results, "storage")))

    trials: list[Trial] = []
    for job_dir in _job_dirs(sweep_dir):
        trial, cfg = read_job(job_dir)
        trials.append(trial)
        if cfg is None:
            continue
        study, storage = select(cfg, "sweep.study_name"), select(cfg, "sweep.storage")
        if study and storage:
            info.study = (str(study), str(storage))  # the full URL: the sweeper's copy hides a password
        info.parent_run_id = info.parent_run_id or select(cfg, "sweep.parent_run_id")
        info.objective = info.objective or select(cfg, "eval.objective")
        info.tiny = info.tiny or "tiny" in (
            str(select(cfg, "model.pretrained")),
            str(select(cfg, "eval.clip_model")),
            str(select(cfg, "eval.dino_model")),
        )
        if info.tracking_uri is None and str(select(cfg, "tracking.backend")) == "mlflow":
            uri = select(cfg, "tracking.uri")
            if uri and "${" not in str(uri):
                info.tracking_uri = str(uri)
            elif (log_dir := _log_dir(cfg, trial.cwd)) is not None and (log_dir / "mlflow.db").exists():
                info.tracking_uri = default_uri(log_dir)
    # The ids tracking gives this sweep's MLflow parent run.
    if info.study:
        info.sweep_ids.append(optuna_sweep_id(info.study[0]))
    hydra_cfg = (
        load_yaml(trials[0].run_dir / ".hydra" / "hydra.yaml") if trials and trials[0].run_dir else None
    )
    configured = select(hydra_cfg, "hydra.sweep.dir")
    cwd = select(hydra_cfg, "hydra.runtime.cwd")
    if isinstance(configured, str) and cwd:
        info.sweep_ids.append(grid_sweep_id(Path(cwd, configured)))
    info.sweep_ids.append(grid_sweep_id(sweep_dir))
    return trials, info


# ---------------------------------------------------------------------------------------------------
# An Optuna study


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
    try:
        store = open_storage(storage)
        study = optuna.load_study(study_name=study_name, storage=store)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(store)]
        raise ReportError(
            f"no study {study_name!r} in {mask_text(storage)}; studies there: {names}"
        ) from None
    except Exception as e:  # no driver, no server, no such database: one line, password masked
        reason = mask_text(one_line(e, 200, with_type=True))
        raise ReportError(f"Optuna storage {mask_text(storage)} not readable: {reason}") from None
    return study.get_trials(deepcopy=False)


def _is_continuous(distribution: Any) -> bool:
    from optuna.distributions import FloatDistribution

    return isinstance(distribution, FloatDistribution) and distribution.step is None


def _merge_study(trials: dict[int, Trial], frozen: Sequence[Any]) -> None:
    """Optuna knows the true states, the trials without a folder yet, and each trial's reported curve."""
    from dreambooth_sweep.sweep.search_space import format_value

    for ft in frozen:
        trial = trials.setdefault(ft.number, Trial(number=ft.number))
        if not trial.state_file:  # the job's own trial_state.json wins
            trial.state = ft.state.name  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING
        attrs = ft.user_attrs
        trial.fail_reason = attrs.get("fail_reason") or trial.fail_reason
        for key, value in ft.params.items():
            trial.values[key] = value
            if not any(override_key(o) == key for o in trial.overrides):
                trial.overrides.append(f"{key}={format_value(value)}")
        if trial.lr is None and is_number(ft.params.get("train.lr")):
            trial.lr = float(ft.params["train.lr"])
        if not trial.history:  # no folder: the reported values, and the best checkpoint's metrics
            # pruned on another metric (hydra.sweeper.prune_on): its values, the study's sign undone
            key, sign = str(attrs.get("prune_on") or "eval/score"), float(attrs.get("prune_sign", 1.0))
            trial.history = {int(s): {key: sign * float(v)} for s, v in ft.intermediate_values.items()}
            step = attrs.get("best_step")
            if is_number(step):
                best = trial.history.setdefault(int(step), {})
                best.update({k: float(v) for k, v in attrs.items() if k.startswith("eval/") and is_number(v)})
                if "eval/score" not in best and is_number(attrs.get("best_score")):
                    best["eval/score"] = float(attrs["best_score"])


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
    mlflow: MlflowSweep | None = None
    if source is not None and Path(source).expanduser().is_dir():
        dirs.insert(0, Path(source).expanduser().resolve())
    elif source is not None:
        mlflow = MlflowSweep.open(str(source), tracking_uri)
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
                f"Optuna study {study_ref[0]!r} not readable at {mask_text(study_ref[1])}: states from the folders"
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
        ids = [s for i in infos for s in i.sweep_ids] + ([optuna_sweep_id(study_ref[0])] if study_ref else [])
        parent = next((i.parent_run_id for i in infos if i.parent_run_id), None)
        mlflow = MlflowSweep.find(uri, parent, ids, notes) if uri else None
    if mlflow is not None:
        merge_mlflow(trials, mlflow.client, mlflow.runs, states=study_ref is None)
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
    keys = list(dict.fromkeys(k for k in declared if not k.startswith(INTERNAL)))
    seen = [k for t in trials for k in t.values if not k.startswith(INTERNAL)]
    for key in dict.fromkeys(seen):
        # Trials read from Optuna or MLflow alone may lack the fixed overrides: compare those that have it.
        if key not in keys and len({repr(t.values[key]) for t in trials if key in t.values}) > 1:
            keys.append(key)
    priority = {"train.lr": 0, "method": 1}
    return sorted(keys, key=lambda k: priority.get(k, 2))
