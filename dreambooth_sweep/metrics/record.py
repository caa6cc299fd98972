"""``scoring.json``: how a sample folder was scored, so that rescoring it gives the logged numbers.

The evaluator writes it next to ``prompts.json`` in every ``samples/step_XXXXXX/`` folder; ``dreambooth-sweep
score --generated DIR`` reads it back (explicit flags override). It holds

- ``identifier``: the token CLIP-T removed from the prompts (and the rule, under ``protocol``);
- ``real_dir`` / ``real_max_images``: the subject photos the samples were compared with;
- ``class_dir``: the class-prompt images for PRES, relative to the folder (absent: none were made);
- ``settings``: ``metrics``, ``dino_model``, ``dino_preprocess``, ``clip_model`` as the run had them
  (a local model folder as an absolute path);
- ``protocol``: what those settings resolved to — backbone family, label, image-processor settings,
  text padding, and the logged name of every metric.

``prompts.json`` stays the plain file-name → prompt map a user can also write by hand.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dreambooth_sweep.errors import ConfigError, one_line
from dreambooth_sweep.files import atomic_write

__all__ = ["SCORING_FILE", "read_scoring_record", "scoring_record", "write_scoring_record"]

SCORING_FILE = "scoring.json"
_VERSION = 1


def scoring_record(
    suite: Any,
    *,
    identifier: str | None,
    real_dir: str | os.PathLike[str] | None = None,
    real_max_images: int | None = None,
    class_dir: str | None = None,
) -> dict[str, Any]:
    """The record of how ``suite`` (a :class:`~dreambooth_sweep.metrics.MetricSuite`) scores a folder."""
    record: dict[str, Any] = {
        "version": _VERSION,
        "identifier": identifier,
        "real_dir": str(Path(real_dir).expanduser().resolve()) if real_dir else None,
        "real_max_images": real_max_images,
        "settings": dict(suite.settings),
        "protocol": suite.protocol(),
    }
    if class_dir:
        record["class_dir"] = class_dir
    return record


def write_scoring_record(folder: str | os.PathLike[str], record: dict[str, Any]) -> Path:
    """Write ``record`` as ``folder/scoring.json`` (atomically: a reader never sees half a file)."""
    path = Path(folder) / SCORING_FILE
    with atomic_write(path) as tmp:
        Path(tmp).write_text(json.dumps(record, indent=2))
    return path


def read_scoring_record(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``folder/scoring.json``, or None when the folder has none.

    Raises:
        ConfigError: the file exists but is not a record this version can read.
    """
    path = Path(folder) / SCORING_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot read {str(path)!r}: {one_line(exc, 200)}; delete it to score without it"
        ) from exc
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        raise ConfigError(f"{str(path)!r} is not a scoring record: delete it to score without it")
    if int(record.get("version", 0)) > _VERSION:
        raise ConfigError(
            f"{str(path)!r} was written by a newer dreambooth-sweep (version {record['version']}): upgrade"
        )
    return record
