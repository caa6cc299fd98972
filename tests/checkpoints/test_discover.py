"""Discovery of other trainers' checkpoint folders: formats, steps, runs, bad and half-written files."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
import torch
from handmade_checkpoints import a1111_embedding, ai_toolkit_metadata, fake_kohya, kohya_metadata
from safetensors.torch import save_file

from dreambooth_sweep.checkpoints import discover
from dreambooth_sweep.errors import ConfigError


def _steps(found) -> list[int]:
    return [c.step for c in found.checkpoints]


def test_kohya_epochs_ordered_by_metadata_and_final_last(tmp_path: Path) -> None:
    # Written out of order; names say epochs, the metadata says steps.
    fake_kohya(tmp_path / "subject.safetensors", metadata=kohya_metadata(30, 3, 2, 2))
    fake_kohya(tmp_path / "subject-000002.safetensors", metadata=kohya_metadata(20, 2, 2, 2))
    fake_kohya(tmp_path / "subject-000001.safetensors", metadata=kohya_metadata(10, 1, 2, 2))
    found = discover(tmp_path)
    assert _steps(found) == [10, 20, 30]
    assert [c.epoch for c in found.checkpoints] == [1, 2, 3]
    assert [c.final for c in found.checkpoints] == [False, False, True]
    assert {(c.kind, c.format, c.source, c.family, c.run) for c in found.checkpoints} == {
        ("lora", "kohya-lora", "kohya", "SD-1.x", "")
    }
    assert found.checkpoints[0].step_source == "metadata ss_steps"


def test_names_alone_give_the_order(tmp_path: Path) -> None:
    fake_kohya(tmp_path / "kohya" / "subject-000001.safetensors")  # epochs, no metadata
    fake_kohya(tmp_path / "kohya" / "subject-000003.safetensors")
    fake_kohya(tmp_path / "kohya" / "subject.safetensors")
    found = discover(tmp_path / "kohya")
    assert _steps(found) == [1, 3, 5]  # epochs as steps; the final one an interval after the last
    assert "epochs used as steps" in found.checkpoints[0].step_source

    steps = tmp_path / "steps"
    for name in ("subject-step00000500", "subject-step00001000"):
        fake_kohya(steps / f"{name}.safetensors")
    assert _steps(discover(steps)) == [500, 1000]

    toolkit = tmp_path / "toolkit"  # ai-toolkit: name_000000500, final name.safetensors (training_info)
    fake_kohya(toolkit / "subject_000000500.safetensors")
    fake_kohya(toolkit / "subject_000001000.safetensors", metadata=ai_toolkit_metadata(1000, 4))
    fake_kohya(toolkit / "subject.safetensors", metadata=ai_toolkit_metadata(1250, 5))
    found = discover(toolkit)
    assert _steps(found) == [500, 1000, 1250]
    assert [c.source for c in found.checkpoints][1:] == ["ai-toolkit", "ai-toolkit"]

    onetrainer = (
        tmp_path / "workspace"
    )  # OneTrainer: save/<prefix><timestamp>-save-<step>-<epoch>-<epoch step>
    fake_kohya(onetrainer / "save" / "subject2025-01-02_10-00-00-save-250-1-0.safetensors")
    fake_kohya(onetrainer / "save" / "subject2025-01-02_10-05-00-save-500-2-0.safetensors")
    fake_kohya(onetrainer / "backup" / "2025-01-02_10-05-00-backup-500-2-0" / "lora.safetensors")
    found = discover(onetrainer)
    assert _steps(found) == [250, 500] and [c.epoch for c in found.checkpoints] == [1, 2]
    assert all(c.source == "OneTrainer" for c in found.checkpoints)


def test_diffusers_checkpoint_folders_and_final_file(tmp_path: Path) -> None:
    lora = {
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": torch.zeros(2, 1024)
    }
    lora["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight"] = torch.zeros(8, 2)
    for step in (1000, 500):
        (tmp_path / f"checkpoint-{step}").mkdir()
        save_file(lora, str(tmp_path / f"checkpoint-{step}" / "pytorch_lora_weights.safetensors"))
        (tmp_path / f"checkpoint-{step}" / "optimizer.bin").write_bytes(b"x")
    save_file(lora, str(tmp_path / "pytorch_lora_weights.safetensors"))  # the scripts' final save
    found = discover(tmp_path)
    assert _steps(found) == [500, 1000, 1500]
    assert [c.final for c in found.checkpoints] == [False, False, True]
    assert {c.format for c in found.checkpoints} == {"diffusers-lora"}
    assert {c.family for c in found.checkpoints} == {"SD-2.x"}


def test_embeddings_a1111_and_diffusers(tmp_path: Path) -> None:
    for step in (100, 50):
        a1111_embedding(tmp_path / "a1111" / f"subject-{step}.pt", torch.zeros(2, 768), step=step)
    found = discover(tmp_path / "a1111")
    assert _steps(found) == [50, 100]
    assert {(c.kind, c.format, c.embed_dim, c.token, c.family) for c in found.checkpoints} == {
        ("embedding", "a1111-embedding", 768, "subject", "SD-1.x")
    }
    (tmp_path / "ti").mkdir()
    for step in (10, 20):
        save_file(
            {"<sks>": torch.zeros(1, 1024)}, str(tmp_path / "ti" / f"learned_embeds-steps-{step}.safetensors")
        )
    found = discover(tmp_path / "ti")
    assert _steps(found) == [10, 20] and {c.token for c in found.checkpoints} == {"<sks>"}


def test_several_runs_are_grouped(tmp_path: Path) -> None:
    for run in ("lr1e-4", "lr5e-5"):
        for epoch in (1, 2):
            fake_kohya(
                tmp_path / run / f"subject-{epoch:06d}.safetensors",
                metadata=kohya_metadata(epoch * 10, epoch, 2, 2),
            )
    found = discover(tmp_path)
    assert sorted(found.runs()) == ["lr1e-4", "lr5e-5"]
    assert all(_s == [10, 20] for _s in ([c.step for c in v] for v in found.runs().values()))


def test_corrupt_file_is_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fake_kohya(tmp_path / "subject-000001.safetensors", metadata=kohya_metadata(10, 1, 2, 2))
    (tmp_path / "subject-000002.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with caplog.at_level(logging.WARNING, logger="dreambooth_sweep.checkpoints"):
        found = discover(tmp_path)
    assert _steps(found) == [10]
    assert [p.name for p, _ in found.skipped] == ["subject-000002.safetensors"]
    assert "subject-000002.safetensors" in caplog.text and "not JSON" in caplog.text


def test_half_written_files_wait_then_count_as_truncated(tmp_path: Path) -> None:
    full = fake_kohya(tmp_path / "subject-000001.safetensors", metadata=kohya_metadata(10, 1, 2, 2))
    data = full.read_bytes()
    half = tmp_path / "subject-000002.safetensors"
    half.write_bytes(data[: len(data) - 100])  # header complete, tensors not yet
    (tmp_path / "subject-000003.safetensors.tmp").write_bytes(data)
    found = discover(tmp_path, incomplete_s=60)
    assert _steps(found) == [10]
    assert sorted(p.name for p in found.pending) == [
        "subject-000002.safetensors",
        "subject-000003.safetensors.tmp",
    ]
    assert not found.skipped
    # A file that stays short long after its last write was cut short: skipped, named.
    old = time.time() - 3600
    os.utime(half, (old, old))
    found = discover(tmp_path, incomplete_s=60)
    assert [p.name for p, _ in found.skipped] == ["subject-000002.safetensors"]
    assert "truncated" in found.skipped[0][1]
    # settle_s: a file modified just now is not read yet.
    assert _steps(discover(tmp_path, settle_s=30, strict=False)) == []


def test_empty_folder_and_nothing_recognised_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no checkpoints found in") as info:
        discover(tmp_path)
    assert "\n" not in str(info.value) and "kohya" in str(info.value) and "checkpoint-N" in str(info.value)
    (tmp_path / "notes.txt").write_text("hello")
    save_file({"something.else": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ConfigError, match="no checkpoints found"):
        discover(tmp_path)
    with pytest.raises(ConfigError, match="is not a folder"):
        discover(tmp_path / "missing")


def test_mixed_base_models_are_one_line_error(tmp_path: Path) -> None:
    fake_kohya(tmp_path / "a-000001.safetensors", context=768)
    fake_kohya(tmp_path / "b-000001.safetensors", metadata=kohya_metadata(10, 1, 2, 2, base="sdxl_base_v1-0"))
    with pytest.raises(ConfigError, match="mixes checkpoints of different base models") as info:
        discover(tmp_path)
    assert "SD-1.x" in str(info.value) and "SDXL" in str(info.value) and "\n" not in str(info.value)
