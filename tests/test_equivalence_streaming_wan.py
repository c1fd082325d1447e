"""The causal Wan DiT forward with its KV cache against the authors' ``CausalWanModel``.

Fixture ``wan_forward`` (tools/equivalence/make_fixtures.py wan_forward; docs/equivalence.md): Self-Forcing
@ 33593df, ``wan/modules/causal_model.py``, a 2-layer 64-wide DiT (head_dim 32, text_len 16) with seeded
weights, batch of 2 with different text features. Three calls of their ``_forward_inference`` with their
KV-cache dictionaries: a denoising pass at per-frame timesteps on an empty cache, the context pass at t = 0
(commits frames 0..2), a pass on frames 3..5 reading the committed frames. The state dict goes through
:func:`load_wan_state_dict` from a file laid out as Self-Forcing's release (``generator_ema``, ``model.``).

Tolerance: both sides compute in float32 with the same operations (RoPE in float64 on both), ordered
differently (our fused SDPA over [sink; window] views vs their SDPA over the cache slice, our
``F.layer_norm`` vs ``nn.LayerNorm``). Differences measured: see docs/equivalence.md; atol 1e-5 on O(1)
flows leaves a margin of >10x, and a misplaced tensor moves the flows by O(0.1).
"""

from __future__ import annotations

import pytest
import torch

from equivalence_support import Fixture, assert_close
from equivalence_streaming_support import load_ours, si
from narrastream.streaming.kv_cache import CachePolicy

ATOL, RTOL = 1e-5, 1e-5


@pytest.fixture(scope="module")
def fixture() -> Fixture:
    return Fixture("wan_forward")


@torch.no_grad()
def test_wan_forward_matches_the_authors(fixture, tmp_path):
    model = load_ours(fixture, tmp_path, "self_forcing")
    cfg = fixture.config
    seed = fixture.meta["inputs_seed"]
    context = torch.cat([si.to_tensor(si.context(seed, i)) for i in range(cfg["batch"])])
    assert torch.allclose(torch.tensor(si.seeded.checksum(context), dtype=torch.float64),
                          torch.tensor(fixture.meta["inputs"]["context"]["checksum"], dtype=torch.float64))
    # their cache: global attention (-1) and no sink; 6 frames fit in a 12-frame rolling window
    cache = model.new_cache(cfg["batch"], *si.LATENT_HW, CachePolicy.rolling(12))
    for n, (start, t, commit) in enumerate(cfg["calls"]):
        x = torch.from_numpy(fixture.uniform_input(f"x{n}", f"wan_forward/x{n}"))
        flow = model(x, torch.tensor(t), context, start_frame=start, cache=cache, commit=commit)
        assert_close(f"flow{n}", flow, fixture.outputs[f"flow{n}"], atol=ATOL, rtol=RTOL)
        if commit:
            k, v = cache.self_attn.export_frames(cache.self_attn.stored_frames())
            assert_close("committed K", k, fixture.outputs["cache_k"], atol=ATOL, rtol=RTOL)
            assert_close("committed V", v, fixture.outputs["cache_v"], atol=ATOL, rtol=RTOL)
