"""The one secret mask (tracking/secrets.py) and the params built from a config (tracking/params.py)."""

from __future__ import annotations

from dreambooth_sweep.tracking import flatten_params, mask_secrets, masked_line


def test_secrets_are_masked_and_params_flattened() -> None:
    cfg = {
        "hub": {"hf_token": "hf_abc", "api_key": "k", "placeholder_token": "<sks>", "tokenizer": "clip"},
        "db": "postgresql://user:hunter2@db:5432/optuna",
        "overrides": ["db.password=pw1", "train.lr=1e-6"],
        "long": "x" * 7000,
        "train": {"lr": 1e-6, "seeds": [0, 1]},
    }
    masked = mask_secrets(cfg)
    assert masked["hub"] == {
        "hf_token": "***",
        "api_key": "***",
        "placeholder_token": "<sks>",
        "tokenizer": "clip",
    }
    assert masked["db"] == "postgresql://user:***@db:5432/optuna"
    assert masked["overrides"] == ["db.password=***", "train.lr=1e-6"]
    params = flatten_params(cfg)
    assert params["hub.hf_token"] == "***"
    assert params["train.lr"] == "1e-06"
    assert params["train.seeds"] == "[0, 1]"
    assert len(params["long"]) == 6000


def test_error_lines_are_masked_before_they_are_cut() -> None:
    exc = OSError("cannot connect to\npostgresql://optuna:hunter2@db:5432/optuna")
    assert masked_line(exc) == "OSError: cannot connect to postgresql://optuna:***@db:5432/optuna"
    # A cut through the password never leaves its start behind.
    assert "hun" not in masked_line(exc, 50) and masked_line(exc, 50).endswith("...")
    assert masked_line(KeyboardInterrupt()) == "KeyboardInterrupt"
