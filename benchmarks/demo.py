"""The built-in demo, end to end: wall time, rounds, and the student against the teacher as ratios.

Run: python benchmarks/demo.py [--profile raspberry-pi] [--max-per-class N]

After the run, the teacher and the chosen student are exported to ONNX and timed side by side on this host,
alternating (teacher, student, teacher, student, ...) in the same runner, so that the latency ratio is not
skewed by load that comes and goes on a noisy machine. The wall time includes building the demo teacher
unless it is already cached.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from edge_distill.api import fit_to_device
from edge_distill.devices import profile_on_host
from edge_distill.errors import NothingFitsError
from edge_distill.students import LogitsOnly
from edge_distill.targets.base import get_target
from edge_distill.teachers import load_teacher

ALTERNATIONS = 5


def side_by_side(teacher_dir: Path, student_artifact: Path, seq_len: int, tmp: Path) -> list[float]:
    """Teacher/student host p90 ratios from alternating timings of the two ONNX artifacts."""
    import torch

    teacher = load_teacher(teacher_dir)
    example = {
        "input_ids": torch.ones(1, seq_len, dtype=torch.long),
        "attention_mask": torch.ones(1, seq_len, dtype=torch.long),
    }
    teacher_artifact = get_target("onnx").export(LogitsOnly(teacher.model).eval(), example, tmp / "teacher")
    inputs = {k: v.numpy() for k, v in example.items()}
    ratios = []
    for _ in range(ALTERNATIONS):
        t = profile_on_host(teacher_artifact, inputs, runs=100).p90_ms
        s = profile_on_host(student_artifact, inputs, runs=100).p90_ms
        ratios.append(t / s)
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="raspberry-pi")
    parser.add_argument("--max-per-class", type=int)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        try:
            report = fit_to_device(args.profile, out_dir=Path(tmp) / "run", max_per_class=args.max_per_class)
        except NothingFitsError as error:
            print(f"nothing fits: {error}")
            return
        wall = time.perf_counter() - start
        teacher, result = report["teacher"], report["result"]
        artifact = Path(tmp) / "run" / result["artifact"]
        ratios = side_by_side(Path(teacher["path"]), artifact, report["input"]["sequence_length"], Path(tmp))
    student = next(r for r in report["rounds"] if r["round"] == result["round"])
    t_acc, s_acc = teacher["metric"]["value"], student["metric"]["value"]
    t_params, s_params = teacher["params"], student["student"]["params"]
    print(f"profile              {report['profile']['name']}")
    cached = report["teacher_outputs"]["train"]["cache"]
    print(f"wall time            {wall:.0f} s  (teacher outputs: {cached})")
    print(f"rounds               {len(report['rounds'])}  (fits in round {result['round']})")
    print(f"accuracy             teacher {t_acc:.4f}  student {s_acc:.4f}  retention {s_acc / t_acc:.4f}")
    print(f"params               teacher {t_params / 1e6:.1f}M  student {s_params / 1e6:.1f}M", end="")
    print(f"  ratio {t_params / s_params:.2f}x smaller")
    print(
        f"host p90 latency     teacher/student {statistics.median(ratios):.2f}x faster "
        f"(median of {ALTERNATIONS} alternating timings, range {min(ratios):.2f}-{max(ratios):.2f}x)"
    )
    print(
        f"device p90 latency   student {student['latency_ms']['p90']:.1f} ms {student['latency_source']}"
        f"  (budget {report['budget']['latency_ms']['value']:g} ms)"
    )


if __name__ == "__main__":
    main()
