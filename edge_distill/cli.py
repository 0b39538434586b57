"""The command line. Thin: parse, call the library, print.

Exit codes: 0 a student fits (or the command succeeded); 2 bad input or an unreachable device, with one
sentence naming the problem and the fix; 3 no student fits the budget (`profile --profile`: the artifact
misses the profile's budget); 130 interrupted (nothing half-written is left).

Example:
    $ edge-distill --profile raspberry-pi
    $ edge-distill profiles --json
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from edge_distill import __version__
from edge_distill.errors import EdgeDistillError, ProfileError, disk_error

JSON_SCHEMA = 1
CONFIG_KEYS = {
    "budget": {"latency_ms", "memory_mb", "size_mb", "min_retention", "accelerator_share"},
    "losses": None,
}


def run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-distill",
        description="Distil a teacher into a student that fits a device profile "
        "(the built-in demo when no teacher and data are given). "
        "Other commands: `edge-distill profiles [show NAME]`, `edge-distill export STUDENT_DIR`, "
        "`edge-distill profile ARTIFACT --device URL`.",
    )
    parser.add_argument("--version", action="version", version=f"edge-distill {__version__}")
    parser.add_argument("--profile", help="device profile name or alias, or a path to a .toml (required)")
    parser.add_argument(
        "--teacher",
        help="Hugging Face folder or hub id: a text classifier, a sentence-embedding model or a causal LM "
        "(a folder with one .gguf file works too)",
    )
    parser.add_argument(
        "--task",
        help="the teacher's family when config.json does not say it: sequence-classification, "
        "sentence-embedding or causal-lm (default: detected)",
    )
    parser.add_argument("--data", help="CSV, JSONL or Parquet file with a text column (and labels if any)")
    parser.add_argument("--text-column", default="text")
    parser.add_argument(
        "--label-column",
        help="the labels' column (default: 'label' when the file has one; with none, the teacher's outputs "
        "are the labels)",
    )
    parser.add_argument(
        "--width",
        choices=["prune", "slice"],
        default="prune",
        help="narrower students keep the most important heads, neurons and channels (prune) or the first",
    )
    parser.add_argument(
        "--teacher-text",
        type=int,
        default=0,
        metavar="N",
        help="causal LMs: the teacher writes N training texts continuing training prompts, and the student "
        "trains on them too (sequence-level KD; written once, cached)",
    )
    parser.add_argument(
        "--no-vocab-trim",
        action="store_true",
        help="keep the teacher's whole vocabulary (by default students trimmed to the data's tokens are "
        "candidates too)",
    )
    parser.add_argument(
        "--latency-ms", type=float, help="p90 latency budget at batch 1 (overrides the profile)"
    )
    parser.add_argument("--memory-mb", type=float, help="runtime memory budget (overrides the profile)")
    parser.add_argument("--size-mb", type=float, help="artifact size budget (overrides the profile)")
    parser.add_argument(
        "--min-retention",
        type=float,
        help="accuracy floor: student metric / teacher metric, 0-1 (default: the profile's, else 0.95)",
    )
    parser.add_argument(
        "--accelerator-share",
        type=float,
        help="floor on the share of ops a target runs on the accelerator, 0-1, where the target reports it",
    )
    parser.add_argument(
        "--target",
        action="append",
        help="only these targets (repeatable; default: the profile's, each at every precision it offers)",
    )
    parser.add_argument(
        "--precision",
        action="append",
        help="only these precisions (repeatable: fp32, fp16, int8, int8-dynamic, palettized)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a fast trial: the teacher's cost predicted, no up-front target check, only the winning "
        "target ships, 20 timing runs",
    )
    parser.add_argument(
        "--config", type=Path, help="TOML file with a [budget] table (below the command line)"
    )
    parser.add_argument("--temperature", type=float, default=2.0, help="softmax temperature for soft targets")
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the soft-target (KD) loss vs CE")
    parser.add_argument(
        "--loss",
        action="append",
        metavar="TERM=WEIGHT",
        help="a loss term and its weight, repeatable (kd, ce, reverse_kd, jsd, logit_mse, hidden_mse, "
        "hidden_cosine, attention_kl, attention_mse, embedding_mse, embedding_cosine, relation); "
        "default: kd=ALPHA and ce=1-ALPHA; options per term go in the config's [losses.TERM] table",
    )
    parser.add_argument(
        "--scheme",
        choices=["offline", "online"],
        default="offline",
        help="offline: the teacher runs once and its outputs are cached; online: it runs every step",
    )
    parser.add_argument("--top-k", type=int, default=64, help="teacher logits kept per position in the cache")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--patience", type=int, help="stop after N epochs without a better validation score")
    parser.add_argument("--mixed-precision", choices=["auto", "bf16", "fp16", "no"], default="auto")
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        metavar="RUN",
        help="continue an interrupted run (runs/<run>, or the --out folder) after its last finished round "
        "and epoch; `--resume RUN` alone repeats the command that started it",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seq-len", type=int, help="tokens per input (default: the profile's)")
    parser.add_argument(
        "--max-rounds", type=int, default=6, help="most rounds (each distils or re-exports one student)"
    )
    parser.add_argument(
        "--no-probe",
        action="store_true",
        help="train candidates without first timing an untrained copy (cheaper where probing is slow)",
    )
    parser.add_argument("--max-per-class", type=int, help="use at most N examples per class of the demo data")
    parser.add_argument(
        "--device",
        help="ssh://user@host[:port] or adb://SERIAL: time every round there; the loop decides on that "
        "measurement instead of a prediction (see `edge-distill profile --help` for the device options)",
    )
    parser.add_argument("--device-python", help="ssh: the device's Python with the runtime (default python3)")
    parser.add_argument("--ssh-config", type=Path, help="ssh: a config file instead of ~/.ssh/config")
    parser.add_argument("--runner-binary", help="adb: executor_runner (.pte) or benchmark_model (.tflite)")
    parser.add_argument("--out", type=Path, help="run folder (default runs/<profile>-<time>)")
    parser.add_argument("--json", action="store_true", help="print a JSON envelope instead of text")
    return parser


def profiles_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-distill profiles", description="List or show device profiles."
    )
    parser.add_argument("action", nargs="?", choices=["show"], help="show one profile")
    parser.add_argument("name", nargs="?", help="profile name, alias or .toml path (with `show`)")
    parser.add_argument("--json", action="store_true")
    return parser


def export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-distill export",
        description="Export a saved student to mobile artifacts, verify each against the student, and write "
        "artifacts/<target>-<precision>/ (model, tokenizer, labels, metadata.json, a torch-free runner).",
    )
    parser.add_argument("student", type=Path, help="the student folder (runs/<run>/student) or any HF folder")
    parser.add_argument(
        "--target",
        action="append",
        help="onnx, executorch, executorch-coreml, tflite, coreml or all (repeatable; default: the "
        "profile's targets with --profile, else all)",
    )
    parser.add_argument(
        "--precision",
        action="append",
        help="fp32, fp16, int8, int8-dynamic, palettized or all (repeatable; default: each target's first)",
    )
    parser.add_argument("--out", type=Path, help="default: the artifacts/ folder beside the student folder")
    parser.add_argument("--profile", help="device profile (Core ML deployment target, default targets)")
    parser.add_argument("--data", help="data to calibrate and verify on (default: what the run used)")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column")
    parser.add_argument(
        "--seq-len", type=int, help="fixed sequence length (default: the run's, else the profile's)"
    )
    parser.add_argument("--json", action="store_true")
    return parser


def export_command(args: argparse.Namespace, console: Console) -> int:
    from edge_distill.console import exports_table
    from edge_distill.exporting import export_student
    from edge_distill.profiles import load_profile

    profile = load_profile(args.profile) if args.profile else None
    targets = args.target or (list(profile.targets) if profile else ["all"])
    out = args.out or args.student.resolve().parent / "artifacts"
    quiet = Console(quiet=True) if args.json else console
    results = export_student(
        args.student, targets=targets, precisions=args.precision, out=out, data=args.data,
        text_column=args.text_column, label_column=args.label_column, profile=profile, seq_len=args.seq_len,
        say=lambda text: quiet.print(text, highlight=False, soft_wrap=True),
    )  # fmt: skip
    failed = [r for r in results if "error" in r]
    if args.json:
        code = 2 if failed else 0
        print(json.dumps(envelope("export", {"out": str(out), "artifacts": results}, code=code)))
        return code
    console.print(exports_table(results, out))
    for result in failed:
        fail(console, "export", False, f"{result['target']} {result['precision']}: {result['error']}", 2)
    return 2 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    console = Console(stderr=False)
    wants_json = "--json" in argv
    command = argv[0] if argv[:1] in (["profiles"], ["export"], ["profile"]) else "run"
    try:
        if command == "profile":
            from edge_distill.cli_profile import profile_command, profile_parser

            return profile_command(profile_parser().parse_args(argv[1:]), console)
        if command == "profiles":
            return profiles_command(profiles_parser().parse_args(argv[1:]), console)
        if command == "export":
            return export_command(export_parser().parse_args(argv[1:]), console)
        return run_command(parse_run_args(argv), console)
    except EdgeDistillError as error:
        return fail(console, command, wants_json, str(error), error.exit_code)
    except KeyboardInterrupt:
        message = "Interrupted before any round finished; nothing half-written was left behind."
        return fail(console, command, wants_json, message, 130)
    except OSError as error:  # a full or read-only disk; any other OSError is a bug and shows its traceback
        disk = disk_error(error)
        if disk is None:
            raise
        return fail(console, command, wants_json, str(disk), disk.exit_code)


def parse_run_args(argv: list[str]) -> argparse.Namespace:
    """The main job's arguments; `--resume RUN` alone (with --json at most) repeats the stored command."""
    from edge_distill.rundir import stored_command

    args = run_parser().parse_args(argv)
    args.argv = argv
    if isinstance(args.resume, str):
        run = Path(args.resume)
        bare = [a for a in argv if a not in ("--resume", args.resume, "--json")]
        stored = stored_command(run)
        if not bare and stored is None:
            raise EdgeDistillError(
                f"No interrupted command-line run to resume at {run} (no .{run.name}.partial/command.json "
                "beside it); give the run's folder, or repeat the whole command with --resume."
            )
        if not bare:
            args = run_parser().parse_args([*stored, *(["--json"] if args.json else [])])
            args.argv = stored
        args.out, args.resume = run, True
    if args.profile is None:
        raise ProfileError(
            "The main job needs --profile NAME (see `edge-distill profiles`), or --resume RUN."
        )
    return args


