"""Teachers: load a teacher of any supported family safely, or build the built-in demo teacher.

Example:
    >>> teacher = load_teacher("./my-teacher")  # doctest: +SKIP
    >>> accuracy, logits = evaluate(teacher, None, data.test, seq_len=128)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

from edge_distill.data import Split, tokenize
from edge_distill.errors import TeacherError
from edge_distill.families import Family, detect_family, get_family

# Tokenizer files count too: the same weights behind another tokenizer give other teacher outputs.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
_TOKENIZER_FILES += ("vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model")


@dataclass
class Teacher:
    """A teacher in eval mode, with its family (``task``), tokenizer (None for images) and label names.

    Example:
        >>> teacher = load_teacher("path/to/teacher")  # doctest: +SKIP
        >>> teacher.label_names, teacher.params  # doctest: +SKIP
        (('negative', 'positive'), 66955010)
    """

    model: transformers.PreTrainedModel
    tokenizer: Any  # a tokenizer; None for an image classifier
    name: str
    path: Path
    label_names: tuple[str, ...]
    task: str = "sequence-classification"
    # Accuracies recorded when the teacher was built here (the demo); empty for user teachers.
    metrics: dict[str, Any] = field(default_factory=dict)
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def params(self) -> int:
        """Number of parameters of the model."""
        return sum(p.numel() for p in self.model.parameters())

    def fingerprint(self) -> str:
        """sha256 over the weight files, config.json and tokenizer files in ``path`` (memoised)."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint_folder(self.path)
        return self._fingerprint


