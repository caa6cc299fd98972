"""Find the checkpoints another trainer (or this project's) wrote into a folder, and their steps.

Recognised, by content first and name second:

* diffusers / SimpleTuner ``checkpoint-N/`` folders: a LoRA (``pytorch_lora_weights.safetensors``),
  full weights (``unet/`` or ``transformer/`` [+ ``text_encoder/``]), a textual-inversion embedding
  (``learned_embeds.safetensors``) or accelerate's training state (``model.safetensors`` holding the
  UNet); pipeline folders (``model_index.json``); this project's ``<run>/checkpoints/checkpoint-N`` and
  ``<run>/model``;
* LoRA files under kohya / A1111 key names (``lora_unet_…``, ``lora_te_…``: kohya's sd-scripts,
  OneTrainer, ai-toolkit on SD) or diffusers/peft names (``unet.….lora_A.weight``);
* single-file full checkpoints (``model.diffusion_model.…`` keys, ``.ckpt``) for ``from_single_file``;
* embeddings: A1111 ``.pt`` (``string_to_param``) and ``.safetensors`` (``emb_params``), SDXL
  (``clip_l``/``clip_g``), diffusers ``{token: vectors}`` (``learned_embeds[-steps-N].safetensors``).

**Steps.** Metadata first: kohya ``ss_steps``/``ss_epoch``, ai-toolkit ``training_info``, the ``step``
of an A1111 embedding, this project's ``trainer_state.json`` (and ``metrics.json`` beside a run's
``model/``). Then the name: ``checkpoint-500``, kohya ``name-step00000500`` (step) and
``name-000004`` (epoch), ai-toolkit ``name_000000500``, OneTrainer ``…-save-<step>-<epoch>-<epoch
step>``, diffusers ``learned_embeds-steps-500``, A1111 ``name-500``. A final un-numbered file (kohya's
``name.safetensors``, a run's ``model/``) is the last step: its metadata step, else the last numbered
step plus the save interval. With epochs only (kohya without metadata) the epochs are the step axis.

**Runs.** Checkpoints are grouped by the folder of their run (``checkpoints/``, ``save/``, ``model/``
and ``embeddings/`` levels do not count) and the file name's prefix; several groups = a folder of runs.

**Incomplete and corrupt files.** A safetensors file is complete when it ends exactly where its last
tensor does; anything younger than ``settle_s`` or short of its header's length (and younger than
``incomplete_s``) is *pending* — skipped now, picked up by a later scan. A file that stays unreadable
is skipped with a warning naming it; the rest is scored.

Why one piece (~580 lines): every trainer's naming and metadata rules feed one ordering decision
(step from metadata, then the name, then the last un-numbered file); they read best side by side.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreambooth_sweep.checkpoints import fit
from dreambooth_sweep.checkpoints.headers import Corrupt, Header, Incomplete, read_header, read_pickle_header
from dreambooth_sweep.errors import ConfigError

__all__ = ["LOOKED_FOR", "Checkpoint", "Discovery", "discover"]

log = logging.getLogger("dreambooth_sweep.checkpoints")

LOOKED_FOR = (
    "checkpoint-N/ folders (diffusers, SimpleTuner, this project), pipeline folders (model_index.json), "
    "LoRA .safetensors (kohya, ai-toolkit, OneTrainer, diffusers), single-file checkpoints, "
    "textual-inversion embeddings (.pt, .safetensors, learned_embeds)"
)
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".bin", ".ckpt", ".pth")
LORA_FILES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")
EMBEDDING_FILES = ("learned_embeds.safetensors", "learned_embeds.bin")
KOHYA_COPY = "pytorch_lora_weights_kohya.safetensors"  # this project's export beside the diffusers file
# Folders that are never checkpoints and hold none (samples, logs, training state of other tools).
SKIP_DIRS = {
    "samples", "sample", "logs", "log", "tensorboard", ".hydra", "report", "cache", "wandb", "mlruns",
    "mlartifacts", "backup", "onetrainer_config", "config", "class", "tokenizer", "tokenizer_2", "vae",
    "scheduler",
}  # fmt: skip
# Folder levels between a run and its checkpoints.
INNER_DIRS = {"checkpoints", "save", "model", "models", "embeddings", "output", "outputs"}
NON_WEIGHTS = re.compile(r"^(optimizer|scheduler|scaler|noise_generator|random_states_\d+|training_args)")
MAX_DEPTH = 4
_CHECKPOINT_DIR = re.compile(r"^(checkpoint-\d+|checkpoints)$")


@dataclass
class Checkpoint:
    """One checkpoint: where it is, what it changes, and which step of which run it is."""

    path: Path  # the file or folder the user sees
    kind: str  # lora | full | embedding
    format: str  # kohya-lora, diffusers-lora, diffusers-unet, pipeline, single-file, accelerate, a1111, ...
    parts: dict[
        str, Path
    ]  # lora | unet | transformer | text_encoder | single_file | embedding -> file/folder
    step: int | None
    epoch: int | None = None
    final: bool = False  # un-numbered: the run's last save
    step_source: str = ""
    source: str = ""  # which trainer wrote it, as far as the file says
    family: str | None = None  # the base family metadata or shapes point to
    context: int | None = None  # cross-attention context width the weights expect
    embed_dim: int | None = None  # width of an embedding's vectors
    token: str | None = None  # an embedding's token as stored
    metadata: dict[str, str] = field(default_factory=dict)
    run: str = ""  # the run it belongs to ("" when the folder holds one run)
    prefix: str = ""  # file-name stem without its step number (groups a run's files)
    folder: Path | None = None  # the run's folder
    signature: tuple[int, float] = (0, 0.0)  # (bytes, newest mtime): a changed file is scored again

    @property
    def label(self) -> str:
        return f"{self.run}/{self.path.name}" if self.run else self.path.name


@dataclass
class Discovery:
    """What a scan of a folder found."""

    root: Path
    checkpoints: list[Checkpoint]  # ordered by run, then step
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # corrupt / unusable, with the reason
    pending: list[Path] = field(default_factory=list)  # still being written
    ignored: list[Path] = field(default_factory=list)  # weight files that are no checkpoint (optimizer, ...)

    def runs(self) -> dict[str, list[Checkpoint]]:
        out: dict[str, list[Checkpoint]] = {}
        for ckpt in self.checkpoints:
            out.setdefault(ckpt.run, []).append(ckpt)
        return out


class _Pending(Exception):
    pass


# ----------------------------------------------------------------------------- reading one candidate


def _signature(paths: Iterable[Path]) -> tuple[int, float]:
    size, newest = 0, 0.0
    for p in paths:
        files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
        for f in files:
            st = f.stat()
            size, newest = size + st.st_size, max(newest, st.st_mtime)
    return size, newest


def _header(path: Path, settle_s: float, incomplete_s: float, now: float) -> tuple[Header, Any]:
    """Header of a weight file; raises _Pending while it may still be written, Corrupt when unreadable."""
    age = now - path.stat().st_mtime
    if age < settle_s:
        raise _Pending
    try:
        if path.suffix == ".safetensors":
            return read_header(path), None
        if path.suffix == ".ckpt":
            return Header({}), None  # pickled whole checkpoints are loaded only when scored
        return read_pickle_header(path)
    except Incomplete as exc:
        if age < incomplete_s:
            raise _Pending from exc
        raise Corrupt(f"truncated: {exc}") from exc


def _int(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _meta_step(meta: dict[str, str]) -> tuple[int | None, int | None, str]:
    """(step, epoch, where from) of a trainer's metadata."""
    if "ss_steps" in meta or "ss_epoch" in meta:
        return _int(meta.get("ss_steps")), _int(meta.get("ss_epoch")), "metadata ss_steps"
    info = meta.get("training_info")
    if info:
        try:
            parsed = json.loads(info)
        except ValueError:
            parsed = {}
        if isinstance(parsed, dict) and ("step" in parsed or "epoch" in parsed):
            return _int(parsed.get("step")), _int(parsed.get("epoch")), "metadata training_info"
    if "step" in meta:  # A1111 embeddings
        return _int(meta["step"]), None, "embedding's step"
    return None, None, ""


