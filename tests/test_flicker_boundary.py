"""temporal_flickering and boundary_smoothness: formulas on hand-made numbers, the RAFT loader, end to end.

The hand-computed cases are chosen so that changing any protocol constant (alpha 0.01, beta 0.5,
min_mask_ratio 0.05, p90, p84, tau 0.5, tolerances 0.02 / 0.5, the exp mappings, the transition
weights) makes a test fail.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from narrastream.data.script import Script
from narrastream.metrics import MetricContext, build_metric
from narrastream.metrics.backbones import BACKBONES, WEIGHTS, BackboneProvider, FlowEstimator
from narrastream.metrics.backbones.raft import (
    build_raft,
    convert_original_state_dict,
    load_raft_checkpoint,
    load_raft_state_dict,
    original_to_torchvision_key,
    sintel_padding,
    torchvision_to_original_state_dict,
)
from narrastream.metrics.backbones.weights import WeightSpec, resolve_weights
from narrastream.metrics.functional.boundary import flow_tolerance, mean_flow_magnitude, seam_score
from narrastream.metrics.functional.flicker import (
    backward_warp,
    fb_consistency_mask,
    flicker_score,
    luma,
    pair_flicker_error,
    segment_raw_error,
    select_valid_mask,
)
from narrastream.paths import config_dir
from narrastream.video import SegmentedVideo, SegmentRule

H, W = 48, 64  # the tiny preset's frame size


def protocol_params(name: str) -> dict:
    with open(config_dir() / "protocol" / "narrastream_v1.yaml") as f:
        return yaml.safe_load(f)["metrics"][name]


FLICKER = protocol_params("temporal_flickering")
BOUNDARY = protocol_params("boundary_smoothness")


def pair(ya, yb, fw, bw, params=FLICKER):
    return pair_flicker_error(
        ya, yb, fw, bw, alpha=params["fb_consistency_alpha"], beta=params["fb_consistency_beta"],
        min_mask_ratio=params["min_mask_ratio"], quantile=params["pair_quantile"],
    )


def x_flow(dx: float, h: int = 3, w: int = 5) -> torch.Tensor:
    flow = torch.zeros(2, h, w)
    flow[0] = dx
    return flow


# ------------------------------------------------------------------------------ flicker formulas
def test_protocol_constants():
    assert FLICKER == {
        "backbone": "raft_things", "num_frames": 8, "raft_iters": 20, "fb_consistency_alpha": 0.01,
        "fb_consistency_beta": 0.5, "min_mask_ratio": 0.05, "pair_quantile": 0.90, "segment_quantile": 0.84,
        "tau": 0.5,
    }
    assert BOUNDARY == {"backbone": "raft_things", "raft_iters": 20, "window": 2, "flow_tolerance_abs": 0.02,
                        "flow_tolerance_rel": 0.5}
    assert build_metric("temporal_flickering", FLICKER).dimension == "quality"
    assert build_metric("boundary_smoothness", BOUNDARY).dimension == "temporal"
    with pytest.raises(ValueError, match="missing protocol parameters"):
        build_metric("boundary_smoothness", {"backbone": "raft_things"})


def test_luma_weights():
    rgb = np.array([[[[200, 100, 50]]]], dtype=np.uint8)
    assert luma(rgb).item() == pytest.approx(0.299 * 200 + 0.587 * 100 + 0.114 * 50, abs=1e-4)


def test_fb_consistency_thresholds():
    def mask(fw, bw_warped):
        f = torch.tensor(fw, dtype=torch.float32).view(1, 2, 1, 1)
        b = torch.tensor(bw_warped, dtype=torch.float32).view(1, 2, 1, 1)
        return fb_consistency_mask(f, b, torch.ones(1, 1, 1, dtype=torch.bool),
                                   FLICKER["fb_consistency_alpha"], FLICKER["fb_consistency_beta"]).item()

    # beta: no motion, |B~|^2 = 0.5041 < 0.01 * 0.5041 + 0.5, but 0.505521 > 0.505055
    assert mask([0.0, 0.0], [0.0, 0.71]) and not mask([0.0, 0.0], [0.0, 0.711])
    # alpha: F = (10, 0), B~ = (-10 + d, 0): d^2 < 0.01 (100 + (10 - d)^2) + 0.5
    assert mask([10.0, 0.0], [-8.8, 0.0])  # 1.44 < 2.2744
    assert not mask([10.0, 0.0], [-8.5, 0.0])  # 2.25 > 2.2225
    # out of bounds is never consistent
    f = torch.zeros(1, 2, 1, 1)
    assert not fb_consistency_mask(f, f, torch.zeros(1, 1, 1, dtype=torch.bool), 0.01, 0.5).item()


def test_min_mask_ratio_and_in_bounds_fallback():
    inside = torch.ones(20, dtype=torch.bool)
    one_of_20 = torch.zeros(20, dtype=torch.bool)
    one_of_20[3] = True
    assert select_valid_mask(one_of_20, inside, FLICKER["min_mask_ratio"])[1] == "consistency"  # 0.05 >= 0.05
    one_of_21 = torch.cat((one_of_20, torch.zeros(1, dtype=torch.bool)))
    chosen, source = select_valid_mask(one_of_21, torch.ones(21, dtype=torch.bool), FLICKER["min_mask_ratio"])
    assert source == "in_bounds" and bool(chosen.all())  # 1/21 < 0.05


def test_warp_is_exact_for_a_pure_translation():
    rng = np.random.default_rng(0)
    ya = torch.from_numpy(rng.uniform(0, 255, (6, 9)).astype(np.float32))
    yb = torch.zeros_like(ya)
    yb[:, 2:] = ya[:, :-2]  # b(x + 2) = a(x)
    warped, inside = backward_warp(yb.view(1, 1, 6, 9), x_flow(2.0, 6, 9).unsqueeze(0))
    assert inside[0, :, :7].all() and not inside[0, :, 7:].any()
    torch.testing.assert_close(warped[0, 0, :, :7], ya[:, :7])
    error, info = pair(ya, yb, x_flow(2.0, 6, 9), x_flow(-2.0, 6, 9))
    assert error == pytest.approx(0.0, abs=1e-6) and info["mask"] == "consistency"
    assert info["consistency_ratio"] == pytest.approx(7 / 9)
    # a uniform brightness change of 25.5 on top of the motion: residual 0.1 on every valid pixel
    error, _ = pair(ya, yb + 25.5, x_flow(2.0, 6, 9), x_flow(-2.0, 6, 9))
    assert error == pytest.approx(0.1, abs=1e-6)


def test_pair_error_is_p90_over_valid_pixels():
    ya = torch.zeros(1, 11)
    yb = torch.arange(11.0).view(1, 11) * 25.5  # residuals 0.0, 0.1, ..., 1.0
    error, info = pair(ya, yb, x_flow(0.0, 1, 11), x_flow(0.0, 1, 11))
    assert info["mask"] == "consistency"
    assert error == pytest.approx(0.9, abs=1e-6)  # p90 of 11 values: s(9)
    ya = torch.zeros(1, 21)
    yb = torch.arange(21.0).view(1, 21) ** 2 / 400 * 255  # residuals (i/20)^2
    error, _ = pair(ya, yb, x_flow(0.0, 1, 21), x_flow(0.0, 1, 21))
    assert error == pytest.approx(0.81, abs=1e-6)  # position 18: (18/20)^2


def test_in_bounds_fallback_and_skipped_pair():
    ya = torch.arange(5.0).repeat(3, 1) * 10
    yb = torch.roll(ya, shifts=1, dims=1)
    # forward and backward flows agree in direction instead of cancelling: |F + B~|^2 = 4 > 0.52
    error, info = pair(ya, yb, x_flow(1.0), x_flow(1.0))
    assert info["mask"] == "in_bounds" and info["consistency_ratio"] == 0.0
    assert info["in_bounds_ratio"] == pytest.approx(0.8) and error == 0.0  # the warp is exact in bounds
    # every sample point outside the frame: the pair is skipped
    error, info = pair(ya, yb, x_flow(100.0), x_flow(-100.0))
    assert error is None and info["mask"] == "skipped"


def test_segment_reduction_and_score():
    errors = [0.6, 0.0, 0.5, 0.1, 0.4, 0.2, 0.3]
    raw = segment_raw_error(errors, FLICKER["segment_quantile"])
    assert raw == pytest.approx(0.96 * 0.5 + 0.04 * 0.6)  # p84 of 7 values
    assert flicker_score(raw, FLICKER["tau"]) == pytest.approx(math.exp(-0.504 / 0.5))
    assert segment_raw_error([0.3], 0.84) == 0.3 and segment_raw_error([], 0.84) is None


# ----------------------------------------------------------------------------- boundary formulas
def test_seam_score_constants():
    assert flow_tolerance(2.0, BOUNDARY["flow_tolerance_abs"], BOUNDARY["flow_tolerance_rel"]) == pytest.approx(1.02)
    assert flow_tolerance(0.0, 0.0, 0.0) == 1e-6
    score, parts = seam_score(1.0, 2.0, 3.0, abs_tol=BOUNDARY["flow_tolerance_abs"], rel_tol=BOUNDARY["flow_tolerance_rel"])
    assert score == 1.0 and parts["expected"] == 2.0
    score, parts = seam_score(0.0, 0.3, 0.0, abs_tol=BOUNDARY["flow_tolerance_abs"], rel_tol=BOUNDARY["flow_tolerance_rel"])
    assert parts["tolerance"] == pytest.approx(0.02) and score == pytest.approx(math.exp(-15.0))
    score, _ = seam_score(1.0, 0.48, 3.0, abs_tol=BOUNDARY["flow_tolerance_abs"], rel_tol=BOUNDARY["flow_tolerance_rel"])
    assert score == pytest.approx(math.exp(-1.52 / 1.02))
    flow = torch.zeros(2, 2, 1, 2)
    flow[0, 0] = 3.0
    flow[0, 1] = 4.0
    flow[1, 1, 0, 0] = 2.0
    assert mean_flow_magnitude(flow).tolist() == [5.0, 1.0]


# ------------------------------------------------------------------- metrics with a scripted flow
class GrayFlow:
    """Frames of one gray level each; the flow is a uniform shift of (level_b - level_a) / 51 pixels."""

    def __init__(self, inconsistent: bool = False):
        self.calls = 0
        self.inconsistent = inconsistent  # both directions shift the same way: never fb-consistent

    def flow(self, images_a, images_b, iters=20, batch_size=None, keep_on_device=False):
        self.calls += 1
        shift = (images_b.reshape(len(images_b), -1).mean(1) - images_a.reshape(len(images_a), -1).mean(1)) / 51.0
        flow = torch.zeros(len(images_a), 2, *images_a.shape[1:3])
        flow[:, 0] = torch.from_numpy(np.abs(shift) if self.inconsistent else shift).float().view(-1, 1, 1)
        return flow


class ScriptedProvider:
    def __init__(self, inconsistent: bool = False):
        self.estimator = GrayFlow(inconsistent)

    def get(self, name):
        assert name == "raft_things"
        return self.estimator


def gray_video(levels, bounds, fps=4.0):
    frames = np.repeat(np.asarray(levels, dtype=np.uint8)[:, None, None, None], 3, axis=3)
    frames = np.ascontiguousarray(np.broadcast_to(frames, (len(levels), 8, 16, 3)))
    return SegmentedVideo(frames, fps, bounds, "time")


def ctx(provider, weights=None, prompts=3):
    return MetricContext(script=Script(id=0, prompts=tuple("abcdefg"[:prompts])), backbones=provider,
                         segment_weights=weights)


def test_flicker_metric_on_scripted_flow():
    # segment 0 static, segment 1 brightens by 51 per frame (residual 0.2 each pair), segment 2 has one frame
    levels = [100, 100, 100, 100, 0, 51, 102, 153, 7]
    video = gray_video(levels, [(0, 4), (4, 8), (8, 9)])
    metric = build_metric("temporal_flickering", FLICKER)
    provider = ScriptedProvider()
    result = metric.compute(video, ctx(provider, weights=[3, 1], prompts=2))
    assert provider.estimator.calls == 1  # every pair of every segment in one batched call
    s0, s1, s2 = result.items
    assert s0["frames"] == [0, 1, 2, 3] and len(s0["pairs"]) == 3 and s0["raw_error"] == 0.0 and s0["score"] == 1.0
    assert s1["raw_error"] == pytest.approx(0.2, abs=1e-6)
    assert s1["score"] == pytest.approx(math.exp(-0.4), abs=1e-6)
    assert s2["status"] == "omitted" and s2["frames"] == [0]
    # the two kept scores meet two planner weights: weighted, as the official code does
    assert result.score == pytest.approx((3 * 1.0 + 1 * math.exp(-0.4)) / 4, abs=1e-6)
    assert result.details["omitted_segments"] == [2]
    assert result.status == "ok" and result.fallbacks == []  # a dropped tail keeps the weights aligned
    # a dropped middle segment with a matching count: weights applied in order (misaligned), recorded
    middle = gray_video([100, 100, 100, 100, 7, 0, 51, 102, 153], [(0, 4), (4, 5), (5, 9)])
    shifted = metric.compute(middle, ctx(provider, weights=[3, 1], prompts=2))
    assert shifted.score == pytest.approx(result.score) and shifted.details["omitted_segments"] == [1]
    assert shifted.status == "fallback" and "applied in order to the kept segments [0, 2]" in shifted.fallbacks[0]
    # weights for all three segments: 3 weights for 2 kept scores -> mean
    result = metric.compute(video, ctx(provider, weights=[3, 1, 1]))
    assert result.score == pytest.approx((1.0 + math.exp(-0.4)) / 2, abs=1e-6)
    assert result.fallbacks == ["segment_weights: uniform (3 weights for 2 segments)"]
    # deterministic
    assert metric.compute(video, ctx(provider, weights=[3, 1, 1])).score == result.score


def test_flicker_metric_records_the_in_bounds_fallback():
    video = gray_video([100, 100, 100, 100, 0, 51, 102, 153], [(0, 4), (4, 8)])
    result = build_metric("temporal_flickering", FLICKER).compute(
        video, ctx(ScriptedProvider(inconsistent=True), weights=[1, 1], prompts=2))
    assert [pair["mask"] for pair in result.items[1]["pairs"]] == ["in_bounds"] * 3
    assert [pair["mask"] for pair in result.items[0]["pairs"]] == ["consistency"] * 3  # zero flow is consistent
    assert result.status == "fallback" and len(result.fallbacks) == 3
    assert result.fallbacks[0].startswith("segment 1 pair 0->1: mask in_bounds")
    assert result.items[1]["raw_error"] == pytest.approx(0.2, abs=1e-6)


def test_flicker_metric_fails_without_a_scorable_segment():
    video = gray_video([1, 2, 3], [(0, 1), (1, 2), (2, 3)])
    result = build_metric("temporal_flickering", FLICKER).compute(video, ctx(ScriptedProvider()))
    assert result.status == "failed" and result.score is None and "no segment" in result.reason


def test_boundary_metric_on_scripted_flow():
    # seam 0 jumps 2 steps, seam 1 continues at 1 step
    steps = [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12]
    video = gray_video([17 * s for s in steps], [(0, 4), (4, 8), (8, 12)])  # 17 levels apart: 1/3 px per step
    metric = build_metric("boundary_smoothness", BOUNDARY)
    provider = ScriptedProvider()
    result = metric.compute(video, ctx(provider, weights=[1, 1, 2]))
    assert provider.estimator.calls == 1
    seam0, seam1 = result.items
    assert seam0["left_frames"] == [2, 3] and seam0["right_frames"] == [0, 1]
    assert seam0["left"] == pytest.approx(1 / 3) and seam0["boundary"] == pytest.approx(2 / 3)
    expected0 = math.exp(-(1 / 3) / (0.02 + 0.5 / 3))
    assert seam0["score"] == pytest.approx(expected0, rel=1e-6) and seam1["score"] == pytest.approx(1.0)
    # weights [1, 1, 2] -> [.25, .25, .5] -> transitions [.5, .75]
    assert [seam0["weight"], seam1["weight"]] == pytest.approx([0.5, 0.75])
    assert result.status == "ok" and result.score == pytest.approx((0.5 * expected0 + 0.75) / 1.25, rel=1e-6)
    uniform = metric.compute(video, ctx(provider))
    assert uniform.score == pytest.approx((expected0 + 1.0) / 2, rel=1e-6)
    assert uniform.fallbacks == ["segment_weights: uniform (no narrative annotations)"]


def test_boundary_metric_skips_short_windows():
    video = gray_video([0, 17, 34, 51, 85, 102, 119, 5], [(0, 4), (4, 7), (7, 8)])
    result = build_metric("boundary_smoothness", BOUNDARY).compute(video, ctx(ScriptedProvider(), weights=[1, 1, 2]))
    seam0, seam1 = result.items
    assert seam1["status"] == "skipped" and seam1["right_frames"] == [0]
    expected0 = math.exp(-(1 / 3) / (0.02 + 0.5 / 3))  # left 1/3, boundary 2/3, right 1/3
    assert result.details["computed_seams"] == [0] and result.score == pytest.approx(expected0, rel=1e-6)
    single = gray_video([0, 1, 2], [(0, 3)])
    failed = build_metric("boundary_smoothness", BOUNDARY).compute(single, ctx(ScriptedProvider(), prompts=1))
    assert failed.status == "failed" and "single segment" in failed.reason
    ones = gray_video([0, 1, 2], [(0, 1), (1, 2), (2, 3)])
    failed = build_metric("boundary_smoothness", BOUNDARY).compute(ones, ctx(ScriptedProvider()))
    assert failed.status == "failed" and "no seam" in failed.reason


# ------------------------------------------------------------------------------------------ RAFT
def seeded_tiny() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_raft("tiny")
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that a mix-up of buffers shows
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_raft_key_mapping_round_trip(tmp_path):
    model = seeded_tiny()
    original = torchvision_to_original_state_dict(model.state_dict())
    assert "module.fnet.conv1.weight" in original and "module.update_block.gru.convz1.weight" in original
    assert torch.equal(original["module.cnet.layer2.0.norm3.running_var"],
                       original["module.cnet.layer2.0.downsample.1.running_var"])
    path = tmp_path / "raft-things.pth"
    torch.save(original, path)
    spec = WeightSpec("raft_things", "raft-things.pth")
    loaded = load_raft_checkpoint(resolve_weights(spec, weights_dir=tmp_path), "tiny")
    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 256, (2, H, W, 3), dtype=np.uint8) for _ in range(2))
    expected = FlowEstimator(model, device=torch.device("cpu")).flow(a, b, iters=4)
    assert torch.equal(FlowEstimator(loaded, device=torch.device("cpu")).flow(a, b, iters=4), expected)
    # the torchvision layout loads as is
    tv_loaded = load_raft_state_dict(build_raft("tiny"), model.state_dict()).eval()
    assert torch.equal(FlowEstimator(tv_loaded, device=torch.device("cpu")).flow(a, b, iters=4), expected)


def test_raft_loader_lists_bad_keys():
    original = torchvision_to_original_state_dict(seeded_tiny().state_dict())
    with pytest.raises(KeyError, match=r"2 unmapped keys: module\.fnet\.layer4\.0\.conv1\.weight, module\.foo\.weight"):
        convert_original_state_dict({**original, "module.foo.weight": torch.zeros(1),
                                     "module.fnet.layer4.0.conv1.weight": torch.zeros(1)})
    del original["module.update_block.mask.0.bias"]
    with pytest.raises(KeyError, match=r"missing \['mask_predictor\.convrelu\.0\.bias'\]"):
        load_raft_state_dict(build_raft("tiny"), original)
    bad_duplicate = torchvision_to_original_state_dict(seeded_tiny().state_dict())
    bad_duplicate["module.cnet.layer3.0.norm3.weight"] = bad_duplicate["module.cnet.layer3.0.norm3.weight"] + 1
    with pytest.raises(KeyError, match="differs from its duplicate"):
        convert_original_state_dict(bad_duplicate)


def test_raft_large_keys_and_shapes():
    """The official raft-things.pth layout, checked on names and shapes without running the model."""
    large = build_raft("large")
    original = torchvision_to_original_state_dict(large.state_dict())
    shapes = {k: tuple(v.shape) for k, v in original.items()}
    assert shapes["module.fnet.conv1.weight"] == (64, 3, 7, 7)
    assert shapes["module.fnet.conv2.weight"] == (256, 128, 1, 1)
    assert shapes["module.cnet.norm1.running_mean"] == (64,)
    assert shapes["module.cnet.layer3.0.norm3.weight"] == (128,)
    assert "module.fnet.norm1.weight" not in shapes  # instance norm without affine parameters
    assert shapes["module.update_block.encoder.convc1.weight"] == (256, 4 * 9 * 9, 1, 1)
    assert shapes["module.update_block.encoder.conv.weight"] == (126, 256, 3, 3)
    assert shapes["module.update_block.gru.convz1.weight"] == (128, 384, 1, 5)
    assert shapes["module.update_block.gru.convq2.weight"] == (128, 384, 5, 1)
    assert shapes["module.update_block.flow_head.conv1.weight"] == (256, 128, 3, 3)
    assert shapes["module.update_block.mask.0.weight"] == (256, 128, 3, 3)
    assert shapes["module.update_block.mask.2.weight"] == (576, 256, 1, 1)
    assert all(original_to_torchvision_key(k) is not None for k in original)
    assert set(convert_original_state_dict(original)) == set(large.state_dict())
    assert BACKBONES["raft_things"].weights is WEIGHTS["raft_things"]
    assert WEIGHTS["raft_things"].filename == "raft-things.pth"


class EchoFlow(nn.Module):
    """Returns the first two channels of its first input as the 'flow' (shows normalisation and padding)."""

    def forward(self, a, b, num_flow_updates=12):
        assert a.shape[-2] % 8 == 0 and a.shape[-1] % 8 == 0
        return [a[:, :2] * 0, a[:, :2]]


def test_flow_estimator_pads_normalises_and_unpads():
    assert sintel_padding(45, 61) == (1, 2, 1, 2)
    frames = np.random.default_rng(2).integers(0, 256, (3, 45, 61, 3), dtype=np.uint8)
    flow = FlowEstimator(EchoFlow(), device=torch.device("cpu")).flow(frames, frames, iters=1, batch_size=2)
    expected = 2.0 * torch.from_numpy(frames).permute(0, 3, 1, 2)[:, :2].float() / 255.0 - 1.0
    assert flow.shape == (3, 2, 45, 61)
    torch.testing.assert_close(flow, expected)


# --------------------------------------------------------------------------- tiny RAFT end to end
@pytest.fixture(scope="module")
def provider() -> BackboneProvider:
    return BackboneProvider({"source": "random", "size": "tiny"})


def small_video(frames: np.ndarray) -> SegmentedVideo:
    return SegmentedVideo.from_frames(frames, 4.0, 3, rule=SegmentRule(segment_seconds=2.0))  # 8 frames per segment


def test_metrics_end_to_end_with_tiny_raft(provider):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (24, H, W, 3), dtype=np.uint8)
    y, x = np.mgrid[0:H, 0:W]
    still = np.repeat(np.stack([x * 3, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)[None], 24, axis=0)
    flicker = build_metric("temporal_flickering", FLICKER)
    boundary = build_metric("boundary_smoothness", BOUNDARY)
    context = MetricContext(script=Script(id=0, prompts=("a", "b", "c")), backbones=provider,
                            segment_weights=[2, 1, 1])
    noisy = flicker.compute(small_video(noise), context)
    static = flicker.compute(small_video(still), context)
    for result in (noisy, static):
        assert 0.0 <= result.score <= 1.0
        assert [len(item["pairs"]) for item in result.items] == [7, 7, 7]
    assert static.score > noisy.score
    assert flicker.compute(small_video(noise), context).score == noisy.score  # deterministic
    seams = boundary.compute(small_video(noise), context)
    assert 0.0 <= seams.score <= 1.0 and [item["status"] for item in seams.items] == ["ok", "ok"]
    assert boundary.compute(small_video(noise), context).score == seams.score
    assert provider.identity("raft_things")["architecture"] == "raft-tiny"
