"""Scale-out on existing engines, for real: Hydra's submitit launcher, an Optuna study on PostgreSQL shared
by concurrent workers, and an ``mlflow server`` on PostgreSQL. Every service binds 127.0.0.1.

The PostgreSQL tests need Debian's ``postgresql`` package (``initdb``/``pg_ctl`` under
/usr/lib/postgresql/*/bin) and a PostgreSQL driver (``pip install -e '.[postgres]'``); without them they
skip and say why, except where ``DBS_REQUIRE_POSTGRES=1`` (CI), where they fail.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType
from optuna.trial import TrialState
from scaleout.services import (
    PY,
    MlflowServer,
    PostgresServer,
    Worker,
    free_port,
    postgres_skip_reason,
    tiny_overrides,
    worker_env,
)

from dreambooth_sweep.config import load_config
from dreambooth_sweep.tracking import default_uri, find_or_create_parent_run, start_tracking

ROOT = Path(__file__).resolve().parents[1]


def _children(client: MlflowClient, parent_id: str) -> list:
    exp = client.get_run(parent_id).info.experiment_id
    return client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_id}'")


def _parents(client: MlflowClient, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}"
    return client.search_runs([exp.experiment_id], "tags.`dbs.role` = 'parent'")


# --- Hydra's submitit launcher (submitit_local here, submitit_slurm on a cluster) ------------------


def test_submitit_local_runs_each_job_in_its_own_process(
    tmp_path: Path, cache_dir: Path, demo_dir: Path
) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install hydra-submitit-launcher")
    sweep_dir = tmp_path / "outputs" / "multiruns" / "submitit"
    cmd = [
        PY, "-m", "dreambooth_sweep.train", "-m",
        *tiny_overrides(tmp_path, cache_dir, demo_dir),
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        "hydra.launcher.cpus_per_task=1",
        f"hydra.sweep.dir={sweep_dir}",
        "train.lr=1e-4,2e-4",
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, env=worker_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    for job in ("0", "1"):
        assert (sweep_dir / job / "metrics.json").exists(), f"job {job} wrote no metrics.json"
    # Each job ran in a process of its own, started by submitit (its logs are under .submitit/<job id>/).
    assert len(list((sweep_dir / ".submitit").glob("*/*_result.pkl"))) == 2

    client = MlflowClient(default_uri(tmp_path / "outputs"))
    (parent,) = _parents(client, "dreambooth-sweep/submitit")
    kids = _children(client, parent.info.run_id)
    assert sorted(r.info.run_name for r in kids) == ["job-0", "job-1"]
    assert all(r.info.status == "FINISHED" for r in kids)
    assert {r.data.params["train.lr"] for r in kids} == {"0.0001", "0.0002"}
    assert len({r.data.tags["dbs.pid"] for r in kids}) == 2
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"


# --- PostgreSQL: Optuna storage and MLflow backend shared by concurrent workers --------------------


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server on 127.0.0.1:<random port> for the whole session (databases
    ``optuna`` and ``mlflow``, user ``dbs`` with a password), stopped and deleted at the end."""
    reason = postgres_skip_reason()
    if reason and os.environ.get("DBS_REQUIRE_POSTGRES") == "1":  # set by .ci/run: CI must not skip
        pytest.fail(reason)
    if reason:
        pytest.skip(reason)
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def two_worker_study(
    postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, demo_dir: Path
):
    """Two sweep processes at once, one study on PostgreSQL, one ``mlflow server`` on PostgreSQL.

    The workers share nothing else: each has its own paths.root_dir (as on two machines), so the MLflow
    parent is found through the tracking server alone. The study's storage URL carries a password,
    which must never reach MLflow. Yields a namespace with the study, the MLflow client and the logs.
    """
    tmp = tmp_path_factory.mktemp("two-workers")
    n_trials, study_name = 3, "pg-two-workers"
    storage = postgres.create_database("study_two_workers")
    server = MlflowServer(
        postgres.create_database("mlflow_two_workers"), tmp / "mlflow-artifacts", tmp / "mlflow-server.log"
    ).start()
    # Create the study (and its tables) once before the workers start, as the README says:
    # N processes creating Optuna's schema on an empty database at the same instant can collide.
    optuna.create_study(study_name=study_name, storage=storage, direction="maximize")
    workers = []
    try:
        for name in ("a", "b"):
            root = tmp / name
            root.mkdir()
            args = [
                "-m",
                *tiny_overrides(root, cache_dir, demo_dir),  # first: the swept train.lr below wins
                "hydra/sweeper=optuna",
                f"hydra.sweeper.storage='{storage}'",
                f"hydra.sweeper.study_name={study_name}",
                f"hydra.sweeper.n_trials={n_trials}",
                f"hydra.sweep.dir={root / 'multirun'}",
                "train.lr=tag(log, interval(1e-5, 1e-3))",
                f"tracking.uri={server.url}",
            ]
            workers.append(Worker(args, tmp / f"worker-{name}.log", cwd=root))
        codes = [w.wait(timeout=300) for w in workers]
        assert codes == [0, 0], "\n".join(w.output()[-3000:] for w in workers)
        yield SimpleNamespace(
            study=optuna.load_study(study_name=study_name, storage=storage),
            n_trials=n_trials,
            client=MlflowClient(server.url),
            logs=[w.output() for w in workers],
            storage=storage,
            secret=postgres.password,
            tmp=tmp,
        )
    finally:
        for w in workers:
            w.close()
        server.stop()


