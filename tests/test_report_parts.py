"""The report's parts: frames decoded by seeking, breakdowns, per-switch series, gallery choice, failures,
speed and which rows are compared."""

from __future__ import annotations

import math

import av
import numpy as np
import pytest

from narrastream.protocol.aggregate import aggregate
from narrastream.report.bootstrap import BootstrapSettings, script_scores
from narrastream.report.breakdowns import group_scores, item_series, row_series, script_overall, taxonomy_groups
from narrastream.report.comparisons import compare_rows
from narrastream.report.failures import failure_tables
from narrastream.report.gallery import _judge_answers, choose_scripts, segment_boundaries
from narrastream.report.sources import Source
from narrastream.report.speed import speed_rows
from narrastream.results.records import Record
from narrastream.video import decode_video
from narrastream.video.decode import VideoDecodeError
from narrastream.video.frames import frames_at

DIMS = {"quality": ["a", "b"], "temporal": ["c"]}
METRICS = ["a", "b", "c"]


def rec(sid, metric, score, status="ok", model="m", cid="0000c1c1", items=(), fallbacks=(), reason=None, configuration=None):
    return Record(run_id="r", model=model, script_id=sid, seed=0, metric=metric, score=score, status=status,
                  protocol="p", metric_version="v", cache_key=f"{model}{sid}{metric}", items=list(items),
                  fallbacks=list(fallbacks), reason=reason or ("it failed" if status == "failed" else None), config_id=cid, configuration=configuration)


@pytest.fixture(scope="module")
def gop_video(tmp_path_factory):
    """40 frames, a keyframe every 7 frames and B-frames: each frame has a bright block at its own column."""
    path = tmp_path_factory.mktemp("video") / "v.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 80, 48, "yuv420p"
        stream.options = {"crf": "10", "x264-params": "keyint=7:min-keyint=7:bframes=2:scenecut=0"}
        for i in range(40):
            image = np.full((48, 80, 3), 40, np.uint8)
            image[8:40, 2 * i: 2 * i + 2] = 230
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_frames_at_seeks_and_returns_the_same_frames_as_a_full_decode(gop_video):
    full, _ = decode_video(gop_video)
    with av.open(str(gop_video)) as container:
        keyframes = sum(1 for p in container.demux(container.streams.video[0]) if p.is_keyframe)
    assert keyframes >= 5
    wanted = [39, 0, 6, 7, 13, 14, 15, 34, 35, 38, *range(20, 28)]  # unordered, across keyframes, runs, the last
    got = frames_at(gop_video, wanted)
    assert sorted(got) == sorted(wanted)
    for i in wanted:
        assert np.abs(got[i].astype(int) - full[i].astype(int)).max() <= 1, i
        column = int(np.argmax(got[i][24].astype(int).sum(axis=1)))
        assert column // 2 == i  # the frame's own block: the right frame, not a neighbour


def test_frames_at_scales_down_and_refuses_frames_outside_the_video(gop_video):
    small = frames_at(gop_video, [3], max_height=24)
    assert small[3].shape == (24, 40, 3)
    with pytest.raises(VideoDecodeError, match="frame 40 asked, the video has 40 frames"):
        frames_at(gop_video, [2, 40])
    assert frames_at(gop_video, []) == {}


def test_group_cells_are_the_leaderboard_restricted_to_the_group():
    records = [rec(sid, m, ((sid * 7 + j * 3) % 10) / 10) for sid in range(20) for j, m in enumerate(METRICS)]
    records += [rec(4, "b", None, "failed")]
    records = [r for r in records if not (r.script_id == 4 and r.metric == "b" and r.status == "ok")]
    scores = script_scores(records, METRICS)
    groups = {"even": [s for s in range(20) if s % 2 == 0], "odd": [s for s in range(20) if s % 2]}
    cells = group_scores(scores, groups, DIMS)
    for name, ids in groups.items():
        row = aggregate([r for r in records if r.script_id in ids], DIMS).iloc[0]
        for j, key in enumerate([*METRICS, *DIMS, "overall"]):
            assert cells[name][j] == pytest.approx(row[key], abs=1e-12), (name, key)


