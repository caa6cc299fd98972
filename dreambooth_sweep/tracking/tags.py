"""Every tag name this project writes to MLflow, and the one sweep-id format.

Runs and experiments are found again by these tags (the report finds a sweep's parent by
``dbs.sweep_id``, a later job tells a dead process's run by ``dbs.pid``), so writers and readers take
the names from here, never as string literals. Importing this module imports nothing else.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "EXPERIMENT_KIND",
    "ROLE_CHILD",
    "ROLE_PARENT",
    "ROLE_SINGLE",
    "TAG_BEST_RUN_ID",
    "TAG_BEST_RUN_NAME",
    "TAG_CLASS_NOUN",
    "TAG_ERROR",
    "TAG_EXPERIMENT_KIND",
    "TAG_GIT_COMMIT",
    "TAG_GIT_DIRTY",
    "TAG_HOST",
    "TAG_HYDRA_JOB_NUM",
    "TAG_HYDRA_OVERRIDES",
    "TAG_IDENTIFIER",
    "TAG_LOGGED_IMAGES",
    "TAG_METHOD",
    "TAG_MODEL",
    "TAG_OPTUNA_STUDY",
    "TAG_OPTUNA_TRIAL",
    "TAG_OUTPUT_DIR",
    "TAG_PARENT",
    "TAG_PID",
    "TAG_PID_NS",
    "TAG_PID_START",
    "TAG_PRUNED",
    "TAG_ROLE",
    "TAG_STALE",
    "TAG_SUBJECT",
    "TAG_SWEEP_ID",
    "UI_QUERY",
    "grid_sweep_id",
    "optuna_sweep_id",
]

# --- ours: a sweep's runs ----------------------------------------------------------------------------
TAG_SWEEP_ID = "dbs.sweep_id"  # parent and children: see optuna_sweep_id / grid_sweep_id
TAG_ROLE = "dbs.role"  # one of the ROLE_* values
ROLE_PARENT, ROLE_CHILD, ROLE_SINGLE = "parent", "child", "single"

# --- ours: which process runs a run (stale-run detection) --------------------------------------------
TAG_HOST = "dbs.host"
TAG_PID = "dbs.pid"
# The process's start time: a reused pid is not taken for the same process.
TAG_PID_START = "dbs.pid_start"
# The PID namespace: pids are only comparable within one.
TAG_PID_NS = "dbs.pid_ns"
TAG_STALE = "dbs.stale_reason"  # why a later job closed a run left RUNNING
TAG_GIT_DIRTY = "dbs.git_dirty"

# --- ours: what a run trained, how it ended ----------------------------------------------------------
TAG_METHOD = "method"
TAG_MODEL = "model"
TAG_SUBJECT = "subject"
TAG_IDENTIFIER = "identifier"
TAG_CLASS_NOUN = "class_noun"
TAG_OUTPUT_DIR = "output_dir"
TAG_ERROR = "error"  # one line, "Type: message"
TAG_PRUNED = "pruned"  # "true" on a run whose Optuna trial was pruned
TAG_BEST_RUN_ID = "best.run_id"  # on a parent: its best child so far
TAG_BEST_RUN_NAME = "best.run_name"

# --- the sweepers' context ---------------------------------------------------------------------------
TAG_OPTUNA_STUDY = "optuna.study_name"
TAG_OPTUNA_TRIAL = "optuna.trial_number"
TAG_HYDRA_JOB_NUM = "hydra.job_num"
TAG_HYDRA_OVERRIDES = "hydra.overrides"

# --- MLflow's own --------------------------------------------------------------------------------------
TAG_PARENT = "mlflow.parentRunId"
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_LOGGED_IMAGES = "mlflow.loggedImages"  # set by MlflowClient.log_image
# Experiment tag read by the MLflow 3 UI to pick the experiment's first view; without it the UI
# infers a kind and may open the GenAI (traces) view. The UI's values: genai_development,
# custom_model_development, finetuning, ...; "custom_model_development" opens the training-runs list.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# MLflow 3.5+ ignores that tag for the first view: a global "GenAI | Model training" switch decides
# (default GenAI, remembered by the browser); a UI link with this query opens "Model training".
UI_QUERY = "workflowType=machine_learning"


def _filter_safe(sweep_id: str) -> str:
    # The id goes inside a quoted MLflow search filter ("tags.`dbs.sweep_id` = '...'").
    return sweep_id.replace("'", "_")


def optuna_sweep_id(study_name: str) -> str:
    """The sweep id of an Optuna study's runs: ``optuna:<study name>``."""
    return _filter_safe(f"optuna:{study_name}")


def grid_sweep_id(sweep_dir: str | os.PathLike[str]) -> str:
    """The sweep id of a Hydra grid multirun: ``hydra:<absolute hydra.sweep.dir>``."""
    return _filter_safe(f"hydra:{Path(sweep_dir).expanduser().resolve()}")
