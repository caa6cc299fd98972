"""Where a metric model comes from: a hub id, a local folder or ``"tiny"``, never a hang when offline.

The Hugging Face client retries a dead connection for about a minute per file; these helpers look in
the local folder and the Hugging Face cache first and probe the hub once before going there, so a
missing model is a one-line error in seconds.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from dreambooth_sweep.errors import ConfigError
from dreambooth_sweep.tiny import TINY_ID, ensure_tiny

__all__ = ["local_first", "resolve_model_source"]

_T = TypeVar("_T")


def resolve_model_source(
    slot: str, name: str, cache_dir: str | os.PathLike[str] = ".cache", *, label: str | None = None
) -> str:
    """Local directory or hub id to load the ``slot`` ("dino" | "clip") metric model from.

    ``"tiny"`` builds (once, cached under ``cache_dir``) the slot's random-weight stand-in offline.

    Raises:
        ConfigError: an empty name, or a path that does not exist.
    """
    name = str(name).strip()
    label = label or slot.upper()
    if not name:
        raise ConfigError(f"empty {label} model name: pass a hub id, a local dir, or 'tiny'")
    if name == TINY_ID:
        return str(ensure_tiny(slot, cache_dir))
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        # Clearly a path, and not there: do not let it fall through to a hub request.
        raise ConfigError(
            f"cannot load {label} model {name!r}: no such directory; pass a hub id, a local dir, or 'tiny'"
        )
    return name


def _env_true(var: str) -> bool:
    return os.environ.get(var, "").strip().lower() in {"1", "on", "yes", "true"}


def _offline() -> bool:
    """Hugging Face offline mode, read at call time (the hub library reads it at import)."""
    if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
        return True
    from huggingface_hub import constants

    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


@functools.lru_cache(maxsize=1)
def _hub_unreachable_reason() -> str | None:
    """None if the hub answers a TCP connect quickly, else why not (behind a proxy: no probe)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=3):
            return None
    except OSError as exc:
        return f"{host} is unreachable ({exc.__class__.__name__})"


def local_first(load: Callable[..., _T], source: str) -> _T:
    """``load(source)`` from a local dir, else from the HF cache, else from the hub if reachable."""
    if Path(source).is_dir():
        return load(source)
    try:
        # Cached files need no network round-trip (and work offline).
        return load(source, local_files_only=True)
    except OSError:
        if _offline():
            raise OSError("not in the local Hugging Face cache and HF_HUB_OFFLINE is set") from None
        reason = _hub_unreachable_reason()
        if reason is not None:
            raise OSError(f"not in the local Hugging Face cache and {reason}") from None
    return load(source)