_NAME_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^(?P<prefix>.*)-save-(?P<step>\d+)-(?P<epoch>\d+)-\d+$"), "name (OneTrainer)"),
    (re.compile(r"^(?P<prefix>.*?)-?step(?P<step>\d+)$"), "name (step)"),
    (re.compile(r"^(?P<prefix>learned_embeds)-steps?-(?P<step>\d+)$"), "name (diffusers)"),
    (re.compile(r"^(?P<prefix>checkpoint)-(?P<step>\d+)$"), "name (checkpoint-N)"),
    (re.compile(r"^(?P<prefix>.+)-(?P<epoch>\d{6})$"), "name (kohya epoch)"),
    (re.compile(r"^(?P<prefix>.+?)[_-](?P<step>\d+)$"), "name"),
]


def _name_step(stem: str) -> tuple[str, int | None, int | None, str]:
    """(prefix, step, epoch, where from) read from a file or folder name."""
    for pattern, source in _NAME_PATTERNS:
        m = pattern.match(stem)
        if m:
            groups = m.groupdict()
            return groups["prefix"], _int(groups.get("step")), _int(groups.get("epoch")), source
    return stem, None, None, ""


def _keys_kind(header: Header) -> tuple[str, str] | None:
    """(kind, format) from the key names of one weight file; None: not a checkpoint."""
    keys = header.keys()
    if not keys:
        return None
    if any(
        k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_transformer_")) for k in keys
    ):
        return "lora", "kohya-lora"
    lora_names = ("lora_A", "lora_B", "lora.down", "lora.up", "lora_linear_layer", "_lora.down")
    if any(any(n in k for n in lora_names) for k in keys):
        return "lora", "diffusers-lora"
    if "emb_params" in keys or any(k.startswith("string_to_param") for k in keys):
        return "embedding", "a1111-embedding"
    if {"clip_l", "clip_g"} <= set(keys):
        return "embedding", "sdxl-embedding"
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return "full", "single-file"
    if any(k.startswith(("conv_in.", "down_blocks.", "time_embedding.")) for k in keys):
        return "full", "unet-weights"
    # FLUX (x_embedder, single_transformer_blocks) and SD3 (pos_embed, context_embedder) transformers
    if any(k.startswith(("x_embedder.", "single_transformer_blocks.", "pos_embed.")) for k in keys):
        return "full", "transformer-weights"
    if any(k.startswith(("text_model.", "embeddings.token_embedding")) for k in keys):
        return "full", "text-encoder-weights"
    if len(keys) <= 16 and all("." not in k and len(header.shapes[k]) in (1, 2) for k in keys):
        return "embedding", "diffusers-embedding"
    return None


