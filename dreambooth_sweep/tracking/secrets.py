"""Secrets never reach MLflow, the report or a log line: the one mask every writer calls.

A config value is masked when its key names a secret (``token``, ``password``, ``api_key``, ...; not
ML words such as ``initializer_token``); inside any string, a URL password (``postgresql://u:pw@h``)
and ``key=value`` pairs with a secret key (Hydra override lists) are masked as well.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from dreambooth_sweep.errors import one_line

__all__ = ["MASK", "is_secret_key", "mask_secrets", "mask_text", "masked_line"]

_SECRET_KEY = re.compile(r"token|password|passwd|secret|api_?key|credential", re.IGNORECASE)
# ML vocabulary that merely contains "token": not secrets.
_NOT_SECRET_KEY = re.compile(
    r"tokeniz|placeholder_token|initializer_token|num_tokens|max_tokens|token_ids?\b|tokens_per",
    re.IGNORECASE,
)
_URL_PASSWORD = re.compile(r"(?<![A-Za-z0-9+.-])(?P<head>[A-Za-z][A-Za-z0-9+.-]{0,30}://[^:/@\s]*):[^@/\s]+@")
# key=value pairs inside strings such as Hydra override lists: "db.password=abc,train.lr=1".
_KV_SECRET = re.compile(
    r"(?<![\w.])(?P<key>[\w.]{0,100}?(?:token|password|passwd|secret|api_?key|credential)[\w.]{0,100}=)"
    r"[^,\s'\"\]]+",
    re.IGNORECASE,
)
MASK = "***"


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key)) and not _NOT_SECRET_KEY.search(key)


def mask_text(text: str) -> str:
    """``text`` with URL passwords (``scheme://user:pw@``) and secret ``key=value`` pairs masked."""
    if "://" in text:
        text = _URL_PASSWORD.sub(rf"\g<head>:{MASK}@", text)
    if "=" not in text:
        return text

    def kv(m: re.Match[str]) -> str:
        return m.group(0) if not is_secret_key(m.group("key")) else m.group("key") + MASK

    return _KV_SECRET.sub(kv, text)


def mask_secrets(obj: Any, key: str = "") -> Any:
    """Copy of a plain container with secret values replaced by ``***`` (see the module docstring)."""
    if isinstance(obj, Mapping):
        return {k: mask_secrets(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [mask_secrets(v, key) for v in obj]
    if key and is_secret_key(key) and obj not in (None, "", "???"):
        return MASK
    return mask_text(obj) if isinstance(obj, str) else obj


def masked_line(exc: BaseException | str, limit: int = 500) -> str:
    """``Type: message`` of ``exc`` on one line, masked, then cut to ``limit`` characters.

    Masked before it is cut, so a cut can never leave the start of a password behind.
    """
    return one_line(mask_text(one_line(exc, 1 << 20, with_type=True)), limit)
