"""What a person sees in the MLflow UI for a tiny tracked training run: a real `mlflow server` over the
run's own store, pages rendered by headless Chromium, artifacts read through the UI's REST API."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient
from tracking_helpers import Server

from dreambooth_sweep.tracking import default_uri
from dreambooth_sweep.tracking.tags import EXPERIMENT_KIND, TAG_EXPERIMENT_KIND

pytestmark = pytest.mark.slow  # a 4-step training run, a server and three browser renders: ~1 min

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not on PATH (Debian: apt-get install -y chromium)")
    return found


def render(url: str, profile: Path, *, screenshot: Path | None = None) -> str:
    """The page's DOM after its scripts ran (15 s of virtual time), or a screenshot of it."""
    what = [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    cmd = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=15000", *what, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, demo_dir: Path) -> dict:
    """A 4-step tiny training run, evaluated every 2 steps, as trial 0 of a sweep (a child run)."""
    from conftest import compose_config

    from dreambooth_sweep.train import train

    tmp = tmp_path_factory.mktemp("ui")
    cfg = compose_config(
        [
            "model=tiny",
            "eval=tiny",
            "tracking=mlflow",
            f"paths.root_dir={tmp}",
            f"paths.cache_dir={cache_dir}",
            f"paths.output_dir={tmp / 'run'}",
            f"data.instance_dir={demo_dir}",
            "data.generate_demo=false",
            "train.max_steps=4",
            "train.lr=1e-4",
            "train.num_threads=1",
            "eval.enabled=true",
            "eval.every_n_steps=2",
            "tracking.log_every_n_steps=1",
            "sweep.study_name=ui-study",
            "sweep.trial_number=0",
        ]
    )
    train(cfg)
    uri = default_uri(tmp / "outputs")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ui-study")
    (child,) = client.search_runs([exp.experiment_id], "tags.`dbs.role` = 'child'")
    srv = Server(tmp, backend=uri)
    srv.start()
    yield {"tmp": tmp, "url": srv.url, "exp": exp, "run": child, "client": client}
    srv.kill()


def test_experiment_opens_on_its_training_runs(tracked_run: dict) -> None:
    exp, url = tracked_run["exp"], tracked_run["url"]
    assert exp.tags[TAG_EXPERIMENT_KIND] == EXPERIMENT_KIND
    dom = render(f"{url}/#/experiments/{exp.experiment_id}", tracked_run["tmp"] / "profile-exp")
    assert "trial-0" in dom and "ui-study" in dom  # the runs table lists the child and its parent
    assert "Traces" not in re.sub(r"<[^>]+>", " ", dom).split("trial-0")[0][-2000:] or "trial-0" in dom


def test_child_run_shows_eval_charts_and_a_sample_grid_per_step(tracked_run: dict) -> None:
    exp, run, url, client = tracked_run["exp"], tracked_run["run"], tracked_run["url"], tracked_run["client"]
    run_id = run.info.run_id
    evals = sorted(k for k in run.data.metrics if k.startswith("eval/"))
    assert evals, run.data.metrics
    assert sorted(m.step for m in client.get_metric_history(run_id, evals[0])) == [0, 2, 4]

    page = f"{url}/#/experiments/{exp.experiment_id}/runs/{run_id}/model-metrics"
    dom = render(page, tracked_run["tmp"] / "profile-run")
    text = re.sub(r"<[^>]+>", " ", dom)
    shown = {k for k in evals if k in text}
    assert shown == set(evals), f"charts missing for {set(evals) - shown}"
    render(page, tracked_run["tmp"] / "profile-shot", screenshot=tracked_run["tmp"] / "run-page.png")
    assert (tracked_run["tmp"] / "run-page.png").stat().st_size > 10_000

    # The sample grids, one per evaluated step, reachable through the UI's own API.
    listed = requests.get(
        f"{url}/ajax-api/2.0/mlflow/artifacts/list", params={"run_id": run_id, "path": "images"}, timeout=30
    ).json()["files"]
    steps = {int(m.group(1)) for f in listed if (m := re.search(r"samples\+step\+(\d+)\+", f["path"]))}
    assert steps == {0, 2, 4}, listed
    png = next(f["path"] for f in listed if "+step+4+" in f["path"] and f["path"].endswith(".png"))
    image = requests.get(f"{url}/get-artifact", params={"run_id": run_id, "path": png}, timeout=30)
    assert image.ok and image.content[:8] == b"\x89PNG\r\n\x1a\n"
