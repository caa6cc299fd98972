"""The Optuna sweeper end to end: a tiny Hydra app, real SQLite/journal storage, no mocks.

Sweeps run ``tests/sweep_app/app.py -m hydra/sweeper=optuna`` in a subprocess (as a user would, which
also checks that Hydra discovers the plugin), then read the study back from its storage.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from sweep_runs import APP, LR, app_env, counted, load, sweep, sweep_cmd

from dreambooth_sweep.sweep import read_trial_state
from dreambooth_sweep.sweep.sweeper import OptunaSearch
from dreambooth_sweep.sweep.trials import count_finished, live_running

# --- sweeps -------------------------------------------------------------------------------------


def test_study_completes_with_the_jobs_values(tmp_path: Path) -> None:
    sweep(tmp_path, LR, "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=2")
    trials = load(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    for t in trials:
        # a trial's value is its best checkpoint's score (step 0, the base model, is never a candidate),
        # and best_step says which checkpoint that was
        scores = t.intermediate_values
        assert sorted(scores) == [0, 10, 20, 30, 40, 50]
        best = max(v for step, v in scores.items() if step > 0)
        assert t.value == best == scores[t.user_attrs["best_step"]] == t.user_attrs["best_score"]
        state = read_trial_state(tmp_path / "multirun" / str(t.number))
        assert state is not None and (state["state"], state["step"]) == ("COMPLETE", 50)
        assert (state["best_score"], state["best_step"]) == (t.value, t.user_attrs["best_step"])
        assert {"eval/dino", "eval/clip_t"} <= set(t.user_attrs)
        job_cfg = OmegaConf.load(
            tmp_path / "multirun" / str(t.number) / ".hydra" / "config.yaml"
        )  # dir = number
        assert job_cfg.lr == t.params["lr"]  # the sampled float reached the job exactly
        assert job_cfg.sweep.trial_number == t.number
    best = max(trials, key=lambda t: t.value)
    results = OmegaConf.load(tmp_path / "multirun" / "optimization_results.yaml")
    assert (results.best_trial, results.best_value) == (best.number, best.value)
    assert results.best_step == best.user_attrs["best_step"] and results.best_params == best.params


def test_default_storage_is_a_sqlite_file_in_the_sweep_dir(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        str(APP),
        "-m",
        "hydra/sweeper=optuna",
        f"hydra.sweep.dir={tmp_path}",
        LR,
        "hydra.sweeper.n_trials=1",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True, env=app_env())
    assert "optuna-dashboard sqlite:///" in proc.stdout + proc.stderr
    study = optuna.load_study(
        study_name="app", storage=f"sqlite:///{tmp_path / 'optuna.db'}"
    )  # name: the job name
    assert len(study.trials) == 1


def test_aggressive_pruner_prunes_worse_curves(tmp_path: Path) -> None:
    proc = sweep(
        tmp_path,
        LR,
        "decay_per_trial=0.5",  # each trial's curve is 0.5 below the previous one's
        "hydra.sweeper.n_trials=4",
        "++hydra.sweeper.pruner={_target_: optuna.pruners.MedianPruner, n_startup_trials: 1, n_warmup_steps: 0}",
    )
    trials = load(tmp_path).trials
    assert trials[0].state == TrialState.COMPLETE
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned and len(trials) == 4
    results = OmegaConf.to_container(OmegaConf.load(tmp_path / "multirun" / "optimization_results.yaml"))
    summaries = {entry["trial"]: entry for entry in results["pruned_trials"]}
    for t in pruned:
        assert max(t.intermediate_values) == 10  # step 0 (the base model) is never pruned on
        assert t.value == t.intermediate_values[10]  # Optuna keeps the last reported score
        assert (t.user_attrs["best_score"], t.user_attrs["best_step"]) == (t.intermediate_values[10], 10)
        # the job says so in its run dir, and the summary line shows the best checkpoint
        state = read_trial_state(tmp_path / "multirun" / str(t.number))
        assert state == {"state": "PRUNED", "step": 10, "best_score": t.intermediate_values[10],
                         "best_step": 10, "study_name": "test", "trial_number": t.number}  # fmt: skip
        line = f"trial {t.number} PRUNED: best {t.intermediate_values[10]:.6g} at step 10, pruned at step 10"
        assert line in proc.stdout + proc.stderr
        assert summaries[t.number] == {"trial": t.number, "pruned_at_step": 10, "best_step": 10,
                                       "best_score": t.intermediate_values[10], "params": t.params}  # fmt: skip


def test_a_trial_is_never_pruned_at_its_last_step(tmp_path: Path) -> None:
    """Two checkpoints (step 0 and the final one): the pruner that stops worse curves at step 10 in
    the test above may not stop them here, where step 10 is the end: they have paid for the run."""
    sweep(
        tmp_path,
        LR,
        "steps=10",
        "decay_per_trial=0.5",
        "hydra.sweeper.n_trials=3",
        "++hydra.sweeper.pruner={_target_: optuna.pruners.MedianPruner, n_startup_trials: 1, n_warmup_steps: 0}",
    )
    trials = load(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert all(sorted(t.intermediate_values) == [0, 10] and t.user_attrs["best_step"] == 10 for t in trials)


def test_resume_continues_to_the_total(tmp_path: Path) -> None:
    sweep(tmp_path, LR, "hydra.sweeper.n_trials=3")
    first = [(t.number, t.params, t.value, t.state) for t in load(tmp_path).trials]
    sweep(tmp_path, LR, "hydra.sweeper.n_trials=5")
    trials = load(tmp_path).trials
    assert len(trials) == 5 and all(t.state == TrialState.COMPLETE for t in trials)
    assert [(t.number, t.params, t.value, t.state) for t in trials[:3]] == first


def test_stale_running_trial_is_failed_and_not_counted(tmp_path: Path) -> None:
    study = optuna.create_study(
        study_name="test", storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="maximize"
    )
    killed = study.ask()  # a trial whose sweeper was killed 10 minutes ago
    killed.set_user_attr("heartbeat", time.time() - 600)
    sweep(tmp_path, LR, "hydra.sweeper.n_trials=2")
    trials = load(tmp_path).trials
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["interrupted"] is True
    assert [t.state for t in trials[1:]] == [TrialState.COMPLETE] * 2


def test_ctrl_c_fails_the_running_trial_as_interrupted(tmp_path: Path) -> None:
    cmd = [sys.executable, str(APP), "-m", "hydra/sweeper=optuna", f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    cmd += [f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}", "hydra.sweeper.study_name=test", LR]
    cmd += ["steps=1000000", "eval_every=1"]  # a run far too long to finish
    job_started = tmp_path / "multirun" / "0" / ".hydra" / "config.yaml"  # the study exists by then
    with (tmp_path / "sweep.log").open("w") as log:
        # a background process may inherit an ignored SIGINT: give it the default handler back
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_default_sigint, env=app_env()
        )
        try:
            deadline = time.monotonic() + 60
            while not job_started.exists() or not any(t.intermediate_values for t in load(tmp_path).trials):
                assert time.monotonic() < deadline and proc.poll() is None, "the trial never started"
                time.sleep(0.2)
            for _ in range(5):  # Python may swallow a KeyboardInterrupt raised in a finalizer: press again
                proc.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
                    break
        finally:
            proc.kill()
    assert proc.returncode != 0, (tmp_path / "sweep.log").read_text()[-3000:]
    [trial] = load(tmp_path).trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["interrupted"] is True
    assert trial.user_attrs["fail_reason"] == "interrupted: KeyboardInterrupt"
    sweep(tmp_path, LR, "hydra.sweeper.n_trials=1")  # the interrupted trial does not count
    assert [t.state for t in load(tmp_path).trials] == [TrialState.FAIL, TrialState.COMPLETE]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_failing_trials_are_recorded_and_the_study_goes_on(tmp_path: Path) -> None:
    space = "+hydra.sweeper.params.lr={type: float, low: 0.01, high: 1.0}"  # the dict form, end to end
    sweep(tmp_path, space, "fail_above=0.6", "hydra.sweeper.n_trials=6")
    trials = load(tmp_path).trials
    assert len(trials) == 6
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed, "seed 0 samples lr > 0.6 at least once"
    for t in trials:
        assert (t.state == TrialState.FAIL) == (t.params["lr"] > 0.6)
    assert failed[0].user_attrs["fail_reason"].startswith("RuntimeError: CUDA out of memory (simulated)")


def test_too_many_failures_stop_the_sweep(tmp_path: Path) -> None:
    proc = sweep(
        tmp_path,
        LR,
        "fail_above=0.0",  # every trial fails
        "hydra.sweeper.n_trials=10",
        "hydra.sweeper.failure_check_after=3",
        ok=False,
    )
    assert proc.returncode != 0
    assert "stopping: 3 of 3 trials of this sweep failed, more than max_failure_rate=0.5" in proc.stderr
    assert len(load(tmp_path).trials) == 3


def test_multi_objective_without_pruning(tmp_path: Path) -> None:
    proc = sweep(
        tmp_path,
        LR,
        "decay_per_trial=0.5",  # would be pruned in a single-objective study
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.directions=[maximize,maximize]",
        "hydra.sweeper.objectives=[eval/dino,eval/clip_t]",
        "++hydra.sweeper.pruner={_target_: optuna.pruners.MedianPruner, n_startup_trials: 1}",
    )
    assert "Optuna prunes single-objective studies only" in proc.stdout + proc.stderr
    study = load(tmp_path)
    assert len(study.directions) == 2
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    for t in study.trials:
        assert t.values == [t.user_attrs["eval/dino"], t.user_attrs["eval/clip_t"]]
    assert "pareto_front:" in (tmp_path / "multirun" / "optimization_results.yaml").read_text()


def test_grid_sampler_covers_every_combination(tmp_path: Path) -> None:
    sweep(
        tmp_path,
        "opt=choice(adam,sgd)",
        "batch_size=1,2",
        "hydra.sweeper.n_trials=10",  # more than the grid: it stops when the grid is done
        "hydra.sweeper.sampler={_target_: optuna.samplers.GridSampler}",
        "hydra.sweeper.pruner=null",
    )
    trials = load(tmp_path).trials
    assert {(t.params["opt"], t.params["batch_size"]) for t in trials} == {
        ("adam", 1),
        ("adam", 2),
        ("sgd", 1),
        ("sgd", 2),
    }
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)


def test_journal_storage(tmp_path: Path) -> None:
    storage = f"journal://{tmp_path / 'journal.log'}"
    sweep(tmp_path, LR, "hydra.sweeper.n_trials=2", storage=storage)
    journal = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "journal.log"))
    )
    assert [t.state for t in optuna.load_study(study_name="test", storage=journal).trials] == [
        TrialState.COMPLETE
    ] * 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["hydra.sweeper.n_trials=2"], "the Optuna search space is empty"),
        ([LR, "hydra.sweeper.sampler={_target_: optuna.samplers.NoSuchSampler}"], "unknown _target_"),
        ([LR, "hydra.sweeper.pruner={_target_: builtins.dict}"], "unknown _target_"),
    ],
)
def test_bad_settings_exit_with_a_one_line_error(tmp_path: Path, overrides: list[str], message: str) -> None:
    proc = sweep(tmp_path, *overrides, ok=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if message in line]
    assert errors, proc.stderr
    assert "Traceback" not in proc.stderr


# --- unit checks of the sweeper's helpers -----------------------------------------------------------


def _sweeper(n_trials: int) -> OptunaSearch:
    return OptunaSearch(
        study_name="unit", storage=None, direction="maximize", directions=None, objective="objective",
        objectives=None, n_trials=n_trials, n_jobs=1, seed=0, max_failure_rate=1.0, failure_check_after=1,
        heartbeat_interval=60, sampler=None, pruner=None, params=None,
    )  # fmt: skip


def test_a_trial_beyond_n_trials_is_given_back_as_surplus() -> None:
    sweeper = _sweeper(n_trials=2)
    study = optuna.create_study(direction="maximize")
    space = {"lr": FloatDistribution(0.01, 1.0)}
    study.tell(study.ask(space), 1.0)
    other = study.ask(space)  # another worker's live trial
    other.set_user_attr("heartbeat", time.time())
    assert [t.number for t in live_running(study, sweeper.heartbeat_interval)] == [1]
    assert sweeper._ask(study, space, 1) == []  # 1 finished + 1 live + this one > n_trials
    surplus = study.trials[2]
    assert surplus.state == TrialState.FAIL
    assert surplus.user_attrs["interrupted"] is True and surplus.user_attrs["reason"] == "surplus"
    assert count_finished(study) == 1
    other.set_user_attr("heartbeat", time.time() - 600)  # its worker died: no longer counted
    assert live_running(study, sweeper.heartbeat_interval) == []
    assert [t.number for t in sweeper._ask(study, space, 1)] == [3]


def test_a_failed_job_s_traceback_is_not_kept(tmp_path: Path) -> None:
    """A failed or pruned trial's exception must not keep train()'s frames (its model, its GPU memory)."""
    import weakref

    from hydra.core.utils import JobReturn, JobStatus

    class Model:
        pass

    def train(kind: type[BaseException]) -> tuple[BaseException, weakref.ref]:
        model = Model()
        try:
            raise kind("CUDA out of memory")
        except kind as e:
            return e, weakref.ref(model)

    sweeper = _sweeper(n_trials=3)
    study = optuna.create_study(
        study_name="unit", storage=f"sqlite:///{tmp_path / 'o.db'}", direction="maximize"
    )
    sweeper.storage_obj, sweeper.study_id = study._storage, study._study_id
    for kind in (RuntimeError, optuna.TrialPruned):
        trial = study.ask({"lr": FloatDistribution(0.01, 1.0)})
        error, model = train(kind)
        assert model() is not None  # held by the traceback's frame
        result = JobReturn(status=JobStatus.FAILED, _return_value=error)
        del error
        sweeper._record(study, trial, result)
        assert model() is None and result._return_value.__traceback__ is None
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.PRUNED]


def test_single_runs_never_import_optuna() -> None:
    """Hydra imports every plugin module in every run: ours stays thin until a sweep starts."""
    code = (
        "import sys\n"
        "from hydra.core.plugins import Plugins\n"
        "from hydra.plugins.sweeper import Sweeper\n"
        "names = [p.__name__ for p in Plugins.instance().discover(Sweeper)]\n"
        "assert 'OptunaSweeper' in names, names\n"
        "assert 'optuna' not in sys.modules, 'optuna imported by plugin discovery'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False, env=app_env()
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


# --- workers of one study draw distinct points ------------------------------------------------------


def _params(study: optuna.Study) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in counted(study)]


@pytest.mark.slow
def test_four_workers_draw_eight_distinct_points(tmp_path: Path) -> None:
    """Four sweepers started together on one journal file, each with the same configured seed: the
    later ask of a repeated point gives it back and draws again, so 8 trials are 8 distinct points."""
    storage = f"journal://{tmp_path / 'journal.log'}"
    cmd = sweep_cmd(tmp_path, LR, "hydra.sweeper.n_trials=8", "hydra.sweeper.pruner=null", storage=storage)
    procs = [
        subprocess.Popen(
            [*cmd, f"hydra.sweep.dir={tmp_path / f'worker-{i}'}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=app_env(),
        )
        for i in range(4)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(o[-2000:] for o in outputs)
    study = load(tmp_path, storage)
    done = counted(study)
    assert len(done) == 8 and all(t.state == TrialState.COMPLETE for t in done)
    assert len(set(_params(study))) == 8, _params(study)
    given_back = [t for t in study.trials if t.user_attrs.get("reason") == "duplicate"]
    assert all(t.user_attrs["fail_reason"].startswith("interrupted: duplicate of trial") for t in given_back)


def test_a_resumed_sweep_does_not_replay_the_first_one_s_points(tmp_path: Path) -> None:
    """The same seed again on a study that holds trials: a seed derived from the study's size."""
    sweep(tmp_path, LR, "hydra.sweeper.n_trials=2")
    sweep(tmp_path, LR, "hydra.sweeper.n_trials=4")
    study = load(tmp_path)
    assert len(counted(study)) == 4 and len(set(_params(study))) == 4, _params(study)


