"""dynamic_trajectory (protocol §2.3.2) and its LanguageBind_Video_FT backbone."""

from __future__ import annotations

import json
import math
import string

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from narrastream.data.script import Script
from narrastream.metrics.backbones import languagebind as lb
from narrastream.metrics.backbones.provider import BACKBONES, BackboneProvider
from narrastream.metrics.base import MetricContext
from narrastream.metrics.functional.trajectory import (
    change_magnitude,
    soft_gate,
    trajectory_score,
    trajectory_transitions,
    transition_score,
)
from narrastream.metrics.instruction.dynamic_trajectory import DynamicTrajectory
from narrastream.video.segments import SegmentedVideo, SegmentRule

PARAMS = {"backbone": "languagebind_video", "num_frames": 8, "center": 0.25, "temp": 0.05, "tau_on": 0.02, "tau_off": 0.06}


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ------------------------------------------------------------------------------------------ formula


def test_gate_centre_and_width():
    assert soft_gate(0.25, center=0.25, temp=0.05) == 0.5
    assert soft_gate(0.30, center=0.25, temp=0.05) == pytest.approx(sigmoid(1.0), abs=1e-15)
    assert soft_gate(0.15, center=0.25, temp=0.05) == pytest.approx(sigmoid(-2.0), abs=1e-15)
    # the argument is clamped to [-60, 60]: 1 / (1 + e^60), not 1 / (1 + e^100)
    assert soft_gate(-100.0, center=0.0, temp=1.0) == pytest.approx(1.0 / (1.0 + math.exp(60.0)), rel=1e-12)
    assert soft_gate(0.3, center=0.25, temp=0.0) == pytest.approx(1.0)  # temperature floored at 1e-6


def test_response_and_stability_taus():
    score, response, stability = transition_score(0.02, gate=1.0, tau_on=0.02, tau_off=0.06)
    assert response == pytest.approx(1 - math.exp(-1.0), abs=1e-15)
    assert stability == pytest.approx(math.exp(-1.0 / 3.0), abs=1e-15)
    assert score == response
    score, _, stability = transition_score(0.06, gate=0.0, tau_on=0.02, tau_off=0.06)
    assert score == stability == pytest.approx(math.exp(-1.0), abs=1e-15)
    assert transition_score(-0.5, gate=0.3, tau_on=0.02, tau_off=0.06)[0] == pytest.approx(0.7)  # negative change -> 0


def test_change_magnitude_is_clipped_cosine_distance():
    assert change_magnitude(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0])) == 2.0
    assert change_magnitude(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])) == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-7)


def _unit(angle: float) -> list[float]:
    return [math.cos(angle), math.sin(angle)]


def _hand_sample() -> tuple[torch.Tensor, torch.Tensor, list[int], float]:
    """Three segments, planner weights 1/2/3, cosines chosen by angle; the expected score by hand."""
    text = torch.tensor([_unit(0.0), _unit(math.acos(0.70)), _unit(math.acos(0.70) + math.acos(0.98))])
    video = torch.tensor([_unit(0.0), _unit(math.acos(0.99)), _unit(math.acos(0.99))])
    # transition 0: text change 0.30, video change 0.01; transition 1: text change 0.02, video change 0
    g0, g1 = sigmoid((0.30 - 0.25) / 0.05), sigmoid((0.02 - 0.25) / 0.05)
    s0 = g0 * (1 - math.exp(-0.01 / 0.02)) + (1 - g0) * math.exp(-0.01 / 0.06)
    s1 = g1 * 0.0 + (1 - g1) * 1.0
    w = [1 / 6, 2 / 6, 3 / 6]
    t0, t1 = w[0] + w[1], w[1] + w[2]  # transition weights 0.5, 0.8333
    return text, video, [1, 2, 3], (t0 * s0 + t1 * s1) / (t0 + t1)


def test_transitions_and_pooling_by_hand():
    text, video, _, expected = _hand_sample()
    records = trajectory_transitions(text, video, center=0.25, temp=0.05, tau_on=0.02, tau_off=0.06)
    assert [r["transition"] for r in records] == [0, 1]
    assert records[0]["text_change"] == pytest.approx(0.30, abs=1e-6)
    assert records[1]["video_change"] == pytest.approx(0.0, abs=1e-6)
    score = trajectory_score([r["score"] for r in records], [0.5, 5 / 6])
    assert score == pytest.approx(expected, abs=1e-5)
    assert trajectory_score([0.2, 0.6], [0.5]) == pytest.approx(0.4)  # wrong length -> uniform
    assert trajectory_score([0.2, 0.6], [-1.0, 0.0]) == pytest.approx(0.4)  # no positive weight -> uniform