def fail(console: Console, command: str, wants_json: bool, message: str, code: int) -> int:
    if not is_main_rank():  # under `accelerate launch` the main rank speaks for all
        return code
    if wants_json:
        print(json.dumps(envelope(command, None, error=message, code=code)))
    else:
        Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return code


def envelope(command: str, result: Any, *, error: str | None = None, code: int = 0) -> dict[str, Any]:
    return {
        "schema": JSON_SCHEMA,
        "command": command,
        "ok": code == 0,
        "exit_code": code,
        "error": error,
        "result": result,
    }


def profiles_command(args: argparse.Namespace, console: Console) -> int:
    from edge_distill.profiles import available_profiles, load_profile
    from edge_distill.profiles_view import profile_detail, profiles_table

    if args.action == "show":
        if not args.name:
            raise ProfileError(
                "`edge-distill profiles show` needs a profile name; run `edge-distill profiles`."
            )
        profile = load_profile(args.name)
        if args.json:
            print(json.dumps(envelope("profiles show", profile.as_dict()), indent=2))
        else:
            console.print(profile_detail(profile))
        return 0
    profiles = available_profiles()
    if args.json:
        print(json.dumps(envelope("profiles", [p.as_dict() for p in profiles]), indent=2))
    else:
        console.print(profiles_table(profiles))
    return 0


