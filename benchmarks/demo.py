"""The built-in demo, end to end: wall time, rounds, and the student against the teacher as ratios.

Run: python benchmarks/demo.py [--profile raspberry-pi] [--max-per-class N]
Both models are timed on this host in one run (same runtime, same runner), so the ratios compare like
with like; the wall time includes building the demo teacher unless it is already cached.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from edge_distill.api import fit_to_device
from edge_distill.errors import NothingFitsError


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
    student = next(r for r in report["rounds"] if r["round"] == result["round"])
    print(f"profile              {report['profile']['name']}")
    print(f"wall time            {wall:.0f} s  (teacher outputs: {report['teacher_outputs']['cache']})")
    print(f"rounds               {len(report['rounds'])}  (fits in round {result['round']})")
    print(
        f"accuracy             teacher {teacher['metric']['value']:.4f}"
        f"  student {student['metric']['value']:.4f}"
        f"  retention {student['retention']:.4f}"
    )
    print(
        f"params               teacher {teacher['params'] / 1e6:.1f}M"
        f"  student {student['student']['params'] / 1e6:.1f}M"
        f"  ratio {teacher['params'] / student['student']['params']:.2f}x smaller"
    )
    host_t, host_s = teacher["host_latency_ms"]["p90"], student["host_latency_ms"]["p90"]
    print(
        f"host p90 latency     ratio teacher/student {host_t / host_s:.2f}x"
        "  (onnxruntime, same runner, one run)"
    )
    print(
        f"device p90 latency   student {student['latency_ms']['p90']:.1f} ms {student['latency_source']}"
        f"  (budget {report['budget']['latency_ms']['value']:g} ms)"
    )


if __name__ == "__main__":
    main()