class _StubEncoder:
    """Returns fixed embeddings: the formula test of the metric without any model."""

    def __init__(self, text: torch.Tensor, video: torch.Tensor) -> None:
        self.text, self.video, self.clips = text, video, []

    def encode_videos(self, clips, batch_size=4):
        self.clips.append(np.asarray(clips))
        return self.video[: len(clips)]

    def encode_texts(self, texts):
        return self.text[: len(texts)]


class _StubProvider:
    def __init__(self, encoder) -> None:
        self.encoder = encoder

    def get(self, name):
        assert name == "languagebind_video"
        return self.encoder


def _video(num_segments: int = 3, per_segment: int = 8, h: int = 24, w: int = 40, seed: int = 0) -> SegmentedVideo:
    frames = np.random.default_rng(seed).integers(0, 256, (num_segments * per_segment, h, w, 3), dtype=np.uint8)
    return SegmentedVideo.from_frames(frames, 4.0, num_segments, rule=SegmentRule(segment_seconds=per_segment / 4.0))


def test_metric_uses_protocol_constants_and_transition_weights():
    text, video, weights, expected = _hand_sample()
    encoder = _StubEncoder(text, video)
    ctx = MetricContext(script=Script(id=0, prompts=("p0", "p1", "p2")), backbones=_StubProvider(encoder),
                        segment_weights=weights)
    result = DynamicTrajectory(**PARAMS).compute(_video(per_segment=20), ctx)
    assert result.status == "ok" and result.fallbacks == []
    assert result.score == pytest.approx(expected, abs=1e-5)
    assert [item["weight"] for item in result.items] == pytest.approx([0.5, 5 / 6])
    assert result.items[0]["frames_left"] == [0, 2, 5, 8, 10, 13, 16, 19]  # linspace(0, 19, 8).astype(int)
    assert encoder.clips[0].shape == (3, 8, 24, 40, 3)
    # any other constant changes the score
    for key, value in (("center", 0.26), ("temp", 0.06), ("tau_on", 0.03), ("tau_off", 0.07)):
        other = DynamicTrajectory(**{**PARAMS, key: value}).compute(_video(per_segment=20), ctx)
        assert other.score != pytest.approx(expected, abs=1e-6), key


def test_metric_fallbacks_and_skips():
    text, video, _, _ = _hand_sample()
    ctx = MetricContext(script=Script(id=0, prompts=("p0", "p1", "p2")), backbones=_StubProvider(_StubEncoder(text, video)))
    result = DynamicTrajectory(**PARAMS).compute(_video(), ctx)
    assert result.status == "fallback" and any("uniform" in f for f in result.fallbacks)
    assert [item["weight"] for item in result.items] == pytest.approx([2 / 3, 2 / 3])
    # 4 segments for 3 prompts (an official 7th tail segment): the first 3 are used, still planner-weighted
    extra = MetricContext(script=Script(id=0, prompts=("p0", "p1", "p2")), backbones=_StubProvider(_StubEncoder(text, video)),
                          segment_weights=[1, 2, 3])
    tail = DynamicTrajectory(**PARAMS).compute(_video(num_segments=4), extra)
    assert tail.status == "fallback" and len(tail.items) == 2
    assert [item["weight"] for item in tail.items] == pytest.approx([0.5, 5 / 6])
    single = MetricContext(script=Script(id=0, prompts=("p0",)), backbones=_StubProvider(_StubEncoder(text, video)))
    skipped = DynamicTrajectory(**PARAMS).compute(_video(num_segments=1), single)
    assert skipped.status == "skipped" and skipped.score is None
    with pytest.raises(ValueError, match="tau_off"):
        DynamicTrajectory(**{k: v for k, v in PARAMS.items() if k != "tau_off"})


# ------------------------------------------------------------------------------------------ backbone


