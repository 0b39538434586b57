"""Image classification: a built-in offline dataset, ViT students and a small plain-torch CNN.

Teachers are Hugging Face image classifiers (``ViTForImageClassification``) or plain ``nn.Module`` CNNs
called as ``model(pixel_values=x)``. Students are cut from the teacher like the text students of
``edge_distill.students``: fewer encoder blocks (uniformly spread) and fewer heads at the teacher's head
size for a ViT; the first ``width`` fraction of every block's channels for a CNN. Every student tensor is
the teacher's, sliced to the student's shape.

Example:
    >>> train, val, test = digits_images(0)                                   # doctest: +SKIP
    >>> student = vit_student(teacher, StudentSpec(2, 16, 2, 32))             # doctest: +SKIP
    >>> edge_distill.distill(teacher, student, train, val_data=val)           # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn
from transformers import PretrainedConfig, ViTForImageClassification

from edge_distill.errors import TeacherError
from edge_distill.evaluation import accuracy_metric, predict
from edge_distill.students import (
    WIDTH_FRACTIONS,
    StudentSpec,
    copy_sliced,
    layer_map,
    student_config,
    teacher_spec,
)
from edge_distill.views import Need, auto_adapter

# ViTImageProcessor's defaults: pixels in [0, 1] become (x - 0.5) / 0.5, in [-1, 1].
DIGITS_MEAN = 0.5
DIGITS_STD = 0.5
# A ViT's blocks: `vit.encoder.layer.<i>` (transformers 4) or `vit.layers.<i>` (transformers 5).
_VIT_LAYER_KEY = re.compile(r"\.(encoder\.layer|layers)\.(\d+)\.")
_VIT_FAMILIES = ("vit",)

Examples = dict[str, torch.Tensor]


def digits_images(seed: int, *, size: int = 16) -> tuple[Examples, Examples, Examples]:
    """scikit-learn's 1,797 8x8 handwritten digits as (train, val, test) image batches, split 80/10/10.

    Each split holds ``pixel_values`` float32 (n, 3, size, size), bilinearly upsampled, replicated to
    three channels and normalised by ``DIGITS_MEAN``/``DIGITS_STD``, and ``labels`` int64 (n,) in 0..9.
    The split is a permutation drawn from ``seed``: the same seed gives the same splits.

    Example:
        >>> train, val, test = digits_images(0)
        >>> train["pixel_values"].shape, len(val["labels"]), len(test["labels"])
        (torch.Size([1437, 3, 16, 16]), 179, 181)
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (n, 1, 8, 8)
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    pixels = ((images - DIGITS_MEAN) / DIGITS_STD).expand(-1, 3, -1, -1).contiguous()  # (n, 3, s, s)
    labels = torch.as_tensor(digits.target, dtype=torch.long)  # (n,)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_train, n_val = int(0.8 * len(order)), int(0.1 * len(order))
    cuts = (order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :])
    return tuple({"pixel_values": pixels[idx], "labels": labels[idx]} for idx in cuts)  # type: ignore[return-value]


def accuracy(model: nn.Module, examples: Mapping[str, torch.Tensor], *, batch_size: int = 256) -> float:
    """Top-1 accuracy of an image classifier on ``examples`` (eval mode, no grad, batched).

    Example:
        >>> accuracy(teacher, val)                 # doctest: +SKIP
        0.93
    """
    logits = predict(model, auto_adapter(model), examples, batch_size=batch_size)  # (n, classes)
    return accuracy_metric(logits, examples["labels"])


