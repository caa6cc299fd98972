"""Ships the Hydra config tree ``conf/`` inside the package (``dreambooth_sweep/conf``) in wheels.

Everything else is in ``pyproject.toml``. The top-level ``conf/`` stays the one source users edit: a
source checkout (an editable install, ``make install``) reads it in place, and a built wheel
(``pip install .``, ``pip wheel .``) carries a copy that ``dreambooth_sweep.runtime.conf_dir()``
finds when no checkout is around. A copy at build time instead of a package-dir mapping, so a new
config group needs no packaging change.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONF = Path(__file__).resolve().parent / "conf"


class BuildPyWithConf(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout's conf/ itself
        target = Path(self.build_lib) / "dreambooth_sweep" / "conf"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(CONF, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithConf})
