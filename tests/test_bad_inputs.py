"""Bad input, end to end: every case goes through the command line and must exit with its documented code
(README, "Exit codes"), print one sentence on stderr that names the problem and says the fix, show no
traceback, and leave no run folder behind, whole or half-written (``.<name>*.partial`` beside it).

Most cases fail before anything is trained, so the table runs in seconds; a full disk is a subprocess whose
file-size limit (RLIMIT_FSIZE) makes the first large write fail with EFBIG, as a full disk fails with ENOSPC.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edge_distill.cli import main
from edge_distill.profiles import load_profile

FAST = ["--epochs", "1", "--seq-len", "16", "--max-rounds", "1"]
FULL_DISK_BYTES = 1 << 20  # the tiny teacher's ONNX export (30522 x 64 embeddings, ~8 MB) cannot be written


@dataclass(frozen=True)
class Case:
    """One bad input: argv with {placeholders}, the exit code, and words its sentence must hold."""

    argv: list[str]
    code: int
    words: list[str]
    out: str = "{tmp}/run"  # the folder that must not exist afterwards (also passed as --out to a run)
    env: dict[str, str] = field(default_factory=dict)
    fsize: int | None = None  # run in a subprocess with this file-size limit (bytes)


def run(*extra: str, teacher: str = "{teacher}", data: str = "{data}") -> list[str]:
    """A main job on the host profile with the tiny teacher and data unless named otherwise."""
    return ["--profile", "host", "--teacher", teacher, "--data", data, *FAST, *extra]


CASES = {
    "unknown profile": Case(["--profile", "raspbery-pi"], 2, ["'raspbery-pi'", "did you mean", "use one of"]),
    "malformed TOML profile": Case(["--profile", "{bad_syntax}"], 2, ["not valid TOML", "fix the syntax"]),
    "profile with an unknown key": Case(
        ["--profile", "{unknown_key}"], 2, ["'colour'", "not a known key", "use one of"]
    ),
    "negative budget on the command line": Case(
        ["--profile", "host", "--latency-ms", "-5"], 2, ["latency_ms", "-5", "positive number"]
    ),
    "negative budget in a profile": Case(
        ["--profile", "{negative_budget}"], 2, ["budget.latency_ms", "-5", "greater than 0"]
    ),
    "missing teacher": Case(run(teacher="{tmp}/no/such/teacher"), 2, ["does not exist", "config.json"]),
    "image teacher on the command line": Case(
        run(teacher="{vit}"), 2, ["image-classification", "Python API"]
    ),
    "teacher of an unsupported architecture": Case(
        run(teacher="{t5}"), 2, ["T5ForConditionalGeneration", "no supported family", "--task"]
    ),
    "teacher of an unknown model type": Case(
        run(teacher="{unknown_type}"), 2, ["'nonesuch'", "does not know", "upgrade transformers"]
    ),
    "text column absent": Case(run("--text-column", "body"), 2, ["'body'", "--text-column"]),
    "label column absent": Case(run("--label-column", "topic"), 2, ["'topic'", "--label-column"]),
    "empty data": Case(run(data="{empty}"), 2, ["no rows", "add at least one row"]),
    "unknown export target": Case(
        ["export", "{teacher}", "--target", "nope", "--out", "{tmp}/artifacts"],
        2,
        ["'nope'", "use one of", "onnx"],
        out="{tmp}/artifacts",
    ),
    "profile listing an unknown target": Case(
        ["--profile", "{bad_target}"], 2, ["unknown target 'nope'", "use onnx"]
    ),
    "unreachable SSH device": Case(
        run("--device", "ssh://nobody@127.0.0.1:{port}", "--ssh-config", "{ssh_config}"),
        2,
        ["cannot reach", "connection refused", "try `ssh"],
    ),
    "ADB device without adb": Case(
        run("--device", "adb://emulator-5554", "--runner-binary", "{tmp}/executor_runner"),
        2,
        ["not on PATH", "platform-tools"],
        env={"PATH": "{tmp}/empty-bin"},
    ),
    # predicted to miss, so found before any probe or training (0.01 MB is predicted to fit and then
    # probes every candidate at every target and precision first: minutes)
    "budget nothing can meet": Case(run("--size-mb", "0.0001"), 3, ["no student", "size", "--size-mb"]),
    "unwritable --out": Case(
        run(), 2, ["/proc/edge-distill-test", "--out", "writable"], out="/proc/edge-distill-test"
    ),
    "full disk": Case(run(), 2, ["File too large", "ulimit -f"], fsize=FULL_DISK_BYTES),
}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Broken profiles, an empty CSV and teachers of the wrong kinds, written once for the table."""
    from transformers import T5Config, T5ForConditionalGeneration, ViTConfig, ViTForImageClassification

    root = tmp_path_factory.mktemp("bad-inputs")
    pi = load_profile("raspberry-pi").path.read_text()
    files = {
        "bad_syntax": "name = [unclosed\n",
        "unknown_key": 'colour = "red"\n' + pi,
        "negative_budget": re.sub(r"(?m)^latency_ms = .*$", "latency_ms = -5", pi),
        "bad_target": re.sub(r"(?m)^targets = .*$", 'targets = ["onnx", "nope"]', pi),
    }
    paths = {}
    for name, text in files.items():
        paths[name] = str(root / f"{name}.toml")
        Path(paths[name]).write_text(text)
    paths["empty"] = str(root / "empty.csv")
    Path(paths["empty"]).write_text("text,label\n")
    vit = ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
        patch_size=8, num_labels=3,
    )  # fmt: skip
    ViTForImageClassification(vit).save_pretrained(root / "vit")
    t5 = T5Config(d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16, vocab_size=100)
    T5ForConditionalGeneration(t5).save_pretrained(root / "t5")
    (root / "unknown-type").mkdir()
    (root / "unknown-type" / "config.json").write_text('{"model_type": "nonesuch"}\n')
    paths |= {"vit": str(root / "vit"), "t5": str(root / "t5"), "unknown_type": str(root / "unknown-type")}
    paths["ssh_config"] = str(root / "ssh_config")  # no ~/.ssh/config of this machine's user applies
    Path(paths["ssh_config"]).write_text(f"Host *\n  UserKnownHostsFile {root / 'known_hosts'}\n")
    return paths


