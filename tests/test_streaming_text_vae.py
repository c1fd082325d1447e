"""umT5 text encoder and streaming Wan VAE decode, on tiny random-weight models (no downloads)."""

from __future__ import annotations

import math

import pytest
import torch

from narrastream.streaming.text_encoder import (
    TEXT_LEN,
    UMT5_XXL_ENCODER,
    CheckpointMappingError,
    UMT5TextEncoder,
    clean_prompt,
    hf_to_original_state_dict,
    original_to_hf_key,
)
from narrastream.streaming.vae import StreamingWanDecoder, pixel_frame_count, to_uint8_frames

# ----------------------------------------------------------------------------------------- text encoder

WORDS = "a red cat sits on the mat blue dog runs in park and then sleeps under tree".split()
TINY_T5 = dict(
    d_model=16,
    d_kv=8,
    num_heads=2,
    d_ff=24,
    num_layers=2,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=16,
    feed_forward_proj="gated-gelu",
    layer_norm_epsilon=1e-6,
    dropout_rate=0.0,
    pad_token_id=0,
    eos_token_id=1,
)


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def tiny_t5():
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    tokenizer = _tiny_tokenizer()
    model = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), **TINY_T5)).eval()
    return UMT5TextEncoder(model, tokenizer)


PROMPTS = ["a red cat sits on the mat", "blue dog runs"]  # 7 and 3 words, +1 EOS each


def test_encode_shape_and_zeroed_padding(tiny_t5):
    out = tiny_t5.encode(PROMPTS)
    assert out.shape == (2, TEXT_LEN, 16)
    ids, mask = tiny_t5.tokenize(PROMPTS)
    assert mask.sum(dim=1).tolist() == [8, 4]
    assert ids[0, 7].item() == 1 and ids[1, 3].item() == 1  # EOS closes each prompt
    for b, n_real in enumerate([8, 4]):
        assert torch.all(out[b, n_real:] == 0)
        assert torch.all(out[b, :n_real].abs().sum(dim=-1) > 0)


def test_encode_truncates_to_text_len(tiny_t5):
    long_prompt = " ".join(["cat"] * 600)
    ids, mask = tiny_t5.tokenize([long_prompt])
    assert ids.shape == (1, TEXT_LEN) and int(mask.sum()) == TEXT_LEN
    assert torch.all(tiny_t5.encode([long_prompt])[0].abs().sum(dim=-1) > 0)


def test_clean_prompt_matches_wan_whitespace_cleaning():
    assert clean_prompt("  a   red&amp;amp;cat\n\tsits ") == "a red&cat sits"


def test_encode_rejects_a_bare_string(tiny_t5):
    with pytest.raises(TypeError):
        tiny_t5.encode("a red cat")


def _bucket(rel: torch.Tensor, num_buckets: int, max_dist: int) -> torch.Tensor:
    """Bidirectional T5 relative-position bucket, written from the T5 paper's definition."""
    half = num_buckets // 2
    out = (rel > 0).long() * half
    dist = rel.abs()
    exact = half // 2
    log_part = exact + (torch.log(dist.float().clamp(min=1) / exact) / math.log(max_dist / exact) * (half - exact))
    log_part = log_part.long().clamp(max=half - 1)
    return out + torch.where(dist < exact, dist, log_part)


def _wan_reference(sd: dict, ids: torch.Tensor, mask: torch.Tensor, n_layers: int, heads: int) -> torch.Tensor:
    """Wan's umT5 encoder forward in original naming: fc2(fc1(h) * gelu_tanh(gate(h))), unscaled attention."""

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

    b, length = ids.shape
    x = sd["token_embedding.weight"][ids]
    rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    buckets = _bucket(rel, TINY_T5["relative_attention_num_buckets"], TINY_T5["relative_attention_max_distance"])
    for i in range(n_layers):
        p = f"blocks.{i}."
        h = rms(x, sd[p + "norm1.weight"])
        q, k, v = (
            (h @ sd[p + f"attn.{n}.weight"].T).view(b, length, heads, -1).transpose(1, 2) for n in "qkv"
        )
        bias = sd[p + "pos_embedding.embedding.weight"][buckets].permute(2, 0, 1)[None]
        bias = bias.masked_fill(mask[:, None, None, :] == 0, torch.finfo(x.dtype).min)
        att = torch.softmax(q @ k.transpose(-1, -2) + bias, dim=-1) @ v
        x = x + att.transpose(1, 2).reshape(b, length, -1) @ sd[p + "attn.o.weight"].T
        h = rms(x, sd[p + "norm2.weight"])
        gate = torch.nn.functional.gelu(h @ sd[p + "ffn.gate.0.weight"].T, approximate="tanh")
        x = x + ((h @ sd[p + "ffn.fc1.weight"].T) * gate) @ sd[p + "ffn.fc2.weight"].T
    return rms(x, sd["norm.weight"])


