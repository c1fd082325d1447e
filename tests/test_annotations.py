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