def test_taxonomy_groups_follow_the_line_index():
    by_dimension = taxonomy_groups(range(18), "dimension")
    assert by_dimension["solo_continuity"] == [0, 9] and by_dimension["object_handoff"] == [3, 4, 12, 13]
    by_scene = taxonomy_groups([0, 8, 9, 107, 108], "scene")
    assert by_scene["library reading room"] == [0, 8, 108] and by_scene["cafe corner table"] == [9]
    assert list(taxonomy_groups([2], "template")) == ["template 2 (cast 3)"]


def test_item_series_of_switches_segments_and_the_consistency_summary():
    switch = rec(0, "boundary_smoothness", 0.9, items=[{"seam": 0, "score": 0.8}, {"seam": 1, "score": 0.6}])
    mapped = rec(0, "conditional_adjacent", 0.9, items=[{"transition": 1, "mapped": 0.3, "raw": 0.9}])
    segment = rec(0, "subject_consistency", 0.9, items=[
        {"segment": 0, "local": 0.99}, {"segment": 1, "local": 0.97},
        {"summary": True, "inter_adjacent_similarities": [0.9, 0.4], "local": 0.98}])
    vtss = rec(0, "vtss", 0.9, items=[{"segment": 0, "raw": 0.2}])
    failed = rec(0, "boundary_smoothness", None, "failed", items=[{"seam": 0, "score": 0.8}])
    assert item_series(switch) == {"boundary_smoothness": ("switch", {0: 0.8, 1: 0.6})}
    assert item_series(mapped) == {"conditional_adjacent": ("switch", {1: 0.3})}
    assert item_series(segment) == {"subject_consistency": ("segment", {0: 0.99, 1: 0.97}),
                                    "subject_consistency · adjacent similarity": ("switch", {0: 0.9, 1: 0.4})}
    assert item_series(vtss) == {} and item_series(failed) == {}


def test_row_series_means_over_scripts_with_intervals():
    records = [rec(sid, "boundary_smoothness", 0.9, items=[{"seam": 0, "score": 0.9}, {"seam": 1, "score": 0.1 * sid}])
               for sid in range(5)]
    series = row_series(records, BootstrapSettings(resamples=200))["boundary_smoothness"]
    found = series.intervals.as_dict()
    assert series.kind == "switch" and series.positions == [0, 1]
    assert found["0"] == pytest.approx((0.9, 0.9, 0.9)) and found["1"][0] == pytest.approx(0.2)
    assert found["1"][1] < 0.2 < found["1"][2]


def test_script_overall_uses_the_metrics_present_and_chooses_worst_and_best():
    records = [rec(0, "a", 0.2), rec(0, "b", 0.4), rec(0, "c", 0.9),  # (0.3 + 0.9) / 2 = 0.6
               rec(1, "a", 0.1), rec(1, "c", 0.1),                   # b missing: (0.1 + 0.1) / 2 = 0.1
               rec(2, "c", 0.95), rec(3, "a", 0.5), rec(3, "b", 0.5), rec(3, "c", 0.5)]
    scores = script_scores(records, METRICS)
    assert script_overall(scores, DIMS) == pytest.approx([0.6, 0.1, 0.95, 0.5])
    choices = choose_scripts({("m", "0000c1c1"): scores}, {("m", "0000c1c1"): "m [0000c1c1]"}, DIMS, per_row=1)
    assert [c.script_id for c in choices] == [1, 2]
    assert choices[0].reasons == ["m [0000c1c1]: worst #1 (10.0)"] and choices[1].reasons == ["m [0000c1c1]: best #1 (95.0)"]


def test_segment_boundaries_prefer_the_generators_switches():
    assert segment_boundaries({"switch_frames": [5, 11], "fps": 16, "num_frames": 20}, 3, 10) == [5, 11]
    assert segment_boundaries({"fps": 4.0, "num_frames": 24, "num_segments": 3}, None, 2) == [8, 16]
    assert segment_boundaries({"fps": 4.0, "num_frames": 24}, None, 2) == []


