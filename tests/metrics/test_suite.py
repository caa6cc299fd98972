"""MetricSuite on tiny random backbones (built offline once per session, CPU): every metric against
the arithmetic it is defined by, names that follow the backbone, the protocol record."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from metric_images import ATOL, noise, pattern, tiny_folder

from dreambooth_sweep import metrics as M
from dreambooth_sweep.config import ConfigError, load_config


def _config(metrics=M.METRICS, dino="tiny", clip="tiny", preprocess="dino_eval") -> SimpleNamespace:
    return SimpleNamespace(
        metrics=list(metrics), dino_model=dino, clip_model=clip, dino_preprocess=preprocess
    )


def test_clip_t_prompt_removes_identifier() -> None:
    assert M.clip_t_prompt("a sks dog in the jungle", "sks") == "a dog in the jungle"
    assert M.clip_t_prompt("sks dog", "sks") == "dog"
    assert M.clip_t_prompt("a photo of  aawxbc  figurine ", "aawxbc") == "a photo of figurine"
    assert M.clip_t_prompt("a <cat-toy> on the beach", "<cat-toy>") == "a on the beach"
    assert M.clip_t_prompt("a SKS dog, wet", "sks") == "a dog, wet"
    assert M.clip_t_prompt("a sksdog", "sks") == "a sksdog"  # whole words only
    assert M.clip_t_prompt("a dog", None) == "a dog"


def test_similarity_helpers() -> None:
    x = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=-1)
    assert M.mean_cosine(x[:1], x[:1]) == pytest.approx(1.0)
    assert M.mean_pairwise_cosine(x[:2]) == pytest.approx(0.0)
    assert M.mean_pairwise_cosine(x[:1]) is None
    torch.testing.assert_close(M.nearest_cosine(x[:2], x, exclude_self=False), torch.ones(2))
    torch.testing.assert_close(
        M.nearest_cosine(x, x, exclude_self=True), torch.tensor([0.7071, 0.7071, 0.7071]), atol=1e-4, rtol=0
    )
    assert M.diversity([x[:2], x[2:]]) == pytest.approx(1.0)  # the single-row group does not count
    assert M.diversity([x[2:]]) is None


def test_suite_computes_every_metric_from_its_definition(cache_dir: Path) -> None:
    real = [pattern(10), pattern(11), pattern(12)]
    config = load_config(
        ["eval.clip_model=tiny", "eval.dino_model=tiny"]
    ).eval  # the real YAML, all six metrics
    suite = M.MetricSuite(config, real, cache_dir=cache_dir)
    assert suite.dino is M.load_encoder("dino", "tiny", preprocess="dino_eval", cache_dir=cache_dir)
    samples = {"a sks dog in the jungle": [noise(1), noise(2)], "a red sks dog": [pattern(10), noise(3)]}
    class_samples = [noise(5), noise(6)]
    out = suite.compute(samples, class_samples, identifier="sks")
    assert list(out) == [
        "eval/dino",
        "eval/clip_i",
        "eval/clip_t",
        "eval/pres",
        "eval/div_dino",
        "eval/mem_mean",
        "eval/mem_max",
        "eval/mem_ceiling",
    ]
    flat = [img for images in samples.values() for img in images]
    dino, clip = suite.dino, suite.clip
    gen, ref = dino.embed_images(flat), dino.embed_images(real)
    assert out["eval/dino"] == pytest.approx(float((gen @ ref.T).mean()), abs=ATOL)
    gen_c = clip.embed_images(flat)
    assert out["eval/clip_i"] == pytest.approx(float((gen_c @ clip.embed_images(real).T).mean()), abs=ATOL)
    texts = clip.embed_texts(["a dog in the jungle", "a dog in the jungle", "a red dog", "a red dog"])
    assert out["eval/clip_t"] == pytest.approx(float((gen_c * texts).sum(-1).mean()), abs=ATOL)
    assert out["eval/pres"] == pytest.approx(
        float((dino.embed_images(class_samples) @ ref.T).mean()), abs=ATOL
    )
    div = 1 - (float(gen[0] @ gen[1]) + float(gen[2] @ gen[3])) / 2  # pairs within a prompt only
    assert out["eval/div_dino"] == pytest.approx(div, abs=ATOL)
    nearest = (gen @ ref.T).max(dim=1).values
    assert out["eval/mem_max"] == pytest.approx(1.0, abs=ATOL)  # pattern(10) is a training image
    assert out["eval/mem_mean"] == pytest.approx(float(nearest.mean()), abs=ATOL)
    sims = (ref @ ref.T).fill_diagonal_(-2)
    assert out["eval/mem_ceiling"] == pytest.approx(float(sims.max(dim=1).values.mean()), abs=ATOL)
    # No class samples: PRES is skipped, the rest stays.
    assert "eval/pres" not in suite.compute(samples, [], identifier="sks")


def test_constructed_cases(cache_dir: Path) -> None:
    a, b, c = noise(1), pattern(2), pattern(3)
    suite = M.MetricSuite(_config(["dino", "pres", "div", "mem"]), [a], cache_dir=cache_dir)
    out = suite.compute({"p": [a, a, a]}, [a, a])
    assert out["eval/dino"] == pytest.approx(1.0, abs=ATOL)  # identical sets score one
    assert out["eval/pres"] == pytest.approx(1.0, abs=ATOL)
    assert out["eval/div_dino"] == pytest.approx(0.0, abs=ATOL)  # one image repeated: no diversity
    assert "eval/mem_ceiling" not in out  # undefined with one training image
    # Pairs across prompts do not count: two prompts of repeated (different) images still give 0.
    assert suite.compute({"p": [a, a], "q": [b, b]})["eval/div_dino"] == pytest.approx(0.0, abs=ATOL)
    assert suite.compute({"p": [a, b, c]})["eval/div_dino"] > 1e-4
    assert "eval/div_dino" not in suite.compute({"p": [a], "q": [b]})  # no prompt with two images
    assert suite.compute({"p": [b, c]})["eval/dino"] < 1 - 1e-4


def test_clip_t_matches_transformers_reference(cache_dir: Path) -> None:
    from transformers import CLIPProcessor

    suite = M.MetricSuite(_config(["clip_t"]), [], cache_dir=cache_dir)
    images = [noise(0), noise(1, (64, 48)), pattern(2)]
    prompts = ["a sks dog in the jungle", "a red sks dog", "a sks dog on the beach"]
    processor = CLIPProcessor.from_pretrained(suite.clip.source)  # transformers' tokenizer + PIL processor
    inputs = processor(
        text=[p.replace("sks ", "") for p in prompts], images=images, return_tensors="pt", padding=True
    )
    with torch.no_grad():
        image_emb = suite.clip.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        text_emb = suite.clip.model.get_text_features(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        ).pooler_output
    expected = float(torch.nn.functional.cosine_similarity(image_emb, text_emb, dim=-1).mean())
    got = suite.compute({p: [im] for p, im in zip(prompts, images, strict=True)}, identifier="sks")
    assert got["eval/clip_t"] == pytest.approx(expected, abs=ATOL)


class _TensorFeatures(torch.nn.Module):
    """torchmetrics 1.9 expects tensors from ``get_*_features``, transformers 5 returns output objects
    (Lightning-AI/torchmetrics#3407, fixed after 1.9.0): unwrap them, change nothing else."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.inner = model
        self.config = model.config

    def get_image_features(self, *args, **kwargs) -> torch.Tensor:
        return self.inner.get_image_features(*args, **kwargs).pooler_output

    def get_text_features(self, *args, **kwargs) -> torch.Tensor:
        return self.inner.get_text_features(*args, **kwargs).pooler_output


def test_clip_t_agrees_with_torchmetrics_clipscore(cache_dir: Path) -> None:
    clip_score = pytest.importorskip("torchmetrics.functional.multimodal.clip_score")
    from transformers import CLIPProcessor

    suite = M.MetricSuite(_config(["clip_t"]), [], cache_dir=cache_dir)
    processor = CLIPProcessor.from_pretrained(suite.clip.source)
    model = _TensorFeatures(suite.clip.model)

    def ours(images, texts) -> float:
        groups: dict[str, list] = {}
        for image, text in zip(images, texts, strict=True):
            groups.setdefault(text, []).append(image)
        return suite.compute(groups)["eval/clip_t"]

    # CLIPScore clamps its mean at 0: keep (image, prompt) pairs with a positive cosine so the comparison
    # is not trivially 0 == 0. The tiny random CLIP scores most pairs negative; a grid holds a few.
    images = [noise(i) for i in range(4)] + [pattern(i) for i in range(6)]
    texts = ["a red dog", "a wet toy", "a photo of a dog", "a shiny cube shaped toy"]
    pairs = [(img, text) for img in images for text in texts if ours([img], [text]) > 0]
    assert pairs, "no pair with a positive cosine among the candidates"
    images, texts = [img for img, _ in pairs], [text for _, text in pairs]
    as_tensors = [torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous() for img in images]
    reference = clip_score.clip_score(as_tensors, texts, model_name_or_path=lambda: (model, processor))
    assert float(reference) > 0
    assert 100 * ours(images, texts) == pytest.approx(float(reference), abs=1e-3)


def test_names_and_objective_follow_the_backbone(cache_dir: Path) -> None:
    config = _config(dino=tiny_folder("dinov2", cache_dir), clip=tiny_folder("siglip", cache_dir))
    real = [pattern(1), pattern(2)]
    suite = M.MetricSuite(config, real, cache_dir=cache_dir)
    out = suite.compute({"a sks dog": [noise(1), noise(2)]}, [noise(3)], identifier="sks")
    assert set(out) == {
        "eval/dinov2_w32p8",
        "eval/pres_dinov2_w32p8",
        "eval/div_dinov2_w32p8",
        "eval/mem_mean_dinov2_w32p8",
        "eval/mem_max_dinov2_w32p8",
        "eval/mem_ceiling_dinov2_w32p8",
        "eval/clip_i_siglip_w32p8_32",
        "eval/clip_t_siglip_w32p8_32",
    }
    paper = load_config().eval.objective  # eval/dino, eval/clip_t: the paper's names
    objective = suite.objective(paper)
    assert (objective.metric, objective.prompt_metric) == ("eval/dinov2_w32p8", "eval/clip_t_siglip_w32p8_32")
    assert M.sweet_spot_score(out, out, objective) == pytest.approx(out["eval/dinov2_w32p8"])
    explicit = suite.objective(SimpleNamespace(**{**paper, "metric": "eval/clip_i_siglip_w32p8_32"}))
    assert explicit.metric == "eval/clip_i_siglip_w32p8_32"
    protocol = suite.protocol()
    assert protocol["dino"]["family"] == "dinov2" and protocol["dino"]["preprocess"] == "dino_eval"
    assert protocol["dino"]["processor"]["image_mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert protocol["clip"]["family"] == "siglip" and protocol["clip"]["text"]["padding"] == "max_length"
    assert protocol["metric_names"]["eval/dino"] == "eval/dinov2_w32p8"
    assert suite.settings["dino_model"] == config.dino_model  # absolute folder, reloadable later


def test_suite_loads_only_what_it_needs_and_embeds_real_images_once(cache_dir: Path, monkeypatch) -> None:
    dino = M.load_encoder("dino", "tiny", preprocess="dino_eval", cache_dir=cache_dir)
    embedded: list[int] = []
    original = dino.embed_images

    def counting(images, batch_size=32):
        embedded.append(len(images))
        return original(images, batch_size)

    monkeypatch.setattr(dino, "embed_images", counting)
    suite = M.MetricSuite(
        _config(["dino"], clip="not-loaded/at-all"), [pattern(1), pattern(2)], cache_dir=cache_dir
    )
    assert suite.clip is None  # CLIP is never loaded for DINO-only metrics
    assert embedded == [2]
    out1 = suite.compute({"p": [noise(1)]})
    out2 = suite.compute({"p": [noise(1)]})
    assert embedded == [2, 1, 1]  # the real photos were embedded once, at construction
    assert list(out1) == ["eval/dino"] and out1 == out2


def test_suite_rejects_bad_setups(cache_dir: Path) -> None:
    with pytest.raises(ConfigError, match="unknown metric 'lpips'"):
        M.MetricSuite(_config(["dino", "lpips"]), [noise(0)], cache_dir=cache_dir)
    with pytest.raises(ConfigError, match="need the subject's real images"):
        M.MetricSuite(_config(["dino"]), [], cache_dir=cache_dir)
    # DIV and CLIP-T need no real photos.
    suite = M.MetricSuite(_config(["div", "clip_t"]), [], cache_dir=cache_dir)
    assert set(suite.compute({"a sks dog": [noise(0), noise(1)]}, identifier="sks")) == {
        "eval/clip_t",
        "eval/div_dino",
    }