def test_full_architecture_keys_and_shapes_on_meta():
    with torch.device("meta"):
        model = lb.build_languagebind("full")
    state = model.state_dict()
    # text: 2 embeddings + 12 x 16 + final LN 2; vision: 3 embeddings + pre LN 2 + 24 x (16 + 11 temporal) + post LN 2; 3 heads
    assert len(state) == (2 + 12 * 16 + 2) + (3 + 2 + 24 * 27 + 2) + 3 == 854
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["vision_model.embeddings.patch_embedding.weight"] == (1024, 3, 14, 14)
    assert shapes["vision_model.embeddings.position_embedding.weight"] == (257, 1024)
    assert shapes["vision_model.embeddings.class_embedding"] == (1024,)
    assert shapes["vision_model.pre_layrnorm.weight"] == (1024,)
    assert shapes["vision_model.encoder.layers.23.temporal_embedding"] == (1, 8, 1024)
    assert shapes["vision_model.encoder.layers.0.temporal_attn.q_proj.weight"] == (1024, 1024)
    assert shapes["vision_model.encoder.layers.0.temporal_layer_norm1.bias"] == (1024,)
    assert shapes["vision_model.encoder.layers.0.mlp.fc1.weight"] == (4096, 1024)
    assert shapes["text_model.embeddings.token_embedding.weight"] == (49408, 768)
    assert shapes["text_model.embeddings.position_embedding.weight"] == (77, 768)
    assert shapes["text_model.encoder.layers.11.mlp.fc2.weight"] == (768, 3072)
    assert shapes["text_model.final_layer_norm.weight"] == (768,)
    assert shapes["visual_projection.weight"] == (768, 1024)
    assert shapes["text_projection.weight"] == (768, 768)
    assert shapes["logit_scale"] == ()
    assert not any("lora" in k or "temporal" in k for k in state if k.startswith("text_model."))
    assert lb.arch_from_config(lb.config_dict(lb.ARCHS["full"])) == lb.ARCHS["full"]
    saved = lb.config_dict(lb.ARCHS["full"])
    del saved["text_config"]["hidden_act"]  # a saved config omits class defaults: CLIP's quick_gelu
    assert lb.arch_from_config(saved).text_act == "quick_gelu"
    bad = lb.config_dict(lb.ARCHS["full"])
    bad["vision_config"]["lora_r"] = 16
    with pytest.raises(ValueError, match="lora_r"):
        lb.arch_from_config(bad)