def closed_port() -> int:
    """A local TCP port nothing listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_cli(argv: list[str], case: Case, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The exit code and stderr: in this process, or in a subprocess under a file-size limit."""
    if case.fsize is None:
        code = main(argv)
        return code, capsys.readouterr().err

    # The child sets its own limit (no preexec_fn: forking this threaded process is unsafe). Python ignores
    # SIGXFSZ, so a write past the limit fails with EFBIG instead of killing the process.
    limit = f"resource.setrlimit(resource.RLIMIT_FSIZE, ({case.fsize}, {case.fsize}))"
    script = f"import resource, runpy; {limit}; runpy.run_module('edge_distill', run_name='__main__')"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-c", script, *argv]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    return done.returncode, done.stderr


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_input_exits_with_one_sentence_and_writes_nothing(
    case: Case,
    bad_files: dict[str, str],
    tiny_teacher_dir: Path,
    tiny_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slots = {**bad_files, "teacher": str(tiny_teacher_dir), "data": str(tiny_csv), "tmp": str(tmp_path)}
    slots["port"] = str(closed_port())
    out = Path(case.out.format(**slots))
    argv = [arg.format(**slots) for arg in case.argv]
    argv += [] if argv[0] == "export" else ["--out", str(out)]
    for name, value in case.env.items():
        monkeypatch.setenv(name, value.format(**slots))
    (tmp_path / "empty-bin").mkdir()

    code, err = run_cli(argv, case, capsys)

    assert "Traceback" not in err, err
    assert code == case.code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # one line on stderr ...
    sentence = lines[0].removeprefix("error: ")
    assert lines[0].startswith("error: ") and sentence.endswith("."), err
    assert not re.search(r"[.!?] [A-Z]", sentence), err  # ... holding one sentence
    for word in case.words:
        assert word.lower() in sentence.lower(), f"{word!r} not in {sentence!r}"
    assert not out.exists(), f"{out} was left behind"
    assert not list(out.parent.glob(f".{out.name}*partial")), f"a half-written {out.name} was left behind"
