"""The command line end to end on a tiny random teacher, and every bad input's one-sentence exit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_distill.cli import main

FAST = ["--epochs", "1", "--seq-len", "16", "--max-rounds", "2"]
QUICK = [*FAST, "--quick"]  # only the winning target ships: most tests need not export every target


@pytest.fixture
def optimistic_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Learn nothing about artifact size from the teacher's export (the first measurement): the largest
    candidate is then predicted by its weights alone to fit a budget its graph bytes make it miss once
    exported; from that round on the overhead is measured."""
    from types import SimpleNamespace

    import edge_distill.search as search

    real = search.size_overhead

    def after_the_teacher(latencies: dict, option: object) -> float:
        seen = {
            o: SimpleNamespace(measurements=m.measurements[1:] if i == 0 else m.measurements)
            for i, (o, m) in enumerate(latencies.items())
        }
        return real(seen, option)

    monkeypatch.setattr(search, "size_overhead", after_the_teacher)


def pair(teacher: Path, data: Path) -> list[str]:
    """The user's own teacher and data, as command-line flags."""
    return ["--teacher", str(teacher), "--data", str(data)]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_tiny_teacher_fits_host(tiny_teacher_dir: Path, tiny_csv: Path, tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "run"
    config = tmp_path / "run.toml"
    config.write_text("[budget]\nlatency_ms = 5\nmemory_mb = 1500\n")
    code, out, err = run(
        capsys,
        "--profile",
        "host",
        *pair(tiny_teacher_dir, tiny_csv),
        "--out",
        str(out_dir),
        "--config",
        str(config),
        "--latency-ms",
        "1000",
        *FAST,
    )
    assert code == 0, err
    assert "Fits: round 1" in out
    report = json.loads((out_dir / "report.json").read_text())
    assert report["schema"] == 2
    # precedence: command line > config file > profile, each value with its source
    assert report["budget"]["latency_ms"] == {"value": 1000.0, "source": "command line (--latency-ms)"}
    assert report["budget"]["memory_mb"]["value"] == 1500.0
    assert report["budget"]["memory_mb"]["source"].startswith(f"config file {config}")
    assert report["budget"]["size_mb"]["source"].startswith("profile host")
    (first,) = report["rounds"]
    assert first["fits"] and first["latency_source"] == "measured-host"
    assert first["verification"]["status"] == "verified" and first["verification"]["max_abs_diff"] <= 1e-4
    assert first["action"] == "distill" and first["why"] and first["meets_floor"]
    assert first["latency_ms"]["p50"] <= first["latency_ms"]["p90"] <= first["latency_ms"]["p99"]
    assert first["student"]["params"] < report["teacher"]["params"]
    result = report["result"]
    assert {k: result[k] for k in ("fits", "round", "student", "reason", "precision")} == {
        "fits": True,
        "round": 1,
        "student": "student",
        "reason": None,
        "precision": "fp32",
    }
    assert result["artifact"].startswith(f"artifacts/{result['target']}-fp32/model.")
    # every target of the host profile ships its bundle, each verified here
    shipped = {(a["target"], a["precision"]): a for a in result["artifacts"]}
    assert set(shipped) == {("onnx", "fp32"), ("executorch", "fp32"), ("tflite", "fp32")}
    assert all(a["verification"] == "verified" and a["max_abs_diff"] <= 1e-4 for a in shipped.values())
    # the other targets' bundles are timed here like a round's artifact, not only predicted
    others = [a for a in shipped.values() if a["target"] != result["target"]]
    assert len(others) == 2 and all(a["latency_source"] == "measured-host" for a in others)
    assert all(0 < a["p90_ms"] <= 1000 and a["fits_budget"] for a in others)
    assert "; p90 " in out and "measured on this host -> fits)" in out
    bundle = out_dir / "artifacts" / "onnx-fp32"
    assert {"model.onnx", "metadata.json", "labels.json", "inputs.npz", "runner.py", "tokenizer"} <= {
        p.name for p in bundle.iterdir()
    }
    metadata = json.loads((bundle / "metadata.json").read_text())
    assert metadata["profile"]["name"] == "host" and metadata["verification"]["status"] == "verified"
    assert metadata["preprocess"]["sequence_length"] == report["input"]["sequence_length"]
    assert [i["name"] for i in metadata["signature"]["inputs"]] == ["input_ids", "attention_mask"]
    assert (out_dir / first["artifact"]).is_file() and (
        out_dir / first["student_dir"] / "config.json"
    ).is_file()
    assert (out_dir / "report.html").is_file() and "model-index" in (
        out_dir / "student" / "README.md"
    ).read_text()
    record = json.loads((out_dir / "student" / "edge_distill.json").read_text())
    assert record["data"]["source"] == str(tiny_csv.resolve())
    # the student exports again later with nothing but its folder: the run recorded its data
    code, out, err = run(
        capsys, "export", str(out_dir / "student"), "--target", "onnx", "--precision", "int8"
    )
    assert code == 0, err
    assert (
        json.loads((out_dir / "artifacts" / "onnx-int8" / "metadata.json").read_text())["verification"][
            "status"
        ]
        == "verified"
    )
    assert (out_dir / "student" / "config.json").is_file()
    assert (out_dir / "student" / "tokenizer.json").is_file()
    assert not list(tmp_path.glob(".*partial"))


def test_predicted_latency_on_a_device_profile(
    tiny_teacher_dir: Path, tiny_csv: Path, tmp_path: Path, capsys
) -> None:
    out_dir = tmp_path / "run"
    code, out, err = run(
        capsys,
        "--profile",
        "raspberry-pi",
        *pair(tiny_teacher_dir, tiny_csv),
        "--out",
        str(out_dir),
        "--json",
        *QUICK,
    )
    assert code == 0, err
    envelope = json.loads(out)
    assert envelope["schema"] == 1 and envelope["ok"] and envelope["result"]["fits"]
    report = json.loads((out_dir / "report.json").read_text())
    assert report["profile"]["name"] == "raspberry-pi-4"
    first = report["rounds"][0]
    assert first["latency_source"] == "predicted"
    assert first["calibration"]["device_gflops"] == pytest.approx(40.5)
    ratio = first["latency_ms"]["p90"] / first["host_latency_ms"]["p90"]
    calibration = first["calibration"]
    assert ratio == pytest.approx(
        calibration["host_reference_gflops"] / calibration["device_gflops"], rel=0.01
    )
    assert report["teacher_outputs"]["held_out"]["cache"] in {"hit", "computed"}
    assert report["teacher_outputs"]["train"]["scheme"] == "offline"


def test_teacher_outputs_computed_once_across_runs(
    tiny_teacher_dir: Path, tiny_csv: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    from edge_distill.families import SequenceClassification

    calls = []
    original = SequenceClassification.reference

    def counting(self, model, inputs):
        calls.append(model)
        return original(self, model, inputs)

    monkeypatch.setattr(SequenceClassification, "reference", counting)
    args = [
        "--profile",
        "host",
        *pair(tiny_teacher_dir, tiny_csv),
        "--max-rounds",
        "1",
        "--epochs",
        "1",
        "--seq-len",
        "24",
        "--quick",
    ]
    import edge_distill.offline as offline

    passes = []
    original_rows = offline.teacher_rows

    def counting_rows(*args, **kwargs):
        compute = original_rows(*args, **kwargs)
        return lambda *a: passes.append(a) or compute(*a)

    monkeypatch.setattr(offline, "teacher_rows", counting_rows)
    assert run(capsys, *args, "--out", str(tmp_path / "a"))[0] == 0
    first_run = len(calls)  # the teacher on val and test once, plus the student's test pass
    assert first_run <= 3 and len(passes) == 1  # one teacher pass over the training split
    assert run(capsys, *args, "--out", str(tmp_path / "b"))[0] == 0
    assert len(calls) - first_run == 1  # second run: the teacher is not run again, only the student
    assert len(passes) == 1
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["teacher_outputs"]["held_out"]["cache"] == "hit"
    assert report["teacher_outputs"]["train"]["cache"] == "hit"


def test_budget_no_student_can_meet_exits_3_and_writes_nothing(
    tiny_teacher_dir: Path, tiny_csv: Path, tmp_path: Path, capsys
) -> None:
    out_dir = tmp_path / "run"
    code, _, err = run(
        capsys,
        "--profile",
        "host",
        *pair(tiny_teacher_dir, tiny_csv),
        "--out",
        str(out_dir),
        "--size-mb",
        "0.01",
        *FAST,
    )
    assert code == 3
    assert "No student of this teacher can fit host" in err and "size" in err and "--size-mb" in err
    assert "Traceback" not in err
    assert not out_dir.exists() and not list(tmp_path.glob(".*partial"))


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--profile", "raspbery-pi"], ["Did you mean", "raspberry-pi"]),
        (["--profile", "host", "--teacher", "./no/such/teacher", "--data", "x.csv"], ["does not exist"]),
        (
            ["--profile", "host", "--teacher", "TEACHER", "--data", "DATA", "--text-column", "body"],
            ["body", "--text-column"],
        ),
        (["--profile", "host", "--teacher", "TEACHER"], ["--data"]),
        (["--profile", "host", "--latency-ms", "-5"], ["latency"]),
        (["--profile", "host", "--alpha", "2"], ["--alpha"]),
        (["--profile", "host", "--config", "BADCONFIG"], ["unknown key", "budget"]),
        (["--profile", "BADTOML"], ["TOML"]),
        (["--profile", "host", "--teacher", "TEACHER", "--data", "EMPTY"], ["empty"]),
    ],
)
def test_bad_input_is_one_sentence_exit_2(
    argv: list[str], words: list[str], tiny_teacher_dir: Path, tiny_csv: Path, tmp_path: Path, capsys
) -> None:
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("name = [unclosed\n")
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    bad_config = tmp_path / "run.toml"
    bad_config.write_text("[budget]\nlatncy_ms = 5\n")
    swap = {
        "BADCONFIG": str(bad_config),
        "TEACHER": str(tiny_teacher_dir),
        "DATA": str(tiny_csv),
        "BADTOML": str(bad_toml),
        "EMPTY": str(empty),
    }
    out_dir = tmp_path / "run"
    code, _, err = run(capsys, *[swap.get(a, a) for a in argv], "--out", str(out_dir), *FAST)
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    for word in words:
        assert word.lower() in err.lower()
    assert not out_dir.exists()


