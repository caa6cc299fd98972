"""Files written so that a crash, a kill or a concurrent worker never leaves half of one.

One place for the two rules every writer follows: write beside the target, then rename (readers see
the old version or the new one, never a mix), and hold a ``flock`` while several processes fill one
shared folder (class images, the MLflow store's parent run).
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dreambooth_sweep.errors import ConfigError

__all__ = ["atomic_replace_dir", "atomic_write", "file_lock", "remove_dir", "writing_dir"]


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created with its folder if missing) for the ``with`` block.

    Works between processes on one machine and on shared filesystems with working ``flock`` (NFSv4,
    Lustre); the lock goes with the process, so a killed worker never leaves it held.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error it replaces ``path``.

    On an error the temporary file is removed and ``path`` keeps its old content (if any)::

        with atomic_write(out / "index.html") as tmp:
            tmp.write_text(page)
    """
    final = Path(path)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def remove_dir(path: Path) -> None:
    """Delete a folder so that an interruption never leaves it half-deleted under its real name."""
    doomed = path.with_name(f".{path.name}.deleting")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def atomic_replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written folder ``tmp`` into place as ``final``; a crash before leaves the old one."""
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


# A full disk shows up as OSError(ENOSPC), or as torch's / safetensors' own errors ("file write failed",
# "unexpected pos", "iostream error", "StorageFull"); so a failed write on a (nearly) full disk counts too.
_DISK_FULL = ("No space left on device", "Disk quota exceeded", "StorageFull", "file write failed")
_NEARLY_FULL_BYTES = 16 * 2**20


def _disk_full(exc: BaseException, folder: Path) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if any(text in str(exc) for text in _DISK_FULL):
        return True
    try:
        return isinstance(exc, Exception) and shutil.disk_usage(folder).free < _NEARLY_FULL_BYTES
    except OSError:
        return False


@contextmanager
def writing_dir(tmp: Path, what: str, *, clean_up: bool = True) -> Iterator[None]:
    """Write a folder into ``tmp``: on any failure (Ctrl-C included) remove it (``clean_up``: the main
    process only), so nothing half-written stays behind, and turn a full disk into a one-line
    :class:`ConfigError`."""
    try:
        yield
    except BaseException as exc:
        full = _disk_full(exc, tmp.parent)  # before the partial folder is removed and frees space
        if clean_up:
            shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise ConfigError(
                f"disk full while saving {what} under {tmp.parent}: free space or change paths.log_dir "
                "(earlier checkpoints are intact)"
            ) from exc
        raise


# ----------------------------------------------------------------------------- base model
