"""Teacher families: what a kind of teacher takes in, gives out, and how a student of it is measured.

One registered class per family. A family says which transformers Auto class loads the teacher, how
text becomes its inputs, which outputs are compared (the *reference*: class logits, pooled sentence
embeddings, next-token predictions), the metric, the default losses, and which module an exporter sees
(one tensor out). The budget loop, the cache and the report ask the family and never the model type.

* ``sequence-classification``: ``AutoModelForSequenceClassification``; logits; accuracy.
* ``sentence-embedding``: ``AutoModel`` + sentence-transformers pooling; pooled embedding; linear-probe
  accuracy (unlabelled data: cosine agreement with the teacher).
* ``causal-lm``: ``AutoModelForCausalLM`` (safetensors or GGUF); per-token NLL and argmax; perplexity
  (retention = teacher perplexity / student perplexity).
* ``image-classification``: ``AutoModelForImageClassification``; logits; accuracy (Python API).

Example:
    >>> family = get_family("sentence-embedding")
    >>> family.metric
    'probe accuracy'
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edge_distill.data import tokenize
from edge_distill.registry import Registry
from edge_distill.views import Adapter, mean_pool

FAMILIES: Registry[type[Family]] = Registry("teacher family")
MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values")  # what a model is called with
POOLING_KEY = "edge_distill_pooling"  # config attribute: {"mode": "mean" | "cls", "normalize": bool}


def get_family(name: str) -> Family:
    """The family registered as ``name`` (an unknown name lists the valid ones)."""
    return FAMILIES.get(name)()


def detect_family(config: Any, folder: Path | None) -> str | None:
    """The family a model folder belongs to, from its architectures (and sentence-transformers files)."""
    for name in FAMILIES.names():
        if FAMILIES.get(name).detect(config, folder):
            return name
    return None


def _architectures(config: Any) -> list[str]:
    return list(getattr(config, "architectures", None) or [])


class Family:
    """The common shape of a family; subclasses fill in what differs."""

    name: ClassVar[str]
    auto_class: ClassVar[str]
    metric: ClassVar[str]
    higher_is_better: ClassVar[bool] = True
    cli: ClassVar[bool] = True  # the budget loop can run it on text data from the command line
    classifies: ClassVar[bool] = False  # outputs class logits; labels are class ids
    widths: ClassVar[bool] = True  # narrower students can be cut (heads, FFN, channels)
    vocab: ClassVar[bool] = True  # the vocabulary can be trimmed to the domain's tokens

    @classmethod
    def detect(cls, config: Any, folder: Path | None) -> bool:
        return any(a.endswith(cls.suffix) for a in _architectures(config))  # type: ignore[attr-defined]

    def loader(self) -> Any:
        import transformers

        return getattr(transformers, self.auto_class)

    def prepare(self, model: nn.Module, folder: Path | None) -> None:
        """Attach what the folder says beyond config.json (sentence-transformers pooling)."""

    def encode(self, tokenizer: Any, texts: Any, seq_len: int) -> dict[str, torch.Tensor]:
        """Model inputs for ``texts``: (n, seq_len) input_ids and attention_mask."""
        return tokenize(tokenizer, texts, seq_len)

    def reference(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The outputs compared between teacher and student, fp32, one row per example."""
        raise NotImplementedError

    def score(self, outputs: torch.Tensor, labels: torch.Tensor | None, fit: Fit | None = None) -> float:
        """The family's metric of ``outputs`` (``fit``: train-split outputs and labels, for probes)."""
        raise NotImplementedError

    def agreement(self, student: torch.Tensor, teacher: torch.Tensor, fit: Fit | None = None) -> float | None:
        """How often (or how closely) the student's outputs match the teacher's."""
        return float((student.argmax(-1) == teacher.argmax(-1)).float().mean())

    def measure(
        self,
        outputs: torch.Tensor,
        teacher: torch.Tensor,
        labels: torch.Tensor | None,
        fit: Fit | None = None,
    ) -> dict[str, Any]:
        """The metric of held-out ``outputs`` and their agreement with the teacher's (``teacher``).

        With no labels, a classifier is scored against the teacher's top-1: the teacher's outputs are
        the labels.
        """
        source = "data"
        if labels is None and self.classifies:
            labels, source = teacher.argmax(-1), "teacher"
        return {
            "name": self.metric,
            "value": self.score(outputs, labels, fit),
            "labels": source if self.classifies else None,
            "agreement": self.agreement(outputs, teacher, fit),
        }

    def retention(self, student: float, teacher: float) -> float | None:
        """Student metric as a share of the teacher's (``teacher / student`` for a lower-is-better one)."""
        if not teacher or not student or math.isnan(student) or math.isnan(teacher):
            return None
        return student / teacher if self.higher_is_better else teacher / student

    def export_module(self, model: nn.Module) -> nn.Module:
        """The module an exporter sees: ``forward(input_ids, attention_mask)`` -> one tensor."""
        return SingleOutput(model, _logits)

    def losses(self, has_labels: bool) -> dict[str, Any] | None:
        """Default loss spec (None: the engine's ``alpha * kd + (1 - alpha) * ce``)."""
        return None

    def adapter(self, model: nn.Module) -> Adapter | None:
        """How the engine calls the model and reads its views (None: the engine's default)."""
        return None

    def needs_train_reference(self, has_labels: bool) -> bool:
        """Whether scoring needs the train split's outputs (a probe or a fitted map)."""
        return False

    def speed(self, model: nn.Module, tokenizer: Any, prompt: str) -> dict[str, Any] | None:
        """Generation speed where the family generates (None otherwise)."""
        return None

    def space(self, config: Any, vocab: int | None) -> list[Any]:
        """Student shapes cut from a teacher with ``config`` (``vocab``: token ids the domain uses)."""
        from edge_distill.students import student_space

        return student_space(config, vocab=vocab if self.vocab else None, widths=self.widths)

    def build(self, teacher: nn.Module, spec: Any, *, seed: int = 0) -> nn.Module:
        """A student of ``spec``'s shape holding the teacher's chosen layers and first units."""
        from edge_distill.students import build_student

        return build_student(teacher, spec, seed=seed)


