"""The sweep report, built from a real tiny sweep (two learning rates, checkpoints at steps 0, 2, 4).

The sweep runs once per module in a subprocess, exactly as a user would launch it, with the report's
Hydra callback registered on the command line. The Optuna and MLflow tests add a real SQLite study /
tracking store around copies of that sweep folder.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import compose_config
from PIL import Image

from dreambooth_sweep import report

# Figures must keep their layout whatever the labels: matplotlib's "collapsed" warning fails a test.
pytestmark = pytest.mark.filterwarnings("error:constrained_layout not applied:UserWarning")

ROOT = Path(__file__).resolve().parents[1]
LRS = {1e-4, 1e-5}
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, demo_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("report_sweep")
    cmd = [
        sys.executable, "-m", "dreambooth_sweep.train", "-m",
        "model=tiny", "eval=tiny", "tracking=none", "train.max_steps=4", "eval.every_n_steps=2",
        "train.lr=1e-4,1e-5",
        f"paths.root_dir={root}", f"paths.cache_dir={cache_dir}", f"hydra.sweep.dir={root / 'sweep'}",
        f"data.instance_dir={demo_dir}", "data.generate_demo=false",
        # smaller than eval=tiny alone: two prompts, one seed, the metrics the report plots, no saved model
        "eval.prompts=custom", "eval.custom_prompts=['a {V} {C} on the beach','a {V} {C} in the snow']",
        "eval.seeds=[0]", "eval.metrics=[dino,clip_i,clip_t]", "train.save_final=false",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root / "sweep"


@pytest.fixture(scope="module")
def cli_run(sweep_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The report of the finished sweep, built from the command line into its own folder: (page, stdout)."""
    out = tmp_path_factory.mktemp("report") / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert report.main([str(sweep_dir), "--out", str(out), "--no-mlflow"]) == 0
    return out / "index.html", printed.getvalue()


@pytest.fixture(scope="module")
def built(cli_run: tuple[Path, str]) -> Path:
    return cli_run[0]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def stored_scores(sweep: Path) -> dict[tuple[int, int], float]:
    """eval/score of every checkpoint, straight from the jobs' eval_history.jsonl (last line per step wins)."""
    scores = {}
    for history in sweep.glob("*/eval_history.jsonl"):
        for line in history.read_text().splitlines():
            row = json.loads(line)
            scores[(int(history.parent.name), row["step"])] = row["eval/score"]
    return scores


def copy_sweep(sweep_dir: Path, dest: Path) -> Path:
    shutil.copytree(sweep_dir, dest, ignore=shutil.ignore_patterns("report", "checkpoints"))
    return dest


# ----------------------------------------------------------------------------- the finished grid


def test_callback_writes_the_report_when_the_sweep_ends(sweep_dir: Path) -> None:
    page = sweep_dir / "report" / "index.html"
    assert page.exists()
    assert json.loads((sweep_dir / "report" / "summary.json").read_text())["states"] == {"COMPLETE": 2}


def test_report_lists_every_trial(built: Path, sweep_dir: Path) -> None:
    jobs = sorted(p.name for p in sweep_dir.iterdir() if (p / ".hydra").is_dir())
    trials = read_csv(built.parent / "trials.csv")
    assert [t["trial"] for t in trials] == jobs == ["0", "1"]
    assert {float(t["train.lr"]) for t in trials} == LRS
    assert {t["state"] for t in trials} == {"COMPLETE"}
    page = built.read_text()
    for job in jobs:
        assert f'<tr data-trial="{job}"' in page
    assert "data:image/png;base64," in page and 'src="http' not in page  # self-contained


def test_sweet_spot_is_the_best_stored_score(built: Path, sweep_dir: Path) -> None:
    scores = stored_scores(sweep_dir)
    best = max(v for (_, step), v in scores.items() if step > 0)  # step 0 is the baseline, as in the trainer
    summary = json.loads((built.parent / "summary.json").read_text())
    spot = summary["sweet_spot"]
    assert spot["metrics"]["eval/score"] == best == scores[(spot["trial"], spot["step"])]
    marked = re.search(
        r'id="sweet-spot-box" data-trial="(\d+)" data-step="(\d+)" data-score="([^"]+)"', built.read_text()
    )
    assert marked is not None
    assert (int(marked[1]), int(marked[2]), float(marked[3])) == (spot["trial"], spot["step"], best)
    rows = [r for r in read_csv(built.parent / "checkpoints.csv") if r["sweet_spot"] == "True"]
    assert len(rows) == 1 and float(rows[0]["eval/score"]) == best


def test_figures_open_at_their_sizes(built: Path) -> None:
    for kind in ("heatmaps", "curves", "pareto"):
        with Image.open(built.parent / f"{kind}.png") as image:
            image.verify()
        with Image.open(built.parent / f"{kind}.png") as image:
            assert image.format == "PNG"
            assert image.size == report.figure_px(kind, n_rows=2, n_steps=3)  # 2 trials, steps 0/2/4
            assert image.width >= 600 and image.height >= 500


