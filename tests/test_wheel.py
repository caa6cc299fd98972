"""The wheel is a working install: it carries conf/ and the Optuna plugin, and trains from anywhere.

The slow test installs the built wheel into a fresh venv that reuses the project venv's packages
(torch and the rest) through a ``.pth`` line, without the project's editable install (a ``.pth`` line
adds a folder to ``sys.path`` but does not run that folder's own ``.pth`` files), and runs from a
folder outside the checkout, so only the installed copy can be imported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import CONF_DIR, ROOT, tiny_overrides

# What the wheel is built from; copied to tmp so no stale build/ of the checkout can leak into it.
SOURCES = [
    "pyproject.toml",
    "setup.py",
    "MANIFEST.in",
    "README.md",
    "dreambooth_sweep",
    "hydra_plugins",
    "conf",
]


def _build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(tmp / "dist"),
        ".",
    ]
    proc = subprocess.run(cmd, cwd=src, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [wheel] = (tmp / "dist").glob("dreambooth_sweep-*.whl")
    return wheel


def test_wheel_carries_the_config_tree_and_the_plugin(tmp_path: Path) -> None:
    names = set(zipfile.ZipFile(_build_wheel(tmp_path)).namelist())
    conf = {f"dreambooth_sweep/conf/{p.relative_to(CONF_DIR).as_posix()}" for p in CONF_DIR.rglob("*.yaml")}
    assert conf and conf <= names, sorted(conf - names)
    assert {n for n in names if n.startswith("dreambooth_sweep/conf/")} == conf  # nothing else, nothing stale
    assert "hydra_plugins/dreambooth_sweep_optuna/optuna_sweeper.py" in names
    assert "hydra_plugins/dreambooth_sweep_optuna/config.py" in names
    assert not any(n.startswith(("tests/", "sweeps/", "conf/")) for n in names)


def _fresh_venv(tmp: Path) -> Path:
    """A venv of the base interpreter that sees the project venv's packages but not its editable install."""
    base = getattr(sys, "_base_executable", sys.executable)
    venv = tmp / "venv"
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(purelib, "project_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.mark.slow
def test_installed_wheel_trains_and_finds_the_sweeper(
    tmp_path: Path, cache_dir: Path, demo_dir: Path
) -> None:
    wheel = _build_wheel(tmp_path)
    python = _fresh_venv(tmp_path)
    install = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "install",
        "-q",
        "--no-deps",
        "--no-index",
    ]
    proc = subprocess.run([*install, str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    work = tmp_path / "elsewhere"  # not the checkout: its conf/ and package must not be found
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    venv = python.parent.parent

    where = subprocess.run(
        [python, "-c", "import dreambooth_sweep, hydra_plugins.dreambooth_sweep_optuna as p;"
         "from dreambooth_sweep.runtime import conf_dir; print(dreambooth_sweep.__file__); print(conf_dir());"
         "print(p.__file__)"],
        cwd=work, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr[-3000:]
    package, conf, plugin = (Path(line) for line in where.stdout.split())
    assert all(venv in p.parents for p in (package, conf, plugin)), where.stdout
    assert conf == package.parent / "conf" and (conf / "train.yaml").is_file()

    root = tmp_path / "run_root"
    run = [
        python,
        "-m",
        "dreambooth_sweep.train",
        *tiny_overrides(root, cache_dir, demo_dir, "train.num_threads=1", steps=2),
    ]
    proc = subprocess.run(run, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((root / "outputs" / "runs").glob("*/metrics.json"))) == 1

    # Hydra discovers the plugin in the installed hydra_plugins/ and composes its config ...
    sweeper = [
        python,
        "-m",
        "dreambooth_sweep.train",
        "hydra/sweeper=optuna",
        "--cfg",
        "hydra",
        "--package",
        "hydra.sweeper",
    ]
    proc = subprocess.run(sweeper, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "hydra_plugins.dreambooth_sweep_optuna.optuna_sweeper.OptunaSweeper" in proc.stdout
    # ... and lists its sweeper class among the plugins it loaded
    info = subprocess.run(
        [python, "-m", "dreambooth_sweep.train", "--info", "plugins"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert info.returncode == 0 and "OptunaSweeper" in info.stdout, info.stderr[-2000:]

    cli = subprocess.run(
        [venv / "bin" / "dreambooth-sweep", "--help"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0 and "make-tiny-model" in cli.stdout, cli.stderr[-2000:]