def test_existing_run_folder_is_not_overwritten(
    tiny_teacher_dir: Path, tiny_csv: Path, tmp_path: Path, capsys
) -> None:
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("mine")
    code, _, err = run(
        capsys,
        "--profile",
        "host",
        *pair(tiny_teacher_dir, tiny_csv),
        "--out",
        str(out_dir),
        *FAST,
    )
    assert code == 2 and "already exists" in err
    assert (out_dir / "keep.txt").read_text() == "mine"


def test_profiles_command_lists_and_shows(capsys) -> None:
    code, out, _ = run(capsys, "profiles", "--json")
    assert code == 0
    names = {p["name"] for p in json.loads(out)["result"]}
    assert {"raspberry-pi-4", "host", "stm32h7"} <= names
    code, out, _ = run(capsys, "profiles", "show", "raspberry-pi")
    assert code == 0 and "raspberry-pi-4" in out
    code, _, err = run(capsys, "profiles", "show", "nope")
    assert code == 2 and "nope" in err


def shrink_budget(teacher_dir: Path) -> float:
    """A size budget the largest candidate is predicted to meet but misses once exported (graph bytes)."""
    from edge_distill.cut import Cutter
    from edge_distill.families import get_family
    from edge_distill.planner import cost_candidates
    from edge_distill.teachers import load_teacher

    cutter = Cutter(load_teacher(teacher_dir).model, get_family("sequence-classification"))
    largest = cost_candidates(cutter, seq_len=16)[0]
    return largest.size_mb + 0.001


