"""The report built from a real tiny sweep: by the Hydra callback when the sweep ends, and from the
command line; the files agree with what the jobs stored, and carry no password."""

# The shared fixtures are imported from report_helpers (a conftest.py here would shadow tests/conftest.py
# for `from conftest import ...`); pytest injects them by name, which ruff reads as redefinitions.
# ruff: noqa: F811
from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
from conftest import compose_config
from omegaconf import OmegaConf
from report_helpers import LRS, built, cli_run, copy_sweep, read_csv, stored_scores, sweep_dir  # noqa: F401

from dreambooth_sweep import report

# Figures must keep their layout whatever the labels: matplotlib's "collapsed" warning fails a test.
pytestmark = pytest.mark.filterwarnings("error:constrained_layout not applied:UserWarning")


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


def test_csvs_have_one_row_per_trial_and_per_checkpoint(built: Path, sweep_dir: Path) -> None:
    assert len(read_csv(built.parent / "trials.csv")) == 2
    checkpoints = read_csv(built.parent / "checkpoints.csv")
    assert len(checkpoints) == len(stored_scores(sweep_dir)) == 6
    assert {(r["trial"], r["step"]) for r in checkpoints} == {(t, s) for t in "01" for s in "024"}
    assert {"eval/dino", "eval/clip_i", "eval/clip_t", "eval/score", "pareto"} <= set(checkpoints[0])


def test_picks_come_with_grids_and_a_command_that_composes(built: Path) -> None:
    picks = json.loads((built.parent / "summary.json").read_text())["picks"]
    assert picks and all(p["step"] > 0 for p in picks)  # step 0 is the baseline, never a pick
    assert {p["params"]["train.lr"] for p in picks} == LRS  # the best trained checkpoint per lr
    for pick in picks:
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
    assert f"python -m http.server --bind 127.0.0.1 -d {page.parent.resolve()} 8000" in printed
    assert report.main([str(tmp_path / "no-such-sweep")]) == 2
    assert "error:" in capsys.readouterr().err
    assert report.main(["--storage", "sqlite:///x.db"]) == 2  # --study missing


def _set_history(job: Path, scores: dict[int, float]) -> None:
    """Rewrite a job's eval_history.jsonl with these eval/score values (other metrics kept)."""
    lines = [json.loads(line) for line in (job / "eval_history.jsonl").read_text().splitlines()]
    for row in lines:
        row["eval/score"] = scores[row["step"]]
    (job / "eval_history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_best_step_is_a_trained_checkpoint_even_when_step_0_scored_higher(
    sweep_dir: Path, tmp_path: Path
) -> None:
    sweep = copy_sweep(sweep_dir, tmp_path / "sweep")
    _set_history(sweep / "0", {0: 0.99, 2: 0.41, 4: 0.40})  # training only lost ground: step 0 "wins"
    _set_history(sweep / "1", {0: 0.99, 2: 0.30, 4: 0.35})
    page = report.build_report(sweep, log_mlflow=False)

    trials = {r["trial"]: r for r in read_csv(page.parent / "trials.csv")}
    assert {k: (r["best_step"], float(r["best_score"])) for k, r in trials.items()} == {
        "0": ("2", 0.41),
        "1": ("4", 0.35),
    }
    summary = json.loads((page.parent / "summary.json").read_text())
    assert (summary["sweet_spot"]["trial"], summary["sweet_spot"]["step"]) == (0, 2)
    assert all(p["step"] > 0 for p in summary["picks"])
    marks = {
        (r["trial"], r["step"])
        for r in read_csv(page.parent / "checkpoints.csv")
        if r["trial_best"] == "True"
    }
    assert marks == {("0", "2"), ("1", "4")}
    html = page.read_text()
    table = html[html.index('id="trials-table"') : html.index("</table>", html.index('id="trials-table"'))]
    for trial, step in (("0", "2"), ("1", "4")):
        row = re.search(rf'<tr data-trial="{trial}".*?</tr>', table)
        assert row is not None
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row[0])
        assert cells[3] == step  # trial, state, lr, best step
    assert 'data-step="0"' not in html[html.index('id="sweet-spot-box"') :].split(">")[0]