def test_original_naming_matches_an_independent_wan_forward(tiny_t5):
    original = hf_to_original_state_dict(tiny_t5.model.state_dict())
    assert len(original) == 2 + 10 * TINY_T5["num_layers"]  # embedding + final norm + 10 tensors per block
    ids, mask = tiny_t5.tokenize(PROMPTS)
    ref = _wan_reference(original, ids, mask, TINY_T5["num_layers"], TINY_T5["num_heads"])
    ref = ref.masked_fill(mask[..., None] == 0, 0.0)
    torch.testing.assert_close(tiny_t5.encode(PROMPTS), ref, atol=1e-5, rtol=1e-5)


def test_original_key_names():
    assert original_to_hf_key("blocks.3.ffn.gate.0.weight") == "encoder.block.3.layer.1.DenseReluDense.wi_0.weight"
    assert original_to_hf_key("blocks.3.ffn.fc1.weight") == "encoder.block.3.layer.1.DenseReluDense.wi_1.weight"
    assert (
        original_to_hf_key("blocks.0.pos_embedding.embedding.weight")
        == "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    )
    assert original_to_hf_key("token_embedding.weight") == "shared.weight"
    assert original_to_hf_key("pos_embedding.embedding.weight") is None  # umT5 has no shared bias


def test_umt5_xxl_constants_give_the_wan_encoder_size():
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.device("meta"):
        model = UMT5EncoderModel(UMT5Config(**UMT5_XXL_ENCODER))
    d, ff, vocab, layers = 4096, 10240, 256384, 24
    per_block = 4 * d * d + 3 * d * ff + 32 * 64 + 2 * d
    assert sum(p.numel() for p in model.parameters()) == vocab * d + layers * per_block + d
    assert model.config.d_model == 4096  # spec §2.1: [B, 512, 4096]


def test_from_diffusers_layout_roundtrip(tiny_t5, tmp_path):
    tiny_t5.model.save_pretrained(tmp_path / "text_encoder")
    tiny_t5.tokenizer.save_pretrained(tmp_path / "tokenizer")
    loaded = UMT5TextEncoder.from_diffusers_layout(tmp_path, dtype=torch.float32)
    _assert_same_encoder(loaded, tiny_t5)


def _assert_same_encoder(loaded: UMT5TextEncoder, reference: UMT5TextEncoder) -> None:
    """A loader must reproduce the weights bit for bit; that is checked exactly. The encodings are compared
    with a tolerance: loaded weights may stay memory-mapped (other addresses and alignment), and BLAS
    kernels may then take another code path on some CPUs, so equal weights need not give equal bits."""
    want = reference.model.state_dict()
    got = loaded.model.state_dict()
    assert sorted(got) == sorted(want)
    assert all(got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]) for k in want)
    torch.testing.assert_close(loaded.encode(PROMPTS), reference.encode(PROMPTS), atol=1e-6, rtol=1e-5)


def test_from_diffusers_layout_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="text_encoder"):
        UMT5TextEncoder.from_diffusers_layout(tmp_path)


def test_from_original_gives_identical_outputs(tiny_t5, tmp_path):
    pth = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save(hf_to_original_state_dict(tiny_t5.model.state_dict()), pth)
    tiny_t5.tokenizer.save_pretrained(tmp_path / "tok")
    loaded = UMT5TextEncoder.from_original(pth, tmp_path / "tok", tiny_t5.model.config, dtype=torch.float32)
    assert loaded.model.shared.weight is loaded.model.encoder.embed_tokens.weight
    _assert_same_encoder(loaded, tiny_t5)


def test_from_original_names_missing_and_unknown_keys(tiny_t5, tmp_path):
    state = hf_to_original_state_dict(tiny_t5.model.state_dict())
    del state["blocks.1.ffn.fc1.weight"]
    state["blocks.0.attn.bias"] = torch.zeros(1)
    pth = tmp_path / "broken.pth"
    torch.save(state, pth)
    tiny_t5.tokenizer.save_pretrained(tmp_path / "tok")
    with pytest.raises(CheckpointMappingError) as err:
        UMT5TextEncoder.from_original(pth, tmp_path / "tok", tiny_t5.model.config, dtype=torch.float32)
    message = str(err.value)
    assert "encoder.block.1.layer.1.DenseReluDense.wi_1.weight" in message
    assert "blocks.0.attn.bias" in message and str(pth) in message


def test_from_original_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        UMT5TextEncoder.from_original(tmp_path / "nope.pth", tmp_path)


# ------------------------------------------------------------------------------------------------- VAE

LATENT_FRAMES, LATENT_HW = 7, 2


