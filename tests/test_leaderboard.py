"""Aggregation (metric -> dimension -> overall) and the leaderboard files."""

from __future__ import annotations

import copy

import pandas as pd
import pytest

from narrastream.paths import reports_dir
from narrastream.protocol.aggregate import aggregate, dimension_scores
from narrastream.report.leaderboard import build_leaderboard, load_protocol, load_reference, write_leaderboard
from narrastream.results.configuration import config_id
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


METRICS = [m for ms in DIMS.values() for m in ms]
JUDGED = {"entity_grounding", "vlm_score"}
REAL = {"protocol": {"version": "narrastream-1.0"}, "annotations": {"mode": "frozen", "version": "v1", "sha256": "a" * 64},
        "backbones": {"dino_vitb16": "sha256:" + "1" * 64}, "generator": {"adapter": "precomputed"},
        "judge": {"vlm": {"backend": "openai", "model": "Qwen/Qwen3-VL", "host": "api.example.com", "stand_in": False}}}


def _record(model: str, sid: int, metric: str, score, status: str = "ok", configuration=None,
            cache_key: str | None = None, created: float = 1.0) -> Record:
    return Record(run_id="r", model=model, script_id=sid, seed=0, metric=metric, score=score, status=status,
                  protocol="narrastream-1.0", metric_version="v", cache_key=cache_key or f"k-{metric}-{sid}",
                  configuration=configuration, config_id=config_id(configuration), created=created,
                  reason="it failed" if status == "failed" else None)


def _variant(**changes) -> dict:
    """REAL with some top-level parts replaced."""
    return {**copy.deepcopy(REAL), **changes}


def _complete_run(store: RecordStore, model: str, configuration: dict, score: float = 0.5, scripts=(0, 1),
                  metrics=METRICS, key_prefix: str = "k", created: float = 1.0) -> None:
    for sid in scripts:
        for metric in metrics:
            store.append(_record(model, sid, metric, score, configuration=configuration,
                                 cache_key=f"{key_prefix}-{metric}-{sid}", created=created))


def test_aggregate_counts_failures_fallbacks_and_skips():
    recs = [_record("m", 0, "subject_consistency", 0.8), _record("m", 1, "subject_consistency", 0.6, "fallback"),
            _record("m", 2, "subject_consistency", None, "failed"), _record("m", 0, "background_consistency", 0.9),
            _record("m", 0, "vlm_score", None, "skipped")]
    row = aggregate(recs, DIMS).iloc[0]
    assert row["subject_consistency"] == pytest.approx(0.7)
    assert (row["subject_consistency_valid"], row["subject_consistency_fallback"], row["subject_consistency_failed"]) == (2, 1, 1)
    assert (row["vlm_score_skipped"], row["vlm_score_valid"], row["vlm_score_failed"]) == (1, 0, 0)
    # quality has 5 metrics and only 2 have scores: no quality mean, no overall (was 0.8 over 2 metrics)
    assert row["quality"] is None and row["overall"] is None and row["metrics_reported"] == 2 and row["scripts"] == 3
    assert row["missing_metrics"].split() == [m for m in METRICS if m not in ("subject_consistency", "background_consistency")]


def test_dimension_mean_needs_all_its_metrics_and_overall_all_eleven():
    scores = {m: 0.5 for m in METRICS}
    full = dimension_scores(scores, DIMS)
    assert full["overall"] == pytest.approx(0.5)
    without = dimension_scores({m: v for m, v in scores.items() if m not in JUDGED}, DIMS)
    assert without["instruction"] is None and without["overall"] is None
    assert without["quality"] == pytest.approx(0.5) and without["temporal"] == pytest.approx(0.5)


def test_leaderboard_files_and_reference_rows(tmp_path):
    run = tmp_path / "run"
    store = RecordStore(run / "records", "shard-000-of-001")
    for sid, (a, b) in enumerate([(0.9, 0.8), (0.7, 0.6)]):
        store.append(_record("mine", sid, "subject_consistency", a, configuration=REAL))
        store.append(_record("mine", sid, "background_consistency", b, configuration=REAL))
    table = build_leaderboard([run], with_reference=True)
    mine = table[table["model"] == "mine"].iloc[0]
    assert mine["subject_consistency"] == 80.0 and mine["background_consistency"] == 70.0
    assert mine["source"] == "run" and mine["scripts"] == 2 and mine["config_id"] == config_id(REAL)
    assert mine["label"] == "partial (2/11)" and pd.isna(mine["rank"]) and pd.isna(mine["overall"])
    iam = table[table["model"] == "IAMFlow"].iloc[0]
    assert iam["source"] == "published" and iam["overall"] == pytest.approx(75.73, abs=0.005) and iam["rank"] == 1
    write_leaderboard(table, tmp_path / "lb.csv", markdown_path=tmp_path / "lb.md", dimensions=DIMS)
    csv = pd.read_csv(tmp_path / "lb.csv")
    assert list(csv.columns[:5]) == ["model", "config_id", "source", "label", "rank"]
    assert {"subject_consistency_fallback", "vlm_score_skipped", "missing_metrics"} <= set(csv.columns)
    md = (tmp_path / "lb.md").read_text()
    ranked, apart = md.split("Not ranked")
    assert "| mine" not in ranked and "IAMFlow" in ranked and "| mine" in apart and "partial (2/11)" in apart
    assert f"mine [{config_id(REAL)}]: 2/11 metrics over 2 scripts" in md