def test_csvs_have_one_row_per_trial_and_per_checkpoint(built: Path, sweep_dir: Path) -> None:
    assert len(read_csv(built.parent / "trials.csv")) == 2
    checkpoints = read_csv(built.parent / "checkpoints.csv")
    assert len(checkpoints) == len(stored_scores(sweep_dir)) == 6
    assert {(r["trial"], r["step"]) for r in checkpoints} == {(t, s) for t in "01" for s in "024"}
    assert {"eval/dino", "eval/clip_i", "eval/clip_t", "eval/score", "pareto"} <= set(checkpoints[0])


def test_picks_come_with_grids_and_a_command_that_composes(built: Path) -> None:
    picks = json.loads((built.parent / "summary.json").read_text())["picks"]
    trained = [p for p in picks if p["step"] > 0]
    assert {p["params"]["train.lr"] for p in trained} == LRS  # the best trained checkpoint per lr
    for pick in trained:
        command = pick["command"]
        assert command.startswith("python -m dreambooth_sweep.train ")
        assert command.endswith(f"train.max_steps={pick['step']}")
        assert not any(arg.startswith("sweep.") for arg in shlex.split(command))
        cfg = compose_config(shlex.split(command)[3:])
        assert cfg.train.max_steps == pick["step"] and cfg.train.lr == pick["params"]["train.lr"]
        for step in (0, pick["step"]):  # the grids, copied beside the report
            copied = built.parent / "samples" / f"trial-{pick['trial']}_step-{step:06d}.png"
            original = Path(pick["run_dir"]) / "samples" / f"step_{step:06d}.png"
            assert copied.read_bytes() == original.read_bytes()