def _embedding_info(header: Header, obj: Any) -> tuple[int | None, str | None]:
    """(vector width, stored token) of an embedding file."""
    shapes = header.shapes
    if "clip_l" in shapes:
        return shapes["clip_l"][-1], None
    if "emb_params" in shapes:
        return shapes["emb_params"][-1], None
    params = [k for k in shapes if k.startswith("string_to_param")]
    if params:
        name = header.metadata.get("name")
        return shapes[params[0]][-1], name
    token = next(iter(shapes))
    return shapes[token][-1], token


def _source(meta: dict[str, str], name: str) -> str:
    if any(k.startswith("ss_") for k in meta):
        return "kohya"
    if "training_info" in meta or "ai-toolkit" in meta.get("software", "") + meta.get("name", ""):
        return "ai-toolkit"
    if "-save-" in name:
        return "OneTrainer"
    return ""


def _file_checkpoint(path: Path, header: Header, obj: Any) -> Checkpoint | None:
    found = _keys_kind(header) if path.suffix != ".ckpt" else ("full", "single-file")
    if found is None:
        return None
    kind, fmt = found
    if fmt == "text-encoder-weights":
        return None  # a text encoder alone: only meaningful inside a training-state folder
    stem = path.name.removesuffix(path.suffix)
    prefix, step, epoch, step_source = _name_step(stem)
    m_step, m_epoch, m_source = _meta_step(header.metadata)
    if m_step is not None or m_epoch is not None:
        step, epoch, step_source = m_step, m_epoch if m_epoch is not None else epoch, m_source
    numbered = _name_step(stem)[1:3] != (None, None)
    role = {"lora": "lora", "embedding": "embedding"}.get(
        kind, {"single-file": "single_file", "transformer-weights": "transformer"}.get(fmt, "unet")
    )
    ckpt = Checkpoint(
        path=path,
        kind=kind,
        format=fmt,
        parts={role: path},
        step=step,
        epoch=epoch,
        final=not numbered,
        step_source=step_source,
        source=_source(header.metadata, path.name),
        metadata=header.metadata,
        prefix=""
        if stem in ("pytorch_lora_weights", "learned_embeds") or prefix == "learned_embeds"
        else prefix,
    )
    _shape_hints(ckpt, header, obj)
    return ckpt