def unprobed_size_miss(teacher_dir: Path, data: Path) -> list[str]:
    """Flags under which round 1 trains the largest candidate and then misses the size budget."""
    size = f"{shrink_budget(teacher_dir):.6f}"
    # --no-probe: train without timing an untrained copy first, so the miss is found after training;
    # --no-vocab-trim: else the teacher's own shape, trimmed to the data's few tokens, comes first and fits
    # --target onnx --precision fp32: no cheaper export of the same student to fall back on
    flags = ["--size-mb", size, "--no-probe", "--no-vocab-trim", "--target", "onnx", "--precision", "fp32"]
    return ["--profile", "host", *pair(teacher_dir, data), *flags]


def test_loop_shrinks_after_a_measured_miss(
    tiny_teacher_dir: Path, tiny_csv: Path, tmp_path: Path, capsys, optimistic_size
) -> None:
    out_dir = tmp_path / "run"
    args = unprobed_size_miss(tiny_teacher_dir, tiny_csv)
    code, _out, err = run(capsys, *args, "--out", str(out_dir), *FAST)
    assert code == 0, err
    report = json.loads((out_dir / "report.json").read_text())
    first, second = report["rounds"]
    assert not first["fits"] and [m["budget"] for m in first["misses"]] == ["size_mb"]
    assert second["fits"] and second["student"]["params"] < first["student"]["params"]
    assert second["action"] == "shrink"
    assert report["result"]["round"] == 2 and report["result"]["artifact"] == "artifacts/onnx-fp32/model.onnx"
    assert (out_dir / first["artifact"]).is_file()  # the missed round's artifact is kept