def test_partial_row_is_never_ranked_among_published_rows(tmp_path):
    """judge=none: 9 metrics. Their mean used to be `overall` and sorted among the 11-metric published rows."""
    store = RecordStore(tmp_path / "run" / "records")
    _complete_run(store, "nine", _variant(judge=None), score=0.99, metrics=[m for m in METRICS if m not in JUDGED])
    for metric in JUDGED:
        store.append(_record("nine", 0, metric, None, "skipped", configuration=_variant(judge=None)))
    table = build_leaderboard([tmp_path / "run"], with_reference=True)
    nine = table[table["model"] == "nine"].iloc[0]
    assert pd.isna(nine["overall"]) and pd.isna(nine["instruction"]) and nine["quality"] == 99.0
    assert nine["label"] == "partial (9/11)" and pd.isna(nine["rank"])
    assert nine["missing_metrics"] == "entity_grounding vlm_score" and nine["vlm_score_skipped"] == 1
    assert list(table["rank"].dropna()) == [1, 2, 3, 4, 5, 6] and table.index[table["model"] == "nine"][0] == 6


def test_complete_real_row_is_ranked_with_the_published_rows(tmp_path):
    store = RecordStore(tmp_path / "run" / "records")
    _complete_run(store, "full", REAL, score=0.7)
    table = build_leaderboard([tmp_path / "run"], with_reference=True)
    full = table[table["model"] == "full"].iloc[0]
    assert full["label"] == "" and full["overall"] == 70.0 and full["rank"] == 4  # IAMFlow 75.73, LongLive, MemFlow, then 70
    assert table["rank"].notna().all() and table["overall"].is_monotonic_decreasing


@pytest.mark.parametrize("configuration, label", [
    (_variant(backbones={"dino_vitb16": "random(seed=0,size=tiny)"}), "smoke: random weights"),
    (_variant(judge={"vlm": {"backend": "openai", "model": "narrastream-stand-in", "host": "127.0.0.1",
                             "stand_in": True}}), "smoke: stand-in judge"),
    (_variant(generator={"adapter": "streaming_wan", "method": "iamflow", "oracle": "entities from the evaluation annotations"}),
     "oracle: entities from the evaluation annotations"),
])
def test_smoke_and_oracle_rows_are_labelled_and_listed_apart(tmp_path, capsys, configuration, label):
    store = RecordStore(tmp_path / "run" / "records")
    _complete_run(store, "smoky", configuration, score=0.99)  # would top the published rows if ranked
    out = tmp_path / "board.csv"
    from narrastream.cli import main as cli_main

    assert cli_main(["leaderboard", str(tmp_path / "run"), "--out", str(out), "--with-reference"]) == 0
    stdout = capsys.readouterr().out
    board = pd.read_csv(out)
    smoky = board[board["model"] == "smoky"].iloc[0]
    assert smoky["label"] == label and pd.isna(smoky["rank"]) and smoky["overall"] == 99.0
    assert board["rank"].dropna().tolist() == [1, 2, 3, 4, 5, 6] and board["model"].iloc[0] == "IAMFlow"
    ranked, apart = stdout.split("Not ranked")
    assert "smoky" not in ranked and label in apart and config_id(configuration) in apart
    assert label in (tmp_path / "board.md").read_text()


def test_configurations_of_one_model_are_separate_rows_with_a_note(tmp_path):
    """Two backbone seeds in one folder: never one row averaging both (the issue's repro)."""
    seed0 = _variant(backbones={"dino_vitb16": "random(seed=0,size=tiny)"})
    seed1 = _variant(backbones={"dino_vitb16": "random(seed=1,size=tiny)"})
    store = RecordStore(tmp_path / "run" / "records")
    _complete_run(store, "synthetic", seed0, score=0.2, scripts=(0, 1), key_prefix="s0")
    _complete_run(store, "synthetic", seed1, score=0.8, scripts=(0,), key_prefix="s1", created=2.0)
    table = build_leaderboard([tmp_path / "run"])
    rows = table.set_index("config_id")
    assert len(table) == 2 and set(rows.index) == {config_id(seed0), config_id(seed1)}
    assert rows.loc[config_id(seed0), "scripts"] == 2 and rows.loc[config_id(seed0), "subject_consistency"] == 20.0
    assert rows.loc[config_id(seed1), "scripts"] == 1 and rows.loc[config_id(seed1), "subject_consistency"] == 80.0
    note = rows.loc[config_id(seed0), "config_note"]
    assert "synthetic has 2 configurations" in note and "backbones.dino_vitb16" in note and "random(seed=1,size=tiny)" in note