def test_cli_prints_where_the_report_is(
    cli_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    page, printed = cli_run
    assert f"report: {page.resolve()}" in printed and f"open it: xdg-open {page.resolve()}" in printed
    assert report.main([str(tmp_path / "no-such-sweep")]) == 2
    assert "error:" in capsys.readouterr().err
    assert report.main(["--storage", "sqlite:///x.db"]) == 2  # --study missing


# ----------------------------------------------------------------------------- a sweep still running


def test_partial_sweep_still_reports(sweep_dir: Path, tmp_path: Path) -> None:
    sweep = copy_sweep(sweep_dir, tmp_path / "sweep")
    (sweep / "1" / "metrics.json").unlink()
    first = (sweep / "1" / "eval_history.jsonl").read_text().splitlines()[0]
    (sweep / "1" / "eval_history.jsonl").write_text(first + '\n{"step": 2, "eval/di')  # a line being written
    shutil.copytree(sweep / "1" / ".hydra", sweep / "2" / ".hydra")  # a job that has only just started
    hydra_yaml = sweep / "2" / ".hydra" / "hydra.yaml"
    hydra_yaml.write_text(re.sub(r"(?m)^    num: 1$", "    num: 2", hydra_yaml.read_text()))

    page = report.build_report(sweep)
    assert page == sweep / "report" / "index.html"
    trials = {t["trial"]: t for t in read_csv(sweep / "report" / "trials.csv")}
    assert {k: (t["state"], t["checkpoints"]) for k, t in trials.items()} == {
        "0": ("COMPLETE", "3"),
        "1": ("RUNNING", "1"),
        "2": ("RUNNING", "0"),
    }
    assert len(read_csv(sweep / "report" / "checkpoints.csv")) == 3 + 1
    assert "Sweep in progress" in page.read_text()


# ----------------------------------------------------------------------------- in a browser


def test_html_renders_in_headless_chromium(built: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not on PATH (Debian: apt-get install -y chromium)")
    url = built.resolve().as_uri() + "#sort=-trial"  # the page sorts the trials table on load
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    dom = proc.stdout
    table = dom[dom.index('id="trials-table"') :]
    table = table[: table.index("</table>")]
    assert re.findall(r'<tr data-trial="(\d+)"', table) == ["1", "0"]  # sorted by the script, descending
    assert 'aria-sort="descending"' in table
    assert dom.count('<tr data-trial="') == 2 + 6  # trials table + checkpoints table


# ----------------------------------------------------------------------------- Optuna


def make_study(storage: str, name: str) -> None:
    """A real study: trials 0-1 like the grid's jobs (1 pruned), 2 running without a folder, 3 failed."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    dist = {"train.lr": FloatDistribution(1e-6, 1e-3, log=True)}
    for lr, state in (
        (1e-4, TrialState.COMPLETE),
        (1e-5, TrialState.PRUNED),
        (3e-5, None),
        (1e-3, TrialState.FAIL),
    ):
        study.enqueue_trial({"train.lr": lr})
        trial = study.ask(dist)
        trial.report(0.1, 0)
        trial.report(0.2, 2)
        trial.set_user_attr("best_step", 2)
        trial.set_user_attr("eval/dino", 0.3)
        if state is TrialState.FAIL:
            trial.set_user_attr("fail_reason", "RuntimeError: CUDA out of memory (simulated)")
        if state is not None:  # None: still running
            study.tell(trial, 0.2 if state is TrialState.COMPLETE else None, state=state)


def test_optuna_gives_states_and_trials_without_a_folder(sweep_dir: Path, tmp_path: Path) -> None:
    sweep = copy_sweep(sweep_dir, tmp_path / "sweep")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    make_study(storage, "lr-grid")
    (sweep / "optimization_results.yaml").write_text(f"study_name: lr-grid\nstorage: {storage}\n")

    loaded = report.load_sweep(sweep)
    trials = {t.number: t for t in loaded.trials}
    assert {n: t.state for n, t in trials.items()} == {0: "COMPLETE", 1: "PRUNED", 2: "RUNNING", 3: "FAIL"}
    assert sorted(trials[0].history) == [0, 2, 4]  # the folder's history wins over the reported scores
    assert sorted(trials[2].history) == [0, 2] and trials[2].run_dir is None
    assert "out of memory" in trials[3].fail_reason
    assert loaded.swept == ["train.lr"] and trials[2].lr == pytest.approx(3e-5)

    alone = report.build_report(storage=storage, study="lr-grid", out=tmp_path / "alone")  # no folders at all
    rows = read_csv(alone.parent / "trials.csv")
    assert [r["state"] for r in rows] == ["COMPLETE", "PRUNED", "RUNNING", "FAIL"]
    assert {r["best_step"] for r in rows} == {"2"} and {r["eval/dino"] for r in rows} == {"0.3"}
    with pytest.raises(report.ReportError, match="no study"):
        report.load_sweep(storage=storage, study="nope")


# ----------------------------------------------------------------------------- MLflow


def test_mlflow_parent_run_source_and_the_report_logged_to_it(sweep_dir: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    sweep = copy_sweep(sweep_dir, tmp_path / "sweep")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(
        "dreambooth-sweep/grid", artifact_location=(tmp_path / "artifacts").as_uri()
    )
    parent = client.create_run(exp, tags={"dbs.sweep_id": f"hydra:{sweep.resolve()}", "dbs.role": "parent"})
    pid = parent.info.run_id
    for job in ("0", "1"):
        child = client.create_run(
            exp, tags={"mlflow.parentRunId": pid, "hydra.job_num": job, "output_dir": str(sweep / job)}
        )
        client.set_terminated(child.info.run_id, "FINISHED")
    # A job whose folder is on another machine: the curve comes from MLflow's metric history.
    remote = client.create_run(
        exp,
        tags={"mlflow.parentRunId": pid, "hydra.job_num": "2", "error": "RuntimeError: boom",
              "hydra.overrides": "model=tiny train.lr=0.001 data.identifier='sks dog'"},
    )  # fmt: skip
    client.log_param(remote.info.run_id, "train.lr", "0.001")
    for step, score in ((0, 0.1), (2, 0.05)):
        for key, value in (("eval/score", score), ("eval/dino", score), ("eval/clip_t", 0.2)):
            client.log_metric(remote.info.run_id, key, value, step=step)
    client.set_terminated(remote.info.run_id, "FAILED")

    page = report.build_report(pid, tracking_uri=uri, out=tmp_path / "from-mlflow")
    trials = {t["trial"]: t for t in read_csv(page.parent / "trials.csv")}
    assert {k: t["state"] for k, t in trials.items()} == {"0": "COMPLETE", "1": "COMPLETE", "2": "FAIL"}
    assert trials["2"]["checkpoints"] == "2" and trials["2"]["fail_reason"] == "RuntimeError: boom"
    assert float(trials["2"]["train.lr"]) == 1e-3
    assert trials["0"]["mlflow_run_id"] and trials["0"]["run_dir"] == str(sweep / "0")
    logged = {f.path for f in client.list_artifacts(pid, "report")}
    assert {"report/index.html", "report/trials.csv", "report/heatmaps.png"} <= logged

    # From the folder, the parent run is found by its sweep id (tracking.py's dbs.sweep_id tag).
    assert report.load_sweep(sweep, tracking_uri=uri).tracking == (uri, pid)


# ----------------------------------------------------------------------------- pieces


def test_pareto_front_keeps_the_non_dominated_points() -> None:
    points = [(0.5, 0.30), (0.6, 0.28), (0.55, 0.25), (0.7, 0.20), (0.4, 0.30), (0.7, 0.10)]
    assert report.pareto_front(points) == [3, 1, 0]