def test_one_process_from_an_empty_study_is_reproducible(tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        sweep(tmp_path / name, LR, "batch_size=1,2", "hydra.sweeper.n_trials=4")
        runs.append(_params(load(tmp_path / name)))
    assert runs[0] == runs[1] and len(set(runs[0])) == 4


def test_a_repeated_draw_is_given_back_and_drawn_again() -> None:
    """Two workers with the same seed: the second draws the first's point, gives it back, moves on."""
    space = {"lr": FloatDistribution(0.01, 1.0)}
    study = optuna.create_study(direction="maximize", study_name="unit")
    first, second = _sweeper(n_trials=4), _sweeper(n_trials=4)
    for sweeper in (first, second):
        sweeper.name, sweeper.space, sweeper.joined_at = "unit", space, 0
    study.sampler = first._make_sampler(space, first._sampler_seed())
    [a] = first._ask(study, space, 1)
    study.sampler = second._make_sampler(space, second._sampler_seed())  # the same seed: the same draw
    [b] = second._ask(study, space, 1)
    assert a.number == 0 and b.number == 2 and a.params != b.params
    given_back = study.trials[1]
    assert given_back.params == a.params and given_back.state == TrialState.FAIL
    assert given_back.user_attrs["reason"] == "duplicate" and given_back.user_attrs["interrupted"] is True
    # a small discrete space whose every point is taken: a repeat is kept rather than drawn forever
    tiny = {"opt": optuna.distributions.CategoricalDistribution(["adam"])}
    study = optuna.create_study(direction="maximize")
    study.tell(first._ask(study, tiny, 1)[0], 1.0)
    [again] = first._ask(study, tiny, 1)
    assert again.params == {"opt": "adam"} and len(study.trials) == 2
