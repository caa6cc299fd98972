"""Tokenizer files and text-encoder configs for the tiny random models, written offline.

The CLIP tokenizer files (``vocab.json``/``merges.txt``) are a byte-level BPE over all 256 byte
symbols, so any text tokenizes, plus whole-word merges for the words prompts use. Shared by the tiny
SD build (:mod:`dreambooth_sweep.tiny`) and the tiny SDXL/SD3/FLUX builds
(:mod:`dreambooth_sweep.families.tiny`), so neither imports the other for it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["text_config", "write_clip_tokenizer"]

# Words that get whole-word tokens; everything else falls back to byte-level pieces.
_WORDS = """a an the of in on with and photo picture image sks aawxbc dog cat toy figurine person man woman
face red blue green purple pink white black yellow shiny wet cube shaped jungle snow beach cobblestone
street top fabric wooden floor city mountain house background rug forest wheat field tree autumn leaves
eiffel tower floating water ocean milk grass sunflowers around it mirror sidewalk crowded dirt road
wearing hat santa rainbow scarf monocle chef outfit firefighter police glasses shirt wizard robot pig
head potato mr kramer plush object subject style high quality""".split()  # noqa: SIM905 (a word list reads better as text)


def _bytes_to_unicode() -> dict[int, str]:
    """Byte → printable character table used by GPT-2/CLIP byte-level BPE."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def write_clip_tokenizer(directory: str | os.PathLike[str], model_max_length: int = 77) -> int:
    """Write a CLIP tokenizer (vocab.json, merges.txt, configs) into ``directory``.

    Returns:
        The vocabulary size, to size the text encoder's embedding table.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    byte_chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for ch in byte_chars:
        vocab[ch] = len(vocab)
    for ch in byte_chars:
        vocab[ch + "</w>"] = len(vocab)
    merges: list[str] = []
    for word in _WORDS:
        symbols = list(word)
        symbols[-1] += "</w>"
        while len(symbols) > 1:
            pair = f"{symbols[0]} {symbols[1]}"
            merged = symbols[0] + symbols[1]
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append(pair)
            symbols = [merged, *symbols[2:]]
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    specials = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (directory / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    return len(vocab)


def text_config(vocab_size: int, table_size: int | None = None, **sizes: Any):
    """A CLIP text config for this module's tokenizer (its last two ids are BOS and EOS): the tiny
    2-layer encoder unless ``sizes`` say otherwise; ``table_size`` rows of token embeddings (default:
    one per token)."""
    from transformers import CLIPTextConfig

    tiny = dict(
        vocab_size=table_size or vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=32,
    )
    ids = dict(bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    return CLIPTextConfig(**{**tiny, **sizes, **ids})
