"""Scale-out: `accelerate launch` with 2 CPU processes on gloo, for the engine and for the whole job.

Both tests start real processes through Accelerate's own launcher (torchrun underneath), as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

LAUNCH = [
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--multi_gpu",  # Accelerate's multi-process launcher; on a machine without GPUs the ranks use gloo
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
    "--main_process_port",
]


def free_port() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def launch_env(cache: Path) -> dict[str, str]:
    # one thread per rank: two ranks on two cores
    return {**os.environ, "EDGE_DISTILL_CACHE": str(cache), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


SCRIPT = textwrap.dedent(
    """
    import hashlib, json, sys
    import torch
    from transformers import BertConfig, BertForSequenceClassification
    import edge_distill
    from edge_distill.trainer import TrainSettings

    out = sys.argv[1]
    def config(hidden, layers):
        return BertConfig(vocab_size=64, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                          intermediate_size=2 * hidden, max_position_embeddings=16, num_labels=3)
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(config(32, 2))
    student = BertForSequenceClassification(config(16, 1))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 64, (40, 8), generator=g)
    labels = torch.randint(0, 3, (40,), generator=g)
    data = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    settings = TrainSettings(epochs=2, batch_size=8, lr=1e-3, mixed_precision="no")
    losses = {"kd": 0.5, "ce": 0.5, "hidden_mse": 1.0}
    result = edge_distill.distill(teacher, student, data, losses, settings=settings, cache=out + "/cache")
    digest = hashlib.sha256()
    for name, tensor in sorted(student.state_dict().items()):
        digest.update(name.encode() + tensor.numpy().tobytes())
    rank = torch.distributed.get_rank()
    payload = {"rank": rank, "weights": digest.hexdigest(), "processes": result.train.processes,
               "steps": result.train.steps, "cache": result.cache}
    open(f"{out}/rank{rank}.json", "w").write(json.dumps(payload))
    """
)


def test_engine_ddp_two_processes_sync_weights_and_shard_the_cache(tmp_path: Path) -> None:
    script = tmp_path / "distil.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [*LAUNCH, free_port(), str(script), str(tmp_path)],
        env=launch_env(tmp_path / "user-cache"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["processes"] == ranks[1]["processes"] == 2
    assert ranks[0]["weights"] == ranks[1]["weights"]  # DDP kept the replicas identical
    assert ranks[0]["steps"] == 2 * 3  # 40 rows / (8 per rank x 2 ranks) -> 3 steps per epoch
    # the teacher cache: one part per rank, each written once, covering all 40 rows between them
    (entry,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir() and (p / "manifest.json").exists()][
        :1
    ]
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["parts"] == [[0, 20], [20, 40]]
    assert len(list(entry.glob("*.safetensors"))) == 2


def test_cli_job_under_accelerate_launch(tiny_teacher_dir: Path, tiny_csv: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "run"
    args = ["-m", "edge_distill", "--profile", "host", "--teacher", str(tiny_teacher_dir), "--data"]
    args += [str(tiny_csv), "--seq-len", "16", "--epochs", "1", "--max-rounds", "1", "--no-probe"]
    args += ["--latency-ms", "1000", "--memory-mb", "4000", "--out", str(out_dir), "--json"]
    done = subprocess.run(
        [*LAUNCH, free_port(), *args],
        env=launch_env(tmp_path / "user-cache"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    envelopes = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(envelopes) == 1  # the main rank speaks for both
    assert json.loads(envelopes[0])["result"]["fits"] is True
    report = json.loads((out_dir / "report.json").read_text())
    (only,) = report["rounds"]
    assert only["train"]["processes"] == 2
    train_cache = report["teacher_outputs"]["train"]
    assert train_cache["cache"] == "computed" and train_cache["bytes_per_example"] > 0
    manifests = list(Path(train_cache["path"]).glob("*/manifest.json"))
    assert [len(json.loads(m.read_text())["parts"]) for m in manifests] == [2]
    assert not list(tmp_path.glob(".*partial"))  # no other rank left a run folder behind
