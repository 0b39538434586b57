"""report.html and the student's model card, from a schema-2 report, a schema-1 one, a nothing-fits one and a
perplexity one; and the page loaded in headless Chromium, which must lay out every plot."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from edge_distill.model_card import PIPELINES, model_card
from edge_distill.report_html import render_html, write_html

DATA = Path(__file__).parent / "data" / "report_v2.json"
PLOTS = ("plot-accuracy-latency", "plot-size", "plot-memory")
SCHEMA_2_ROUND_KEYS = ("action", "why", "from_round", "meets_floor", "accelerator_share", "student_dir")
EXTERNAL = re.compile(
    r"""(?:\b(?:src|href)\s*=\s*["']?\s*|url\(\s*["']?|@import\s+["']?)(?:https?:)?//""", re.I
)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def need(what: str, found: bool, fix: str) -> None:
    """Skip without ``what`` locally; under CI fail, since CI installs it."""
    if found:
        return
    if in_ci():
        pytest.fail(f"CI must run this test: {what} is missing ({fix})")
    pytest.skip(f"{what} is missing ({fix})")


@pytest.fixture(autouse=True)
def _matplotlib(request: pytest.FixtureRequest) -> None:
    if "no_matplotlib" not in request.fixturenames:
        found = True
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            found = False
        need("matplotlib", found, "pip install matplotlib")


def v2() -> dict[str, Any]:
    return json.loads(DATA.read_text())


def schema_1() -> dict[str, Any]:
    """The sample with every schema-2 key taken out, as the runs of schema 1 wrote it."""
    report = v2()
    report["schema"] = 1
    for key in ("min_retention", "accelerator_share"):
        del report["budget"][key]
    del report["profile"]["budget_reason"]
    for entry in report["rounds"]:
        for key in SCHEMA_2_ROUND_KEYS:
            del entry[key]
    for key in ("target", "precision", "meets_floor", "latency_source", "artifacts"):
        del report["result"][key]
    report["rounds"][1]["train"] = report["rounds"][0]["train"]  # no lower-precision rounds: round 2 trained
    return report


def nothing_fits() -> dict[str, Any]:
    """A microcontroller profile where no student is predicted to fit: no round at all."""
    report = v2()
    report["profile"].update(name="esp32-s3", description="ESP32-S3, 512 KB SRAM, 8 MB PSRAM")
    report["budget"]["latency_ms"]["value"] = 200.0
    report["rounds"] = []
    report["result"] = {
        "fits": False, "round": None, "artifact": None, "artifacts": [], "student": None,
        "target": None, "precision": None, "meets_floor": None, "latency_source": None,
        "reason": "No student fits esp32-s3: the smallest candidate, 1 layers x 64 hidden, is predicted to "
        "need 14.2 MB of memory, over the 8 MB budget by 6.2 MB.",
    }  # fmt: skip
    return report


def perplexity() -> dict[str, Any]:
    """A causal LM: the metric is perplexity (lower is better) and the teacher is a hub id."""
    report = v2()
    report["teacher"].update(name="HuggingFaceTB/SmolLM2-135M", family="causal-lm")
    report["teacher"]["metric"] = {"name": "perplexity", "split": "test", "value": 18.4}
    for entry, value in zip(report["rounds"], (18.7, 18.9, 19.1, 18.6), strict=True):
        entry["metric"] = {"name": "perplexity", "split": "test", "value": value}
        entry["retention"] = 18.4 / value
    return report


