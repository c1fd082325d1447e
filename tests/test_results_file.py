"""The shareable results file (narrastream export): schema, round trip, merge with run folders, bad input."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest

from narrastream.cli import main as cli_main
from narrastream.report.leaderboard import build_leaderboard, load_protocol
from narrastream.report.results_file import SCHEMA_PATH, build_results, json_schema, read_results_file, write_results
from narrastream.report.sources import load_results
from narrastream.results.configuration import config_id
from narrastream.results.records import Record, RecordStore

DIMS = load_protocol()["dimensions"]
METRICS = [m for ms in DIMS.values() for m in ms]
SECRET = "Mina walks to the window of the SECRET-SENTENCE-MARKER reading room"
CONFIG = {"protocol": {"version": "narrastream-1.0", "segment_seconds": 2}, "judge": None,
          "backbones": {"dino_vitb16": "random(seed=0,size=tiny)"}, "generator": {"adapter": "synthetic"}}


def make_run(root, model: str, offset: float, scripts=range(4), configuration=CONFIG) -> None:
    store = RecordStore(root / "records")
    for sid in scripts:
        for k, metric in enumerate(METRICS):
            status = "skipped" if metric == "vlm_score" else "ok"
            store.append(Record(run_id=root.name, model=model, script_id=sid, seed=0, metric=metric,
                                score=None if status == "skipped" else min(1.0, offset + 0.05 * sid + 0.01 * k),
                                status=status, protocol="narrastream-1.0", metric_version="v",
                                cache_key=f"{model}-{sid}-{metric}", reason="no judge" if status == "skipped" else None,
                                items=[{"transition": t, "mapped": 0.9 - 0.1 * t} for t in range(3)],
                                configuration=configuration, config_id=config_id(configuration),
                                video=f"/somewhere/{sid}.mp4"))
        videos = root / "videos" / model
        videos.mkdir(parents=True, exist_ok=True)
        (videos / f"{sid}-s0.json").write_text(json.dumps({
            "path": f"{sid}-s0.mp4", "script_id": sid, "seed": 0, "fps": 4.0, "num_frames": 32, "width": 64,
            "height": 48, "switch_frames": [8, 16, 24], "timings": {"end_to_end": 0.5, "core_dit": 0.25},
            "peak_memory_bytes": 1 << 30, "device": "cpu", "device_count": 1, "generator": {"adapter": "synthetic"},
            "request": {"prompts": [SECRET, "two", "three", "four"], "output_path": "/abs/path.mp4"}}))
    (root / "manifest.json").write_text(json.dumps({
        "run_id": root.name, "data": {"path": "/home/someone/scripts.jsonl", "sha256": "ab" * 32, "official": True,
                                      "total_scripts": 324, "selected_scripts": len(scripts)},
        "protocol": {"name": "narrastream", "version": "1.0"}, "annotations": {"mode": "frozen", "version": "v2",
                                                                               "sha256": "cd" * 32, "path": "/x"},
        "judge": {"backend": "none"}, "environment": {"narrastream": "0.1.0", "git_sha": "f" * 40, "python": "3.11"}}))


@pytest.fixture
def exported(tmp_path):
    make_run(tmp_path / "a", "alpha", 0.5)
    out = tmp_path / "results.json"
    assert cli_main(["export", str(tmp_path / "a"), "--out", str(out)]) == 0
    return tmp_path, out


def test_committed_schema_is_the_models_schema():
    """results.schema.json is generated from the pydantic models (python -m narrastream.report.results_file)."""
    assert json.loads(SCHEMA_PATH.read_text()) == json_schema()


def test_export_validates_against_the_json_schema_file(exported):
    jsonschema = pytest.importorskip("jsonschema")
    _, out = exported
    jsonschema.validate(json.loads(out.read_text()), json.loads(SCHEMA_PATH.read_text()))


def test_export_holds_records_rows_timings_provenance_and_no_sentence_or_path(exported):
    _, out = exported
    text = out.read_text()
    doc = json.loads(text)
    assert doc["schema"] == "narrastream-results" and doc["schema_version"] == 1
    assert len(doc["records"]) == 4 * len(METRICS) and doc["records"][0]["items"]
    assert {r["status"] for r in doc["records"]} == {"ok", "skipped"}
    assert doc["videos"][0]["timings"] == {"end_to_end": 0.5, "core_dit": 0.25}
    assert doc["videos"][0]["num_segments"] == 4
    assert doc["runs"][0]["data"]["sha256"] == "ab" * 32 and doc["runs"][0]["git_sha"] == "f" * 40
    assert list(doc["configurations"]) == [config_id(CONFIG)]
    row = doc["leaderboard"][0]
    assert row["model"] == "alpha" and row["subject_consistency_ci_low"] <= row["subject_consistency"]
    assert "SECRET-SENTENCE-MARKER" not in text and "/home/someone" not in text and "/somewhere/" not in text
    assert "/abs/path.mp4" not in text


def test_leaderboard_from_a_results_file_equals_the_run_folders(exported, tmp_path):
    root, out = exported
    from_run = build_leaderboard([root / "a"])
    from_file = build_leaderboard([out])
    pd.testing.assert_frame_equal(from_run, from_file)


def test_results_files_and_run_folders_merge(exported):
    """A lab merges a file it was sent with its own run folder: one row each, ranked apart the same way."""
    root, out = exported
    make_run(root / "b", "beta", 0.2)
    board = root / "board.csv"
    assert cli_main(["leaderboard", str(out), str(root / "b"), "--out", str(board)]) == 0
    table = pd.read_csv(board)
    assert sorted(table["model"]) == ["alpha", "beta"] and table["label"].str.contains("partial").all()
    assert table["rank"].isna().all()
    merged = root / "merged.json"
    assert cli_main(["export", str(out), str(root / "b"), "--out", str(merged)]) == 0
    doc = json.loads(merged.read_text())
    assert {r["model"] for r in doc["records"]} == {"alpha", "beta"} and len(doc["runs"]) == 2


def test_report_from_a_results_file_has_no_filmstrip_but_every_number(exported):
    root, out = exported
    from narrastream.report.html import ReportOptions, build_report

    summary = build_report([out], root / "r.html", ReportOptions(prompts=False))
    page = (root / "r.html").read_text()
    assert summary.rows == 1 and 'data-section="leaderboard"' in page and "alpha [" in page
    assert "results files carry no video" in page


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["records"][0].__setitem__("score", 1.5), "records.0.score: Input should be less than or equal to 1"),
    (lambda d: d["records"][3].__setitem__("status", "great"), "records.3.status"),
    (lambda d: d["records"][0].__setitem__("score", None), "records.0: Value error, status ok needs a score"),
    (lambda d: d["records"][0].pop("metric"), "records.0.metric: Field required"),
    (lambda d: d["records"][0].__setitem__("video", "/x.mp4"), "records.0.video: Extra inputs are not permitted"),
    (lambda d: d["configurations"][config_id(CONFIG)]["backbones"].__setitem__("dino_vitb16", "sha256:00"),
     "configurations: Value error, configuration " + config_id(CONFIG)),
    (lambda d: d.__setitem__("schema_version", 99), "schema_version: 99 is not supported"),
    (lambda d: d.__setitem__("schema", "other"), "schema: not a narrastream results file"),
    (lambda d: d["bootstrap"].__setitem__("resamples", 0), "bootstrap.resamples"),
])
def test_invalid_results_files_name_the_field_and_exit_2(exported, capsys, edit, message):
    root, out = exported
    doc = json.loads(out.read_text())
    edit(doc)
    bad = root / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=None) as error:
        read_results_file(bad)
    assert message in str(error.value) and str(bad) in str(error.value)
    capsys.readouterr()
    assert cli_main(["leaderboard", str(bad), "--out", str(root / "x.csv")]) == 2
    assert message in capsys.readouterr().err


def test_not_json_and_missing_paths(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert cli_main(["report", str(bad), "--out", str(tmp_path / "r.html")]) == 2
    assert f"{bad}:1: not JSON" in capsys.readouterr().err
    assert cli_main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "r.json")]) == 2
    assert "no such run folder or results file" in capsys.readouterr().err


def test_write_then_read_keeps_every_record(exported):
    root, out = exported
    source, records = read_results_file(out)
    original = load_results([root / "a"]).records
    assert len(records) == len(original)
    assert {(r.model, r.script_id, r.metric, r.score, r.status, r.config_id) for r in records} == \
        {(r.model, r.script_id, r.metric, r.score, r.status, r.config_id) for r in original}
    assert all(r.configuration == CONFIG for r in records)
    again = root / "again.json"
    write_results(build_results(load_results([out])), again)
    first, second = json.loads(out.read_text()), json.loads(again.read_text())
    assert first["records"] == second["records"] and first["leaderboard"] == second["leaderboard"]
    assert copy.deepcopy(first["videos"]) == second["videos"]