def _shape_hints(ckpt: Checkpoint, header: Header, obj: Any) -> None:
    ckpt.family = fit.family_from_metadata(header.metadata) or fit.family_from_keys(
        header.keys(), header.shapes
    )
    if ckpt.kind == "embedding":
        ckpt.embed_dim, ckpt.token = _embedding_info(header, obj)
        if ckpt.family is None and ckpt.embed_dim in (768, 1024):
            ckpt.family = fit.CONTEXT_FAMILIES[ckpt.embed_dim]
    else:
        ckpt.context = fit.context_dim(header.shapes)


def _weights_file(folder: Path) -> Path | None:
    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.safetensors"))
    return found[0] if found else None


def _folder_step(folder: Path) -> tuple[int | None, str]:
    state = folder / "trainer_state.json"  # this project's checkpoints
    if state.is_file():
        try:
            return int(json.loads(state.read_text())["global_step"]), "trainer_state.json"
        except (OSError, ValueError, KeyError, TypeError):
            pass
    metrics = folder.parent / "metrics.json"  # a run's model/ folder: the run's last step
    if folder.name == "model" and metrics.is_file():
        try:
            return int(json.loads(metrics.read_text())["final_step"]), "the run's metrics.json"
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return None, ""


def _folder_checkpoint(folder: Path, read: Any) -> Checkpoint | None:
    """A folder that is one checkpoint (diffusers layouts, this project's), else None."""
    parts: dict[str, Path] = {}
    kind = fmt = ""
    header: Header | None = None
    obj = None
    lora = next((folder / n for n in LORA_FILES if (folder / n).is_file()), None)
    embedding = next((folder / n for n in EMBEDDING_FILES if (folder / n).is_file()), None)
    denoiser = next(
        (folder / n for n in ("unet", "transformer") if (folder / n / "config.json").is_file()), None
    )
    if (folder / "model_index.json").is_file() or denoiser is not None:
        if denoiser is None:
            return None
        weights = _weights_file(denoiser)
        if weights is None:
            raise Corrupt(f"{denoiser.name}/ holds no .safetensors weights")
        kind, fmt, header = (
            "full",
            "pipeline" if (folder / "model_index.json").is_file() else "diffusers-unet",
            read(weights),
        )
        parts[denoiser.name] = denoiser
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            if (folder / name / "config.json").is_file():
                parts[name] = folder / name
    elif lora is not None:
        kind, fmt, header = "lora", "diffusers-lora", read(lora)
        parts["lora"] = lora
    elif embedding is not None:
        (header, obj), kind, fmt = read(embedding, with_obj=True), "embedding", "diffusers-embedding"
        parts["embedding"] = embedding
    elif (folder / "model.safetensors").is_file() and any(
        (folder / n).exists() for n in ("optimizer.bin", "random_states_0.pkl", "trainer_state.json")
    ):  # accelerate's save_state: model.safetensors is the first prepared module
        for file in sorted(folder.glob("model*.safetensors")):
            h = read(file)
            found = _keys_kind(h)
            if any(".base_layer." in k for k in h.shapes):
                raise Corrupt(
                    "LoRA training state without pytorch_lora_weights.safetensors (the adapter scale "
                    "is not in it): score the run's model/ folder or newer checkpoints"
                )
            if found and found[1] in ("unet-weights", "transformer-weights"):
                parts["unet" if found[1] == "unet-weights" else "transformer"], header = file, h
            elif found and found[1] == "text-encoder-weights":
                parts["text_encoder"] = file
        if "unet" not in parts and "transformer" not in parts:
            raise Corrupt(
                "training state holds no UNet or transformer weights (textual inversion state has no token file)"
            )
        kind, fmt = "full", "accelerate"
    else:
        return None
    if embedding is not None and kind == "lora":
        parts["embedding"] = embedding  # ti_dreambooth with a LoRA second phase: both parts
    prefix, step, epoch, step_source = _name_step(folder.name)
    s, s_source = _folder_step(folder)
    if s is not None:
        step, step_source = s, s_source
    assert header is not None
    m_step, m_epoch, m_source = _meta_step(header.metadata)
    if step is None and (m_step is not None or m_epoch is not None):
        step, epoch, step_source = m_step, m_epoch, m_source
    ckpt = Checkpoint(
        path=folder,
        kind=kind,
        format=fmt,
        parts=parts,
        step=step,
        epoch=epoch,
        final=_name_step(folder.name)[1:3] == (None, None),
        step_source=step_source,
        source="diffusers",
        metadata=header.metadata,
        prefix="",
    )
    _shape_hints(ckpt, header, obj)
    return ckpt


