"""How much does MLflow logging cost the training loop? (a script, not a test)

    .venv/bin/python benchmarks/bench_tracking.py [--steps 300] [--uri http://127.0.0.1:5000]

Runs a fake training loop (a 20 ms sleep per "step") with ``tracking.log_every_n_steps=1`` (the
worst case: every step logged) and reports the time the loop spends inside ``log_train`` /
``log_metrics`` / ``log_image``, against what a synchronous ``MlflowClient.log_batch`` per step costs.
Default store: a fresh SQLite file in a temp dir.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric
from PIL import Image

from dreambooth_sweep.config import load_config
from dreambooth_sweep.tracking import resolve_uri, start_tracking

STEP_S = 0.020  # a dummy training step


def noop(values: dict[str, float]) -> None:
    pass


def summary(name: str, seconds: list[float]) -> str:
    ms = sorted(s * 1e3 for s in seconds)
    p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
    mean = statistics.fmean(ms)
    return (
        f"{name:<28} n={len(ms):<4} mean {mean:7.3f} ms  median {statistics.median(ms):7.3f}  "
        f"p99 {p99:7.3f}  max {ms[-1]:7.3f}  = {100 * mean / (STEP_S * 1e3):.3f}% of a {STEP_S * 1e3:.0f} ms step"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--uri", default=None, help="tracking URI (default: SQLite file in a temp dir)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config()
        cfg.model.name = cfg.model.pretrained = "tiny"
        cfg.data.instance_dir, cfg.data.class_noun = str(Path(tmp) / "dog"), "dog"
        cfg.paths.root_dir = tmp
        cfg.tracking.uri = args.uri
        cfg.tracking.experiment = "bench-tracking"
        cfg.tracking.log_every_n_steps = 1
        cfg.train.max_steps = args.steps
        image = Image.new("RGB", (512, 512), (128, 64, 32))

        train, evals, images, floor = [], [], [], []
        t_open = time.perf_counter()
        tracker = start_tracking(cfg, system_metrics=False)
        with tracker:
            t_open = time.perf_counter() - t_open
            for step in range(1, args.steps + 1):
                time.sleep(STEP_S)
                t0 = time.perf_counter()
                noop({"train/loss": 1.0 / step, "train/lr": 2e-6})  # the noise floor after a sleep
                floor.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                tracker.log_train(step, {"train/loss": 1.0 / step, "train/lr": 2e-6})
                train.append(time.perf_counter() - t0)
                if step % 50 == 0:
                    t0 = time.perf_counter()
                    tracker.log_metrics({f"eval/m{i}": 0.5 for i in range(6)}, step=step)
                    evals.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    tracker.log_image(image, key="samples", step=step)
                    images.append(time.perf_counter() - t0)
            t_close = time.perf_counter()
        t_close = time.perf_counter() - t_close

        # Reference: the same train values logged synchronously, one log_batch per step.
        client = MlflowClient(resolve_uri(cfg))
        run_id = client.create_run(client.get_experiment_by_name("bench-tracking").experiment_id).info.run_id
        sync = []
        for step in range(1, min(args.steps, 100) + 1):
            t0 = time.perf_counter()
            ts = int(time.time() * 1000)
            client.log_batch(
                run_id,
                metrics=[Metric("train/loss", 1.0 / step, ts, step), Metric("train/lr", 2e-6, ts, step)],
            )
            sync.append(time.perf_counter() - t0)
        client.set_terminated(run_id)

        print(f"store: {resolve_uri(cfg)}")
        print(summary("empty call (noise floor)", floor))
        print(summary("log_train (queued)", train))
        print(summary("log_metrics 6 evals (queued)", evals))
        print(summary("log_image 512px (queued)", images))
        print(summary("sync client.log_batch", sync))
        print(
            f"open (run + config): {t_open * 1e3:.0f} ms; exit (flush {args.steps} steps + status): {t_close * 1e3:.0f} ms"
        )
        history = client.get_metric_history(tracker.run_id, "train/loss")
        print(f"delivered train/loss points: {len(history)} of {args.steps}")


if __name__ == "__main__":
    main()