def test_concurrent_workers_lose_and_duplicate_nothing(two_worker_study) -> None:
    s = two_worker_study
    every = s.study.get_trials(deepcopy=False)
    assert [t.number for t in every] == list(range(len(every)))  # numbered once each
    # Workers that start together may draw the same first point: the later one gives its trial back
    # (FAIL, reason "duplicate", never launched) and draws again, so no two trials run the same params.
    trials = [t for t in every if t.user_attrs.get("reason") != "duplicate"]
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.state for t in trials]
    assert len(trials) >= s.n_trials
    assert len({tuple(sorted(t.params.items())) for t in trials}) == len(trials)

    (parent,) = _parents(s.client, s.study.study_name)  # one parent, although no lock file was shared
    kids = _children(s.client, parent.info.run_id)
    assert sorted(r.info.run_name for r in kids) == sorted(
        f"trial-{t.number}" for t in trials
    )  # one child each
    assert all(r.info.status == "FINISHED" for r in kids)
    assert len({r.data.tags["dbs.pid"] for r in kids}) == 2, "both workers ran trials"
    for kid in kids:
        trial = every[int(kid.data.tags["optuna.trial_number"])]
        assert float(kid.data.params["train.lr"]) == pytest.approx(trial.params["train.lr"])
        assert kid.data.metrics["best/score"] == pytest.approx(trial.value)
    assert s.client.get_run(parent.info.run_id).info.status == "FINISHED"
    assert not any("database is locked" in log for log in s.logs)


def test_concurrent_workers_stop_at_exactly_n_trials(two_worker_study) -> None:
    counted = [t for t in two_worker_study.study.trials if t.user_attrs.get("reason") != "duplicate"]
    assert len(counted) == two_worker_study.n_trials


def test_storage_password_never_reaches_mlflow(two_worker_study) -> None:
    """params, tags and config.yaml of every run: the password in the storage URL is masked."""
    s = two_worker_study
    (parent,) = _parents(s.client, s.study.study_name)
    kids = _children(s.client, parent.info.run_id)
    for run in [parent, *kids]:
        data = s.client.get_run(run.info.run_id).data
        assert not [k for k, v in {**data.params, **data.tags}.items() if s.secret in v]
    assert kids[0].data.params["sweep.storage"] == s.storage.replace(s.secret, "***")
    overrides = kids[0].data.tags["hydra.overrides"]
    assert "sweep.storage=" in overrides and s.secret not in overrides
    config_yaml = Path(
        s.client.download_artifacts(kids[0].info.run_id, "config.yaml", str(s.tmp))
    ).read_text()
    assert "storage: postgresql://dbs:***@" in config_yaml and s.secret not in config_yaml