# ----------------------------------------------------------------------------- the scan


def _run_folder(path: Path, root: Path) -> Path:
    folder = path.parent
    while folder != root and folder.name in INNER_DIRS and folder.parent != folder:
        folder = folder.parent
    return folder


def discover(
    root: str | Path,
    *,
    settle_s: float = 0.0,
    incomplete_s: float = 60.0,
    strict: bool = True,
    now: float | None = None,
) -> Discovery:
    """Scan ``root`` for checkpoints (see the module docstring).

    Args:
        root: the folder (a checkpoint folder itself works too).
        settle_s: files younger than this are pending (another trainer may still be writing them).
        incomplete_s: a file shorter than its header says is pending this long after its last write,
            then skipped as truncated.
        strict: raise :class:`ConfigError` when nothing is found or the base families differ.
        now: the time to compare modification times with (tests).

    Raises:
        ConfigError: (strict) no such folder, nothing recognised, or checkpoints of different bases.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(
            f"checkpoints.dir={str(root)!r} is not a folder: pass the folder your trainer saved into"
        )
    now = time.time() if now is None else now
    found = Discovery(root=root, checkpoints=[])

    def read(path: Path, with_obj: bool = False) -> Any:
        header, obj = _header(path, settle_s, incomplete_s, now)
        return (header, obj) if with_obj else header

    def visit_folder(folder: Path, depth: int) -> None:
        # A folder holding checkpoint-N/ folders (diffusers' output_dir) is a run, not one checkpoint:
        # the weights file beside them is the run's final save.
        container = any(p.is_dir() and _CHECKPOINT_DIR.match(p.name) for p in folder.iterdir())
        try:
            ckpt = None if container else _folder_checkpoint(folder, read)
        except _Pending:
            found.pending.append(folder)
            return
        except (Corrupt, OSError) as exc:
            found.skipped.append((folder, str(exc)))
            return
        if ckpt is not None:
            found.checkpoints.append(ckpt)
            return
        entries = sorted(folder.iterdir())
        names = {p.name for p in entries}
        for entry in entries:
            if entry.name.startswith(".") or entry.name.endswith((".tmp", ".part", ".incomplete")):
                if entry.suffix == ".tmp" or entry.name.endswith((".part", ".incomplete")):
                    found.pending.append(entry)  # a writer's temporary file / folder
                continue
            if entry.is_dir():
                if depth < MAX_DEPTH and entry.name not in SKIP_DIRS:
                    visit_folder(entry, depth + 1)
                continue
            if entry.suffix not in WEIGHT_SUFFIXES:
                continue
            if NON_WEIGHTS.match(entry.name) or (entry.name == KOHYA_COPY and LORA_FILES[0] in names):
                found.ignored.append(entry)
                continue
            try:
                header, obj = _header(entry, settle_s, incomplete_s, now)
                ckpt = _file_checkpoint(entry, header, obj)
            except _Pending:
                found.pending.append(entry)
                continue
            except (Corrupt, OSError) as exc:
                found.skipped.append((entry, str(exc)))
                continue
            if ckpt is None:
                found.ignored.append(entry)
            else:
                found.checkpoints.append(ckpt)

    visit_folder(root, 0)
    for path, reason in found.skipped:
        log.warning("skipped %s: %s", path, reason)
    for ckpt in found.checkpoints:
        ckpt.signature = _signature(ckpt.parts.values())
    _assign_runs(found)
    if strict:
        check(found)
    return found


def _assign_runs(found: Discovery) -> None:
    """Group into runs, give un-numbered finals their step, drop duplicate steps, order everything."""
    groups: dict[tuple[Path, str], list[Checkpoint]] = {}
    for ckpt in found.checkpoints:
        ckpt.folder = _run_folder(ckpt.path, found.root)
        groups.setdefault((ckpt.folder, ckpt.prefix), []).append(ckpt)
    per_folder: dict[Path, int] = {}
    for folder, _ in groups:
        per_folder[folder] = per_folder.get(folder, 0) + 1
    ordered: list[Checkpoint] = []
    for (folder, prefix), members in sorted(groups.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        run = (
            ""
            if len(groups) == 1
            else _run_name(folder, found.root, prefix if per_folder[folder] > 1 else "")
        )
        _fill_steps(members)
        members.sort(key=lambda c: (c.step, c.final, len(c.path.parts)))
        kept: list[Checkpoint] = []
        for ckpt in members:
            ckpt.run = run
            if kept and kept[-1].step == ckpt.step:
                log.info(
                    "%s is step %s like %s: scored once (%s)",
                    ckpt.path,
                    ckpt.step,
                    kept[-1].path,
                    kept[-1].path.name,
                )
                continue
            kept.append(ckpt)
        ordered += kept
    found.checkpoints = ordered


def _run_name(folder: Path, root: Path, prefix: str) -> str:
    rel = folder.relative_to(root).as_posix() if folder != root else root.name
    return f"{rel}:{prefix}" if prefix else rel


def _fill_steps(members: list[Checkpoint]) -> None:
    """Steps for checkpoints that have none: epochs as steps when only epochs are known, finals last."""
    if all(c.step is None for c in members if not c.final) and any(c.epoch is not None for c in members):
        for c in members:
            if c.step is None and c.epoch is not None:
                c.step, c.step_source = (
                    c.epoch,
                    c.step_source + " (epochs used as steps: no step in metadata)",
                )
    known = sorted({c.step for c in members if c.step is not None})
    interval = min((b - a for a, b in zip(known, known[1:], strict=False)), default=known[0] if known else 1)
    for c in members:
        if c.step is None:
            c.step = (known[-1] + interval) if known else 1
            c.step_source = (
                "final file: last numbered step + save interval" if known else "the only, un-numbered file"
            )
            known.append(c.step)


def check(found: Discovery) -> None:
    """One-line errors for a folder that cannot be scored: nothing found, or different base models."""
    if not found.checkpoints:
        extra = ""
        if found.skipped:
            extra = f"; unreadable: {', '.join(p.name for p, _ in found.skipped[:3])}"
        elif found.pending:
            extra = f"; still being written: {', '.join(p.name for p in found.pending[:3])} (try --watch)"
        raise ConfigError(
            f"no checkpoints found in {found.root} (looked for {LOOKED_FOR}){extra}: "
            "point checkpoints.dir at the folder your trainer saved into"
        )
    families: dict[str, list[str]] = {}
    for ckpt in found.checkpoints:
        if ckpt.family:
            families.setdefault(ckpt.family, []).append(ckpt.path.name)
    if len(families) > 1:
        listed = "; ".join(f"{fam}: {', '.join(names[:2])}" for fam, names in families.items())
        raise ConfigError(
            f"{found.root} mixes checkpoints of different base models ({listed}): "
            "score one base model's checkpoints at a time (move the others out or point checkpoints.dir lower)"
        )
