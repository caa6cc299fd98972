"""What a run records about its config: flattened params and tag values, masked, within MLflow's limits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dreambooth_sweep.tracking.secrets import mask_secrets, mask_text

__all__ = [
    "MAX_KEY",
    "MAX_METRICS_PER_BATCH",
    "MAX_PARAMS_TAGS_PER_BATCH",
    "MAX_PARAM_VAL",
    "MAX_TAG_VAL",
    "config_container",
    "flatten_params",
    "tag_value",
]

# MLflow limits (mlflow/utils/validation.py).
MAX_PARAM_VAL = 6000
MAX_TAG_VAL = 8000
MAX_KEY = 250
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100


def config_container(cfg: Any) -> dict[str, Any]:
    """Resolved plain dict of a config; unresolved where an interpolation cannot be resolved here."""
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(cfg, DictConfig):
        return dict(cfg)
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[return-value]
    except Exception:  # e.g. ${hydra:...} outside a Hydra app
        return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


def flatten_params(container: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 1e-6}}`` -> ``{"train.lr": "1e-06"}``, secrets masked, MLflow limits respected."""
    out: dict[str, str] = {}
    for k, v in mask_secrets(container).items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_params(v, prefix=f"{name}."))
            continue
        text = str(v)
        if len(text) > MAX_PARAM_VAL:
            text = text[: MAX_PARAM_VAL - 3] + "..."
        out[name[:MAX_KEY]] = text
    return out


def tag_value(value: Any) -> str:
    """A tag value as MLflow takes it: a masked string within the length limit."""
    return mask_text(str(value))[:MAX_TAG_VAL]