def test_annotation_versions_and_protocol_versions_are_never_merged(tmp_path):
    v1 = _variant(annotations={"mode": "frozen", "version": "narrastream-324.v1", "sha256": "a" * 64})
    v2 = _variant(annotations={"mode": "frozen", "version": "narrastream-324.v2", "sha256": "b" * 64})
    p2 = _variant(protocol={"version": "narrastream-2.0"})
    for name, configuration in (("a", v1), ("b", v2), ("c", p2)):  # three run folders, one model name
        _complete_run(RecordStore(tmp_path / name / "records"), "m", configuration, key_prefix=name)
    table = build_leaderboard([tmp_path / "a", tmp_path / "b", tmp_path / "c"])
    assert sorted(table["config_id"]) == sorted(config_id(c) for c in (v1, v2, p2))
    notes = " ".join(table["config_note"])
    assert "annotations.version" in notes and "annotations.sha256" in notes and "protocol.version" in notes


def test_same_configuration_in_two_folders_merges(tmp_path):
    _complete_run(RecordStore(tmp_path / "a" / "records"), "m", REAL, scripts=(0,), key_prefix="a")
    _complete_run(RecordStore(tmp_path / "b" / "records"), "m", REAL, scripts=(1,), key_prefix="b")
    table = build_leaderboard([tmp_path / "a", tmp_path / "b"])
    assert len(table) == 1 and table.iloc[0]["scripts"] == 2 and table.iloc[0]["label"] == ""


def test_configuration_covered_by_a_more_complete_one_is_not_repeated(tmp_path):
    """judge=none first, then the same run with a judge: the 9 non-judge scores were carried over
    (same cache keys), so the judge row stands for both; the judge=none row is named in its note."""
    store = RecordStore(tmp_path / "run" / "records")
    nine = [m for m in METRICS if m not in JUDGED]
    no_judge = _variant(judge=None)
    _complete_run(store, "m", no_judge, metrics=nine)
    _complete_run(store, "m", REAL, metrics=nine, created=2.0)  # carried over: the same cache keys
    _complete_run(store, "m", REAL, metrics=sorted(JUDGED), created=2.0)
    table = build_leaderboard([tmp_path / "run"])
    assert len(table) == 1 and table.iloc[0]["config_id"] == config_id(REAL) and table.iloc[0]["label"] == ""
    assert config_id(no_judge) in table.iloc[0]["config_note"]
    store.append(_record("m", 0, "subject_consistency", 0.1, configuration=no_judge, cache_key="other", created=3.0))
    assert len(build_leaderboard([tmp_path / "run"])) == 2  # a score of its own: its own row again


