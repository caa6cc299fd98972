"""Per-image captions: kohya sidecar files, Hugging Face ``metadata.jsonl``, the identifier rule, and
the prompt templates of textual inversion.

Where a caption comes from (one source per image; two for the same image is an error):

* ``<stem>.caption`` beside the image (kohya's default extension), always;
* ``<stem>.txt`` beside the image, once any ``.txt`` in the folder tree matches an image (a folder of
  photos with a stray ``notes.txt`` and no sidecar captions still just names it as skipped);
* ``metadata.jsonl`` (Hugging Face imagefolder): one JSON object per line with ``file_name`` (relative
  to the metadata file's folder) and ``text``; it may sit in any folder of the tree.

The identifier rule (:func:`with_identifier`) makes every caption name the subject the way the
instance prompt does, so the identifier is learnt from every image, not only the uncaptioned ones.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from dreambooth_sweep.errors import ConfigError

__all__ = [
    "CAPTION_SUFFIXES",
    "METADATA_FILE",
    "TI_TEMPLATES",
    "read_caption_file",
    "read_metadata",
    "with_identifier",
]

CAPTION_SUFFIXES = (".txt", ".caption")
METADATA_FILE = "metadata.jsonl"

# Prompt templates for textual inversion (method.ti_templates), in the spirit of the ImageNet prompt
# lists that textual-inversion trainers use; {} is the new token. Our own wording.
TI_TEMPLATES: dict[str, tuple[str, ...]] = {
    "object": (
        "a photo of a {}",
        "a close-up photo of a {}",
        "a cropped photo of the {}",
        "a bright photo of a {}",
        "a dark photo of the {}",
        "a blurry photo of a {}",
        "a photo of a small {}",
        "a photo of a large {}",
        "a good photo of the {}",
        "a photo of one {}",
        "a rendition of a {}",
        "a photo of the clean {}",
        "a photo of a weird {}",
        "a picture of my {}",
        "the {} in a photo",
        "a low-resolution photo of the {}",
    ),
    "style": (
        "a painting in the style of {}",
        "an artwork in the style of {}",
        "a picture in the style of {}",
        "a rendering in the style of {}",
        "a sketch in the style of {}",
        "a cropped painting in the style of {}",
        "a dark painting in the style of {}",
        "a bright painting in the style of {}",
        "a large painting in the style of {}",
        "a small painting in the style of {}",
        "a detailed illustration in the style of {}",
        "a nice painting in the style of {}",
    ),
}


def read_caption_file(path: Path) -> str:
    """A sidecar caption, whitespace-normalised (kohya captions often end with a newline).

    Raises:
        ConfigError: the file is empty or not UTF-8 text.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"caption file {path} is not UTF-8 text ({exc.reason}): save it as UTF-8") from exc
    text = " ".join(text.split())
    if not text:
        raise ConfigError(
            f"caption file {path} is empty: write the caption, or delete the file "
            "(the image then uses data.instance_prompt)"
        )
    return text


def read_metadata(path: Path) -> dict[Path, tuple[str, int]]:
    """``metadata.jsonl`` as {image path: (caption, line number)}.

    Raises:
        ConfigError: naming the file and line: not JSON, no string ``file_name``/``text``, an empty
            text, a file that does not exist, a file listed twice.
    """
    out: dict[Path, tuple[str, int]] = {}
    where = str(path)
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{where} line {number} is not valid JSON ({exc.msg}): write one object per line, "
                'e.g. {"file_name": "a.jpg", "text": "a photo of sks dog"}'
            ) from exc
        if not (
            isinstance(record, dict)
            and isinstance(record.get("file_name"), str)
            and isinstance(record.get("text"), str)
        ):
            raise ConfigError(
                f'{where} line {number} needs string fields "file_name" and "text": '
                'e.g. {"file_name": "a.jpg", "text": "a photo of sks dog"}'
            )
        image = (path.parent / record["file_name"]).resolve()
        text = " ".join(record["text"].split())
        if not text:
            raise ConfigError(
                f'{where} line {number} has an empty "text" for {record["file_name"]}: '
                "write the caption or delete the line (the image then uses data.instance_prompt)"
            )
        if not image.is_file():
            raise ConfigError(
                f"{where} line {number} names {record['file_name']!r}, which does not exist: "
                "fix the file name (relative to the metadata file) or delete the line"
            )
        if image in out:
            raise ConfigError(
                f"{where} line {number} repeats {record['file_name']!r} (first on line {out[image][1]}): "
                "keep one caption per image"
            )
        out[image] = (text, number)
    return out


def _word(text: str) -> str:
    # A whole word: not inside another word ("sks" is not found in "asksa").
    return rf"(?<![\w<]){re.escape(text)}(?![\w>])" if text[:1].isalnum() else re.escape(text)


def with_identifier(caption: str, identifier: str, class_noun: str, *, insert: bool = True) -> str:
    """The caption as training sees it.

    ``{V}`` becomes the identifier and ``{C}`` the class noun (as in eval prompts). With ``insert`` a
    caption that still does not name the identifier (a whole word, any case) gets it: before the first
    whole-word occurrence of the class noun ("a dog on grass" → "a sks dog on grass"), else as a
    kohya-style trigger prefix ("on the grass" → "sks dog, on the grass").
    """
    text = caption.replace("{V}", identifier).replace("{C}", class_noun)
    if not insert or re.search(_word(identifier), text, flags=re.IGNORECASE):
        return text
    if class_noun:
        match = re.search(_word(class_noun), text, flags=re.IGNORECASE)
        if match:
            return f"{text[: match.start()]}{identifier} {text[match.start() :]}"
    return f"{identifier} {class_noun}, {text}" if class_noun else f"{identifier}, {text}"