def test_a_measured_miss_tries_a_lower_precision_before_retraining(
    tiny_teacher_dir: Path, tiny_csv: Path, tmp_path: Path, capsys, optimistic_size
) -> None:
    out_dir = tmp_path / "run"
    args = unprobed_size_miss(tiny_teacher_dir, tiny_csv)[:-2]  # every precision ONNX offers
    code, _out, err = run(capsys, *args, "--out", str(out_dir), *FAST, "--quick")
    assert code == 0, err
    report = json.loads((out_dir / "report.json").read_text())
    first, second = report["rounds"]
    assert first["precision"] == "fp32" and [m["budget"] for m in first["misses"]] == ["size_mb"]
    assert second["action"] == "lower-precision" and second["from_round"] == 1
    assert second["precision"] in ("int8", "int8-dynamic") and second["train"] is None  # no retraining
    assert second["fits"] and second["size_mb"] < first["size_mb"] / 2
    assert second["metric"]["source"].startswith("artifact")  # accuracy of the int8 artifact itself
    assert report["result"]["precision"] == second["precision"]


def test_nothing_fits_after_rounds_exits_3_with_report(
    tiny_teacher_dir: Path, tiny_csv: Path, tmp_path: Path, capsys, optimistic_size
) -> None:
    out_dir = tmp_path / "run"
    args = unprobed_size_miss(tiny_teacher_dir, tiny_csv)
    code, _out, err = run(
        capsys, *args, "--out", str(out_dir), "--epochs", "1", "--seq-len", "16", "--max-rounds", "1"
    )
    assert code == 3
    assert "No student fits host after 1 round(s)" in err and "size" in err and "over the" in err
    report = json.loads((out_dir / "report.json").read_text())
    assert report["result"]["fits"] is False and report["result"]["reason"]
    assert not (out_dir / "student").exists()