def read_config(path: Path | None) -> dict[str, Any]:
    """The run config file: a [budget] table and a [losses] table; unknown keys are errors."""
    if path is None:
        return {}
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ProfileError(f"Config file {path} does not exist; check the --config path.") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"Config file {path} is not valid TOML ({exc}); fix the syntax.") from exc
    budget_keys = CONFIG_KEYS["budget"] or set()
    unknown = sorted(set(raw) - set(CONFIG_KEYS) or set(raw.get("budget", {})) - budget_keys)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(budget_keys | set(CONFIG_KEYS)), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ProfileError(
            f"Config file {path} has unknown key(s) {', '.join(unknown)}{hint}; "
            f"allowed: [budget] with {', '.join(sorted(budget_keys))}, and [losses]."
        )
    return raw


def parse_losses(terms: list[str] | None, config: dict[str, Any]) -> dict[str, Any] | None:
    """The loss spec: the config's [losses] table, with --loss TERM=WEIGHT overriding weights."""
    spec: dict[str, Any] = dict(config.get("losses", {}))
    for term in terms or []:
        name, sep, weight = term.partition("=")
        try:
            value = float(weight)
        except ValueError:
            value = None
        if not sep or not name or value is None:
            raise EdgeDistillError(f"--loss {term!r} is not TERM=WEIGHT; write it like --loss kd=0.5.")
        entry = spec.get(name)
        spec[name] = {**entry, "weight": value} if isinstance(entry, dict) else value
    return spec or None


