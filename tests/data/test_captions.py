"""Folders as people bring them: captions (kohya sidecars, metadata.jsonl), the identifier rule,
repeat folders, several folders, subfolders, caption dropout and textual-inversion templates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from dreambooth_sweep import data
from dreambooth_sweep.config import ConfigError


def _photo(path: Path, colour=(200, 30, 30), size=(48, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _cfg(folder: Path, **kw):
    base = {
        "instance_dir": str(folder),
        "instance_dirs": [],
        "identifier": "sks",
        "class_noun": "dog",
        "instance_prompt": "a photo of sks dog",
        "resolution": 32,
        "max_images": None,
        "repeats": 1,
        "captions": True,
        "insert_identifier": True,
        "mask_loss_weight": None,
    }
    return OmegaConf.create({**base, **kw})


class _Tok:
    model_max_length = 8

    def __call__(self, prompt, **kw):
        class Out:
            input_ids = torch.tensor([[len(prompt)] * 8])

        return Out()


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("a dog on the grass", "a sks dog on the grass"),  # before the first class noun
        ("A Dog and a dog", "A sks Dog and a dog"),
        ("sks dog, running", "sks dog, running"),  # already there: unchanged
        ("SKS dog", "SKS dog"),  # any case counts
        ("on the beach at dusk", "sks dog, on the beach at dusk"),  # no class noun: a trigger prefix
        ("hotdogs on a plate", "sks dog, hotdogs on a plate"),  # whole words only
        ("a {V} {C} in snow", "a sks dog in snow"),  # placeholders, as in eval prompts
    ],
)
def test_identifier_rule(caption: str, expected: str) -> None:
    assert data.with_identifier(caption, "sks", "dog") == expected


def test_identifier_rule_can_be_turned_off_and_handles_bracket_tokens() -> None:
    assert data.with_identifier("a dog", "sks", "dog", insert=False) == "a dog"
    assert data.with_identifier("a dog", "<sks>", "dog") == "a <sks> dog"
    assert data.with_identifier("a <sks> dog", "<sks>", "dog") == "a <sks> dog"


def test_sidecar_captions_repeat_folders_and_subfolders(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    _photo(root / "a.jpg")
    (root / "a.txt").write_text("a dog on a sofa\n")
    _photo(root / "b.png")
    (root / "b.caption").write_text("sks dog, close-up")
    _photo(root / "c.png")  # no caption: the instance prompt
    _photo(root / "10_sks dog" / "d.png")  # kohya repeats; the folder name is its caption
    _photo(root / "10_sks dog" / "e.png")
    (root / "10_sks dog" / "e.txt").write_text("a dog in the snow")
    _photo(root / "more" / "deeper" / "f.png")  # taken from any depth
    _photo(root / ".hidden" / "g.png")  # hidden folders are not
    with pytest.warns(UserWarning, match=r"2 of 6 photos have no caption.*c\.png, f\.png"):
        got = data.load_instance_set(_cfg(root, repeats=2))
    table = {i.path.relative_to(root).as_posix(): (i.caption, i.repeats) for i in got}
    assert table == {
        "10_sks dog/d.png": ("sks dog", 10),
        "10_sks dog/e.png": ("a sks dog in the snow", 10),
        "a.jpg": ("a sks dog on a sofa", 2),
        "b.png": ("sks dog, close-up", 2),
        "c.png": (None, 2),
        "more/deeper/f.png": (None, 2),
    }
    dataset = data.DreamBoothDataset(got, "a photo of sks dog", _Tok(), 32)
    assert len(dataset) == 10 + 10 + 2 + 2 + 2 + 2
    assert {dataset.prompt(i) for i in range(len(dataset))} == {
        "sks dog",
        "a sks dog in the snow",
        "a sks dog on a sofa",
        "sks dog, close-up",
        "a photo of sks dog",
    }


def test_metadata_jsonl_and_several_folders_with_max_images(tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    for name in ("x.png", "y.png"):
        _photo(first / "train" / name)
    (first / "train" / "metadata.jsonl").write_text(
        json.dumps({"file_name": "x.png", "text": "a dog"})
        + "\n\n"
        + json.dumps({"file_name": "y.png", "text": "{V} {C} asleep", "extra": 1})
        + "\n"
    )
    _photo(second / "z.png")
    got = data.load_instance_set(_cfg(first, instance_dirs=[str(second)]))
    assert [(i.path.name, i.caption) for i in got] == [
        ("x.png", "a sks dog"),
        ("y.png", "sks dog asleep"),
        ("z.png", None),
    ]
    assert [
        i.path.name for i in data.load_instance_set(_cfg(first, instance_dirs=[str(second)], max_images=2))
    ] == [
        "x.png",
        "y.png",
    ]
    assert [i.caption for i in data.load_instance_set(_cfg(first, captions=False))] == [None, None]


def test_a_stray_text_file_without_sidecar_captions_is_just_skipped(tmp_path: Path) -> None:
    _photo(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("shopping list")
    with pytest.warns(UserWarning, match=r"notes\.txt \(not an image\)"):
        (only,) = data.load_instance_set(_cfg(tmp_path))
    assert only.caption is None


@pytest.mark.parametrize(
    ("setup", "needle"),
    [
        ("orphan", r"caption file .*ghost\.txt has no image ghost\.jpg"),
        ("orphan_caption", r"caption file .*ghost\.caption has no image"),
        ("empty", r"caption file .*a\.txt is empty: write the caption, or delete the file"),
        ("two", r"a\.png has two captions \(a\.caption and a\.txt\): keep one"),
        ("bad_json", r"metadata\.jsonl line 2 is not valid JSON"),
        ("no_text", r'metadata\.jsonl line 1 needs string fields "file_name" and "text"'),
        ("missing_file", r"metadata\.jsonl line 1 names 'nope\.png', which does not exist"),
        ("zero_repeats", r"asks for 0 repeats: use 1_dog or more"),
    ],
)
def test_bad_captions_are_one_line_errors(tmp_path: Path, setup: str, needle: str) -> None:
    _photo(tmp_path / "a.png")
    _photo(tmp_path / "b.png")
    (tmp_path / "b.txt").write_text("a dog")
    meta = tmp_path / "metadata.jsonl"
    if setup == "orphan":
        (tmp_path / "ghost.txt").write_text("a dog")
    elif setup == "orphan_caption":
        (tmp_path / "ghost.caption").write_text("a dog")
    elif setup == "empty":
        (tmp_path / "a.txt").write_text("  \n")
    elif setup == "two":
        (tmp_path / "a.txt").write_text("one")
        (tmp_path / "a.caption").write_text("two")
    elif setup == "bad_json":
        meta.write_text('{"file_name": "a.png", "text": "x"}\n{"file_name": "a.png", text}\n')
    elif setup == "no_text":
        meta.write_text('{"file_name": "a.png", "caption": "x"}\n')
    elif setup == "missing_file":
        meta.write_text('{"file_name": "nope.png", "text": "x"}\n')
    elif setup == "zero_repeats":
        _photo(tmp_path / "0_dog" / "c.png")
    with pytest.raises(ConfigError, match=needle) as info:
        data.load_instance_set(_cfg(tmp_path))
    assert "\n" not in str(info.value)


def test_caption_dropout_is_deterministic_per_seed_epoch_index(tmp_path: Path) -> None:
    images = [Image.new("RGB", (32, 32), (i * 20, 0, 0)) for i in range(10)]

    def prompts(seed: int, epoch: int) -> list[str]:
        ds = data.DreamBoothDataset(images, "a photo of sks dog", _Tok(), 32, caption_dropout=0.3, seed=seed)
        ds.set_epoch(epoch)
        return [ds.prompt(i) for e in range(20) for i in range(10) if ds.set_epoch(e) is None]

    a = prompts(0, 0)
    assert a == prompts(0, 0) and a != prompts(1, 0)
    dropped = a.count("") / len(a)
    assert 0.2 < dropped < 0.4 and set(a) == {"", "a photo of sks dog"}
    plain = data.DreamBoothDataset(images, "p", _Tok(), 32, seed=0, random_flip=True)
    dropping = data.DreamBoothDataset(images, "p", _Tok(), 32, seed=0, random_flip=True, caption_dropout=0.5)
    # The prompt's randomness has its own stream: dropout never changes the pixels.
    assert all(torch.equal(plain[i]["instance_pixels"], dropping[i]["instance_pixels"]) for i in range(10))


def test_textual_inversion_templates(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("method=textual_inversion", "data.identifier='<sks>'", "method.ti_templates=object")
    instances = data.load_instance_set(cfg.data)
    templates = data.ti_templates(cfg, instances)
    assert templates[0] == "a photo of a <sks>" and all("<sks>" in t for t in templates)
    assert len(templates) == len(set(templates)) >= 12
    ds = data.DreamBoothDataset(instances, "a photo of <sks> toy", _Tok(), 32, templates=templates)
    drawn = {ds.prompt(i) for e in range(8) for i in range(len(ds)) if ds.set_epoch(e) is None}
    assert len(drawn) > 6 and drawn <= set(templates)
    _photo(tmp_path / "cap" / "a.png")
    (tmp_path / "cap" / "a.txt").write_text("a toy")
    captioned = make_cfg(
        "method=textual_inversion", "method.ti_templates=style", f"data.instance_dir={tmp_path / 'cap'}"
    )
    with pytest.raises(ConfigError, match="method.ti_templates=style but 1 photos have captions"):
        data.ti_templates(captioned, data.load_instance_set(captioned.data))
    from dreambooth_sweep.config import validate

    with pytest.raises(ConfigError, match="is for method=textual_inversion, not dreambooth"):
        validate(make_cfg("method.ti_templates=object"))


def test_textual_inversion_trains_on_templates(make_cfg, monkeypatch) -> None:
    from dreambooth_sweep.train import train

    drawn: list[str] = []
    real = data.DreamBoothDataset.prompt
    monkeypatch.setattr(
        data.DreamBoothDataset, "prompt", lambda self, i: drawn.append(real(self, i)) or drawn[-1]
    )
    cfg = make_cfg(
        "method=textual_inversion",
        "data.identifier='<sks>'",
        "method.ti_templates=object",
        "train.batch_size=3",
        "train.max_steps=2",
        "train.save_final=false",
    )
    assert train(cfg)["final_step"] == 2
    assert len(drawn) == 6 and set(drawn) <= {t.format("<sks>") for t in data.TI_TEMPLATES["object"]}
    assert len(set(drawn)) > 1
