"""The installed packages are the tested set in requirements/lock.txt (drift is seen, not guessed).

`make install` installs through the lock; a package that moved since (a hand-run `pip install -U`, a
venv made some other way) fails here with one line naming each difference. Installing without the lock
on purpose (`make install LOCK=`) is fine: export DBS_UNLOCKED=1 and this test skips.
"""

from __future__ import annotations

import os
import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = Path(os.environ.get("DBS_LOCK_FILE", ROOT / "requirements" / "lock.txt"))
# The packages whose versions decide behaviour: named first in the failure line.
CORE = (
    "diffusers",
    "transformers",
    "peft",
    "accelerate",
    "mlflow",
    "optuna",
    "hydra-core",
    "huggingface-hub",
)
_PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._\-]*)(?:\[[^\]]*\])?==(?P<version>[^\s;]+)\s*(?:;(?P<marker>.*))?$"
)


def locked_versions(lock: Path) -> dict[str, str]:
    """Name → version for every pin of ``lock`` whose environment marker holds here."""
    pins: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        m = _PIN.match(line.strip())
        if not m or (m["marker"] and not Marker(m["marker"]).evaluate()):
            continue
        pins[canonicalize_name(m["name"])] = m["version"]
    return pins


def drift(pins: dict[str, str]) -> list[str]:
    """``name installed X, lock Y`` for each locked package that is installed at another version or missing."""
    found = []
    for name, want in pins.items():
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = "missing"
        if have != want:
            found.append(f"{name} {have} (lock {want})")
    core = {canonicalize_name(c) for c in CORE}
    return sorted(found, key=lambda s: (canonicalize_name(s.split()[0]) not in core, s))


def test_lock_parser_reads_markers_and_skips_comments(tmp_path: Path) -> None:
    lock = tmp_path / "lock.txt"
    lock.write_text(
        "# header\nfoo==1.0\n    # via bar\nwin-only==2 ; sys_platform == 'win32'\nnever==3 ; sys_platform == 'never'\n"
    )
    assert locked_versions(lock) == {"foo": "1.0"}
    assert drift({"foo": "1.0"}) == ["foo missing (lock 1.0)"]


def test_lock_excludes_torch() -> None:
    """The user's CUDA torch must stay theirs: the lock never pins torch or a CUDA library."""
    names = {canonicalize_name(m["name"]) for m in map(_PIN.match, LOCK.read_text().splitlines()) if m}
    assert "torch" not in names and not {n for n in names if n.startswith(("nvidia-", "triton"))}
    assert "uv pip compile" in LOCK.read_text().splitlines()[1], (
        "the header names the tool that made the lock"
    )


@pytest.mark.skipif(
    bool(os.environ.get("DBS_UNLOCKED")), reason="installed without the lock (DBS_UNLOCKED set)"
)
def test_installed_packages_match_the_lock() -> None:
    pins = locked_versions(LOCK)
    assert {canonicalize_name(c) for c in CORE} <= pins.keys(), "the lock lost a core package"
    moved = drift(pins)
    assert not moved, (
        f"installed packages differ from {LOCK.relative_to(ROOT) if LOCK.is_relative_to(ROOT) else LOCK}: "
        + "; ".join(moved)
        + " — run `rm -rf .venv && make install` for the tested set, or `make upgrade-deps` to move the lock"
    )