def fingerprint_folder(folder: Path) -> str:
    """Hash a HF model folder's safetensors weights (else its pickles), config and tokenizer files.

    Example:
        >>> fingerprint_folder(Path("path/to/teacher"))[:12]  # doctest: +SKIP
        '3f2a9c0d1b7e'
    """
    weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    weights = weights or sorted(folder.glob("*.gguf"))
    others = [folder / n for n in ("config.json", *_TOKENIZER_FILES) if (folder / n).is_file()]
    h = hashlib.sha256()
    for file in [*weights, *others]:
        name = file.name.encode()
        h.update(len(name).to_bytes(8, "little") + name + file.stat().st_size.to_bytes(8, "little"))
        with file.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' load reports ("newly initialized weights") and progress bars in a block.

    Example:
        >>> with quiet_transformers():
        ...     pass
    """
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# -------------------- Loading --------------------


def load_teacher(
    path_or_id: str | Path, *, task: str | None = None, trust_remote_code: bool = False
) -> Teacher:
    """Load a teacher of any supported family from a local HF folder or a Hugging Face hub id.

    The family (``edge_distill.families``) is detected from config.json's architectures and, for a
    sentence-transformers folder, its modules.json; ``task`` names it instead. A folder holding one GGUF
    file (and no config.json) loads as a causal LM. Weights load as safetensors, GGUF, or pickles under
    ``weights_only``; custom model code runs only with ``trust_remote_code=True``. A hub id is looked up
    offline when HF_HUB_OFFLINE is set.

    Example:
        >>> teacher = load_teacher("./my-teacher")  # doctest: +SKIP
        >>> teacher.task  # doctest: +SKIP
        'sequence-classification'
    """
    source = str(path_or_id)
    folder = Path(source).expanduser()
    if task is not None:
        get_family(task)  # an unknown family name fails now, with the valid names
    if folder.is_dir():
        if not (folder / "config.json").is_file() and not _gguf_file(folder):
            raise TeacherError(
                f"Teacher folder {folder} has no config.json; pass a folder written by save_pretrained "
                "(config.json, model weights and tokenizer files) or one holding a single .gguf file."
            )
        return _load(str(folder), folder, name=source, local_only=True, task=task, trust=trust_remote_code)
    if folder.exists():
        raise TeacherError(f"Teacher {folder} is a file; pass the folder that holds config.json and weights.")
    if _looks_like_path(source):
        raise TeacherError(
            f"Teacher folder {folder} does not exist; pass a folder with config.json and model weights, "
            "or a Hugging Face hub id."
        )
    return _load_hub(source, task=task, trust_remote_code=trust_remote_code)


def _gguf_file(folder: Path) -> str | None:
    """The one GGUF file of a folder without config.json (None otherwise)."""
    if (folder / "config.json").is_file():
        return None
    files = sorted(folder.glob("*.gguf"))
    if len(files) > 1:
        names = ", ".join(f.name for f in files)
        raise TeacherError(f"Teacher folder {folder} holds several GGUF files ({names}); keep one.")
    return files[0].name if files else None


def _looks_like_path(source: str) -> bool:
    # Hub ids are "name" or "org/name" (so a "/" alone is not a path sign on POSIX); see the module notes.
    if source.startswith((".", "~", "/")) or source.endswith("/") or source.count("/") > 1:
        return True
    return any(sep in source for sep in (os.sep, os.altsep) if sep and sep != "/")  # Windows "\"


def _hub_offline() -> bool:
    # Read the environment now: huggingface_hub reads HF_HUB_OFFLINE only once, at import time.
    from huggingface_hub import constants

    flags = (os.environ.get(k, "").strip().lower() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f in {"1", "true", "yes", "on"} for f in flags) or bool(constants.HF_HUB_OFFLINE)


def _load_hub(repo_id: str, *, task: str | None, trust_remote_code: bool) -> Teacher:
    from transformers.utils import cached_file

    local_only = _hub_offline()
    try:
        with quiet_transformers():
            config_file = cached_file(repo_id, "config.json", local_files_only=local_only)
    except Exception as e:  # offline miss, unknown repo, no network, invalid id: one fix for all
        where = (
            "in the local Hugging Face cache (HF_HUB_OFFLINE is set)" if local_only else "locally or online"
        )
        fix = f"download it on a connected machine (`huggingface-cli download {repo_id} --local-dir DIR`)"
        raise TeacherError(
            f"Teacher {repo_id!r} is not a local folder and could not be found {where}; "
            f"{fix} and pass --teacher DIR."
        ) from e
    folder = Path(config_file).parent  # the snapshot folder in the hub cache
    return _load(repo_id, folder, name=repo_id, local_only=local_only, task=task, trust=trust_remote_code)


def _load(
    source: str, folder: Path, *, name: str, local_only: bool, task: str | None, trust: bool
) -> Teacher:
    opts: dict[str, Any] = {"local_files_only": local_only, "trust_remote_code": trust}
    gguf = _gguf_file(folder)
    if gguf:
        opts["gguf_file"] = gguf
    with quiet_transformers():
        config = _load_config(source, name, opts)
        family = get_family(task or _detect(config, folder, name, gguf))
        model = _load_model(source, config, name, opts, family)
        family.prepare(model, folder)
        tokenizer = _load_tokenizer(source, name, opts, family)
    labels = ()
    if family.name.endswith("classification"):
        labels = tuple(str(config.id2label[i]) for i in sorted(config.id2label, key=int))
    return Teacher(model.eval(), tokenizer, name, folder, labels, task=family.name)


def _load_tokenizer(source: str, name: str, opts: dict[str, Any], family: Family) -> Any:
    try:
        return transformers.AutoTokenizer.from_pretrained(source, **opts)
    except Exception as e:
        if not family.cli:  # an image model has an image processor, not a tokenizer
            return None
        raise TeacherError(
            f"Teacher {name} has no usable tokenizer ({_reason(e)}); save it beside the model with "
            "tokenizer.save_pretrained(DIR)."
        ) from e


def _load_config(source: str, name: str, opts: dict[str, Any]) -> transformers.PretrainedConfig:
    try:
        return transformers.AutoConfig.from_pretrained(source, **opts)
    except Exception as e:
        if "trust_remote_code" in str(e):
            fix = "pass --trust-remote-code if you trust its author"
            raise TeacherError(f"Teacher {name} needs its own model code; {fix}.") from e
        unknown = re.search(r"model type `([^`]*)` but Transformers does not recognize", str(e))
        if unknown:  # transformers' own text runs to three sentences, cut off by _reason
            raise TeacherError(
                f"Teacher {name} has model type {unknown.group(1)!r}, which transformers "
                f"{transformers.__version__} does not know; pass a sequence classifier, a sentence-embedding "
                "model, a causal LM or an image classifier of a known type, or upgrade transformers."
            ) from e
        raise TeacherError(f"Teacher {name} has an unreadable config.json ({_reason(e)}); re-save it.") from e


def _detect(config: transformers.PretrainedConfig, folder: Path, name: str, gguf: str | None) -> str:
    """The teacher's family; a config with no architectures counts as a classifier only with real labels."""
    if gguf:
        return "causal-lm"  # GGUF holds language models
    found = detect_family(config, folder)
    if found:
        return found
    archs = list(getattr(config, "architectures", None) or [])
    if not archs and {int(k): v for k, v in config.id2label.items()} != {0: "LABEL_0", 1: "LABEL_1"}:
        return "sequence-classification"
    what = f"a {archs[0]}" if archs else "a model with no architectures or labels in config.json"
    raise TeacherError(
        f"Teacher {name} is {what}, which no supported family covers; pass a sequence classifier, a "
        "sentence-embedding model, a causal LM or an image classifier (or name one with --task)."
    )