class Ids(HTMLParser):
    """Every id on the page, and the attributes of <body>."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.body: dict[str, str | None] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ids += [value for name, value in attrs if name == "id" and value]
        if tag == "body":
            self.body = dict(attrs)


def parse(page: str) -> Ids:
    parser = Ids()
    parser.feed(page)
    return parser


def plot(page: str, plot_id: str) -> str:
    """The markup of one <figure>."""
    start = page.index(f'<figure class="plot" id="{plot_id}">')
    return page[start : page.index("</figure>", start)]


@pytest.mark.parametrize("make", [v2, schema_1, nothing_fits, perplexity])
def test_page_is_self_contained_with_every_plot(make: Any) -> None:
    page = render_html(make())
    assert not EXTERNAL.findall(page), EXTERNAL.findall(page)
    assert "<link" not in page and "<script src" not in page
    for plot_id in PLOTS:
        assert "<svg" in plot(page, plot_id) and "<path" in plot(page, plot_id)
    ids = parse(page).ids
    assert len(ids) == len(set(ids)), "ids repeat (two inline SVGs sharing one id space)"
    for section in ("headline", "budget", "plots", "artifacts", "teacher-vs-student", "rounds"):
        assert section in ids


def test_schema_2_key_figures() -> None:
    page = render_html(v2())
    assert 'data-fits="true" data-round="2"' in page
    assert '<span id="chosen-p90">38.9 ms (predicted, 33.1-44.7 ms)</span>' in page
    assert 'id="budget-latency_ms" data-value="50.0">50 ms<' in page
    assert 'id="budget-min_retention" data-value="0.97">97%<' in page
    assert "command line (--latency-ms)" in page and "keeps a request-to-label round trip" in page
    assert "lower-precision (of round 1)" in page and "ExportError: executorch int8" in page
    assert "4.0x faster" in page and "1.6x fewer" in page
    memory = plot(page, "plot-memory")
    assert "not reported" in memory and "budget 512 MB" in memory  # round 3 (tflite) has no memory figure
    assert "retention 97%" in page  # the floor line's caption: 0.9776 x 0.97


def test_text_is_escaped() -> None:
    report = v2()
    report["rounds"][0]["why"] = "<script>alert('x')</script> & more"
    page = render_html(report)
    assert (
        "<script>alert" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in page
    )


def test_nothing_fits_says_why() -> None:
    page = render_html(nothing_fits())
    assert 'data-fits="false"' in page and "Nothing fits esp32-s3." in page
    assert "over the 8 MB budget by 6.2 MB." in page
    assert "No round was trained." in page and "No artifact was shipped." in page


def test_perplexity_axis_says_lower_is_better() -> None:
    page = render_html(perplexity())
    assert "test perplexity (lower is better)" in plot(page, "plot-accuracy-latency")
    assert (
        "the floor, 18.97 (retention 97%)" in page
    )  # teacher / min_retention: retention is teacher / student


def test_write_html_reads_the_bundles_run_command(tmp_path: Path) -> None:
    bundle = tmp_path / "artifacts" / "onnx-int8"
    bundle.mkdir(parents=True)
    (bundle / "metadata.json").write_text(json.dumps({"run": "python runner.py model.onnx --runs 7"}))
    path = write_html(tmp_path, v2())
    page = path.read_text()
    assert path == tmp_path / "report.html"
    assert "cd artifacts/onnx-int8 &amp;&amp; python runner.py model.onnx --runs 7" in page
    assert "cd artifacts/tflite-int8 &amp;&amp; python runner.py model.tflite --inputs inputs.npz" in page


@pytest.fixture
def no_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError


def test_without_matplotlib_the_page_still_renders(no_matplotlib: None) -> None:
    page = render_html(v2())
    assert 'id="plots-missing"' in page and "<svg" not in page and 'id="chosen-p90"' in page


# ---- the model card ------------------------------------------------------------------------------


def front_matter(card: str) -> dict[str, Any]:
    import yaml  # a dependency of transformers

    assert card.startswith("---\n")
    return yaml.safe_load(card[4 : card.index("\n---\n", 4)])


def test_model_card_front_matter_and_sections() -> None:
    card = model_card(v2())
    meta = front_matter(card)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-classification"
    assert meta["tags"] == ["edge-distill", "knowledge-distillation", "raspberry-pi-4"]
    assert "base_model" not in meta  # the demo teacher's name is not a hub id
    metric = meta["model-index"][0]["results"][0]["metrics"][0]
    assert metric == {"type": "accuracy", "value": 0.9596, "name": "test accuracy"}
    for heading in ("## Model", "## Distillation", "## Metrics", "## On the device", "## How to use it",
                    "## Limitations"):  # fmt: skip
        assert heading in card
    assert "38.9 ms (predicted, 33.1-44.7 ms); budget 50 ms (within)" in card
    assert "| loss terms | kd, ce |" in card and "97% (met)" in card  # round 1 trained what round 2 exported
    assert "AutoModelForSequenceClassification.from_pretrained(folder)" in card
    assert "`artifacts/onnx-int8/model.onnx`: onnx int8, 13.87 MB, verified" in card
    assert "predicted from host measurements" in card


@pytest.mark.parametrize("family", sorted(PIPELINES))
def test_model_card_pipeline_per_family(family: str) -> None:
    report = v2()
    report["teacher"]["family"] = family
    assert front_matter(model_card(report))["pipeline_tag"] == PIPELINES[family]


def test_model_card_perplexity_and_schema_1() -> None:
    meta = front_matter(model_card(perplexity()))
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M" and meta["pipeline_tag"] == "text-generation"
    assert meta["model-index"][0]["results"][0]["metrics"][0]["type"] == "perplexity"
    old = model_card(schema_1())
    assert front_matter(old)["pipeline_tag"] == "text-classification" and "| loss terms | kd, ce |" in old
    assert "retention floor" not in old and "round 2 of 4, distill." in old


def test_model_card_refuses_when_nothing_fits() -> None:
    with pytest.raises(ValueError, match="over the 8 MB budget"):
        model_card(nothing_fits())


# ---- headless Chromium ---------------------------------------------------------------------------


def browser() -> str:
    found = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    need("Chromium", found is not None, "bash .ci/install-chromium")
    return str(found)


def rendered_dom(page: Path, profile: Path) -> str:
    """The DOM after load, as headless Chromium laid it out (its own profile folder: runs may overlap)."""
    command = [
        browser(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
        "--window-size=1280,2400", "--dump-dom", page.as_uri(),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_chromium_renders_every_plot(tmp_path: Path) -> None:
    page = write_html(tmp_path / "run", v2())
    dom = rendered_dom(page, tmp_path / "profile")
    body = parse(dom).body
    assert body.get("data-rendered") == "ok", body
    assert body.get("data-plots") == str(len(PLOTS))
    assert '<span id="chosen-p90">38.9 ms (predicted, 33.1-44.7 ms)</span>' in dom
    assert 'id="budget-latency_ms" data-value="50.0">50 ms<' in dom
    assert 'id="budget-memory_mb" data-value="512.0">512 MB<' in dom

    # The check can fail: an empty plot is named.
    empty = r'\1<svg width="0" height="0"></svg>'
    broken = re.sub(
        r'(<figure class="plot" id="plot-size">)<svg.*?</svg>', empty, page.read_text(), flags=re.S
    )
    page.write_text(broken)
    body = parse(rendered_dom(page, tmp_path / "profile")).body
    assert body.get("data-rendered") == "failed: plot-size"