def test_no_password_reaches_any_file_of_the_report(sweep_dir: Path, tmp_path: Path) -> None:
    sweep = copy_sweep(sweep_dir, tmp_path / "sweep")
    for job in ("0", "1"):
        overrides = sweep / job / ".hydra" / "overrides.yaml"
        lines = OmegaConf.to_container(OmegaConf.load(overrides))
        OmegaConf.save(OmegaConf.create([*lines, "tracking.uri=http://u:pw@host:5000"]), overrides)
        config = sweep / job / ".hydra" / "config.yaml"
        cfg = OmegaConf.load(config)
        cfg.sweep.study_name = "lr-grid"  # a study in a server this machine cannot reach
        cfg.sweep.storage = "postgresql://user:s3cret@host/db"
        OmegaConf.save(cfg, config)
    page = report.build_report(sweep, log_mlflow=False)

    summary = json.loads((page.parent / "summary.json").read_text())
    assert any("postgresql://user:***@host/db" in note for note in summary["notes"])  # said, masked
    assert "tracking.uri=http://u:***@host:5000" in summary["sweet_spot"]["command"]
    assert "http://u:***@host:5000" in read_csv(page.parent / "trials.csv")[0]["command"]
    assert "postgresql://user:***@host/db" in page.read_text()
    files = [p for p in page.parent.rglob("*") if p.is_file()]
    assert {"index.html", "summary.json", "trials.csv", "checkpoints.csv"} <= {p.name for p in files}
    for path in files:
        data = path.read_bytes()
        assert b"s3cret" not in data and b":pw@" not in data, path


def test_callback_releases_the_process_caches_only_after_jobs_ran_here(
    sweep_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dreambooth_sweep.caches as caches

    released: list[int] = []
    monkeypatch.setattr(caches, "release_process_caches", lambda: released.append(1))
    sweep = copy_sweep(sweep_dir, tmp_path / "sweep")
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    elsewhere = report.ReportCallback(log_mlflow=False)  # jobs launched in other processes
    elsewhere.on_multirun_end(config)
    assert released == [] and (sweep / "report" / "index.html").exists()
    here = report.ReportCallback(log_mlflow=False)
    here.on_job_end(config, job_return=None)  # Hydra's basic launcher: the job ran in this process
    here.on_multirun_end(config)
    assert released == [1]


def test_report_callback_switches_off_with_the_documented_override(sweep_dir: Path, tmp_path: Path) -> None:
    """`hydra.callbacks.report.enabled=false` (no `++`): the composed callback builds no report."""
    from conftest import CONF_DIR
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hydra.callbacks.report.enabled=false"], return_hydra_config=True)
    callback = instantiate(cfg.hydra.callbacks.report)
    assert isinstance(callback, report.ReportCallback) and callback.enabled is False
    sweep = copy_sweep(sweep_dir, tmp_path / "sweep")
    shutil.rmtree(sweep / "report", ignore_errors=True)  # the fixture's sweep ended with a report
    callback.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert not (sweep / "report").exists()


def test_reproduce_command_is_copyable() -> None:
    trial = report.Trial(
        number=3,
        overrides=["train.lr=0.000927161", "method=lora", "train.max_steps=100", "sweep.trial_number=3"],
        config_args=["--config-dir", "/proj/sweeps", "--config-name", "demo"],
        cwd="/proj",
    )
    command = report.reproduce_command(trial, 40, continuous={"train.lr"})
    assert command == (
        "python -m dreambooth_sweep.train --config-dir sweeps --config-name demo "
        "train.lr=9.3e-4 method=lora train.max_steps=40"
    )
    # Grid / choice values are exact; a config dir outside the project stays absolute.
    trial.config_args[1], trial.overrides[0] = "/elsewhere/sweeps", "train.lr=0.000927161"
    assert "--config-dir /elsewhere/sweeps" in report.reproduce_command(trial, 40)
    assert "train.lr=0.000927161" in report.reproduce_command(trial, 40)
    cfg = compose_config(["train.lr=9.3e-4", "train.max_steps=40"])  # Hydra reads the rounded value back
    assert cfg.train.lr == pytest.approx(9.3e-4)