def _load_model(
    source: str, config: transformers.PretrainedConfig, name: str, opts: dict[str, Any], family: Family
) -> transformers.PreTrainedModel:
    try:
        model, info = family.loader().from_pretrained(source, config=config, output_loading_info=True, **opts)
    except ValueError as e:
        if "Unrecognized configuration class" not in str(e):
            raise TeacherError(f"Teacher {name} could not be loaded ({_reason(e)}); re-save it.") from e
        raise TeacherError(
            f"Teacher {name} ({config.model_type}) cannot load as a {family.name} model in transformers; "
            "pass a model of that family or name its family with --task."
        ) from e
    except Exception as e:  # missing or corrupt weights, pickles refused by weights_only
        fix = "save it with save_pretrained (model.safetensors)"
        raise TeacherError(f"Teacher {name} has no loadable weights ({_reason(e)}); {fix}.") from e
    # a freshly initialised head would make a random teacher (an unused pooler does not matter)
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("pooler."))
    if missing:
        raise TeacherError(
            f"Teacher {name} has no trained weights for {', '.join(missing[:3])}; pass a fine-tuned "
            f"{family.name} model."
        )
    return model


def _reason(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


# -------------------- Evaluation --------------------


def evaluate(
    teacher_or_model: Teacher | torch.nn.Module,
    tokenizer: Any,
    split: Split,
    *,
    seq_len: int,
    batch_size: int = 64,
) -> tuple[float, np.ndarray]:
    """Accuracy and exact fp32 logits ((n, labels) float32) on a split (``tokenizer`` None: the teacher's).

    Example:
        >>> accuracy, logits = evaluate(teacher, None, data.val, seq_len=128)  # doctest: +SKIP
    """
    is_teacher = isinstance(teacher_or_model, Teacher)
    model = teacher_or_model.model if is_teacher else teacher_or_model
    tokenizer = teacher_or_model.tokenizer if is_teacher and tokenizer is None else tokenizer
    was_training = model.training
    model.eval()
    chunks = [np.zeros((0, getattr(getattr(model, "config", None), "num_labels", 0)), np.float32)]
    # autocast explicitly off: a caller's bf16 context must not leak into reference logits.
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        for start in range(0, len(split), batch_size):
            out = model(**tokenize(tokenizer, split.texts[start : start + batch_size], seq_len))
            chunks.append((out.logits if hasattr(out, "logits") else out).float().numpy())  # (batch, labels)
    model.train(was_training)
    logits = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    accuracy = float((logits.argmax(axis=1) == split.labels).mean()) if len(split) else float("nan")
    return accuracy, logits


# -------------------- Demo teacher: all-MiniLM-L6-v2 + a head trained on the demo data --------------------
