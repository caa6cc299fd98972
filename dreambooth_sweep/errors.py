"""The project's error type and the one way an error becomes one line.

Every bad setting or input ends as ``error: <problem>: <fix>`` on one line and exit 2, whichever
entry point met it; this module holds the exception that carries such a line and the helpers that
turn other exceptions (Hydra composition errors, library errors) into one.
"""

from __future__ import annotations

__all__ = ["ConfigError", "compose_error_line", "one_line"]


class ConfigError(ValueError):
    """A bad setting or input; the message names the problem and the fix, on one line."""


def one_line(exc: BaseException | str, limit: int = 500, *, with_type: bool = False) -> str:
    """``exc``'s message with its whitespace folded onto one line, cut to ``limit`` characters.

    Args:
        exc: an exception or a message.
        limit: the longest line returned (longer ones end in ``...``).
        with_type: put the exception's type name first (``OSError: ...``), for messages of library
            errors that mean little without it. An empty message is always the type name alone.
    """
    message = " ".join(str(exc).split())
    name = type(exc).__name__ if isinstance(exc, BaseException) else ""
    text = (f"{name}: {message}" if with_type and message else message) or name
    return text if len(text) <= limit else text[: limit - 3] + "..."


def compose_error_line(exc: BaseException, entry: str = "dreambooth_sweep.train") -> str:
    """One line for a Hydra/OmegaConf composition error: what is wrong (key, value), then the fix.

    Hydra's own message runs over several lines and, for a mistyped key, suggests ``+key=value``,
    which would silently add the typo instead of fixing it.
    """
    texts = []
    seen: BaseException | None = exc
    while seen is not None and len(texts) < 4:
        text = " ".join(part.strip() for part in str(seen).splitlines() if part.strip())
        for cut in (" full_key:", " To append to your config use", " Config search path:"):
            text = text.split(cut)[0]
        text = text.strip()
        if text and "$VALUE" not in text and not text.startswith("invalid literal") and text not in texts:
            texts.append(text)
        seen = seen.__cause__ or seen.__context__
    problem = " — ".join(texts[:2]) or type(exc).__name__
    if "not in" in problem or "Could not override" in problem:
        fix = f"check the key's spelling; `python -m {entry} --cfg job` prints every key"
    elif "Could not find" in problem or "Available options" in problem:
        fix = "pick one of the available options"
    else:
        fix = f"fix the value's type or syntax; `python -m {entry} --cfg job` prints every key with its value"
    return f"{problem}: {fix}"
