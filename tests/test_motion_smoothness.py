"""motion_smoothness (protocol §2.1.4): the AMT network and checkpoint layout, the formula, the metric."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from narrastream.data.script import Script
from narrastream.metrics import MetricContext
from narrastream.metrics.backbones.amt import (
    CHECKPOINT_KEY,
    BidirCorrBlock,
    Interpolator,
    build_amt,
    centred_padding,
    load_amt_checkpoint,
    official_scale,
)
from narrastream.metrics.backbones.provider import BACKBONES, BackboneProvider
from narrastream.metrics.backbones.weights import WEIGHTS, WeightSpec, resolve_weights
from narrastream.metrics.functional.motion import (
    even_frame_count,
    frame_abs_errors,
    motion_score,
    prediction_to_uint8,
    segment_raw_error,
)
from narrastream.metrics.quality.motion_smoothness import MotionSmoothness
from narrastream.video import SegmentedVideo, SegmentRule

PARAMS = {"backbone": "amt_s", "tau": 3.0, "batch_size": 4}  # tau as in the protocol YAML (code default 3.5)
H, W = 48, 64


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny networks run faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def seeded(arch: str, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_amt(arch).eval()


def random_frames(n: int, h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------ network
def test_tiny_forward_shapes_and_padding():
    interpolator = Interpolator(seeded("tiny"))
    assert interpolator.pad_multiple == 16
    for h, w in ((48, 64), (45, 61)):  # a multiple of 16, and one that needs (1, 2, 1, 2) replicate padding
        a, b = random_frames(3, h, w, seed=1), random_frames(3, h, w, seed=2)
        out = interpolator.interpolate(a, b, batch_size=2)
        assert out.shape == (3, h, w, 3) and out.dtype == np.uint8
    assert centred_padding(45, 61, 16) == (1, 2, 1, 2) and centred_padding(48, 64, 16) == (0, 0, 0, 0)
    with pytest.raises(ValueError, match="uint8"):
        interpolator.interpolate(a.astype(np.float32), b)
    model = seeded("tiny")
    with torch.no_grad():
        pred = model(torch.rand(2, 3, 48, 64), torch.rand(2, 3, 48, 64), 0.5)
    assert pred.shape == (2, 3, 48, 64) and 0.0 <= float(pred.min()) and float(pred.max()) <= 1.0


def test_interpolation_is_deterministic_and_batch_independent():
    a, b = random_frames(4, seed=3), random_frames(4, seed=4)
    first = Interpolator(seeded("tiny")).interpolate(a, b, batch_size=4)
    again = Interpolator(seeded("tiny")).interpolate(a, b, batch_size=4)
    np.testing.assert_array_equal(first, again)
    single = Interpolator(seeded("tiny")).interpolate(a, b, batch_size=1)
    # pairs are independent: batching can only move a value across a truncation boundary
    assert np.abs(first.astype(int) - single.astype(int)).max() <= 1


def test_correlation_window_layout():
    # one 1-channel feature per pixel: C(p, q) = f0(p) f1(q); f1 = x coordinate, f0 = 1 everywhere
    fmap1 = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 4, 4).contiguous()
    corr = BidirCorrBlock(torch.ones(1, 1, 4, 4), fmap1, num_levels=1, radius=1)
    coords = torch.zeros(1, 2, 4, 4)
    coords[:, 0] = 1.0  # look around x = 1, y = 0
    window, _ = corr(coords, coords)
    # channel i*3 + j holds the offset (x, y) = (i - 1, j - 1): x = 0, 1, 2 along the first index; y = -1 is outside (0)
    assert window[0, :, 0, 0].tolist() == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 2.0, 2.0]


def test_amt_s_parameter_layout():
    model = build_amt("s")
    state = model.state_dict()
    # 213 tensors, 2,990,543 parameters: AMT's docs give AMT-S about 60 % of IFRNet-B's 4.96 M, i.e. ~3.0 M
    assert len(state) == 213
    assert sum(p.numel() for p in model.parameters()) == 2_990_543
    assert {key.split(".")[0] for key in state} == {
        "feat_encoder", "encoder", "decoder4", "decoder3", "decoder2", "decoder1",
        "update4", "update3", "update2", "comb_block",
    }
    expected = {  # shapes worked out by hand from networks/AMT-S.py and networks/blocks/
        "feat_encoder.conv1.weight": (32, 3, 7, 7),
        "feat_encoder.layer1.0.conv1.weight": (8, 32, 1, 1),
        "feat_encoder.layer2.0.downsample.0.weight": (64, 32, 1, 1),
        "feat_encoder.layer3.1.conv3.weight": (96, 24, 1, 1),
        "feat_encoder.conv2.weight": (84, 96, 1, 1),
        "encoder.pyramid1.0.0.weight": (20, 3, 3, 3),
        "encoder.pyramid4.1.1.weight": (56,),
        "decoder4.convblock.0.0.weight": (112, 113, 3, 3),
        "decoder4.convblock.1.conv2.0.weight": (20, 20, 3, 3),
        "decoder4.convblock.1.prelu.weight": (112,),
        "decoder4.convblock.2.weight": (112, 48, 4, 4),  # ConvTranspose2d: (in, out, k, k)
        "decoder3.convblock.0.0.weight": (132, 136, 3, 3),
        "decoder2.convblock.2.weight": (96, 24, 4, 4),
        "decoder1.convblock.0.0.weight": (60, 64, 3, 3),
        "decoder1.convblock.2.weight": (60, 24, 4, 4),
        "update4.convc1.weight": (64, 392, 1, 1),
        "update4.convf1.weight": (40, 4, 7, 7),
        "update4.conv.weight": (68, 84, 3, 3),
        "update4.gru.0.weight": (76, 116, 3, 3),
        "update3.gru.0.weight": (76, 104, 3, 3),
        "update2.feat_head.2.weight": (20, 76, 3, 3),
        "update3.flow_head.2.weight": (4, 76, 3, 3),
        "comb_block.0.weight": (18, 9, 3, 3),
        "comb_block.1.weight": (18,),
        "comb_block.2.weight": (3, 18, 3, 3),
    }
    assert {key: tuple(state[key].shape) for key in expected} == expected
    # instance norms carry no parameters or buffers
    assert not any("norm" in key for key in state)
    with torch.no_grad():  # the full network runs (1/8 maps of 16x16: a 4-level pyramid down to 2x2)
        pred = model.eval()(torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128), 0.5)
    assert pred.shape == (1, 3, 128, 128)


def test_checkpoint_round_trip_in_the_official_layout(tmp_path):
    model = seeded("tiny", seed=7)
    torch.save({CHECKPOINT_KEY: model.state_dict(), "epoch": 1}, tmp_path / "amt-tiny.pth")
    spec = WeightSpec(name="amt_tiny_test", filename="amt-tiny.pth")
    loaded = load_amt_checkpoint(resolve_weights(spec, weights_dir=tmp_path), "tiny")
    a, b = random_frames(2, seed=5), random_frames(2, seed=6)
    np.testing.assert_array_equal(Interpolator(model).interpolate(a, b), Interpolator(loaded).interpolate(a, b))
    # a DataParallel save loads too
    torch.save({CHECKPOINT_KEY: {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "dp.pth")
    load_amt_checkpoint(tmp_path / "dp.pth", "tiny")


def test_provider_loads_an_official_layout_file(tmp_path, monkeypatch):
    """The files path with the real spec: random AMT-S weights saved as amt-s.pth are found and loaded."""
    monkeypatch.delenv("NARRASTREAM_WEIGHTS", raising=False)
    model = seeded("s", seed=3)
    torch.save({CHECKPOINT_KEY: model.state_dict()}, tmp_path / WEIGHTS["amt_s"].filename)
    provider = BackboneProvider({"source": "files", "dir": str(tmp_path), "device": "cpu"})
    interpolator = provider.get("amt_s")
    assert isinstance(interpolator, Interpolator)
    loaded = interpolator.module.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in model.state_dict().items())
    identity = provider.identity("amt_s")
    assert identity["architecture"] == "amt-s" and identity["dtype"] == "float32" and identity["sha256"]


def test_checkpoint_errors(tmp_path):
    state = seeded("tiny").state_dict()
    torch.save(state, tmp_path / "bare.pth")
    with pytest.raises(ValueError, match="'state_dict'"):
        load_amt_checkpoint(tmp_path / "bare.pth", "tiny")
    broken = dict(state)
    del broken["comb_block.0.bias"]
    broken["extra.weight"] = torch.zeros(1)
    torch.save({CHECKPOINT_KEY: broken}, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"(?s)missing \(1\): comb_block\.0\.bias.*unexpected \(1\): extra\.weight"):
        load_amt_checkpoint(tmp_path / "broken.pth", "tiny")
    with pytest.raises(ValueError, match="wrong shape"):  # a tiny checkpoint is not AMT-S
        torch.save({CHECKPOINT_KEY: state}, tmp_path / "tiny.pth")
        load_amt_checkpoint(tmp_path / "tiny.pth", "s")


def test_weight_spec_and_official_scale():
    assert WEIGHTS["amt_s"].filename == "amt-s.pth" and WEIGHTS["amt_s"].url.endswith("lalala125/AMT/resolve/main/amt-s.pth")
    assert BACKBONES["amt_s"].architectures == {"full": "s", "tiny": "tiny"} and not BACKBONES["amt_s"].half_on_cuda
    assert official_scale(480, 832, 3.4 * 1024**3) == 1.0
    assert official_scale(480, 832, 2600 * 1024**2) == 16 / 27  # what we do not do: it depends on free VRAM


# ------------------------------------------------------------------------------------ formula
def test_truncating_cast():
    # 0.999 * 255 = 254.745: truncation gives 254 (rounding would give 255); 0.5 -> 127.5 -> 127
    assert prediction_to_uint8(torch.tensor([0.999, 0.5, 1.5, -1.0])).tolist() == [254, 127, 255, 0]

    class Constant(nn.Module):
        def forward(self, img0, img1, embt, scale_factor=1.0):
            return torch.full_like(img0, 0.999)

    out = Interpolator(Constant()).interpolate(random_frames(1, 20, 30), random_frames(1, 20, 30, seed=1))
    assert out.shape == (1, 20, 30, 3) and (out == 254).all()


def test_formula_by_hand():
    a = np.zeros((2, 1, 2, 3), dtype=np.uint8)
    b = a.copy()
    b[0, 0, 0] = (3, 6, 9)       # frame 0: (3 + 6 + 9) / 6 = 3
    b[1, 0, 1, 2] = 255          # frame 1: 255 / 6 = 42.5
    assert frame_abs_errors(a, b) == [3.0, 42.5]
    assert frame_abs_errors(b, a) == [3.0, 42.5]  # absolute, on uint8 without wrap-around
    raw = segment_raw_error([3.0, 42.5])
    assert raw == 22.75
    assert motion_score(raw, 3.0) == pytest.approx(math.exp(-22.75 / 3.0), rel=1e-12)
    assert motion_score(3.0, 3.0) == pytest.approx(0.36787944117144233, rel=1e-12)   # tau = 3.0 ...
    assert motion_score(3.0, 3.5) == pytest.approx(0.42437284567694994, rel=1e-12)   # ... not the code default 3.5
    assert segment_raw_error([]) == 0.0 and motion_score(0.0, 3.0) == 1.0
    assert [even_frame_count(n) for n in (1, 2, 3)] == [1, 1, 2]
    with pytest.raises(ValueError):
        motion_score(1.0, 0.0)


# ------------------------------------------------------------------------------------- metric
class Echo(nn.Module):
    """Predicts the first frame of the pair (through the real padding and uint8 conversion)."""

    def forward(self, img0, img1, embt, scale_factor=1.0):
        assert img0.shape[-2] % 16 == 0 and img0.shape[-1] % 16 == 0
        return img0


class StubProvider:
    def __init__(self):
        self.interpolator = Interpolator(Echo())

    def get(self, name):
        assert name == "amt_s"
        return self.interpolator


def gray_video(levels, bounds, h=6, w=10, fps=4.0):
    frames = np.repeat(np.asarray(levels, dtype=np.uint8)[:, None, None, None], 3, axis=3)
    return SegmentedVideo(np.ascontiguousarray(np.broadcast_to(frames, (len(levels), h, w, 3))), fps, bounds, "time")


def context(provider, weights=None, prompts=3):
    return MetricContext(script=Script(id=0, prompts=tuple("abcdefg"[:prompts])), backbones=provider,
                         segment_weights=weights)


def test_metric_formula_with_a_stub_interpolator():
    # segment 0 static (5 frames); segment 1 ramps by 3 per frame: the echo predicts frame 2k for 2k+1 -> error 3;
    # its 6th frame (odd, no right neighbour) is never a target; segment 2 has 2 frames: one even frame only
    levels = [50] * 5 + [0, 3, 6, 9, 12, 200] + [7, 9]
    video = gray_video(levels, [(0, 5), (5, 11), (11, 13)])
    metric = MotionSmoothness(**PARAMS)
    result = metric.compute(video, context(StubProvider(), weights=[2, 1, 1]))
    s0, s1, s2 = result.items
    assert (s0["interpolations"], s0["raw_error"], s0["score"]) == (2, 0.0, 1.0)
    assert s1["interpolations"] == 2 and s1["frame_errors"] == [3.0, 3.0] and s1["raw_error"] == 3.0
    assert s1["score"] == pytest.approx(math.exp(-1.0), rel=1e-12)  # tau = 3.0
    assert s2["status"] == "fallback" and (s2["raw_error"], s2["score"]) == (0.0, 1.0)
    assert result.score == pytest.approx((2 * 1.0 + math.exp(-1.0) + 1.0) / 4, rel=1e-12)
    assert result.status == "fallback" and len(result.fallbacks) == 1 and "segment 2" in result.fallbacks[0]
    # tau is the protocol's, not a code default
    other = MotionSmoothness(**{**PARAMS, "tau": 3.5}).compute(video, context(StubProvider(), weights=[2, 1, 1]))
    assert other.items[1]["score"] == pytest.approx(math.exp(-3.0 / 3.5), rel=1e-12)
    # 3 segments, 2 prompts: uniform weights, recorded (the official mean fallback)
    uniform = metric.compute(video, context(StubProvider(), weights=[2, 1], prompts=2))
    assert uniform.score == pytest.approx((1.0 + math.exp(-1.0) + 1.0) / 3, rel=1e-12)
    assert uniform.fallbacks[0].startswith("segment_weights: uniform")
    # a static video (odd-sized frames: padding round trip) scores exactly 1 and is not a fallback
    static = gray_video([80] * 12, [(0, 4), (4, 8), (8, 12)], h=13, w=21)
    still = metric.compute(static, context(StubProvider(), weights=[1, 1, 1]))
    assert still.score == 1.0 and still.status == "ok" and still.fallbacks == []


def test_metric_needs_its_protocol_params():
    with pytest.raises(ValueError, match="tau"):
        MotionSmoothness(backbone="amt_s")
    with pytest.raises(ValueError, match="backbone"):
        MotionSmoothness(tau=3.0)
    assert MotionSmoothness.name == "motion_smoothness" and MotionSmoothness.dimension == "quality"
    assert MotionSmoothness.backbones == ("amt_s",)


def test_metric_end_to_end_with_tiny_amt(monkeypatch):
    provider = BackboneProvider({"source": "random", "size": "tiny"})
    metric = MotionSmoothness(**PARAMS)
    ctx = context(provider, weights=[2, 1, 1])

    def video(frames):
        return SegmentedVideo.from_frames(frames, 4.0, 3, rule=SegmentRule(segment_seconds=2.0))  # 8 frames each

    noisy = metric.compute(video(random_frames(24, seed=9)), ctx)
    assert 0.0 <= noisy.score <= 1.0 and noisy.status == "ok"
    assert [item["interpolations"] for item in noisy.items] == [3, 3, 3]
    assert metric.compute(video(random_frames(24, seed=9)), ctx).score == noisy.score  # deterministic
    y, x = np.mgrid[0:H, 0:W]
    still = np.repeat(np.stack([x * 3, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)[None], 24, axis=0)
    static = metric.compute(video(still), ctx)
    assert 0.0 <= static.score <= 1.0
    assert provider.identity("amt_s")["architecture"] == "amt-tiny"
