"""Causal Wan DiT: streaming with the KV cache == full block-causal recompute, cache bookkeeping,
original-Wan state-dict naming, RoPE, SMA routing and the soft-prompt cross-attention blend."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from narrastream.streaming.kv_cache import CachePolicy, sma_chunk_scores, sma_select
from narrastream.streaming.rope import Rope3D, rope_axis_split
from narrastream.streaming.wan_model import (
    CausalWanTransformer,
    WanConfig,
    block_causal_mask,
    count_parameters,
    load_wan_state_dict,
)

CFG = WanConfig.tiny()
H, W = 4, 6  # latent size -> 2x3 = 6 tokens per frame
TOKENS = 6
BLOCK = 3


@pytest.fixture(scope="module")
def model() -> CausalWanTransformer:
    torch.manual_seed(0)
    m = CausalWanTransformer(CFG).eval()
    # norm weights start at 1/0 in Wan; randomise them so a wrong name/role would show
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return m


def _inputs(blocks: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, CFG.in_dim, blocks * BLOCK, H, W, generator=g)
    t_blocks = torch.rand(blocks, generator=g) * 1000
    ctx = torch.randn(1, 5, CFG.text_dim, generator=g)
    return x, t_blocks, ctx


@pytest.mark.parametrize("policy", [CachePolicy.rolling(6), CachePolicy.sink(6, 2)], ids=["rolling", "sink"])
@torch.no_grad()
def test_streaming_equals_full_block_causal_recompute(model: CausalWanTransformer, policy: CachePolicy) -> None:
    blocks = 5  # 15 frames through a 6-frame window: the cache rolls several times
    x, t_blocks, ctx = _inputs(blocks)
    t_frames = t_blocks.repeat_interleave(BLOCK)[None]
    full = model.forward_full(x, t_frames, ctx, block_frames=BLOCK, policy=policy, start_frame=7)
    cache = model.new_cache(1, H, W, policy)
    for b in range(blocks):
        sl = slice(b * BLOCK, (b + 1) * BLOCK)
        start = 7 + b * BLOCK
        # a denoising pass on a different noisy input must equal the recompute of that input
        x_noisy = torch.randn_like(x[:, :, sl])
        x_alt = x.clone()
        x_alt[:, :, sl] = x_noisy
        t_alt = t_frames.clone()
        t_alt[:, sl] = 500.0
        ref = model.forward_full(x_alt[:, :, : sl.stop], t_alt[:, : sl.stop], ctx, block_frames=BLOCK,
                                 policy=policy, start_frame=7)[:, :, sl]
        out = model(x_noisy, 500.0, ctx, start_frame=start, cache=cache)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        # the context pass commits the block and its output is that of the full recompute
        out = model(x[:, :, sl], t_blocks[b : b + 1], ctx, start_frame=start, cache=cache, commit=True)
        torch.testing.assert_close(out, full[:, :, sl], atol=1e-5, rtol=1e-5)
    assert cache.self_attn.stored_frames() == list(range(7, 7 + policy.sink_size)) + list(
        range(7 + blocks * BLOCK - (6 - policy.sink_size), 7 + blocks * BLOCK))


def test_block_causal_mask_matches_spec_window() -> None:
    """IAMFlow numbers: sink 3, 12 frames attended, blocks of 3 -> block c sees sink + blocks c-2..c."""
    mask = block_causal_mask(18, 3, CachePolicy.sink(12, 3))
    assert mask[0].nonzero().flatten().tolist() == [0, 1, 2]  # block 1 only itself
    assert mask[3].nonzero().flatten().tolist() == list(range(6))
    assert mask[15].nonzero().flatten().tolist() == [0, 1, 2] + list(range(9, 18))
    rolling = block_causal_mask(18, 3, CachePolicy.rolling(12))
    assert rolling[15].nonzero().flatten().tolist() == list(range(6, 18))


@torch.no_grad()
def test_commit_writes_exactly_one_block_and_denoise_changes_nothing(model: CausalWanTransformer) -> None:
    policy = CachePolicy.sink(6, 3)
    cache = model.new_cache(1, H, W, policy)
    kv = cache.self_attn
    x, t_blocks, ctx = _inputs(3, seed=2)
    snapshot = [b.clone() for b in (kv.k_sink, kv.v_sink, kv.k_ring, kv.v_ring)]
    model(x[:, :, :3], 900.0, ctx, start_frame=0, cache=cache)
    assert kv.num_committed == 0 and kv.end_frame is None
    for before, after in zip(snapshot, (kv.k_sink, kv.v_sink, kv.k_ring, kv.v_ring)):
        assert torch.equal(before, after)  # storage checks here: buffers left alone or views of them, no recompute
    model(x[:, :, :3], 0.0, ctx, start_frame=0, cache=cache, commit=True)
    assert (kv.sink_count, kv.ring_count, kv.end_frame) == (3, 0, 3)
    assert not torch.equal(kv.k_sink, snapshot[0]) and torch.equal(kv.k_ring, snapshot[2])
    model(x[:, :, 3:6], 0.0, ctx, start_frame=3, cache=cache, commit=True)
    assert (kv.sink_count, kv.ring_count, kv.end_frame) == (3, 3, 6)
    sink_after, ring_after = kv.k_sink.clone(), kv.k_ring.clone()
    # denoising passes leave everything alone
    for step_t in (1000.0, 937.5, 833.3):
        model(x[:, :, 6:9], step_t, ctx, start_frame=6, cache=cache)
    assert (kv.sink_count, kv.ring_count, kv.end_frame) == (3, 3, 6)
    assert torch.equal(kv.k_sink, sink_after) and torch.equal(kv.k_ring, ring_after)
    # the committed frame 4 is readable and is the K of the second block's second frame
    k4, _ = kv.frame_kv(0, 4)
    assert torch.equal(k4, kv.k_ring[0][:, TOKENS : 2 * TOKENS])
    k_arch, v_arch = kv.export_frames([2, 4])
    assert k_arch.shape == (CFG.num_layers, 1, 2 * TOKENS, CFG.num_heads, CFG.head_dim)
    assert torch.equal(k_arch[1, :, :TOKENS], kv.k_sink[1][:, 2 * TOKENS :])
    assert torch.equal(v_arch[1, :, TOKENS:], kv.v_ring[1][:, TOKENS : 2 * TOKENS])
    model(x[:, :, 6:9], 0.0, ctx, start_frame=6, cache=cache, commit=True)
    assert not torch.equal(k_arch[0, :, TOKENS:], kv.k_ring[0][:, TOKENS : 2 * TOKENS])  # copies survive eviction
    assert kv.stored_frames() == [0, 1, 2, 6, 7, 8]  # frames 3-5 evicted, sink kept
    with pytest.raises(KeyError, match="latent frame 4"):
        kv.frame_kv(0, 4)
    with pytest.raises(ValueError, match="cache ends at frame 9"):
        model(x[:, :, :3], 0.0, ctx, start_frame=3, cache=cache)


@torch.no_grad()
def test_committed_keys_keep_absolute_rope_position(model: CausalWanTransformer) -> None:
    """The stored key of a frame equals RoPE(k, its absolute frame index), independent of later blocks."""
    cache = model.new_cache(1, H, W, CachePolicy.rolling(6))
    x, _, ctx = _inputs(1, seed=3)
    captured: dict[str, torch.Tensor] = {}
    attn = model.blocks[0].self_attn
    hook = attn.k.register_forward_hook(lambda mod, inp, out: captured.__setitem__("k", out))
    model(x, 0.0, ctx, start_frame=40, cache=cache, commit=True)
    hook.remove()
    k_raw = attn.norm_k(captured["k"]).unflatten(-1, (CFG.num_heads, CFG.head_dim))
    expected = model.rope.apply(k_raw, 40, (3, 2, 3))
    stored = torch.cat([cache.self_attn.frame_kv(0, f)[0] for f in (40, 41, 42)], dim=1)
    torch.testing.assert_close(stored, expected)
    wrong = model.rope.apply(k_raw, 0, (3, 2, 3))
    assert not torch.allclose(stored, wrong)


def test_rope_split_and_positions() -> None:
    assert rope_axis_split(128) == (22, 21, 21)
    assert rope_axis_split(16) == (4, 2, 2)
    rope = Rope3D(128)
    assert [t.shape for t in rope.tables] == [(1024, 22), (1024, 21), (1024, 21)]
    rot = rope.rotations(5, (2, 3, 4), torch.device("cpu"))
    assert rot.shape == (24, 64)
    # time pairs of token (frame 1, row 2, col 3) rotate by angle (5+1) * theta^(-k/22)
    tok = 1 * 12 + 2 * 4 + 3
    k = torch.arange(22, dtype=torch.float64)
    torch.testing.assert_close(rot[tok, :22].angle(), torch.remainder(6 * 10000.0 ** (-k / 22) + torch.pi,
                                                                     2 * torch.pi) - torch.pi)
    torch.testing.assert_close(rot[tok, 22 + 1].angle(), torch.tensor(2 * 10000.0 ** (-1 / 21), dtype=torch.float64))
    torch.testing.assert_close(rot[tok, 43 + 1].angle(), torch.tensor(3 * 10000.0 ** (-1 / 21), dtype=torch.float64))
    # relative property: <R(p)q, R(p)k> depends only on the offset -> same score at frames 0 and 900
    g = torch.Generator().manual_seed(0)
    q, kk = torch.randn(2, 1, 1, 1, 128, generator=g)
    s0 = (Rope3D(128).apply(q, 0, (1, 1, 1)) * Rope3D(128).apply(kk, 0, (1, 1, 1))).sum()
    s1 = (rope.apply(q, 900, (1, 1, 1)) * rope.apply(kk, 900, (1, 1, 1))).sum()
    torch.testing.assert_close(s0, s1)
    with pytest.raises(ValueError, match="1024"):
        rope.rotations(1022, (3, 1, 1), torch.device("cpu"))


def test_sma_picks_most_similar_chunks() -> None:
    frame_tokens, heads, dim = 2, 2, 4
    q = torch.zeros(1, 3, heads, dim)
    q[0, :, 0, 0] = 1.0  # head 0 looks along axis 0
    q[0, :, 1, 1] = 1.0  # head 1 along axis 1
    chunks = 5
    g_k = torch.zeros(1, chunks * frame_tokens, heads, dim)
    # head 0 chunk scores: 0.1, 3, 0.2, 2, 5 -> top3 = {1, 3, 4}; head 1: 4, 0, 1, 0.5, 3 -> {0, 2, 4}
    for j, (s0, s1) in enumerate([(0.1, 4), (3, 0), (0.2, 1), (2, 0.5), (5, 3)]):
        g_k[0, j * frame_tokens : (j + 1) * frame_tokens, 0, 0] = s0
        g_k[0, j * frame_tokens : (j + 1) * frame_tokens, 1, 1] = s1
    g_v = torch.arange(chunks, dtype=torch.float32).repeat_interleave(frame_tokens)[None, :, None, None]
    g_v = g_v.expand(1, -1, heads, dim).contiguous()
    scores = sma_chunk_scores(q, g_k, frame_tokens)
    torch.testing.assert_close(scores[0, 0], torch.tensor([0.1, 3, 0.2, 2, 5]))
    k_sel, v_sel = sma_select(q, g_k, g_v, frame_tokens, top_k=3)
    assert k_sel.shape == (1, heads, 3 * frame_tokens, dim)
    assert v_sel[0, 0, ::frame_tokens, 0].tolist() == [1, 3, 4]  # re-sorted by chunk index
    assert v_sel[0, 1, ::frame_tokens, 0].tolist() == [0, 2, 4]
    torch.testing.assert_close(k_sel[0, 0, ::frame_tokens, 0], torch.tensor([3.0, 2.0, 5.0]))


@torch.no_grad()
def test_bank_attention_with_and_without_sma(model: CausalWanTransformer) -> None:
    """With SMA off the bank just extends the context; with SMA on and <= top_k global chunks the two
    agree; with more chunks SMA drops some and the output changes."""
    x, _, ctx = _inputs(3, seed=4)
    outs = {}
    for sma in (False, True):
        policy = CachePolicy.sink(6, 1, sma=sma)
        cache = model.new_cache(1, H, W, policy)
        model(x[:, :, :3], 0.0, ctx, start_frame=0, cache=cache, commit=True)
        bank = model.new_memory_bank(4, 1, H, W)
        g = torch.Generator().manual_seed(5)
        mem = torch.randn(2, CFG.num_layers, 1, 4 * TOKENS, CFG.num_heads, CFG.head_dim, generator=g)
        bank.write(mem[0, :, :, : 2 * TOKENS], mem[1, :, :, : 2 * TOKENS])  # 1 sink + 2 bank = 3 chunks
        small = model(x[:, :, 3:6], 700.0, ctx, start_frame=3, cache=cache, bank=bank)
        bank.write(mem[0], mem[1])  # 1 sink + 4 bank = 5 chunks > top 3
        large = model(x[:, :, 3:6], 700.0, ctx, start_frame=3, cache=cache, bank=bank)
        bank.clear()
        none = model(x[:, :, 3:6], 700.0, ctx, start_frame=3, cache=cache, bank=bank)
        outs[sma] = (small, large, none)
    torch.testing.assert_close(outs[True][0], outs[False][0])
    assert not torch.allclose(outs[True][1], outs[False][1], atol=1e-4)
    assert not torch.allclose(outs[False][0], outs[False][2], atol=1e-4)
    torch.testing.assert_close(outs[True][2], outs[False][2])
    with pytest.raises(ValueError, match="capacity"):
        bank.write(torch.zeros(CFG.num_layers, 1, 5 * TOKENS, CFG.num_heads, CFG.head_dim),
                   torch.zeros(CFG.num_layers, 1, 5 * TOKENS, CFG.num_heads, CFG.head_dim))


@torch.no_grad()
def test_query_only_frames(model: CausalWanTransformer) -> None:
    """The release's one-forward re-cache runs the sink-protected frames as queries only: without SMA the
    kept frames' K/V equal a forward of the kept frames alone; with SMA over more chunks than it keeps, the
    extra queries enter the routing's mean query and can change which chunks are attended."""
    x, _, ctx = _inputs(4, seed=6)
    g = torch.Generator().manual_seed(7)
    mem = torch.randn(2, CFG.num_layers, 1, 4 * TOKENS, CFG.num_heads, CFG.head_dim, generator=g)

    def recache(sma: bool, query_frames: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        cache = model.new_cache(1, H, W, CachePolicy.sink(9, 3, sma=sma))
        for b in range(3):  # frames 0..8: sink 0..2, window 3..8
            model(x[:, :, 3 * b:3 * b + 3], 0.0, ctx, start_frame=3 * b, cache=cache, commit=True)
        bank = model.new_memory_bank(4, 1, H, W)
        bank.write(mem[0], mem[1])  # 3 sink + 4 bank chunks > top 3
        cache.self_attn.rewind(6)
        first = 6 - query_frames
        model(x[:, :, first:9] * 0.5, 0.0, ctx, start_frame=first, cache=cache, commit=True, bank=bank,
              query_frames=query_frames)
        kv = cache.self_attn
        k, v = kv.export_frames([6, 7, 8])
        return k, v, kv.stored_frames()

    plain, with_queries = recache(False, 0), recache(False, 3)
    assert plain[2] == with_queries[2] == list(range(9))
    torch.testing.assert_close(with_queries[0], plain[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(with_queries[1], plain[1], atol=1e-5, rtol=1e-5)
    routed, routed_with_queries = recache(True, 0), recache(True, 3)
    assert not torch.allclose(routed[0], routed_with_queries[0], atol=1e-4)  # the mean query moved
    cache = model.new_cache(1, H, W, CachePolicy.sink(9, 3))
    with pytest.raises(ValueError, match="query_frames"):
        model(x[:, :, :3], 0.0, ctx, start_frame=0, cache=cache, query_frames=3)


@torch.no_grad()
def test_cross_attention_blend(model: CausalWanTransformer) -> None:
    x, _, ctx_old = _inputs(1, seed=6)
    ctx_new = torch.randn_like(ctx_old)

    def run(cache, ctx, alpha=None):
        return model(x, 800.0, ctx, start_frame=0, cache=cache, transition_alpha=alpha)

    out_old = run(model.new_cache(1, H, W), ctx_old)
    out_new = run(model.new_cache(1, H, W), ctx_new)
    cache = model.new_cache(1, H, W)
    run(cache, ctx_old)
    with pytest.raises(ValueError, match="begin_transition"):
        run(cache, ctx_new)
    cache.cross_attn.begin_transition()
    torch.testing.assert_close(run(cache, ctx_new, 0.0), out_old, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(run(cache, ctx_new, 1.0), out_new, atol=1e-6, rtol=1e-6)
    mid = run(cache, ctx_new, 0.5)
    assert not torch.allclose(mid, out_old, atol=1e-4) and not torch.allclose(mid, out_new, atol=1e-4)
    # the blend is of the cross K/V themselves
    k_mid, v_mid = cache.cross_attn.layer_kv(1, 0.25)
    torch.testing.assert_close(k_mid, 0.75 * cache.cross_attn.prev_k[1] + 0.25 * cache.cross_attn.k[1])
    torch.testing.assert_close(v_mid, 0.75 * cache.cross_attn.prev_v[1] + 0.25 * cache.cross_attn.v[1])
    cache.cross_attn.end_transition()
    torch.testing.assert_close(run(cache, None), out_new, atol=1e-6, rtol=1e-6)
    with pytest.raises(RuntimeError, match="no previous prompt"):
        run(cache, None, 0.5)


@torch.no_grad()
def test_activations_follow_the_weights_dtype_like_the_released_models(model: CausalWanTransformer) -> None:
    """Self-Forcing/LongLive/MemFlow/IAMFlow's causal models comment their fp32 autocast out and cast the
    whole model to bf16: residual stream, modulation and time embedding in bf16 (``residual_dtype=None``).
    ``residual_dtype="float32"`` keeps them in float32 (Wan2.1's autocast regions)."""
    x, _, ctx = _inputs(1, seed=8)
    outs, seen = {}, {}
    for residual in (None, "float32"):
        m = CausalWanTransformer(dataclasses.replace(CFG, residual_dtype=residual))
        m.load_state_dict(model.state_dict())
        m = m.to(torch.bfloat16).eval()
        streams: list[torch.dtype] = []
        hooks = [blk.register_forward_hook(lambda _m, _a, out: streams.append(out.dtype)) for blk in m.blocks]
        e, e0 = m._time(500.0, 1, BLOCK, x.device)
        outs[residual] = m(x[:, :, :BLOCK], 500.0, ctx, start_frame=0, cache=m.new_cache(1, H, W))
        for hook in hooks:
            hook.remove()
        seen[residual] = (m.residual_dtype, set(streams), e.dtype, e0.dtype, outs[residual].dtype)
    assert seen[None] == (torch.bfloat16, {torch.bfloat16}, torch.bfloat16, torch.bfloat16, torch.float32)
    assert seen["float32"] == (torch.float32, {torch.float32}, torch.float32, torch.float32, torch.float32)
    reference = model(x[:, :, :BLOCK], 500.0, ctx, start_frame=0, cache=model.new_cache(1, H, W))
    for out in outs.values():  # both near the float32 model: bf16 rounding through 2 layers, not a bug
        torch.testing.assert_close(out, reference, atol=0.1, rtol=0.05)
    # with float32 weights the two settings are the same operations: bit-identical
    fp32 = CausalWanTransformer(dataclasses.replace(CFG, residual_dtype="float32"))
    fp32.load_state_dict(model.state_dict())
    again = fp32.eval()(x[:, :, :BLOCK], 500.0, ctx, start_frame=0, cache=fp32.new_cache(1, H, W))
    assert model.residual_dtype == torch.float32 and torch.equal(again, reference)


EXPECTED_KEYS_BLOCK = {
    "norm3.weight", "norm3.bias", "modulation",
    *(f"{attn}.{p}.{wb}" for attn in ("self_attn", "cross_attn") for p in "qkvo" for wb in ("weight", "bias")),
    *(f"{attn}.norm_{p}.weight" for attn in ("self_attn", "cross_attn") for p in "qk"),
    "ffn.0.weight", "ffn.0.bias", "ffn.2.weight", "ffn.2.bias",
}


@torch.no_grad()
def test_state_dict_uses_original_wan_names_and_round_trips(model: CausalWanTransformer, tmp_path) -> None:
    sd = model.state_dict()
    top = {k for k in sd if not k.startswith("blocks.")}
    assert top == {
        "patch_embedding.weight", "patch_embedding.bias", "text_embedding.0.weight", "text_embedding.0.bias",
        "text_embedding.2.weight", "text_embedding.2.bias", "time_embedding.0.weight", "time_embedding.0.bias",
        "time_embedding.2.weight", "time_embedding.2.bias", "time_projection.1.weight", "time_projection.1.bias",
        "head.head.weight", "head.head.bias", "head.modulation",
    }
    assert {k[len("blocks.0."):] for k in sd if k.startswith("blocks.0.")} == EXPECTED_KEYS_BLOCK
    assert sd["blocks.0.modulation"].shape == (1, 6, CFG.dim) and sd["head.modulation"].shape == (1, 2, CFG.dim)
    assert sd["patch_embedding.weight"].shape == (CFG.dim, CFG.in_dim, 1, 2, 2)
    assert sd["head.head.weight"].shape == (4 * CFG.out_dim, CFG.dim)

    from safetensors.torch import save_file

    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    torch.manual_seed(123)
    fresh = CausalWanTransformer(CFG).eval()
    load_wan_state_dict(fresh, path)
    x, _, ctx = _inputs(1, seed=7)
    a = model(x, 300.0, ctx, start_frame=0, cache=model.new_cache(1, H, W))
    b = fresh(x, 300.0, ctx, start_frame=0, cache=fresh.new_cache(1, H, W))
    # the loader copies the same bits into the model's own tensors: the same operations on the same shapes
    assert torch.equal(a, b)

    pt = tmp_path / "gen.pt"
    torch.save({"generator_ema": {f"model.{k}": v for k, v in sd.items()}}, pt)
    load_wan_state_dict(CausalWanTransformer(CFG), pt, key="generator_ema", strip_prefix="model.")

    broken = dict(sd)
    del broken["blocks.1.norm3.weight"]
    broken["blocks.0.img_emb.proj.0.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys \[blocks\.1\.norm3\.weight\].*unexpected keys "
                                         r"\[blocks\.0\.img_emb\.proj\.0\.weight\]"):
        load_wan_state_dict(CausalWanTransformer(CFG), broken)
    bad_shape = dict(sd)
    bad_shape["head.modulation"] = torch.zeros(1, 6, CFG.dim)
    with pytest.raises(ValueError, match="head.modulation: checkpoint"):
        load_wan_state_dict(CausalWanTransformer(CFG), bad_shape)


def test_wan_1_3b_parameter_count() -> None:
    """Architecture arithmetic for Wan2.1-T2V-1.3B (dim 1536, 30 blocks, ffn 8960):
    per block 2 x (4 x (1536^2 + 1536) + 2 x 1536) [attn + qk norms] + 2 x 1536 [norm3]
    + (1536 x 8960 + 8960 + 8960 x 1536 + 1536) [ffn] + 6 x 1536 [modulation] = 46,440,704;
    x 30 = 1,393,221,120; + patch 99,840 + text 8,653,824 + time 2,755,584 + projection 14,164,992
    + head 101,440 = 1,418,996,800."""
    d, f = 1536, 8960
    block = 2 * (4 * (d * d + d) + 2 * d) + 2 * d + (d * f + f + f * d + d) + 6 * d
    assert block == 46_440_704
    assert count_parameters(WanConfig()) == 1_418_996_800
