"""Aggregation (metric -> dimension -> overall) and the leaderboard files."""

from __future__ import annotations

import pandas as pd
import pytest

from narrastream.paths import reports_dir
from narrastream.protocol.aggregate import aggregate, dimension_scores
from narrastream.report.leaderboard import build_leaderboard, load_protocol, load_reference, write_leaderboard
from narrastream.results.records import Record, RecordStore

DIMS = load_protocol()["dimensions"]


def test_published_overall_is_reproduced_by_the_aggregator():
    """Golden test: Overall recomputed from the 11 published metrics, for all six methods."""
    published = pd.read_csv(reports_dir() / "reference" / "narrastream_bench_published.csv")
    assert len(published) == 6
    metrics = [m for ms in DIMS.values() for m in ms]
    assert len(metrics) == 11
    for _, row in published.iterrows():
        overall = dimension_scores({m: row[m] for m in metrics}, DIMS)["overall"]
        assert abs(overall - row["overall"]) < 0.005, row["method"]


def test_dimension_weights_are_the_official_ones():
    """Each quality metric weighs 1/15 of overall, each temporal or instruction metric 1/9."""
    metrics = [m for ms in DIMS.values() for m in ms]
    base = {m: 0.5 for m in metrics}
    for metric, share in [("vtss", 1 / 15), ("boundary_smoothness", 1 / 9), ("vlm_score", 1 / 9)]:
        bumped = dict(base, **{metric: 1.5})
        assert dimension_scores(bumped, DIMS)["overall"] - 0.5 == pytest.approx(share)


def _record(model: str, sid: int, metric: str, score, status: str = "ok") -> Record:
    return Record(run_id="r", model=model, script_id=sid, seed=0, metric=metric, score=score, status=status,
                  protocol="narrastream-1.0", metric_version="v", cache_key="k")


def test_aggregate_counts_failures_and_fallbacks():
    recs = [_record("m", 0, "subject_consistency", 0.8), _record("m", 1, "subject_consistency", 0.6, "fallback"),
            _record("m", 2, "subject_consistency", None, "failed"), _record("m", 0, "background_consistency", 0.9)]
    row = aggregate(recs, DIMS).iloc[0]
    assert row["subject_consistency"] == pytest.approx(0.7)
    assert (row["subject_consistency_valid"], row["subject_consistency_fallback"], row["subject_consistency_failed"]) == (2, 1, 1)
    assert row["quality"] == pytest.approx(0.8)  # mean of the two available quality metrics
    assert row["overall"] == pytest.approx(0.8) and row["metrics_reported"] == 2 and row["scripts"] == 3


def test_leaderboard_files_and_reference_rows(tmp_path):
    run = tmp_path / "run"
    store = RecordStore(run / "records", "shard-000-of-001")
    for sid, (a, b) in enumerate([(0.9, 0.8), (0.7, 0.6)]):
        store.append(_record("mine", sid, "subject_consistency", a))
        store.append(_record("mine", sid, "background_consistency", b))
    table = build_leaderboard([run], with_reference=True)
    mine = table[table["model"] == "mine"].iloc[0]
    assert mine["subject_consistency"] == 80.0 and mine["background_consistency"] == 70.0
    assert mine["source"] == "run" and mine["scripts"] == 2
    iam = table[table["model"] == "IAMFlow"].iloc[0]
    assert iam["source"] == "published" and iam["overall"] == pytest.approx(75.73, abs=0.005)
    write_leaderboard(table, tmp_path / "lb.csv", markdown_path=tmp_path / "lb.md", dimensions=DIMS)
    csv = pd.read_csv(tmp_path / "lb.csv")
    assert list(csv.columns[:2]) == ["model", "source"] and "subject_consistency_fallback" in csv.columns
    md = (tmp_path / "lb.md").read_text()
    assert "| mine" in md and "2/11 metrics over 2 scripts" in md


def test_reference_rows_match_published_numbers():
    ref = load_reference(DIMS)
    assert set(ref["model"]) == {"Self Forcing", "Rolling Forcing", "Deep Forcing", "LongLive", "MemFlow", "IAMFlow"}
    assert (ref["overall"] - ref["overall_published"]).abs().max() < 0.005


def test_leaderboard_refuses_a_folder_without_records(tmp_path):
    with pytest.raises(FileNotFoundError, match="no records"):
        build_leaderboard([tmp_path])


def test_leaderboard_command_merges_run_folders(tmp_path, capsys):
    from narrastream.cli import main as cli_main

    for name, score in (("a", 0.5), ("b", 0.9)):
        store = RecordStore(tmp_path / name / "records", "shard-000-of-001")
        store.append(_record(name, 0, "subject_consistency", score))
    out = tmp_path / "board.csv"
    assert cli_main(["leaderboard", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out), "--with-reference"]) == 0
    board = pd.read_csv(out)
    assert board["overall"].is_monotonic_decreasing and board["model"].iloc[0] == "b"  # b: 90 beats all
    assert len(board) == 8 and (tmp_path / "board.md").is_file()
    assert cli_main(["leaderboard", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "no records/ folder" in capsys.readouterr().err