@dataclass(frozen=True)
class Fit:
    """The train split's outputs (the model's and the teacher's) and labels: what a probe learns from."""

    outputs: torch.Tensor
    labels: torch.Tensor | None
    teacher: torch.Tensor | None = None


class SingleOutput(nn.Module):
    """``forward(input_ids, attention_mask)`` -> ``pick(model output, attention_mask)``: one tensor."""

    def __init__(self, model: nn.Module, pick: Any) -> None:
        super().__init__()
        self.model, self.pick = model, pick

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.pick(self.model(input_ids=input_ids, attention_mask=attention_mask), attention_mask)


def _logits(output: Any, attention_mask: torch.Tensor) -> torch.Tensor:
    return output.logits


@torch.no_grad()
def _batched(model: nn.Module, inputs: dict[str, torch.Tensor], fn: Any, batch_size: int = 32) -> Tensor:
    """``fn(model output, batch)`` over ``inputs`` in eval mode, fp32, concatenated over batches."""
    was_training = model.training
    model.eval()
    rows = len(next(iter(inputs.values())))
    out = []
    with torch.autocast("cpu", enabled=False):  # reference outputs are exact fp32
        for start in range(0, rows, batch_size):
            batch = {k: v[start : start + batch_size] for k, v in inputs.items()}
            taken = {k: batch[k] for k in MODEL_INPUTS if k in batch}
            out.append(fn(model(**taken), batch).float())
    model.train(was_training)
    return torch.cat(out)


def accuracy(logits: torch.Tensor, labels: torch.Tensor | None) -> float:
    if labels is None:
        raise ValueError("accuracy needs labels")
    return float((logits.argmax(-1) == labels).float().mean()) if len(labels) else float("nan")


