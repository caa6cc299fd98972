"""Shared fixtures: the tiny models are built once per test session and every config is composed
from the real conf/ tree, shrunk, and pointed at temporary folders."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from dreambooth_sweep.config import register_configs

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub; fail fast if code tries
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, os.cpu_count() or 1))
register_configs()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache (tiny SD/CLIP/DINO builds, class images) shared by the whole session."""
    from dreambooth_sweep.tiny import ensure_tiny

    path = tmp_path_factory.mktemp("cache")
    for kind in ("sd", "clip", "dino"):
        ensure_tiny(kind, path)
    return path


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dreambooth_sweep.demo_data import make_demo_data

    path = tmp_path_factory.mktemp("demo_toy")
    make_demo_data(path, num_images=6)
    return path


def tiny_overrides(
    root: Path,
    cache_dir: Path,
    demo_dir: Path,
    *extra: str,
    steps: int = 4,
    evaluate: bool = False,
    tracking: bool = False,
    output_dir: Path | None = None,
) -> list[str]:
    """Overrides of a seconds-long CPU run of the real training app, the one list every test starts from.

    Tiny random-weight model and metric models from the session ``cache_dir``, the session's demo
    subject, an lr large enough to move random weights, files under ``root``. ``extra`` overrides come
    last and win (Hydra applies overrides in order).
    """
    base = [
        "model=tiny",
        "eval=tiny",
        f"eval.enabled={str(evaluate).lower()}",
        *([] if tracking else ["tracking=none"]),
        f"paths.root_dir={root}",
        f"paths.cache_dir={cache_dir}",
        *([f"paths.output_dir={output_dir}"] if output_dir else []),
        f"data.instance_dir={demo_dir}",
        "data.generate_demo=false",
        f"train.max_steps={steps}",
        "train.lr=1e-4",
    ]
    return [*base, *extra]


def compose_config(overrides: list[str], config_name: str = "train") -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name, overrides=overrides)


@pytest.fixture
def make_cfg(tmp_path: Path, cache_dir: Path, demo_dir: Path) -> Callable[..., DictConfig]:
    """Compose the real config for a tiny CPU run in ``tmp_path``; extra overrides win."""

    def _make(*overrides: str, run: str = "run") -> DictConfig:
        return compose_config(
            tiny_overrides(tmp_path, cache_dir, demo_dir, *overrides, output_dir=tmp_path / run)
        )

    return _make


@pytest.fixture(scope="session")
def tiny_family(cache_dir: Path) -> Callable[[str], Path]:
    """``tiny_family("sdxl")`` (also "sd3", "flux"): the cached tiny build's folder, built once per session."""
    from dreambooth_sweep.tiny import ensure_tiny

    return lambda kind: ensure_tiny(kind, cache_dir)


@pytest.fixture
def family_cfg(tmp_path: Path, cache_dir: Path, demo_dir: Path) -> Callable[..., DictConfig]:
    """Compose the real config for a tiny CPU run of ``model`` (tiny_sdxl, tiny_sd3, tiny_flux)."""

    def _make(model: str, *overrides: str, run: str = "run") -> DictConfig:
        base = [
            f"model={model}",
            "eval=tiny",
            "tracking=none",
            f"paths.root_dir={tmp_path}",
            f"paths.cache_dir={cache_dir}",
            f"paths.output_dir={tmp_path / run}",
            f"data.instance_dir={demo_dir}",
            "data.generate_demo=false",
            "train.max_steps=2",
            "train.lr=1e-3",
            "eval.enabled=false",
        ]
        return compose_config([*base, *overrides])

    return _make