def test_password_free_urls_with_a_pgpass_file(postgres: PostgresServer, tmp_path: Path, monkeypatch) -> None:
    """The README's advice: keep the password out of URLs (Hydra writes overrides to .hydra/*.yaml and
    its launcher log) and let libpq read it from ~/.pgpass (here $PGPASSFILE)."""
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{postgres.port}:*:{postgres.user}:{postgres.password}\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    url = postgres.create_database("no_password_in_url").replace(f":{postgres.password}@", "@")
    assert postgres.password not in url
    study = optuna.create_study(study_name="pgpass", storage=url, direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert len(optuna.load_study(study_name="pgpass", storage=url).trials) == 2


def test_tracking_uri_password_is_masked(postgres: PostgresServer, tmp_path: Path, monkeypatch) -> None:
    """A run tracked straight into PostgreSQL (tracking.uri=postgresql://user:password@...): the
    password is in no param, tag or config.yaml."""
    monkeypatch.chdir(tmp_path)
    uri = postgres.create_database("tracking_with_password")
    cfg = load_config()
    cfg.model.name = cfg.model.pretrained = "tiny"
    cfg.data.instance_dir, cfg.data.class_noun = str(tmp_path), "dog"
    cfg.paths.root_dir = str(tmp_path)
    cfg.tracking.uri = uri
    with start_tracking(cfg, system_metrics=False) as tracker:
        tracker.log_metrics({"eval/dino": 0.5}, step=1)
    client = MlflowClient(uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["tracking.uri"] == uri.replace(postgres.password, "***")
    assert not [k for k, v in {**run.data.params, **run.data.tags}.items() if postgres.password in v]
    config_yaml = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))).read_text()
    assert "uri: postgresql://dbs:***@" in config_yaml and postgres.password not in config_yaml


def test_servers_bind_localhost_only() -> None:
    """`make ui` (the only server the project starts) listens on 127.0.0.1 unless told otherwise."""
    done = subprocess.run(["make", "-n", "ui"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (line,) = [x for x in done.stdout.splitlines() if " ui " in x and "mlflow" in x]
    assert "--host 127.0.0.1" in line and "0.0.0.0" not in line


@pytest.mark.slow
def test_one_trial_on_two_processes(tmp_path: Path, cache_dir: Path, demo_dir: Path) -> None:
    """A multi-GPU trial's shape on the CPU: torchrun (what `accelerate launch --num_processes 2` runs)
    with two processes. Both train; the checkpoint holds both processes' RNG states; one MLflow run."""
    out = tmp_path / "run"
    cmd = [
        str(Path(PY).with_name("torchrun")), "--nproc_per_node", "2", "--master_port", str(free_port()),
        "-m", "dreambooth_sweep.train",
        *tiny_overrides(tmp_path, cache_dir, demo_dir, steps=3),
        "train.batch_size=2",  # 2 per process x 2 processes = 4 per step
        f"paths.output_dir={out}",
        "train.checkpoint_every_n_steps=2",
    ]  # fmt: skip
    env = worker_env(ACCELERATE_USE_CPU="true")
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (out / "metrics.json").exists()
    ckpt = out / "checkpoints" / "checkpoint-2"
    assert {p.name for p in ckpt.glob("random_states_*.pkl")} == {
        "random_states_0.pkl",
        "random_states_1.pkl",
    }
    client = MlflowClient(default_uri(tmp_path / "outputs"))
    runs = client.search_runs([client.get_experiment_by_name("dreambooth-sweep").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]  # rank 1 does not open a second run


def test_racing_parents_settle_on_the_oldest(tmp_path: Path, monkeypatch) -> None:
    """Workers on two machines (no shared lock file) both create the sweep's parent: the later one
    sees the earlier, deletes its own and uses the earlier, so every child lands under one parent."""
    client = MlflowClient(default_uri(tmp_path))
    exp = client.create_experiment("race", artifact_location=(tmp_path / "artifacts").as_uri())
    real_create, theirs = client.create_run, []

    def create_run(experiment_id, **kwargs):
        if not theirs:  # the other machine got there a moment before us
            theirs.append(real_create(experiment_id, **kwargs).info.run_id)
            time.sleep(0.01)
        return real_create(experiment_id, **kwargs)

    monkeypatch.setattr(client, "create_run", create_run)
    parent = find_or_create_parent_run(client, exp, "optuna:race", name="race", lock_path=tmp_path / "lock")
    assert parent == theirs[0]
    live = client.search_runs([exp], "tags.`dbs.role` = 'parent'", run_view_type=ViewType.ACTIVE_ONLY)
    assert [r.info.run_id for r in live] == [parent]