def test_interrupt_leaves_nothing_half_written_and_resume_finishes_the_same(
    tiny_teacher_dir: Path, tiny_csv: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """Ctrl-C in the second epoch; --resume continues from the first epoch's checkpoint and ends exactly
    where a run that was never interrupted ends (same seed, CPU: equal metrics and training losses)."""
    import edge_distill.training as training

    real = training.distill

    def interrupted_in_epoch_2(*args, **kwargs):
        def on_step(step, total, parts):
            if step > total // 2 + 1:
                raise KeyboardInterrupt

        return real(*args, **{**kwargs, "on_step": on_step})

    args = ["--profile", "host", *pair(tiny_teacher_dir, tiny_csv), "--epochs", "2", "--seq-len", "16"]
    args += ["--max-rounds", "1", "--no-probe", "--latency-ms", "1000", "--memory-mb", "4000", "--quick"]
    out_dir = tmp_path / "run"
    monkeypatch.setattr(training, "distill", interrupted_in_epoch_2)
    code, _, err = run(capsys, *args, "--out", str(out_dir))
    assert code == 130 and "Interrupted" in err and "--resume" in err
    assert not out_dir.exists() and (tmp_path / ".run.partial").is_dir()  # kept aside for --resume
    monkeypatch.setattr(training, "distill", real)
    code, out, err = run(capsys, *args, "--out", str(out_dir), "--resume")
    assert code == 0, err
    assert "resumed training from epoch 1 of 2" in out
    resumed = json.loads((out_dir / "report.json").read_text())["rounds"][0]
    code, _, err = run(capsys, *args, "--out", str(tmp_path / "straight"))
    assert code == 0, err
    straight = json.loads((tmp_path / "straight" / "report.json").read_text())["rounds"][0]
    assert resumed["train"]["resumed_from_epoch"] == 1 and straight["train"]["resumed_from_epoch"] is None
    assert resumed["train"]["epoch_losses"] == straight["train"]["epoch_losses"]
    assert resumed["metric"] == straight["metric"] and resumed["val"] == straight["val"]


def test_probe_skips_a_candidate_without_training(
    tiny_teacher_dir: Path, tiny_csv: Path, tmp_path: Path, capsys, optimistic_size
) -> None:
    out_dir = tmp_path / "run"
    size = f"{shrink_budget(tiny_teacher_dir):.6f}"
    args = [*pair(tiny_teacher_dir, tiny_csv), "--profile", "host", "--size-mb", size, "--out", str(out_dir)]
    # --no-vocab-trim: else a trimmed teacher shape fits first; one target and precision: else the probed
    # shape fits at a lower precision, and no smaller student is needed
    args += ["--no-vocab-trim", "--target", "onnx", "--precision", "fp32"]
    code, out, err = run(capsys, *args, *FAST)
    assert code == 0, err
    report = json.loads((out_dir / "report.json").read_text())
    assert not report["probes"][0]["fits"] and report["probes"][0]["size_mb"] > float(size)
    (only,) = report["rounds"]  # the probed miss was never trained
    assert only["fits"] and only["student"]["params"] < report["probes"][0]["student"]["params"]
    assert "skipped without training" in out


def test_resume_run_alone_continues_after_the_last_finished_round(
    tiny_teacher_dir: Path, tiny_csv: Path, tmp_path: Path, capsys, optimistic_size, monkeypatch
) -> None:
    """Round 1 misses and finishes; Ctrl-C in round 2. `--resume RUN` alone repeats the stored command,
    keeps round 1 (not retrained) and its files, and trains round 2 only."""
    import edge_distill.training as training

    real, calls = training.distill, []

    def interrupted_in_round_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    out_dir = tmp_path / "run"
    args = [*unprobed_size_miss(tiny_teacher_dir, tiny_csv), *FAST]
    monkeypatch.setattr(training, "distill", interrupted_in_round_2)
    code, _, err = run(capsys, *args, "--out", str(out_dir))
    assert code == 130 and "1 finished round(s)" in err and f"--resume {out_dir}" in err
    partial = tmp_path / ".run.partial"
    first = json.loads((partial / "rounds" / "round-1" / "round.json").read_text())
    assert not first["fits"] and (partial / first["artifact"]).is_file()
    calls.clear()
    monkeypatch.setattr(training, "distill", lambda *a, **k: calls.append(1) or real(*a, **k))
    code, out, err = run(capsys, "--resume", str(out_dir))
    assert code == 0, err
    assert "Round 1 was finished before the interruption: kept" in out and len(calls) == 1
    report = json.loads((out_dir / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [1, 2] and report["rounds"][0] == {
        k: v for k, v in first.items() if not k.startswith("_")
    }
    assert report["result"]["round"] == 2 and not partial.exists()
