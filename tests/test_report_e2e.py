"""The report as a person sees it: two tiny runs (a clean synthetic model and one with a hard cut into segment 4),
``narrastream report``, then headless Chromium renders the page: every section is there, no script error, every
image decodes, the leaderboard matches leaderboard.csv, the paired comparison and the per-switch table find the
fault where it was put. A screenshot is saved beside the page (``report.png`` in the test's temporary folder).

Needs Debian's ``chromium`` (``apt-get install -y chromium``; .ci/run installs it). Without it the browser checks
are skipped, unless NARRASTREAM_REQUIRE_CHROMIUM=1 (CI), where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from narrastream.cli import main as cli_main
from narrastream.config import compose_config
from narrastream.data import load_benchmark
from narrastream.run import execute

pytestmark = pytest.mark.slow
SECTIONS = ["leaderboard", "comparisons", "breakdowns", "charts", "gallery", "failures", "speed", "provenance",
            "methods"]
COMMON = ["preset=tiny", "data.limit=3", "protocol.run_metrics=[subject_consistency,conditional_adjacent]"]
FAULT = ["model.name=synthetic_cut", "model.params.faults=[{kind: hard_cut, segment: 3}]"]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0"]


class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None]) -> None:
        self.tag, self.attrs, self.children, self.parts = tag, attrs, [], []

    def text(self) -> str:
        return "".join(p if isinstance(p, str) else p.text() for p in self.parts)

    def find_all(self, tag: str, **attrs: str) -> list["Node"]:
        found = []
        for child in self.children:
            if child.tag == tag and all(child.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items()):
                found.append(child)
            found.extend(child.find_all(tag, **attrs))
        return found

    def classes(self) -> list[str]:
        return (self.attrs.get("class") or "").split()


class Tree(HTMLParser):
    """The dumped DOM as nested nodes (the standard library's parser; void elements closed at once)."""

    VOID = {"meta", "img", "br", "hr", "input", "link", "source", "col", "area", "base", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs))
        self.stack[-1].children.append(node)
        self.stack[-1].parts.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                break

    def handle_data(self, data):
        self.stack[-1].parts.append(data)


def parse(html: str) -> Node:
    tree = Tree()
    tree.feed(html)
    return tree.root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report-e2e")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NARRASTREAM_CACHE", str(root / "cache"))
        assert execute(compose_config([*COMMON, f"run.dir={root / 'a'}"])) == 0
        assert execute(compose_config([*COMMON, f"run.dir={root / 'b'}", *FAULT])) == 0
    assert cli_main(["leaderboard", str(root / "a"), str(root / "b"), "--out", str(root / "leaderboard.csv")]) == 0
    assert cli_main(["report", str(root / "a"), str(root / "b"), "--out", str(root / "report.html")]) == 0
    return root


def chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.environ.get("NARRASTREAM_REQUIRE_CHROMIUM") == "1":
        pytest.fail("chromium is required here (apt-get install -y chromium)")
    if found is None:
        pytest.skip("no chromium: apt-get install -y chromium")
    return found


