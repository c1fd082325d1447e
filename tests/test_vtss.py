"""vtss (protocol §2.1.5): the VTSS network and checkpoint layout, fragment sampling, the formula, the metric."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from narrastream.data.script import Script
from narrastream.metrics import MetricContext
from narrastream.metrics.backbones import provider as provider_module
from narrastream.metrics.backbones.provider import BackboneProvider, BackboneSpec
from narrastream.metrics.backbones.vtss import (
    CHECKPOINT_KEY,
    QualityScorer,
    VTSSEvaluator,
    build_vtss,
    fragment_gate,
    load_vtss_checkpoint,
)
from narrastream.metrics.backbones.weights import WeightSpec
from narrastream.metrics.functional.vtss import (
    anchored_linear,
    assemble_fragments,
    fragment_offsets,
    grid_origins,
    segment_generator,
    upsample_if_small,
)
from narrastream.metrics.quality.vtss import Vtss
from narrastream.protocol.pooling import weighted_mean
from narrastream.video import SegmentedVideo, SegmentRule

#: protocol values (§2.1.5)
PARAMS = {
    "backbone": "vtss_koala", "anchor_low": 0.02, "anchor_high": 0.075, "clip_len": 32, "num_clips": 4,
    "frame_interval": 2, "fragments_grid": 7, "fragment_size": 32, "fragment_seed": 0,
}
#: small sampling for the tiny end-to-end runs (same code paths, fewer pixels)
SMALL = dict(PARAMS, clip_len=4, num_clips=2, fragments_grid=7, fragment_size=8)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _spec() -> BackboneSpec:
    return BackboneSpec(
        weights=WeightSpec(name="vtss_koala", filename="vtss/infer.pth"),
        family="vtss",
        architectures={"full": "full", "tiny": "tiny"},
        half_on_cuda=False,
        build=build_vtss,
        load=load_vtss_checkpoint,
        embedder=lambda model, device, precision: QualityScorer(model.to(device), device=device),
    )


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(provider_module.BACKBONES, "vtss_koala", _spec())


def seeded(arch: str, seed: int = 0) -> VTSSEvaluator:
    torch.manual_seed(seed)
    model = build_vtss(arch)
    with torch.no_grad():  # non-zero biases and tables so a lost tensor changes the output
        for name, p in model.named_parameters():
            if name.endswith("bias") or "bias_table" in name:
                p.normal_(0, 0.05)
    return model


# ------------------------------------------------------------------------------- the network
def test_tiny_forward_shapes():
    model = seeded("tiny")
    with torch.inference_mode():
        out = model(torch.randn(2, 3, 8, 56, 56))
    assert out.shape == (2, 1, 4, 2, 2)  # T/2, H/32, W/32
    assert torch.isfinite(out).all()


def test_full_architecture_keys_and_shapes_match_swin_tiny_grpb():
    with torch.device("meta"):
        model = VTSSEvaluator("full")
    state = model.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    backbone = sum(p.numel() for n, p in model.fragments_backbone.named_parameters())
    fragment_tables = sum(p.numel() for n, p in model.fragments_backbone.named_parameters() if "fragment_position" in n)
    # Video Swin-T is 28.2M with its 400-way classifier (768*400+400 = 307,600): 27.85M without it
    assert backbone - fragment_tables == 27_850_470
    assert abs(backbone - fragment_tables + 307_600 - 28.2e6) < 0.05e6
    # window 8x7x7 -> (15*13*13) = 2535 relative offsets; fragment tables in stages 1-3 only (10 blocks)
    assert shapes["fragments_backbone.layers.0.blocks.0.attn.relative_position_bias_table"] == (2535, 3)
    assert shapes["fragments_backbone.layers.2.blocks.5.attn.fragment_position_bias_table"] == (2535, 12)
    assert shapes["fragments_backbone.layers.3.blocks.1.attn.relative_position_bias_table"] == (2535, 24)
    assert "fragments_backbone.layers.3.blocks.0.attn.fragment_position_bias_table" not in shapes
    assert sum("fragment_position_bias_table" in k for k in shapes) == 10
    assert fragment_tables == 2535 * (2 * 3 + 2 * 6 + 6 * 12)
    assert shapes["fragments_backbone.layers.1.blocks.0.attn.relative_position_index"] == (392, 392)
    assert shapes["fragments_backbone.patch_embed.proj.weight"] == (96, 3, 2, 4, 4)
    assert shapes["fragments_backbone.layers.0.downsample.reduction.weight"] == (192, 384)
    assert shapes["fragments_backbone.layers.2.downsample.norm.weight"] == (1536,)
    assert "fragments_backbone.layers.3.downsample.reduction.weight" not in shapes
    assert shapes["fragments_backbone.norm.weight"] == (768,)
    assert shapes["vqa_head.fc_hid.weight"] == (64, 768, 1, 1, 1)
    assert shapes["vqa_head.fc_last.weight"] == (1, 64, 1, 1, 1)
    assert sum(p.numel() for p in model.vqa_head.parameters()) == 768 * 64 + 64 + 64 + 1
    assert len(state) == 197
    assert all(k.startswith(("fragments_backbone.", "vqa_head.")) for k in state)


def test_fragment_gate_is_zero_within_a_fragment():
    # 56x56 tokens (stage 1 of a 224 input): 8x8 tokens per fragment, window 7x7 unshifted
    gate = fragment_gate(2, 56, 56, (2, 7, 7), (0, 0, 0), torch.device("cpu"))
    assert gate.shape == (64, 98, 98)
    assert gate[0].max() == 0  # the first window lies inside fragment (0, 0)
    stage4 = fragment_gate(8, 7, 7, (8, 7, 7), (0, 0, 0), torch.device("cpu"))
    assert int(stage4[0, 0, 48]) == 12  # token (0,0) vs (6,6): |0-6| + |0-6|


def test_checkpoint_round_trip_in_the_official_layout(tmp_path):
    model = seeded("tiny", seed=1)
    path = tmp_path / "infer.pth"
    torch.save({CHECKPOINT_KEY: {"module." + k: v for k, v in model.state_dict().items()}}, path)
    loaded = load_vtss_checkpoint(path, "tiny")
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    x = torch.randn(1, 3, 4, 56, 56)
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))


def test_checkpoint_errors_list_the_keys(tmp_path):
    state = seeded("tiny").state_dict()
    state.pop("vqa_head.fc_last.bias")
    state["extra.weight"] = torch.zeros(1)
    state["vqa_head.fc_hid.bias"] = torch.zeros(3)
    torch.save({CHECKPOINT_KEY: state}, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as err:
        load_vtss_checkpoint(tmp_path / "bad.pth", "tiny")
    text = str(err.value)
    assert "missing (1): vqa_head.fc_last.bias" in text and "unexpected (1): extra.weight" in text
    assert "wrong shape (1): vqa_head.fc_hid.bias (3,)" in text
    torch.save(state, tmp_path / "flat.pth")
    with pytest.raises(ValueError, match="state_dict"):
        load_vtss_checkpoint(tmp_path / "flat.pth", "tiny")


def test_scorer_normalises_and_averages_the_map():
    clips = np.full((1, 1, 1, 1, 3), [123.675, 116.28, 103.53], dtype=np.float64).round().astype(np.uint8)
    x = QualityScorer.normalise(clips)
    assert x.shape == (1, 3, 1, 1, 1)
    assert torch.allclose(x.flatten(), torch.tensor([(124 - 123.675) / 58.395, (116 - 116.28) / 57.12, (104 - 103.53) / 57.375]))

    class Map(torch.nn.Module):
        def forward(self, x):  # a "quality map": the normalised red channel, (B, 1, 2, 1, 1)
            return x[:, :1, :2, :1, :1]

    scorer = QualityScorer(Map())
    clips = np.zeros((3, 2, 4, 4, 3), np.uint8)
    clips[:, :, :, :, 0] = np.array([10, 100, 250], np.uint8)[:, None, None, None]
    expected = np.mean([(v - 123.675) / 58.395 for v in (10, 100, 250)])
    assert scorer.score(clips, batch_size=2) == pytest.approx(expected, rel=1e-6)
    # batched vs one clip at a time: other shapes, so other kernels; equal up to float32 rounding
    assert scorer.score(clips, batch_size=1) == pytest.approx(scorer.score(clips, batch_size=3), rel=0, abs=1e-6)


# ------------------------------------------------------------------------------ the formulas
def test_anchored_linear_by_hand():
    assert anchored_linear(0.02, 0.02, 0.075) == 0.0
    assert anchored_linear(0.075, 0.02, 0.075) == 1.0
    assert anchored_linear(0.031, 0.02, 0.075) == pytest.approx(0.2)
    assert anchored_linear(-1.0, 0.02, 0.075) == 0.0
    with pytest.raises(ValueError):
        anchored_linear(0.05, 0.075, 0.02)
    with pytest.raises(ValueError):
        anchored_linear(math.nan, 0.02, 0.075)


def _ctx(provider=None, weights=None, prompts=2):
    return MetricContext(script=Script(id=0, prompts=tuple("abcdefg"[:prompts])), backbones=provider, segment_weights=weights)


class _FixedScorer:
    """Returns a preset raw score per call (segment order)."""

    def __init__(self, raws):
        self.raws = list(raws)
        self.calls = []

    def score(self, clips, batch_size=4):
        self.calls.append(clips.shape)
        return self.raws[len(self.calls) - 1]


class _Provider:
    def __init__(self, scorer):
        self.scorer = scorer

    def get(self, name):
        assert name == "vtss_koala"
        return self.scorer


def _video(num_frames=16, segments=2, h=64, w=64, seed=0):
    frames = np.random.default_rng(seed).integers(0, 256, (num_frames, h, w, 3), dtype=np.uint8)
    return SegmentedVideo.from_frames(frames, 4.0, segments, rule=SegmentRule(segment_seconds=num_frames / segments / 4.0))


def test_pooling_is_on_raw_scores_then_mapped():
    # raws 0.0 and 0.1: map-after-pool = clip((0.05-0.02)/0.055) = 0.5454...;
    # pool-after-map would be (0 + 1) / 2 = 0.5. Weights 3:1 -> raw 0.025 -> 0.0909...
    metric = Vtss(**SMALL)
    result = metric.compute(_video(), _ctx(_Provider(_FixedScorer([0.0, 0.1]))))
    assert result.score == pytest.approx((0.05 - 0.02) / 0.055)
    assert result.score != pytest.approx(0.5)
    assert result.details["raw_pooled"] == pytest.approx(0.05)
    assert result.status == "fallback" and "uniform" in result.fallbacks[0]
    weighted = metric.compute(_video(), _ctx(_Provider(_FixedScorer([0.0, 0.1])), weights=[3, 1]))
    assert weighted.status == "ok" and weighted.fallbacks == []
    assert weighted.score == pytest.approx(anchored_linear(weighted_mean([0.0, 0.1], [0.75, 0.25]), 0.02, 0.075))
    assert weighted.score == pytest.approx((0.025 - 0.02) / 0.055)
    # other anchors change the score
    other = Vtss(**dict(SMALL, anchor_low=0.0, anchor_high=0.1)).compute(_video(), _ctx(_Provider(_FixedScorer([0.0, 0.1]))))
    assert other.score == pytest.approx(0.5)


def test_a_failed_segment_fails_the_sample():
    class Boom(_FixedScorer):
        def score(self, clips, batch_size=4):
            if self.calls:
                raise RuntimeError("out of memory")
            return super().score(clips, batch_size)

    result = Vtss(**SMALL).compute(_video(), _ctx(_Provider(Boom([0.05]))))
    assert result.score is None and result.status == "failed"
    assert "segment 1: RuntimeError: out of memory" in result.reason
    assert result.items[0]["status"] == "ok" and result.items[1]["status"] == "failed"
    tiny = Vtss(**SMALL).compute(_video(h=6, w=64), _ctx(_Provider(_FixedScorer([0.05, 0.05]))))
    assert tiny.status == "failed" and "smaller than" in tiny.reason


def test_missing_params_are_refused():
    with pytest.raises(ValueError, match="anchor_low"):
        Vtss(**{k: v for k, v in PARAMS.items() if k != "anchor_low"})


# ---------------------------------------------------------------------------- the fragments
def test_seeded_fragments_are_deterministic_and_seed_dependent():
    frames = np.random.default_rng(1).integers(0, 256, (64, 480, 640, 3), dtype=np.uint8)
    a = assemble_fragments(frames, segment_generator(0, 0))
    b = assemble_fragments(frames, segment_generator(0, 0))
    c = assemble_fragments(frames, segment_generator(1, 0))
    assert a.shape == (64, 224, 224, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    dh, dw = fragment_offsets(480, 640, 2, segment_generator(0, 0))
    assert dh.shape == (7, 7, 2) and 0 <= dh.min() and dh.max() < 480 // 7 - 32 and dw.max() < 640 // 7 - 32
    # chunk 0, cell (1, 2) is the 32x32 patch at (68 + dh, 182 + dw)
    y, x = 68 + dh[1, 2, 0], 182 + dw[1, 2, 0]
    assert np.array_equal(a[:32, 32:64, 64:96], frames[:32, y:y + 32, x:x + 32])
    y, x = 68 + dh[1, 2, 1], 182 + dw[1, 2, 1]
    assert np.array_equal(a[32:, 32:64, 64:96], frames[32:, y:y + 32, x:x + 32])


def test_small_frames_are_upsampled_but_read_at_the_original_grid():
    frames = np.random.default_rng(2).integers(0, 256, (32, 112, 160, 3), dtype=np.uint8)
    up = upsample_if_small(frames, 224)
    assert up.shape == (32, 224, 320, 3)
    out = assemble_fragments(frames, segment_generator(0, 0))
    assert grid_origins(112) == [0, 16, 32, 48, 64, 80, 80]  # cells of 16 < 32: no random offset
    assert np.array_equal(out[:, 32:64, 64:96], up[:, 16:48, 44:76])  # W origins: 160 // 7 * 2 = 44
    with pytest.raises(ValueError, match="multiple"):
        assemble_fragments(frames[:31], segment_generator(0, 0))


def test_square_224_frames_tile_exactly():
    frames = np.random.default_rng(3).integers(0, 256, (32, 224, 224, 3), dtype=np.uint8)
    assert np.array_equal(assemble_fragments(frames, segment_generator(5, 0)), frames)


# ------------------------------------------------------------------------------- end to end
def test_metric_end_to_end_with_tiny_random_weights(registered):
    provider = BackboneProvider({"source": "random", "size": "tiny", "device": "cpu"})
    metric = Vtss(**SMALL)
    video = _video(num_frames=24, segments=3, h=64, w=80, seed=4)
    first = metric.compute(video, _ctx(provider, weights=[2, 1, 1], prompts=3))
    assert first.status == "ok" and 0.0 <= first.score <= 1.0
    assert [item["status"] for item in first.items] == ["ok"] * 3
    again = metric.compute(video, _ctx(BackboneProvider({"source": "random", "size": "tiny", "device": "cpu"}), weights=[2, 1, 1], prompts=3))
    assert again.score == first.score and again.details["raw_pooled"] == first.details["raw_pooled"]
    raws = [item["raw"] for item in first.items]
    assert first.details["raw_pooled"] == pytest.approx(weighted_mean(raws, [0.5, 0.25, 0.25]))
    assert first.score == anchored_linear(first.details["raw_pooled"], 0.02, 0.075)
    assert provider.identity("vtss_koala")["architecture"] == "vtss-tiny"


# ------------------------------------------------------- cross-check against torchvision's Video Swin
def _torchvision_swin3d(arch_cfg):
    from narrastream._compat import ensure_torchvision

    ensure_torchvision()
    swin = pytest.importorskip("torchvision.models.video.swin_transformer")
    return swin.SwinTransformer3d(
        patch_size=list(arch_cfg["patch_size"]), embed_dim=arch_cfg["embed_dim"], depths=list(arch_cfg["depths"]),
        num_heads=list(arch_cfg["num_heads"]), window_size=list(arch_cfg["window_size"]), stochastic_depth_prob=0.0,
    ).eval()


def _from_torchvision(state):
    """torchvision SwinTransformer3d names -> ours (features.{0,2,4,6} stages, {1,3,5} merges)."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] in ("patch_embed", "norm"):
            out[key] = value
        elif parts[0] == "features":
            i = int(parts[1])
            if i % 2 == 0:
                rest = ".".join(parts[3:]).replace("mlp.0.", "mlp.fc1.").replace("mlp.3.", "mlp.fc2.")
                out[f"layers.{i // 2}.blocks.{parts[2]}.{rest}"] = value
            else:
                out[f"layers.{i // 2}.downsample." + ".".join(parts[2:])] = value
    return out


