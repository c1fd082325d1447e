"""Narrative annotations: the typed object, the JSONL loader, and their use in a run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from narrastream.metrics.base import MetricContext
from narrastream.protocol.annotations import AnnotationsError, NarrativeAnnotations, ScriptAnnotations
from narrastream.results.records import RecordStore

GOOD = {"script_id": 3, "segment_weights": [10, 20, 30], "continuity": [True, False],
        "entity_groups": {"Noah": [1, 0, 2]},
        "segment_entities": [[{"name": "Noah", "attributes": ["green shirt"]}], [], []]}


def _write(tmp_path, *objs, raw: str = ""):
    path = tmp_path / "ann.jsonl"
    path.write_text("# authored for a test\n" + "".join(json.dumps(o) + "\n" for o in objs) + raw)
    return path


def test_load_typed_annotations(tmp_path):
    ann = NarrativeAnnotations.load(_write(tmp_path, GOOD, {"script_id": 4}))
    three = ann.get(3)
    assert three.segment_weights == (10, 20, 30) and three.continuity == (True, False)
    assert three.entity_groups == {"Noah": (1, 0, 2)}  # order kept: the anchor is the first listed
    assert three.segment_entities[0][0].attributes == ("green shirt",)
    assert ann.get(4).segment_weights is None and ann.get(5) is None
    assert three.check_segments(3) == []
    assert "3 segment weights for 6 segments" in three.check_segments(6)[0]
    assert ann.identity()["scripts"] == 2 and len(ann.identity()["sha256"]) == 64


@pytest.mark.parametrize("obj, message", [
    ({"segment_weights": [1]}, "'script_id' must be a non-negative integer"),
    ({"script_id": 1, "segment_weights": [0, 50]}, "segment_weights[0] = 0, expected an integer 1..100"),
    ({"script_id": 1, "continuity": [1, 0]}, "'continuity' must be a list of true/false"),
    ({"script_id": 1, "entity_groups": {"Noah": ["0"]}}, "entity_groups['Noah'] must be a list of segment indices"),
    ({"script_id": 1, "segment_entities": [[{"name": "a"}] * 5]}, "at most 4 entities"),
])
def test_malformed_annotations_name_line_and_field(tmp_path, obj, message):
    path = _write(tmp_path, GOOD, obj)
    with pytest.raises(AnnotationsError) as info:
        NarrativeAnnotations.load(path)
    assert f"{path}:3:" in str(info.value) and message in str(info.value)


def test_duplicate_and_bad_json(tmp_path):
    with pytest.raises(AnnotationsError, match="annotated twice"):
        NarrativeAnnotations.load(_write(tmp_path, GOOD, GOOD))
    with pytest.raises(AnnotationsError, match=r":3: not valid JSON"):
        NarrativeAnnotations.load(_write(tmp_path, GOOD, raw="{oops\n"))


def test_context_takes_weights_from_annotations():
    ann = ScriptAnnotations(script_id=0, segment_weights=(5, 10))
    assert MetricContext(script=None, backbones=None, annotations=ann).segment_weights == (5, 10)
    assert MetricContext(script=None, backbones=None).segment_weights is None


@pytest.mark.slow
def test_annotated_run_is_ok_and_new_annotations_recompute(tmp_path):
    path = tmp_path / "ann.jsonl"
    path.write_text("".join(json.dumps({"script_id": i, "segment_weights": [10, 20, 30, 40, 50, 60]}) + "\n"
                            for i in range(2)))
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "narrastream.run", "preset=tiny", "data.limit=2", f"run.dir={run_dir}",
            f"annotations.path={path}"]
    subprocess.run(args, check=True, capture_output=True)
    consistency = ("subject_consistency", "background_consistency")
    records = [r for r in RecordStore(run_dir / "records").iter_all() if r.metric in consistency]
    assert len(records) == 4 and {r.status for r in records} == {"ok"} and not any(r.fallbacks for r in records)
    count = len(list(RecordStore(run_dir / "records").iter_all()))
    path.write_text(json.dumps({"script_id": 0, "segment_weights": [60, 50, 40, 30, 20, 10]}) + "\n")
    subprocess.run(args, check=True, capture_output=True)
    latest = RecordStore(run_dir / "records").latest()
    assert len(list(RecordStore(run_dir / "records").iter_all())) == 2 * count  # both scripts' annotations changed
    assert latest[("synthetic", 1, 0, "subject_consistency")].status == "fallback"  # script 1 lost its weights
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"script_id": "x"}\n')
    proc = subprocess.run([*args[:-1], f"annotations.path={bad}"], capture_output=True, text=True)
    assert proc.returncode == 2 and f"{bad}:1:" in proc.stderr


# ----------------------------------------------------------------------------- the shipped file
from pathlib import Path  # noqa: E402

from narrastream.data import load_benchmark  # noqa: E402
from narrastream.protocol.annotations import SHIPPED_ANNOTATIONS, load_annotations  # noqa: E402
from narrastream.paths import benchmark_data_dir  # noqa: E402
from narrastream.protocol.annotation_checks import load_cast, mentions, verify  # noqa: E402
from narrastream.protocol.annotations import prompts_sha256  # noqa: E402

SHIPPED = benchmark_data_dir() / SHIPPED_ANNOTATIONS


def test_shipped_annotations_cover_324_scripts_and_pass_every_check(official_path):
    bench = load_benchmark(official_path)
    shipped = NarrativeAnnotations.load(SHIPPED)
    assert len(shipped.scripts) == 324
    assert verify(shipped, bench.scripts, load_cast()) == []
    header = SHIPPED.read_text().splitlines()[0:6]
    assert any("not the official planner" in line for line in header)  # provenance stated in the file
    for ann in shipped.scripts.values():
        assert len(set(ann.segment_weights)) >= 2  # weights discriminate


def _mutated(tmp_path, change) -> Path:
    lines = SHIPPED.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("{"))
    obj = json.loads(lines[first])
    change(obj)
    lines[first] = json.dumps(obj)
    path = tmp_path / "mutated.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("change, message", [
    (lambda o: o["segment_entities"][0][0]["attributes"].__setitem__(0, "red hat"), "the cast says"),
    (lambda o: o["segment_entities"][1].append({"name": "giraffe", "attributes": []}), "'giraffe' is not named"),
    (lambda o: o["entity_groups"].__setitem__("Noah", [0, 9]), "out of range"),
    (lambda o: o.__setitem__("prompts_sha256", "0" * 64), "made for other prompts"),
    (lambda o: o.pop("continuity"), "no continuity"),
    (lambda o: o["entity_groups"].__setitem__("Luna", [2]), "'Luna': not named in segment 2"),
])
def test_verify_finds_each_kind_of_problem(tmp_path, official_path, change, message):
    bench = load_benchmark(official_path, ids=[0])
    problems = verify(NarrativeAnnotations.load(_mutated(tmp_path, change)), bench.scripts, load_cast())
    assert problems and message in str(problems[0]) and problems[0].script_id == 0


def test_mentions_rules():
    cast = load_cast()
    assert mentions("Noah waves", "Noah", cast) and not mentions("Noahs waves", "Noah", cast)
    assert mentions("two cups of tea", "ceramic cup", cast) and not mentions("a cupboard", "cup", cast)


def test_annotations_apply_only_to_the_prompts_they_were_made_for():
    ann = ScriptAnnotations(script_id=0, segment_weights=(1, 2), prompts_sha256=prompts_sha256(["a", "b"]))
    annotations = NarrativeAnnotations(scripts={0: ann}, source="frozen:x")
    assert annotations.for_script(0, ["a", "b"]) == (ann, None)
    got, why = annotations.for_script(0, ["a", "changed"])
    assert got is None and "made for other prompts" in why
    assert annotations.for_script(7, ["a"])[1] == "script 7 has no annotations in frozen:x"


def test_frozen_is_the_default_and_none_disables(tmp_path):
    assert load_annotations({}).source == "frozen:narrastream-324.v1.jsonl"
    assert load_annotations({}, "none").source == "none"
    with pytest.raises(AnnotationsError, match="expected frozen, live or none"):
        load_annotations({}, "thawed")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "narrastream.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_annotations_verify(tmp_path, official_path):
    ok = _cli("annotations", "verify", "--path", str(official_path))
    assert ok.returncode == 0 and "324 scripts annotated" in ok.stdout and "every check passed" in ok.stdout
    bad = _mutated(tmp_path, lambda o: o["segment_weights"].__setitem__(0, 7) or o["segment_entities"][0].append(
        {"name": "zebra", "attributes": []}))
    proc = _cli("annotations", "verify", "--file", str(bad), "--path", str(official_path))
    assert proc.returncode == 2 and "script 0: segment 0: 'zebra' is not named in the prompt" in proc.stdout


def test_cli_check_reference():
    proc = _cli("protocol", "check-reference")
    assert proc.returncode == 0 and "IAMFlow" in proc.stdout
    worst = float(proc.stdout.split("largest difference: ")[1].split()[0])
    assert worst < 0.005