def test_judge_answers_per_segment():
    answers = _judge_answers([
        rec(0, "vlm_score", 0.7, items=[{"segment": 0, "score": 0.8}, {"segment": 1, "score": 0.6}]),
        rec(0, "entity_grounding", 0.5, "fallback", items=[
            {"segment": 0, "score": 0.5, "entities": [{"name": "Mina", "presence": 1.0, "attribute_match": 0.5}]},
            {"segment": 1, "score": 0.5, "error": "timeout"}])])
    assert answers[0] == {"segment": 1, "vlm_score": 80.0, "grounding": 50.0,
                          "entities": [{"name": "Mina", "presence": 100.0, "attributes": 50.0}]}
    assert answers[1]["error"] == "timeout" and answers[1]["vlm_score"] == 60.0


def test_failures_list_every_non_ok_record_and_count_alike_reasons():
    records = [rec(0, "a", 0.5), rec(1, "a", None, "failed", reason="video 1: decode error at frame 12"),
               rec(2, "a", None, "failed", reason="video 2: decode error at frame 40"),
               rec(0, "b", 0.4, "fallback", fallbacks=[f"segment {k}: mask" for k in range(5)]),
               rec(0, "c", None, "skipped", reason="no judge"), rec(0, "c", None, "failed", model="hidden")]
    source = Source(path=__import__("pathlib").Path("run"), kind="run", dimensions=DIMS,
                    generation_failures=[{"model": "m", "script_id": 9, "seed": 0, "reason": "OOM"}])
    tables = failure_tables(records, {("m", "0000c1c1"): "m [0000c1c1]"}, [source])
    assert [(f["metric"], f["status"]) for f in tables["records"]] == [("a", "failed"), ("a", "failed"),
                                                                       ("b", "fallback"), ("c", "skipped")]
    assert tables["records"][2]["reason"] == "segment 0: mask; segment 1: mask; segment 2: mask; and 2 more"
    decode = [s for s in tables["summary"] if s["status"] == "failed"]
    assert len(decode) == 1 and decode[0]["count"] == 2 and decode[0]["reason"] == "video #: decode error at frame ##"
    assert tables["generation"] == [{"source": "run", "model": "m", "script_id": 9, "seed": 0, "reason": "OOM"}]


def test_speed_from_sidecars():
    videos = {("m", sid, 0): {"num_frames": 160, "width": 100, "height": 50, "fps": 16.0, "device": "cuda:0",
                              "device_count": 1, "peak_memory_bytes": (sid + 1) << 30,
                              "timings": {"end_to_end": 2.0 * (sid + 1), "core_dit": 1.0 * (sid + 1), "extra": 0.5}}
              for sid in range(2)}
    rows, keys = speed_rows([Source(path=__import__("pathlib").Path("run"), kind="run", dimensions=DIMS,
                                    sidecars=videos)])
    row = rows[0]
    assert keys == ["end_to_end", "core_dit", "extra"]
    assert row["seconds_mean"] == 3.0 and row["frames_per_s"] == pytest.approx(320 / 6)
    assert row["mpx_per_s"] == pytest.approx(320 * 5000 / 6 / 1e6) and row["peak_memory_gib"] == 2.0
    assert row["boundaries"]["core_dit"]["share"] == pytest.approx(0.5) and row["device"] == "cuda:0"
    assert row["size"] == "100x50@16"


def test_rows_scored_by_different_evaluators_are_not_compared():
    base = {"protocol": {"version": "1"}, "backbones": {"dino": "sha256:aa"}, "judge": None, "generator": {"x": 1}}
    other_gen = {**base, "generator": {"x": 2}}
    other_weights = {**base, "backbones": {"dino": "random(seed=0,size=tiny)"}}
    scores = {k: script_scores([rec(s, "a", 0.1 * s + (0.05 if k[0] == "B" else 0)) for s in range(6)], METRICS)
              for k in [("A", "1"), ("B", "2"), ("C", "3")]}
    pairs = compare_rows([("A", "1"), ("B", "2"), ("C", "3")], scores,
                         {("A", "1"): base, ("B", "2"): other_gen, ("C", "3"): other_weights}, DIMS,
                         BootstrapSettings(resamples=200))
    ab, ac, bc = pairs
    assert ab.result is not None and ab.shared == 6
    assert math.isclose(ab.result.difference[0], -0.05) and ab.result.significant[0]
    assert ac.result is None and "different evaluators" in ac.not_compared and "backbones.dino" in ac.not_compared
    assert bc.result is None