@pytest.fixture(scope="module")
def tiny_vae():
    pytest.importorskip("diffusers", reason="the Wan VAE needs diffusers")
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    # Wan2.1's layout (z_dim 16, 3 upsamples, temporal x2 in the last two) at a tiny width.
    return AutoencoderKLWan(
        base_dim=4, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()


@pytest.fixture(scope="module")
def latents():
    return torch.randn(1, 16, LATENT_FRAMES, LATENT_HW, LATENT_HW, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def whole_decode(tiny_vae, latents):
    with torch.no_grad():
        return tiny_vae.decode(StreamingWanDecoder(tiny_vae).denormalize(latents)).sample


def test_pixel_frame_count_matches_spec():
    assert pixel_frame_count(240) == 957  # spec §1.2
    assert [pixel_frame_count(t) for t in (1, 3, 6)] == [1, 9, 21]
    with pytest.raises(ValueError):
        pixel_frame_count(0)


def test_streaming_equals_whole_decode(tiny_vae, latents, whole_decode):
    assert whole_decode.shape == (1, 3, pixel_frame_count(LATENT_FRAMES), 8 * LATENT_HW, 8 * LATENT_HW)
    dec = StreamingWanDecoder(tiny_vae)
    parts = [dec.decode_chunk(latents[:, :, a:b]) for a, b in ((0, 1), (1, 4), (4, 7))]
    assert [p.shape[2] for p in parts] == [1, 12, 12]
    # chunked vs whole decode: other convolution shapes, so other kernels (they differ by CPU): a tolerance
    torch.testing.assert_close(torch.cat(parts, dim=2), whole_decode, atol=1e-5, rtol=0)
    # Without the carried caches the last chunk would decode differently (and to 1 + 4*2 frames).
    alone = StreamingWanDecoder(tiny_vae).decode_chunk(latents[:, :, 4:7])
    assert alone.shape[2] == 9 and (alone[:, :, -8:] - whole_decode[:, :, -8:]).abs().max() > 1e-2


def test_decode_video_and_reset_are_repeatable(tiny_vae, latents, whole_decode):
    dec = StreamingWanDecoder(tiny_vae)
    first = dec.decode_video(latents, chunk_frames=3)  # chunks of 3, 3, 1 latent frames
    assert dec.latent_frames_decoded == LATENT_FRAMES
    second = dec.decode_video(latents, chunk_frames=3)  # decode_video resets first
    assert torch.equal(first, second)  # the same chunks twice: the same operations on the same shapes
    # chunked vs whole decode: other convolution shapes, so other kernels (they differ by CPU): a tolerance
    torch.testing.assert_close(first, whole_decode, atol=1e-5, rtol=0)
    # A chunk decoded after a video, without reset, continues that video: 4 frames, not 1.
    assert dec.decode_chunk(latents[:, :, :1]).shape[2] == 4
    dec.reset()
    after_reset = dec.decode_chunk(latents[:, :, :1])
    # after reset, exactly what a fresh decoder gives for its first chunk (same operations, same shapes) ...
    assert torch.equal(after_reset, StreamingWanDecoder(tiny_vae).decode_chunk(latents[:, :, :1]))
    # ... which is the whole decode's first frame up to the kernels' rounding (a 1-frame vs a 7-frame decode)
    torch.testing.assert_close(after_reset, whole_decode[:, :, :1], atol=1e-5, rtol=0)


def test_denormalize_uses_config_mean_and_std(tiny_vae):
    dec = StreamingWanDecoder(tiny_vae)
    mean = torch.tensor(tiny_vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(tiny_vae.config.latents_std).view(1, 16, 1, 1, 1)
    z = torch.ones(1, 16, 1, 1, 1)
    torch.testing.assert_close(dec.denormalize(z), std + mean)
    assert dec.denormalize(torch.zeros(1, 16, 1, 1, 1))[0, 0].item() == pytest.approx(-0.7571)


def test_decode_chunk_rejects_wrong_channels(tiny_vae):
    with pytest.raises(ValueError, match="16"):
        StreamingWanDecoder(tiny_vae).decode_chunk(torch.zeros(1, 4, 1, 2, 2))


def test_tiling_is_refused(tiny_vae):
    tiny_vae.enable_tiling()
    try:
        with pytest.raises(ValueError, match="tiling"):
            StreamingWanDecoder(tiny_vae)
    finally:
        tiny_vae.disable_tiling()


def test_from_diffusers_layout(tiny_vae, latents, whole_decode, tmp_path):
    tiny_vae.save_pretrained(tmp_path / "vae")
    dec = StreamingWanDecoder.from_diffusers_layout(tmp_path)
    torch.testing.assert_close(dec.decode_video(latents), whole_decode, atol=1e-5, rtol=0)
    with pytest.raises(FileNotFoundError, match="missing"):
        StreamingWanDecoder.from_diffusers_layout(tmp_path / "missing")


def test_to_uint8_frames():
    pixels = torch.tensor([-1.0, 0.0, 1.0, 0.5]).view(1, 1, 4, 1, 1).expand(1, 3, 4, 1, 1).clone()
    pixels[0, 2] = -1.0  # blue channel black
    frames = to_uint8_frames(pixels)
    assert frames.shape == (4, 1, 1, 3) and frames.dtype == torch.uint8
    assert frames[:, 0, 0, 0].tolist() == [0, 128, 255, 191]  # round(127.5) = 128, round(191.25) = 191
    assert frames[:, 0, 0, 2].tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError):
        to_uint8_frames(torch.zeros(2, 3, 1, 1, 1))