def browse(root: Path, *args: str) -> subprocess.CompletedProcess:
    profile = root / f"chromium-profile-{len(list(root.glob('chromium-profile-*')))}"
    return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args,
                           (root / "report.html").as_uri()], capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def dom(runs):
    proc = browse(runs, "--virtual-time-budget=5000", "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (runs / "dom.html").write_text(proc.stdout)
    return parse(proc.stdout), proc.stderr


def test_every_section_renders_without_script_errors(dom):
    tree, stderr = dom
    body = tree.find_all("body")[0]
    assert body.attrs.get("data-ready") == "yes"  # the page's own script ran to its end
    errors = tree.find_all("div", id="js-errors")[0]
    assert errors.text().strip() == "" and "hidden" in errors.attrs
    assert "Uncaught" not in stderr and "SyntaxError" not in stderr
    for name in SECTIONS:
        section = tree.find_all("section", data_section=name)
        assert len(section) == 1, name
        assert len(section[0].text().strip()) > 100, name  # says something, not an empty frame
    assert len(tree.find_all("svg")) >= 4  # 2 bar charts, switch and segment series
    assert len(tree.find_all("table", **{"class": "heatmap"})) == 2  # metric x taxonomy dimension, per row


def test_images_are_present_and_decode(dom, runs):
    tree, _ = dom
    body = tree.find_all("body")[0]
    images = tree.find_all("img")
    assert int(body.attrs["data-images"]) == len(images) > 0 and body.attrs["data-broken-images"] == "0"
    scripts = tree.find_all("article")
    assert scripts, "no filmstrip"
    for article in scripts:
        strips = article.find_all("tr", **{"class": "strip"})
        assert len(strips) == 2  # both models' videos side by side
        for strip in strips:
            assert len(strip.find_all("img")) == 2 * 5  # before and after each of the 5 switches
    assert all(img.attrs["src"].startswith("data:image/jpeg;base64,") and len(img.attrs["src"]) > 200 for img in images)


def test_leaderboard_table_matches_the_csv(dom, runs):
    tree, _ = dom
    csv = pd.read_csv(runs / "leaderboard.csv", dtype={"config_id": str})
    table = tree.find_all("table", id="apart-table")[0]  # smoke rows: listed apart, never ranked
    assert not tree.find_all("table", id="ranked-table")
    rows = table.find_all("tr", data_source="run")
    assert len(rows) == len(csv) == 2
    for row in rows:
        expected = csv[(csv["model"] == row.attrs["data-model"]) & (csv["config_id"] == row.attrs["data-config"])]
        assert len(expected) == 1
        cells = {td.attrs["data-column"]: td.attrs["data-value"] for td in row.find_all("td")
                 if "data-column" in td.attrs}
        assert len(cells) == 15
        for column, shown in cells.items():
            value = expected.iloc[0][column]
            assert shown == ("–" if pd.isna(value) else f"{value:.2f}"), column
            low, high = expected.iloc[0][f"{column}_ci_low"], expected.iloc[0][f"{column}_ci_high"]
            if not pd.isna(low):
                assert f"[{low:.2f}, {high:.2f}]" in row.text()
        assert "smoke: random weights" in row.text() and "partial (2/11)" in row.text()


def test_paired_comparison_and_switch_table_find_the_fault(dom):
    tree, _ = dom
    detail = tree.find_all("details", **{"class": "pair-detail"})[0]
    assert "synthetic [" in detail.find_all("summary")[0].text().split("−")[0]
    rows = {tr.find_all("td")[0].text(): tr for tr in detail.find_all("tr") if tr.find_all("td")}
    assert "▲" in rows["conditional_adjacent"].text()  # clean minus cut: positive, interval above 0
    table = tree.find_all("table", data_metric="conditional_adjacent")[0]
    header = [th.text() for th in table.find_all("th")][1:]
    cut = next(tr for tr in table.find_all("tr")
               if tr.find_all("td") and "synthetic_cut" in tr.find_all("td")[0].text())
    values = [float(td.text().split("[")[0]) for td in cut.find_all("td")[1:]]
    assert header[int(np.argmin(values))] == "switch 3→4"  # the hard cut into segment 4 (index 3)


def test_segment_sentences_are_read_at_report_time(dom, runs):
    tree, _ = dom
    gallery = tree.find_all("section", data_section="gallery")[0].text()
    shown = [int(a.attrs["data-script"]) for a in tree.find_all("article")]
    bench = load_benchmark(os.environ["NARRASTREAM_DATA"], ids=shown)
    assert all(prompt.split(",")[0] in gallery for script in bench.scripts for prompt in script.prompts)
    out = runs / "private.html"
    assert cli_main(["report", str(runs / "a"), str(runs / "b"), "--out", str(out), "--no-prompts"]) == 0
    text = out.read_text()
    assert not any(prompt in text for script in bench.scripts for prompt in script.prompts)
    assert f"script {shown[0]}, segment 1" in text


def test_export_of_the_runs_has_no_sentence(runs):
    out = runs / "results.json"
    assert cli_main(["export", str(runs / "a"), str(runs / "b"), "--out", str(out)]) == 0
    text = out.read_text()
    bench = load_benchmark(os.environ["NARRASTREAM_DATA"], limit=3)
    assert not any(prompt in text for script in bench.scripts for prompt in script.prompts)
    assert len(json.loads(text)["records"]) == 2 * 3 * 2  # two models x three scripts x two metrics


def test_screenshot(runs):
    shot = runs / "report.png"
    proc = browse(runs, "--window-size=1400,3000", "--hide-scrollbars", f"--screenshot={shot}")
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    image = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert image.shape == (3000, 1400) and image.std() > 20  # a rendered page, not a blank one
