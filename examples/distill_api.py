"""Distil any PyTorch model pair through the Python API: edge_distill.distill with losses by name.

Run: python examples/distill_api.py   (offline, about 10 seconds on 2 cores)

The teacher is a 3-layer MLP trained here on scikit-learn's 8x8 digits; the student has about 60x
fewer parameters. It learns from the teacher's softened outputs (KD), the labels (CE), one hidden layer of the
teacher through a learned projection (the layers named by their dotted module paths), and the batch's
similarity structure (relation). Swap in your own modules: anything whose forward takes the data's
input column and returns logits works as is; otherwise pass an Adapter saying how to call it.
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn

import edge_distill
from edge_distill.trainer import TrainSettings


class MLP(nn.Module):
    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(64 if i == 0 else width, width), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (batch, 64) -> logits (batch, 10)
        return self.head(self.body(x))


def digits(seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """80/20 split of the 1,797 digits: {"x": (n, 64) in [0, 1], "labels": (n,)}."""
    x, y = load_digits(return_X_y=True)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = torch.as_tensor(x, dtype=torch.float32)[order] / 16.0, torch.as_tensor(y)[order]
    cut = int(0.8 * len(y))
    return {"x": x[:cut], "labels": y[:cut]}, {"x": x[cut:], "labels": y[cut:]}


def train_teacher(train: dict[str, torch.Tensor], seed: int) -> MLP:
    """A plain supervised teacher (in your project: the model you already have)."""
    torch.manual_seed(seed)
    teacher = MLP(width=256, depth=3)
    optimizer = torch.optim.AdamW(teacher.parameters(), lr=2e-3)
    for _ in range(15):
        for rows in torch.randperm(len(train["labels"])).split(64):
            loss = nn.functional.cross_entropy(teacher(train["x"][rows]), train["labels"][rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return teacher.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train, val = digits(args.seed)
    teacher = train_teacher(train, args.seed)
    torch.manual_seed(args.seed)
    student = MLP(width=32, depth=1)
    result = edge_distill.distill(
        teacher,
        student,
        train,
        losses={
            "kd": {"weight": 0.6, "temperature": 4.0},
            "ce": 0.4,
            # student's hidden block -> teacher's last hidden block; widths 32 vs 256: a learned projection
            "hidden_mse": {"weight": 0.5, "layers": [("body.1", "body.5")]},
            "relation": {"weight": 1.0, "on": "logits"},
        },
        val_data=val,
        settings=TrainSettings(epochs=args.epochs, batch_size=32, lr=3e-3, seed=args.seed, patience=5),
        cache=False,  # the teacher still runs once; its outputs are kept in memory, not on disk
    )
    m = result.metrics
    params = [sum(p.numel() for p in model.parameters()) for model in (teacher, student)]
    print(f"teacher: {params[0]:,} params, val accuracy {m['teacher']:.3f}")
    print(f"student: {params[1]:,} params, val accuracy {m['student']:.3f}")
    print(f"retention {m['retention']:.1%}, top-1 agreement with the teacher {m['agreement']:.1%}")
    print(f"best epoch {result.train.best_epoch} of {len(result.train.val_metrics)}; last epoch's losses:")
    print("  " + ", ".join(f"{k} {v:.4f}" for k, v in result.train.epoch_losses[-1].items()))


if __name__ == "__main__":
    main()