@FAMILIES.register("sequence-classification")
class SequenceClassification(Family):
    """Text classifiers (BERT, DistilBERT, RoBERTa, MiniLM ... ForSequenceClassification)."""

    name, auto_class, metric, suffix = (
        "sequence-classification",
        "AutoModelForSequenceClassification",
        "accuracy",
        "ForSequenceClassification",
    )
    classifies = True

    def reference(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return _batched(model, inputs, lambda out, batch: out.logits)  # (n, labels)

    def score(self, outputs: torch.Tensor, labels: torch.Tensor | None, fit: Fit | None = None) -> float:
        return accuracy(outputs, labels)


@FAMILIES.register("sentence-embedding")
class SentenceEmbedding(Family):
    """Sentence-embedding encoders (sentence-transformers folders: a base model plus pooling).

    The embedding is pooled as the folder's ``1_Pooling/config.json`` says (mean or CLS), L2-normalised
    when the folder lists a Normalize module. Students have their own width, so the metric does not
    compare vectors directly: a logistic-regression probe fitted on the train split's embeddings is scored
    on held-out data (retention = student probe accuracy / teacher probe accuracy), and the cosine
    agreement maps the student's embeddings into the teacher's space by least squares fitted on train.
    """

    name, auto_class, metric = "sentence-embedding", "AutoModel", "probe accuracy"

    @classmethod
    def detect(cls, config: Any, folder: Path | None) -> bool:
        if folder is not None and (folder / "modules.json").is_file():
            return True
        archs = _architectures(config)
        return bool(archs) and all(a.endswith("Model") and "For" not in a for a in archs)

    def prepare(self, model: nn.Module, folder: Path | None) -> None:
        if getattr(model.config, POOLING_KEY, None) is None:  # a student saved by edge-distill has it
            setattr(model.config, POOLING_KEY, read_pooling(folder))

    def reference(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        pooling = getattr(model.config, POOLING_KEY, None) or {"mode": "mean", "normalize": False}
        return _batched(model, inputs, lambda out, batch: pool(out, batch["attention_mask"], pooling))

    def score(self, outputs: torch.Tensor, labels: torch.Tensor | None, fit: Fit | None = None) -> float:
        if labels is None or fit is None or fit.labels is None:
            raise ValueError("the probe needs labels on the train and held-out splits")
        return probe_accuracy(fit.outputs, fit.labels, outputs, labels)

    def agreement(self, student: torch.Tensor, teacher: torch.Tensor, fit: Fit | None = None) -> float | None:
        if fit is None:
            return None
        return cosine_agreement(student, teacher, fit)

    def measure(
        self,
        outputs: torch.Tensor,
        teacher: torch.Tensor,
        labels: torch.Tensor | None,
        fit: Fit | None = None,
    ) -> dict[str, Any]:
        agreement = self.agreement(outputs, teacher, fit)
        if labels is None or fit is None or fit.labels is None:  # unlabelled: closeness to the teacher
            return {"name": "cosine agreement", "value": agreement, "labels": None, "agreement": agreement}
        value = self.score(outputs, labels, fit)
        return {"name": self.metric, "value": value, "labels": "data", "agreement": agreement}

    def export_module(self, model: nn.Module) -> nn.Module:
        pooling = getattr(model.config, POOLING_KEY, None) or {"mode": "mean", "normalize": False}
        return SingleOutput(model, lambda out, mask: pool(out, mask, pooling))

    def losses(self, has_labels: bool) -> dict[str, Any] | None:
        # cosine to the teacher's vectors (through a learned projection when widths differ) keeps each
        # sentence's direction; relation keeps the batch's similarity structure, which retrieval uses.
        return {"embedding_cosine": 1.0, "relation": 1.0}

    def adapter(self, model: nn.Module) -> Adapter | None:
        pooling = getattr(model.config, POOLING_KEY, None) or {"mode": "mean", "normalize": False}
        return Adapter(embedding=lambda out, batch, views: pool(out, batch.get("attention_mask"), pooling))

    def needs_train_reference(self, has_labels: bool) -> bool:
        return True


def read_pooling(folder: Path | None) -> dict[str, Any]:
    """Pooling of a sentence-transformers folder: {"mode": "mean" | "cls", "normalize": bool}."""
    pooling = {"mode": "mean", "normalize": False}
    if folder is None or not (folder / "modules.json").is_file():
        return pooling
    modules = json.loads((folder / "modules.json").read_text())
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind == "Normalize":
            pooling["normalize"] = True
        elif kind == "Pooling":
            config = folder / module.get("path", "") / "config.json"
            settings = json.loads(config.read_text()) if config.is_file() else {}
            pooling["mode"] = "cls" if settings.get("pooling_mode_cls_token") else "mean"
        elif kind not in ("Transformer", ""):
            from edge_distill.errors import TeacherError

            raise TeacherError(
                f"The sentence-transformers module {kind} in {folder} is not supported (Transformer, "
                "Pooling and Normalize are); save the model without it or distil through the Python API."
            )
    return pooling


def pool(output: Any, attention_mask: torch.Tensor | None, pooling: dict[str, Any]) -> torch.Tensor:
    """The sentence embedding (batch, dim) from a base model's output, as sentence-transformers pools."""
    hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]  # (b, s, d)
    vector = hidden[:, 0] if pooling.get("mode") == "cls" else mean_pool(hidden, attention_mask)
    return F.normalize(vector, dim=-1) if pooling.get("normalize") else vector


def probe_accuracy(
    train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor
) -> float:
    """Accuracy on ``test`` of a logistic regression fitted on ``train`` embeddings (a linear probe)."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(train_labels.numpy())) < 2:
        return float("nan")
    probe = LogisticRegression(max_iter=2000, C=10.0)
    probe.fit(train.numpy(), train_labels.numpy())
    return float((probe.predict(test.numpy()) == test_labels.numpy()).mean())


def cosine_agreement(student: torch.Tensor, teacher: torch.Tensor, fit: Fit) -> float:
    """Mean cosine between the teacher's held-out embeddings and the student's, mapped into the
    teacher's space by the least-squares linear map fitted on the train split (identity-free: any width).

    ``fit.outputs`` and ``fit.teacher`` are the train split's student and teacher embeddings.
    """
    if fit.teacher is None:
        raise ValueError("the cosine agreement needs the teacher's train-split embeddings")
    s_train, t_train = fit.outputs.double(), fit.teacher.double()
    ones = torch.ones(len(s_train), 1, dtype=torch.float64)
    weights = torch.linalg.lstsq(torch.cat([s_train, ones], 1), t_train).solution  # (s_dim + 1, t_dim)
    mapped = torch.cat([student.double(), torch.ones(len(student), 1, dtype=torch.float64)], 1) @ weights
    return float(F.cosine_similarity(mapped, teacher.double(), dim=-1).mean())


@FAMILIES.register("causal-lm")
class CausalLM(Family):
    """Causal language models (GPT-2, Llama-family such as SmolLM); token-level KD over the vocabulary.

    Reference output per example: (seq, 2) = [next-token NLL (0 where no label), argmax id]. Students
    are cut by depth; width pruning and vocabulary trimming of decoders are not built yet.
    """

    name, auto_class, metric, suffix = "causal-lm", "AutoModelForCausalLM", "perplexity", "ForCausalLM"
    higher_is_better = False
    widths = False
    vocab = False

    @classmethod
    def detect(cls, config: Any, folder: Path | None) -> bool:
        return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in _architectures(config))

    def encode(self, tokenizer: Any, texts: Any, seq_len: int) -> dict[str, torch.Tensor]:
        from edge_distill.lm import lm_examples

        return lm_examples(tokenizer, texts, seq_len)

    def reference(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return _batched(model, inputs, _nll_and_argmax, batch_size=8)  # (n, seq, 2)

    def score(self, outputs: torch.Tensor, labels: torch.Tensor | None, fit: Fit | None = None) -> float:
        nll, real = outputs[..., 0], outputs[..., 0] != 0
        return math.exp(float(nll.sum() / real.sum().clamp_min(1))) if real.any() else float("nan")

    def speed(self, model: nn.Module, tokenizer: Any, prompt: str) -> dict[str, Any] | None:
        from edge_distill.lm import tokens_per_second

        rate = tokens_per_second(model, tokenizer, prompt, new_tokens=32)
        return {
            "tokens_per_s": round(rate, 1),
            "source": "measured-host: PyTorch, greedy, batch 1, 32 tokens",
        }

    def agreement(self, student: torch.Tensor, teacher: torch.Tensor, fit: Fit | None = None) -> float | None:
        real = teacher[..., 0] != 0
        return float((student[..., 1] == teacher[..., 1])[real].float().mean()) if real.any() else None


def _nll_and_argmax(output: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = output.logits.float()  # (batch, seq, vocab)
    labels = batch["labels"]  # (batch, seq), -100 where there is no next token
    nll = F.cross_entropy(logits.transpose(1, 2), labels.clamp_min(0), reduction="none")  # (batch, seq)
    nll = torch.where(labels == -100, torch.zeros_like(nll), nll.clamp_min(1e-12))
    return torch.stack([nll, logits.argmax(-1).float()], -1)  # (batch, seq, 2)


@FAMILIES.register("image-classification")
class ImageClassification(Family):
    """Image classifiers (ViT and friends); distilled through the Python API on pixel tensors."""

    name, auto_class, metric, suffix = (
        "image-classification",
        "AutoModelForImageClassification",
        "accuracy",
        "ForImageClassification",
    )
    cli = False
    classifies = True
    vocab = False

    def encode(self, tokenizer: Any, texts: Any, seq_len: int) -> dict[str, torch.Tensor]:
        raise TypeError("image classifiers take pixel_values, not text")

    def reference(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return _batched(model, inputs, lambda out, batch: out.logits)

    def score(self, outputs: torch.Tensor, labels: torch.Tensor | None, fit: Fit | None = None) -> float:
        return accuracy(outputs, labels)

    def export_module(self, model: nn.Module) -> nn.Module:
        from edge_distill.vision import ImageLogitsOnly

        return ImageLogitsOnly(model)

    def space(self, config: Any, vocab: int | None) -> list[Any]:
        from edge_distill.vision import vit_space

        return vit_space(config)

    def build(self, teacher: nn.Module, spec: Any, *, seed: int = 0) -> nn.Module:
        from edge_distill.vision import vit_student

        return vit_student(teacher, spec, seed=seed)
