"""The built-in demo through the Python API: the same job as `edge-distill --profile raspberry-pi`.

Run: python examples/quickstart.py [--max-per-class 40]   (offline; about 2-5 minutes on 2 cores)

It distils all-MiniLM-L6-v2 (with a BBC News topic head) into a student that fits the Raspberry Pi 4's
budget, with a tighter latency budget than the profile's default, and prints what came out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge_distill.api import fit_to_device
from edge_distill.errors import NothingFitsError
from edge_distill.trainer import TrainSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-per-class", type=int, help="use a slice of the demo data (quicker)")
    parser.add_argument("--out", type=Path, default=Path("runs/quickstart"))
    args = parser.parse_args()
    try:
        report = fit_to_device(
            "raspberry-pi",
            budget={"latency_ms": 40},  # command-line level: beats the profile's 50 ms
            train=TrainSettings(epochs=3, temperature=2.0, alpha=0.5),
            out_dir=args.out,
            max_per_class=args.max_per_class,
        )
    except NothingFitsError as error:
        raise SystemExit(f"nothing fits: {error}") from None
    result = report["result"]
    chosen = next(r for r in report["rounds"] if r["round"] == result["round"])
    print(
        json.dumps(
            {
                "student": chosen["student"],
                "accuracy": chosen["metric"]["value"],
                "p90_ms": chosen["latency_ms"]["p90"],
                "source": chosen["latency_source"],
            },
            indent=2,
        )
    )
    print(f"artifact: {args.out / result['artifact']}  student: {args.out / 'student'}")


if __name__ == "__main__":
    main()