def fit_classifier(
    model: nn.Module,
    examples: Mapping[str, torch.Tensor],
    *,
    epochs: int = 3,
    lr: float = 3e-3,
    batch_size: int = 32,
    seed: int = 0,
) -> nn.Module:
    """Train ``model`` in place with plain cross-entropy (AdamW): a quick teacher for tests and examples.

    Example:
        >>> teacher = fit_classifier(SmallCNN(), train, epochs=3)    # doctest: +SKIP
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    adapter, n = auto_adapter(model), len(examples["labels"])
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=generator).split(batch_size):
            batch = {k: v[idx] for k, v in examples.items()}
            logits = adapter.logits(adapter.run(model, batch, Need()))  # (batch, classes)
            loss = F.cross_entropy(logits, batch["labels"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


# ---- ViT students ----------------------------------------------------------------------------------


def _check_vit(config: PretrainedConfig) -> None:
    if config.model_type not in _VIT_FAMILIES:
        raise TeacherError(
            f"ViT students can be cut only from {', '.join(_VIT_FAMILIES)} teachers, and this teacher is "
            f"{config.model_type!r}; use students.build_student for text encoders."
        )


def vit_space(config: PretrainedConfig) -> list[StudentSpec]:
    """Every ViT student strictly smaller than the teacher, largest (by depth x width) first.

    The same space as ``students.student_space``: depth 1..L, heads at fractions ``WIDTH_FRACTIONS`` of
    the teacher's (head size kept), feed-forward width scaled with the hidden size.

    Example:
        >>> from transformers import ViTConfig
        >>> vit_space(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4))[0]
        StudentSpec(layers=2, hidden=24, heads=3, intermediate=2304)
    """
    _check_vit(config)
    full = teacher_spec(config)
    head_dim = full.hidden // full.heads
    heads_options = dict.fromkeys(max(1, round(full.heads * f)) for f in WIDTH_FRACTIONS)
    space = [
        StudentSpec(
            layers=layers,
            hidden=heads * head_dim,
            heads=heads,
            intermediate=max(1, round(full.intermediate * heads * head_dim / full.hidden)),
        )
        for layers in range(full.layers, 0, -1)
        for heads in heads_options
    ]
    space = [spec for spec in space if spec != full]
    return sorted(space, key=lambda s: (s.layers * s.hidden, s.hidden), reverse=True)


def vit_student(
    teacher: ViTForImageClassification, spec: StudentSpec, *, seed: int = 0
) -> ViTForImageClassification:
    """A ViT classifier with ``spec``'s shape, every tensor the teacher's sliced to the student's shape.

    Student block i starts as teacher block ``layer_map(L, spec.layers)[i]``; widths keep the first heads
    (head size unchanged), the first hidden units (patch projection, cls token, position embeddings,
    layer norms, classifier input) and the first feed-forward units. ``teacher_spec(teacher.config)``
    reproduces the teacher exactly.

    Example:
        >>> spec = StudentSpec(layers=2, hidden=16, heads=2, intermediate=32)
        >>> student = vit_student(teacher, spec)                  # doctest: +SKIP
    """
    _check_vit(teacher.config)
    full = teacher_spec(teacher.config)
    if spec.hidden % spec.heads or spec.hidden // spec.heads != full.hidden // full.heads:
        raise TeacherError(
            f"A ViT student keeps the teacher's head size {full.hidden // full.heads}; "
            f"{spec.heads} heads need hidden={spec.heads * (full.hidden // full.heads)}, not {spec.hidden}."
        )
    torch.manual_seed(seed)  # only tensors the teacher lacks keep their random initialisation
    student = ViTForImageClassification(student_config(teacher.config, spec))
    mapping = layer_map(full.layers, spec.layers)
    rename = lambda key: _VIT_LAYER_KEY.sub(lambda m: f".{m.group(1)}.{mapping[int(m.group(2))]}.", key)  # noqa: E731
    copy_sliced(student, teacher.state_dict(), rename)
    return student.eval()


def vit_layer_paths(model: nn.Module) -> list[str]:
    """Dotted paths of a ViT's encoder blocks (``vit.layers.<i>`` or ``vit.encoder.layer.<i>``).

    Example:
        >>> vit_layer_paths(vit)                       # doctest: +SKIP
        ['vit.layers.0', 'vit.layers.1']
    """
    lists = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and re.search(r"(^|\.)(encoder\.layer|layers)$", name)
    ]
    if len(lists) != 1:
        raise TeacherError(f"{type(model).__name__} must hold one encoder block list; found {lists}.")
    return [f"{lists[0]}.{i}" for i in range(len(model.get_submodule(lists[0])))]


def vit_layer_pairs(teacher: nn.Module, student: nn.Module) -> list[tuple[str, str]]:
    """``(student_path, teacher_path)`` pairs, uniformly spread, for a hidden term's ``layers`` option.

    ``taps.map_layers`` (``"layers": "uniform"``) finds only ``encoder.layer`` lists, and transformers 5
    names a ViT's blocks ``vit.layers``; these pairs work with either naming.

    Example:
        >>> pairs = vit_layer_pairs(teacher, student)                      # doctest: +SKIP
        >>> losses = {"hidden_mse": {"weight": 1.0, "layers": pairs}}     # doctest: +SKIP
    """
    t_paths, s_paths = vit_layer_paths(teacher), vit_layer_paths(student)
    return [(s, t_paths[j]) for s, j in zip(s_paths, layer_map(len(t_paths), len(s_paths)), strict=True)]


class ImageLogitsOnly(nn.Module):
    """Wraps a Hugging Face image classifier so that forward(pixel_values) returns logits only.

    Export targets take a module returning one tensor: (batch, labels).

    Example:
        >>> ImageLogitsOnly(vit)(torch.randn(2, 3, 16, 16)).shape     # doctest: +SKIP
        torch.Size([2, 10])
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits  # (batch, labels)