def _write_tiny_tokenizer(directory) -> None:
    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for c in string.ascii_lowercase + string.digits:
            vocab[c + suffix] = len(vocab)
    vocab["ca"] = len(vocab)
    vocab["cat</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)  # the highest id, as in CLIP: argmax pooling finds it
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\nc a\nca t</w>\n")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("weights") / lb.DIRNAME
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = lb.build_languagebind("tiny")
    lb.save_languagebind(model, directory)
    _write_tiny_tokenizer(directory)
    return directory, model


def test_tiny_round_trip_in_official_layout(tiny_dir, tmp_path):
    directory, model = tiny_dir
    keys = set(torch.load(directory / "pytorch_model.bin", weights_only=True))
    assert "vision_model.encoder.layers.1.temporal_embedding" in keys and "text_projection.weight" in keys
    loaded = lb.load_languagebind(directory)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    clips = np.random.default_rng(1).integers(0, 256, (2, 8, 30, 50, 3), dtype=np.uint8)
    a = lb.VideoTextEncoder(model, loaded.tokenizer).encode_videos(clips)
    b = lb.VideoTextEncoder(loaded).encode_videos(clips, batch_size=1)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert lb.resolve_languagebind_dir(directory / "pytorch_model.bin") == directory
    # safetensors, and an old checkpoint's position_ids buffers, load too
    old = {**model.state_dict(), "text_model.embeddings.position_ids": torch.arange(77)[None]}
    lb.load_official_state_dict(lb.build_languagebind("tiny"), old)
    lb.save_languagebind(model, tmp_path / "st", safetensors=True)
    assert torch.equal(lb.load_languagebind(tmp_path / "st", with_tokenizer=False).logit_scale, model.logit_scale)


def test_strict_load_lists_unmapped_and_missing_keys(tiny_dir):
    _, model = tiny_dir
    state = dict(model.state_dict())
    del state["visual_projection.weight"]
    state["vision_model.encoder.base_model.model.layers.0.lora_A.weight"] = torch.zeros(1)
    state["text_projection.weight"] = torch.zeros(3, 3)
    with pytest.raises(lb.CheckpointMismatchError) as error:
        lb.load_official_state_dict(lb.build_languagebind("tiny"), state)
    message = str(error.value)
    assert "visual_projection.weight" in message and "lora_A" in message and "text_projection.weight" in message


def test_tokenizer_truncates_at_77_and_text_embeddings(tiny_dir):
    directory, _ = tiny_dir
    encoder = lb.VideoTextEncoder(lb.load_languagebind(directory))
    tokens = encoder.tokenizer(["a cat " * 100], max_length=77, padding="max_length", truncation=True, return_tensors="pt")
    assert tokens["input_ids"].shape == (1, 77) and tokens["input_ids"][0, -1].item() == max(tokens["input_ids"][0]).item()
    texts = encoder.encode_texts(["a cat", "a dog", "a cat"])
    assert texts.dtype == torch.float32 and texts.shape == (3, 16)
    torch.testing.assert_close(texts.norm(dim=1), torch.ones(3))
    # rows 0 and 2 of one batch: the same text, but other rows of the batched matmuls (their tiling may
    # differ by CPU), so equal up to float32 rounding, not bit for bit
    torch.testing.assert_close(texts[0], texts[2], rtol=0, atol=1e-6)
    assert not torch.allclose(texts[0], texts[1], rtol=0, atol=1e-3)
    long = ["a cat " * 100, "a cat " * 100 + "dog"]
    ids = lb.tokenize(encoder.tokenizer, long)["input_ids"]
    assert torch.equal(ids[0], ids[1])  # everything past 77 tokens is cut (integer ids: exact)
    long_a, long_b = encoder.encode_texts(long)
    torch.testing.assert_close(long_a, long_b, rtol=0, atol=1e-6)  # two rows of one batch, as above


@pytest.fixture(scope="module")
def clip_vocab(tmp_path_factory):
    """CLIP's real BPE vocabulary (the one LanguageBind ships) in the Hugging Face layout, rebuilt from
    the BPE file bundled with open_clip, and OpenAI's reference ``SimpleTokenizer`` on the same file.

    The reference cleans text as transformers' slow ``CLIPTokenizer`` with ``ftfy`` (the official
    LanguageBind tokenizer's base) does: ``ftfy.fix_text``, whitespace collapsed, lower case; it also
    unescapes HTML entities, which no text below contains.
    """
    import gzip
    import importlib.util
    from pathlib import Path

    from open_clip.tokenizer import SimpleTokenizer, bytes_to_unicode  # importable: lb ran ensure_torchvision

    bpe = Path(importlib.util.find_spec("open_clip").origin).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    tokens = list(bytes_to_unicode().values())
    tokens += [t + "</w>" for t in tokens] + ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    directory = tmp_path_factory.mktemp("clip_vocab")
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    reference = SimpleTokenizer(str(bpe))
    return lb.load_tokenizer(directory), lambda text: [49406, *reference.encode(text), 49407]


def _ids(tokens) -> list[int]:
    row = tokens["input_ids"][0].tolist()
    return row[: row.index(49407) + 1]


def test_text_is_cleaned_as_the_official_tokenizer(clip_vocab):
    tokenizer, reference = clip_vocab
    text = "Mina\u2019s \u201cred\u201d scarf isn\u2019t dry; she\u2019s   waiting\n by the door."
    assert lb.clean_text(text) == "mina's \"red\" scarf isn't dry; she's waiting by the door."
    ours = _ids(lb.tokenize(tokenizer, [text]))
    assert ours == reference(text) and len(ours) == 19
    # the fast tokenizer alone (the defect): curly marks become byte tokens, "\u2019s" -> "âĢ Ļ s"
    raw = _ids(tokenizer([text], max_length=77, padding="max_length", truncation=True, return_tensors="pt"))
    assert len(raw) == 27 and tokenizer.convert_ids_to_tokens(raw[2:5]) == ["âĢ", "Ļ</w>", "s</w>"]
    # mojibake is repaired as ftfy does
    garbled = "The caf\u00c3\u00a9 owner don\u00e2\u20ac\u2122t smile"
    assert _ids(lb.tokenize(tokenizer, [garbled])) == reference(garbled)
    assert _ids(lb.tokenize(tokenizer, [garbled])) == _ids(lb.tokenize(tokenizer, ["the café owner don't smile"]))


def test_ascii_prompts_are_unchanged_by_the_cleaning(clip_vocab):
    tokenizer, _ = clip_vocab
    texts = ["A Man, in a RED coat -- waves!  Then\tsits (slowly).", "it's 3 o'clock; the dog's bowl is empty"]
    cleaned = lb.tokenize(tokenizer, texts)["input_ids"]
    raw = tokenizer(texts, max_length=77, padding="max_length", truncation=True, return_tensors="pt")["input_ids"]
    assert torch.equal(cleaned, raw)  # integer ids of the same text, not floats


def test_every_official_prompt_tokenizes_as_the_reference(clip_vocab, official_path):
    tokenizer, reference = clip_vocab
    prompts = [p for line in official_path.read_text(encoding="utf-8").splitlines() if line.strip()
               for p in json.loads(line)["prompts"]]
    assert len(prompts) == 1944
    ours = lb.tokenize(tokenizer, prompts)
    raw = tokenizer(prompts, max_length=77, padding="max_length", truncation=True, return_tensors="pt")

    def truncated(ids: list[int]) -> list[int]:  # at 77 tokens, the end token kept (as the official)
        return ids if len(ids) <= 77 else ids[:76] + [49407]

    mismatched = [i for i, p in enumerate(prompts)
                  if _ids({"input_ids": ours["input_ids"][i:i + 1]}) != truncated(reference(p))]
    assert mismatched == []
    changed = [i for i in range(len(prompts)) if not torch.equal(ours["input_ids"][i], raw["input_ids"][i])]
    assert changed and all(not prompts[i].isascii() for i in changed)  # the cleaning only moves non-ASCII prompts


def test_video_transform_matches_official_ops_and_never_flips(tiny_dir):
    clips = np.random.default_rng(2).integers(0, 256, (1, 8, 48, 83, 3), dtype=np.uint8)
    pixels = lb.video_preprocess(clips)
    assert pixels.shape == (1, 8, 3, 224, 224)
    # the official order with plain torch ops: /255, normalise, ShortSideScale (floor), centre crop (round)
    x = torch.from_numpy(clips[0]).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(lb.OPENAI_MEAN)[:, None, None]) / torch.tensor(lb.OPENAI_STD)[:, None, None]
    x = F.interpolate(x, size=(224, math.floor(83 / 48 * 224)), mode="bilinear", align_corners=False)
    left = int(round((x.shape[-1] - 224) / 2))
    torch.testing.assert_close(pixels[0], x[..., :, left:left + 224], rtol=0, atol=1e-5)
    _, model = tiny_dir
    encoder = lb.VideoTextEncoder(model)
    first, second = encoder.encode_videos(clips), encoder.encode_videos(clips)
    assert torch.equal(first, second)  # no random flip
    flipped = encoder.encode_videos(np.ascontiguousarray(clips[:, :, :, ::-1]))
    assert not torch.allclose(first, flipped)
    with pytest.raises(ValueError, match="8 frames"):
        encoder.encode_videos(clips[:, :4])