@pytest.mark.parametrize("same_fragment_tables", [True, False])
def test_backbone_matches_torchvision_video_swin_when_the_gate_is_neutral(same_fragment_tables):
    """With fragment tables equal to the relative ones, B = R g + R (1 - g) = R: plain Video Swin."""
    from narrastream.metrics.backbones.vtss import ARCHS

    torch.manual_seed(0)
    reference = _torchvision_swin3d(ARCHS["tiny"])
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if "bias" in name:
                p.normal_(0, 0.5)
    ours = build_vtss("tiny").fragments_backbone
    state = _from_torchvision(reference.state_dict())
    for key in list(state):
        if key.endswith("relative_position_bias_table") and not key.startswith("layers.3"):
            table = state[key]
            state[key.replace("relative", "fragment")] = table if same_fragment_tables else 3 * torch.randn_like(table)
    ours.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 8, 128, 128)  # tokens 4x32x32 .. 4x4x4: no window shrinks, padding at every stage
    with torch.inference_mode():
        expected = reference.norm(reference.features(reference.patch_embed(x)))
        got = ours(x).permute(0, 2, 3, 4, 1)
    assert got.shape == expected.shape == (1, 4, 4, 4, 64)
    if same_fragment_tables:
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    else:
        assert (got - expected).abs().max() > 1e-3  # 10x the tolerance above (small-init residual stream)


