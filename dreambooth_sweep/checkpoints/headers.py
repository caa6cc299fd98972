"""What a weight file holds, read without loading its tensors.

A ``.safetensors`` file is an 8-byte little-endian header length, a JSON header (every tensor's dtype,
shape and byte range, plus the string map ``__metadata__``) and the tensor bytes. Reading the header
alone gives the keys, shapes and metadata of a multi-GB file in microseconds, and tells a complete file
from one that is still being written (or was cut short): a complete file ends exactly where its last
tensor does. Pickled ``.pt``/``.bin`` files have no such header: they are loaded (``weights_only``),
which is fine for the small files they are used for (embeddings, LoRA).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MAX_HEADER_BYTES", "Corrupt", "Header", "Incomplete", "read_header", "read_pickle_header"]

MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit


class Incomplete(Exception):
    """The file ends before its last tensor: still being written, or cut short."""


class Corrupt(Exception):
    """Not a readable weight file."""


@dataclass
class Header:
    """Keys with their shapes, and the string metadata, of one weight file."""

    shapes: dict[str, tuple[int, ...]]
    metadata: dict[str, str] = field(default_factory=dict)

    def keys(self) -> list[str]:
        return list(self.shapes)


def read_header(path: Path) -> Header:
    """The header of a ``.safetensors`` file.

    Raises:
        Incomplete: the file is shorter than its header says (being written, or truncated).
        Corrupt: no valid safetensors header.
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise Incomplete(f"{size} bytes, no header yet")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES:
            raise Corrupt(f"header length {length} is not a safetensors header")
        if 8 + length > size:
            raise Incomplete(f"header of {length} bytes, file has {size}")
        raw = handle.read(length)
    try:
        parsed = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Corrupt(f"header is not JSON ({type(exc).__name__})") from exc
    if not isinstance(parsed, dict):
        raise Corrupt("header is not a JSON object")
    metadata = parsed.pop("__metadata__", None) or {}
    shapes: dict[str, tuple[int, ...]] = {}
    end = 0
    for key, info in parsed.items():
        try:
            shapes[key] = tuple(int(n) for n in info["shape"])
            end = max(end, int(info["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError) as exc:
            raise Corrupt(f"entry {key!r} has no shape/data_offsets") from exc
    if 8 + length + end > size:
        raise Incomplete(f"tensors end at byte {8 + length + end}, file has {size}")
    if 8 + length + end < size:
        raise Corrupt(f"{size - 8 - length - end} bytes after the last tensor")
    return Header(shapes, {str(k): str(v) for k, v in metadata.items()})


def read_pickle_header(path: Path) -> tuple[Header, Any]:
    """Keys and shapes of a pickled weight file (``torch.load``, tensors only), and the object itself.

    A1111 embeddings hold ``string_to_param`` and their ``step`` / ``name`` beside the tensors; those
    plain values become the header's metadata.
    """
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except EOFError as exc:
        raise Incomplete("file ends early") from exc
    except Exception as exc:  # pickle errors, zip errors, refused globals
        raise Corrupt(f"cannot be read with torch.load ({type(exc).__name__})") from exc
    if not isinstance(obj, dict):
        raise Corrupt(f"holds a {type(obj).__name__}, not a dict of tensors")
    shapes: dict[str, tuple[int, ...]] = {}
    metadata: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            shapes[prefix] = tuple(value.shape)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, str | int | float) and prefix.count(".") == 0:
            metadata[prefix] = str(value)

    walk("", obj)
    return Header(shapes, metadata), obj