def test_metric_end_to_end_tiny_random_weights(monkeypatch):
    script = Script(id=0, prompts=("a red ball rolls", "the ball stops", "a blue cube appears"))
    scores = []
    for _ in range(2):
        provider = BackboneProvider({"source": "random", "size": "tiny", "seed": 0, "device": "cpu"})
        ctx = MetricContext(script=script, backbones=provider, segment_weights=[10, 30, 60])
        result = DynamicTrajectory(**PARAMS).compute(_video(per_segment=12, h=32, w=48), ctx)
        assert result.status == "ok", result.fallbacks
        assert 0.0 <= result.score <= 1.0 and len(result.items) == 2
        assert provider.identity("languagebind_video")["architecture"] == "languagebind-tiny"
        scores.append(result.score)
    assert scores[0] == scores[1]


def _reference_attention(x, sd, prefix, heads, mask=None):
    """Multi-head attention written out by hand (q/k/v/out projections of the checkpoint)."""
    b, n, d = x.shape
    q, k, v = (F.linear(x, sd[f"{prefix}.{p}_proj.weight"], sd[f"{prefix}.{p}_proj.bias"]) for p in "qkv")
    q, k, v = (t.view(b, n, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    logits = q @ k.transpose(-1, -2) * (d // heads) ** -0.5
    if mask is not None:
        logits = logits + mask
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
    return F.linear(out, sd[f"{prefix}.out_proj.weight"], sd[f"{prefix}.out_proj.bias"])


def _reference_block(x, sd, prefix, heads, mask=None):
    ln = lambda t, name: F.layer_norm(t, t.shape[-1:], sd[f"{prefix}.{name}.weight"], sd[f"{prefix}.{name}.bias"], 1e-5)
    x = x + _reference_attention(ln(x, "layer_norm1"), sd, f"{prefix}.self_attn", heads, mask)
    h = F.gelu(F.linear(ln(x, "layer_norm2"), sd[f"{prefix}.mlp.fc1.weight"], sd[f"{prefix}.mlp.fc1.bias"]))
    return x + F.linear(h, sd[f"{prefix}.mlp.fc2.weight"], sd[f"{prefix}.mlp.fc2.bias"])


def test_forward_matches_a_reference_written_from_the_official_code(tiny_dir):
    """The official LanguageBind forward, re-derived with plain tensor ops from the state dict."""
    _, model = tiny_dir
    arch, sd = model.arch, {k: v.double() for k, v in model.state_dict().items()}
    ln = lambda t, name: F.layer_norm(t, t.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], 1e-5)
    pixels = lb.video_preprocess(np.random.default_rng(3).integers(0, 256, (2, 8, 40, 40, 3), dtype=np.uint8))
    b, t = pixels.shape[:2]
    x = F.conv2d(pixels.flatten(0, 1).double(), sd["vision_model.embeddings.patch_embedding.weight"], stride=arch.patch_size)
    x = x.flatten(2).transpose(1, 2)
    cls = sd["vision_model.embeddings.class_embedding"].expand(b * t, 1, -1)
    x = torch.cat([cls, x], 1) + sd["vision_model.embeddings.position_embedding.weight"]
    x = ln(x, "vision_model.pre_layrnorm")
    n, d = x.shape[1:]
    for i in range(arch.vision_layers):
        p = f"vision_model.encoder.layers.{i}"
        x = (x.view(b, t, n, d) + sd[f"{p}.temporal_embedding"][:, :, None, :]).view(b * t, n, d)  # (b t) n d
        per_patch = x.view(b, t, n, d).permute(0, 2, 1, 3).reshape(b * n, t, d)  # (b n) t d
        per_patch = _reference_attention(ln(per_patch, f"{p}.temporal_layer_norm1"), sd, f"{p}.temporal_attn", arch.vision_heads)
        x = x + per_patch.view(b, n, t, d).permute(0, 2, 1, 3).reshape(b * t, n, d)
        x = _reference_block(x, sd, p, arch.vision_heads)
    pooled = ln(x[:, 0], "vision_model.post_layernorm").view(b, t, d).mean(1)
    expected_video = F.normalize(F.linear(pooled, sd["visual_projection.weight"]), dim=-1)
    with torch.inference_mode():
        got_video = F.normalize(model.video_features(pixels), dim=-1).double()
    torch.testing.assert_close(got_video, expected_video, rtol=0, atol=2e-5)

    ids = torch.tensor([[arch.vocab_size - 2, 5, 9, 7, arch.vocab_size - 1] + [arch.vocab_size - 1] * 72])
    y = sd["text_model.embeddings.token_embedding.weight"][ids] + sd["text_model.embeddings.position_embedding.weight"]
    causal = torch.full((77, 77), float("-inf"), dtype=torch.float64).triu(1)
    for i in range(arch.text_layers):
        y = _reference_block(y, sd, f"text_model.encoder.layers.{i}", arch.text_heads, causal)
    y = ln(y, "text_model.final_layer_norm")[0, 4]  # the first end-of-text token
    expected_text = F.normalize(F.linear(y, sd["text_projection.weight"]), dim=-1)
    mask = torch.tensor([[1] * 5 + [0] * 72])
    with torch.inference_mode():
        got = F.normalize(model.text_features(ids, mask), dim=-1)[0].double()
    torch.testing.assert_close(got, expected_text, rtol=0, atol=2e-5)


def test_provider_finds_the_model_directory_under_the_weights_dir(tiny_dir, monkeypatch):
    directory, model = tiny_dir
    provider = BackboneProvider({"source": "files", "dir": str(directory.parent), "device": "cpu"})
    encoder = provider.get("languagebind_video")
    assert isinstance(encoder, lb.VideoTextEncoder) and encoder.tokenizer is not None
    assert provider.identity("languagebind_video")["path"] == str((directory / "pytorch_model.bin").resolve())
    assert torch.equal(encoder.model.visual_projection.weight, model.visual_projection.weight)
    assert lb.resolve_languagebind_dir(weights_dir=directory.parent) == directory
    with pytest.raises(FileNotFoundError, match="backbones.paths.languagebind_video"):
        lb.resolve_languagebind_dir(directory.parent / "missing")


def test_registered_backbone_resolves_the_model_directory(tiny_dir):
    directory, _ = tiny_dir
    spec = BACKBONES["languagebind_video"]
    weights = directory / "pytorch_model.bin"
    assert spec.find_checkpoint(path=str(directory), weights_dir=None, allow_download=False) == weights
    assert spec.find_checkpoint(path=None, weights_dir=str(directory.parent), allow_download=False) == weights