# ---- a plain torch CNN -----------------------------------------------------------------------------


class ConvBlock(nn.Sequential):
    """conv 3x3 (no bias) -> batch norm -> ReLU; ``stride`` 2 halves the feature map."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class SmallCNN(nn.Module, PyTorchModelHubMixin):
    """A torchvision-style CNN in plain torch: conv-bn-relu blocks, global average pool, linear head.

    ``channels`` are the base widths of the blocks (every block after the first has stride 2), scaled by
    ``width`` (at least one channel each). ``forward(pixel_values)`` returns logits (batch, num_labels);
    block i is the module ``blocks.<i>`` (a tap path), output (batch, C_i, H_i, W_i). Saves and reloads
    with ``save_pretrained`` / ``from_pretrained`` (huggingface_hub's mixin: config.json + safetensors).

    Example:
        >>> SmallCNN(channels=(8, 16), num_labels=10)(pixel_values=torch.randn(2, 3, 16, 16)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        *,
        channels: Sequence[int] = (16, 32, 64),
        width: float = 1.0,
        in_channels: int = 3,
        num_labels: int = 10,
    ) -> None:
        super().__init__()
        self.base_channels, self.width = tuple(channels), width
        self.in_channels, self.num_labels = in_channels, num_labels
        widths = [max(1, round(c * width)) for c in channels]
        self.blocks = nn.Sequential(
            *(
                ConvBlock(c_in, c_out, stride=1 if i == 0 else 2)
                for i, (c_in, c_out) in enumerate(zip([in_channels, *widths[:-1]], widths, strict=True))
            )
        )
        self.classifier = nn.Linear(widths[-1], num_labels)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.blocks(pixel_values)  # (batch, C, H', W')
        return self.classifier(features.mean((2, 3)))  # (batch, C) -> (batch, num_labels)


def cnn_student(teacher: SmallCNN, width: float) -> SmallCNN:
    """A narrower ``SmallCNN``: the first ``width`` fraction of every block's channels, from the teacher.

    Convolutions, batch-norm statistics and the classifier's inputs are the teacher's first channels;
    ``width=1.0`` reproduces the teacher.

    Example:
        >>> student = cnn_student(SmallCNN(channels=(8, 16)), 0.5)
        >>> [m.out_channels for m in student.modules() if isinstance(m, nn.Conv2d)]
        [4, 8]
    """
    if not 0.0 < width <= 1.0:
        raise ValueError(f"width must be within (0, 1]; got {width}.")
    student = SmallCNN(
        channels=teacher.base_channels,
        width=teacher.width * width,
        in_channels=teacher.in_channels,
        num_labels=teacher.num_labels,
    )
    copy_sliced(student, teacher.state_dict())  # every CNN tensor has a (wider) teacher counterpart
    return student.train(teacher.training)