def run_command(args: argparse.Namespace, console: Console) -> int:
    from edge_distill.api import make_job, resolve_device
    from edge_distill.console import ConsoleReporter, rounds_table
    from edge_distill.loop import run_job
    from edge_distill.trainer import TrainSettings

    quiet = Console(quiet=True) if args.json or not is_main_rank() else console
    reporter = ConsoleReporter(quiet)
    train = TrainSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        temperature=args.temperature,
        alpha=args.alpha,
        seed=args.seed,
        grad_accum=args.grad_accum,
        patience=args.patience,
        mixed_precision=args.mixed_precision,
    )
    config = read_config(args.config)
    device = None
    if args.device:
        from edge_distill.devices import open_device

        device = open_device(
            args.device,
            python=args.device_python,
            ssh_config=args.ssh_config,
            runner_binary=args.runner_binary,
        )
    profile, budget = resolve_device(
        args.profile,
        budget={
            "latency_ms": args.latency_ms,
            "memory_mb": args.memory_mb,
            "size_mb": args.size_mb,
            "min_retention": args.min_retention,
            "accelerator_share": args.accelerator_share,
        },
        config=config.get("budget", {}),
        config_source=f"config file {args.config}",
    )
    alias = f" (alias of {profile.name})" if args.profile in profile.aliases else ""
    quiet.print(
        f"Profile {args.profile}{alias}: budget p90 latency <= {budget.latency_ms:g} ms, "
        f"memory <= {budget.memory_mb:g} MB, size <= {budget.size_mb:g} MB, "
        f"retention >= {budget.min_retention:.0%}",
        highlight=False,
        soft_wrap=True,
    )
    job = make_job(
        profile=profile,
        budget=budget,
        teacher=args.teacher,
        data=args.data,
        train=train,
        out_dir=args.out,
        text_column=args.text_column,
        label_column=args.label_column,
        task=args.task,
        width=args.width,
        trim_vocab=not args.no_vocab_trim,
        teacher_text=args.teacher_text,
        seq_len=args.seq_len,
        max_rounds=args.max_rounds,
        max_per_class=args.max_per_class,
        probe=not args.no_probe,
        losses=parse_losses(args.loss, config),
        scheme=args.scheme,
        top_k=args.top_k,
        resume=bool(args.resume),
        device=device,
        targets=args.target,
        precisions=args.precision,
        quick=args.quick,
        command=command_line(args.argv),
        reporter=reporter,
    )
    try:
        report = run_job(job, reporter)
    except EdgeDistillError as error:
        if not is_main_rank():
            return error.exit_code
        report_path = job.out_dir / "report.json"
        if report_path.exists() and not args.json:
            console.print(rounds_table(json.loads(report_path.read_text())))
            console.print(f"Report: {report_path}")
        raise error
    if report is None:  # another rank of `accelerate launch`: the main rank reports
        return 0
    if args.json:
        print(json.dumps(envelope("run", {"report": str(job.out_dir / "report.json"), **report["result"]})))
        return 0
    console.print(rounds_table(report))
    console.print(fits_line(report), highlight=False, soft_wrap=True)
    console.print(f"Report: {job.out_dir / 'report.json'}", highlight=False, soft_wrap=True)
    return 0


def command_line(argv: list[str]) -> list[str]:
    """The job's own arguments as typed, less --resume, --json and --out (the run adds its folder): kept
    in the run so that `--resume RUN` alone continues it."""
    kept, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg == "--out" or (arg == "--resume" and i + 1 < len(argv) and not argv[i + 1].startswith("-")):
            skip = True
        elif arg not in ("--resume", "--json") and not arg.startswith(("--out=", "--resume=")):
            kept.append(arg)
    return kept


def is_main_rank() -> bool:
    """False on the other ranks of `accelerate launch` (they print nothing)."""
    return os.environ.get("RANK", "0") == "0"


def fits_line(report: dict[str, Any]) -> str:
    result = report["result"]
    winner = next(r for r in report["rounds"] if r["round"] == result["round"])
    from edge_distill.profiles import latency_where

    where = latency_where(winner["latency_source"], winner.get("device"), report["profile"]["name"])
    retention = f" (retention {winner['retention']:.1%})" if winner["retention"] is not None else ""
    return (
        f"Fits: round {winner['round']}, {winner['student']['params'] / 1e6:.1f}M params, "
        f"{winner['metric']['name']} {winner['metric']['value']:.3f}{retention}, "
        f"p90 {winner['latency_ms']['p90']:.1f} ms {where}; artifact {result['artifact']}"
    )


if __name__ == "__main__":
    sys.exit(main())