def test_records_without_configuration_are_a_row_of_their_own(tmp_path):
    store = RecordStore(tmp_path / "run" / "records")
    _complete_run(store, "m", REAL)
    store.append(_record("m", 0, "subject_consistency", 0.1))  # an older narrastream's record
    table = build_leaderboard([tmp_path / "run"])
    assert len(table) == 2
    legacy = table[table["config_id"] == ""].iloc[0]
    assert "unknown configuration" in legacy["label"] and pd.isna(legacy["rank"])


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
        _complete_run(RecordStore(tmp_path / name / "records", "shard-000-of-001"), name, REAL, score=score)
    out = tmp_path / "board.csv"
    assert cli_main(["leaderboard", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out), "--with-reference"]) == 0
    board = pd.read_csv(out)
    assert board["overall"].is_monotonic_decreasing and board["model"].iloc[0] == "b"  # b: 90 beats all
    assert board["rank"].tolist() == list(range(1, 9)) and (tmp_path / "board.md").is_file()
    assert cli_main(["leaderboard", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "missing: no such run folder or results file" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli_main(["leaderboard", str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert "no records/ folder" in capsys.readouterr().err


def test_invalid_records_lines_are_skipped_counted_and_never_shown(tmp_path, capsys, caplog):
    """`null`, `[1,2,3]`, `"created": "yesterday"`, `"script_id": "abc"` used to crash the leaderboard (exit 1,
    traceback), and `"score": 7.5` used to be shown as 750.00."""
    import json

    from narrastream.cli import main as cli_main

    store = RecordStore(tmp_path / "run" / "records", "shard-000-of-001")
    _complete_run(store, "m", REAL, score=0.5)
    lines = store.path.read_text().splitlines()
    vtss = next(i for i, line in enumerate(lines) if json.loads(line)["metric"] == "vtss")
    lines[vtss] = lines[vtss].replace('"score": 0.5', '"score": 7.5')
    lines += ["null", "[1, 2, 3]", lines[0].replace('"created": 1.0', '"created": "yesterday"'),
              lines[1].replace('"script_id": 0', '"script_id": "abc"')]
    store.path.write_text("\n".join(lines) + "\n")
    other = RecordStore(tmp_path / "run" / "records", "shard-001-of-002")
    other.path.parent.mkdir(exist_ok=True)
    other.path.write_text("null\n")
    out = tmp_path / "board.csv"
    assert cli_main(["leaderboard", str(tmp_path / "run"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"skipped 5 invalid record line(s) in {store.path}" in printed
    assert f"skipped 1 invalid record line(s) in {other.path}" in printed
    assert f"{store.path}:{vtss + 1}: invalid record skipped (score: Input should be less than or equal to 1" in caplog.text
    row = pd.read_csv(out).iloc[0]
    assert row["vtss"] == 50.0 and row["vtss_valid"] == 1  # script 1's record; script 0's (7.5) is not counted
    scores = pd.read_csv(out)[METRICS].to_numpy()
    assert ((scores >= 0) & (scores <= 100)).all()
    table = build_leaderboard([tmp_path / "run"])
    assert table.attrs["invalid_records"] == {str(other.path): 1, str(store.path): 5}


def test_intervals_in_csv_and_markdown_partial_rows_only_where_values_exist(tmp_path):
    """Every run cell with a value has `<column>_ci_low/_ci_high` around it; published rows and empty cells none;
    the markdown shows `value ± half-width`; the settings are columns of the CSV and a line of the markdown."""
    store = RecordStore(tmp_path / "run" / "records")
    nine = [m for m in METRICS if m not in JUDGED]
    for sid in range(6):
        for k, metric in enumerate(nine):
            store.append(_record("nine", sid, metric, 0.2 + 0.1 * (sid % 4) + 0.01 * k, configuration=_variant(judge=None)))
    table = build_leaderboard([tmp_path / "run"], with_reference=True)
    write_leaderboard(table, tmp_path / "lb.csv", markdown_path=tmp_path / "lb.md", dimensions=DIMS)
    csv = pd.read_csv(tmp_path / "lb.csv")
    row = csv[csv["model"] == "nine"].iloc[0]
    for column in [*nine, "quality", "temporal"]:
        assert row[f"{column}_ci_low"] <= row[column] <= row[f"{column}_ci_high"], column
        assert row[f"{column}_ci_low"] < row[f"{column}_ci_high"], column
    for column in [*JUDGED, "instruction", "overall"]:
        assert pd.isna(row[column]) and pd.isna(row[f"{column}_ci_low"]) and pd.isna(row[f"{column}_ci_high"])
    assert (row["ci_level"], row["bootstrap_resamples"], row["bootstrap_seed"]) == (0.95, 1000, 0)
    published = csv[csv["source"] == "published"]
    assert published["overall"].notna().all() and published["overall_ci_low"].isna().all()
    columns = list(csv.columns)
    assert columns[columns.index("vtss") + 1: columns.index("vtss") + 3] == ["vtss_ci_low", "vtss_ci_high"]
    md = (tmp_path / "lb.md").read_text()
    half = (row["quality_ci_high"] - row["quality_ci_low"]) / 2
    assert f"{row['quality']:.2f} ± {half:.2f}" in md and "1000 resamples, seed 0" in md
    assert "75.73 ±" not in md and "75.73" in md  # the published IAMFlow row: a bare value


def test_intervals_are_reproducible_and_follow_the_bootstrap_settings(tmp_path):
    from narrastream.report.bootstrap import BootstrapSettings

    store = RecordStore(tmp_path / "run" / "records")
    for sid in range(8):
        for metric in METRICS:
            store.append(_record("m", sid, metric, (sid * 37 % 11) / 11, configuration=REAL))
    one = build_leaderboard([tmp_path / "run"])
    assert one.equals(build_leaderboard([tmp_path / "run"]))
    other = build_leaderboard([tmp_path / "run"], bootstrap=BootstrapSettings(resamples=200, seed=7))
    assert other.iloc[0]["bootstrap_resamples"] == 200 and other.iloc[0]["overall"] == one.iloc[0]["overall"]
    assert other.iloc[0]["overall_ci_low"] != one.iloc[0]["overall_ci_low"]
    assert not any(c.endswith("_ci_low") for c in build_leaderboard([tmp_path / "run"], bootstrap=None).columns)