def test_metric_at_the_protocol_sampling_with_tiny_weights(registered):
    """The protocol geometry (4 clips x 32 frames, 7x7 patches of 32): 160x200 frames are upsampled."""
    provider = BackboneProvider({"source": "random", "size": "tiny", "device": "cpu"})
    video = _video(num_frames=40, segments=1, h=160, w=200, seed=5)
    metric = Vtss(**PARAMS)
    result = metric.compute(video, _ctx(provider, weights=[1], prompts=1))
    assert result.status == "ok" and 0.0 <= result.score <= 1.0
    assert result.items[0]["first_frames"] == [0, 10, 20, 30]
    assert result.score == anchored_linear(result.items[0]["raw"], 0.02, 0.075)
    reseeded = Vtss(**dict(PARAMS, fragment_seed=1)).compute(video, _ctx(provider, weights=[1], prompts=1))
    # 160x200: cells of 22 / 28 px are no larger than a patch, so every offset is 0 and the seed is moot
    assert reseeded.items[0]["raw"] == result.items[0]["raw"]
    large = _video(num_frames=40, segments=1, h=256, w=512, seed=5)  # cells of 36 / 73 px: random offsets
    raws = [Vtss(**dict(PARAMS, fragment_seed=s)).compute(large, _ctx(provider, weights=[1], prompts=1)).items[0]["raw"]
            for s in (0, 0, 1)]
    assert raws[0] == raws[1] != raws[2]


def test_a_missing_backbone_raises_instead_of_failing_the_sample():
    class Missing:
        def get(self, name):
            raise FileNotFoundError("vtss/infer.pth not found")

    with pytest.raises(FileNotFoundError):
        Vtss(**SMALL).compute(_video(), _ctx(Missing()))
