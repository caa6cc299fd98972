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
from dreambooth_sweep.tracking.tags import EXPERIMENT_KIND, TAG_EXPERIMENT_KIND, UI_QUERY

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


def _text(dom: str) -> str:
    """The page's visible words: tags, styles and scripts removed."""
    dom = re.sub(r"<(style|script)\b.*?</\1>", " ", dom, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", dom).split())


def render(url: str, profile: Path, *, screenshot: Path | None = None) -> str:
    """The page's DOM after its scripts ran (15 s of virtual time), or a screenshot of it."""
    what = [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    cmd = [
        _chromium(),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "--virtual-time-budget=15000",
        *what,
        url,
    ]
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
    """The experiment carries the kind tag MLflow 3.0-3.4 pick its view by. MLflow 3.5+ picks it by a
    global "GenAI | Model training" switch (default GenAI, kept in the browser; the URL's
    ``workflowType`` wins), so the links we print carry ``workflowType=machine_learning``."""
    exp, url = tracked_run["exp"], tracked_run["url"]
    assert exp.tags[TAG_EXPERIMENT_KIND] == EXPERIMENT_KIND
    dom = render(f"{url}/#/experiments/{exp.experiment_id}?{UI_QUERY}", tracked_run["tmp"] / "profile-exp")
    text = _text(dom)
    # The training-runs table: the sweep's parent with its child nested under it.
    assert "Run Name" in text and "2 matching runs" in text, text[-3000:]
    assert "Token Usage" not in text and "Tokens per Trace" not in text  # not the GenAI overview


def test_child_run_shows_eval_charts_and_a_sample_grid_per_step(tracked_run: dict) -> None:
    exp, run, url, client = tracked_run["exp"], tracked_run["run"], tracked_run["url"], tracked_run["client"]
    run_id = run.info.run_id
    evals = sorted(k for k in run.data.metrics if k.startswith("eval/"))
    assert evals, run.data.metrics
    assert sorted(m.step for m in client.get_metric_history(run_id, evals[0])) == [0, 2, 4]

    page = f"{url}/#/experiments/{exp.experiment_id}/runs/{run_id}/model-metrics?{UI_QUERY}"
    dom = render(page, tracked_run["tmp"] / "profile-run")
    (tracked_run["tmp"] / "run.html").write_text(dom)
    text = _text(dom)
    # The metric charts come grouped by prefix: an "eval" section holding one chart per eval/* metric.
    assert f"eval ({len(evals)})" in text, text[-3000:]
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
