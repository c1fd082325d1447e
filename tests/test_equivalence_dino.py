"""DINO ViT-B/16 layout: our DinoVisionTransformer against the authors' code on seeded random weights.

Fixtures (tools/equivalence/make_fixtures.py dino, docs/equivalence.md): a 2-block, 32-wide ViT with
vit_base's other settings (patch 16, qkv bias, LayerNorm eps 1e-6, MLP ratio 4, 224 px position grid),
run by the official evaluator's vendored ``third_party/dino_vit.py`` (NarraStream-Bench 3443e52) and by
facebookresearch/dino's ``vision_transformer.py`` (7c446df). The state dict goes through
:func:`load_dino_checkpoint` (strict) from a file in the authors' layout.

Tolerance: the same float32 operations, in a different library (timm's blocks, our interpolation),
on 2 blocks of width 32 with O(1) activations: differences are float32 rounding of reordered
reductions (~1e-6). atol 2e-5 / rtol 1e-5 leave a margin of ~10x; a misplaced tensor changes the
outputs by O(0.1-1).
"""

from __future__ import annotations

import pytest
import torch

from equivalence_support import Fixture, assert_close, save_state
from narrastream.metrics.backbones import dino as dino_module
from narrastream.metrics.backbones.dino import build_dino_vit, load_dino_checkpoint

ATOL, RTOL = 2e-5, 1e-5


@pytest.fixture(params=["dino_official", "dino_upstream"])
def fixture(request) -> Fixture:
    return Fixture(request.param)


def _ours(fixture: Fixture, tmp_path, monkeypatch):
    cfg = fixture.config
    assert (cfg["patch_size"], cfg["mlp_ratio"], cfg["qkv_bias"], cfg["layer_norm_eps"], cfg["img_size"]) == (16, 4, True, 1e-6, 224)
    monkeypatch.setitem(dino_module.DINO_ARCHS, "equiv",
                        {"embed_dim": cfg["embed_dim"], "depth": cfg["depth"], "num_heads": cfg["num_heads"]})
    path = save_state(tmp_path / "dino.pth", fixture.state_dict())
    return load_dino_checkpoint(build_dino_vit("equiv"), path).eval()


@pytest.mark.parametrize("case", ["square224", "nonsquare", "square96"])
def test_dino_matches_the_authors(fixture, case, tmp_path, monkeypatch):
    model = _ours(fixture, tmp_path, monkeypatch)
    x = torch.from_numpy(fixture.uniform_input(case, f"dino/{case}"))
    with torch.inference_mode():
        tokens = model.forward_features(x)
    assert_close(f"{fixture.name} cls/{case}", tokens[:, 0], fixture.outputs[f"cls/{case}"], atol=ATOL, rtol=RTOL)
    if f"tokens/{case}" in fixture.outputs:
        assert_close(f"{fixture.name} tokens/{case}", tokens, fixture.outputs[f"tokens/{case}"], atol=ATOL, rtol=RTOL)


def test_the_vendored_and_upstream_fixtures_agree():
    """The evaluator's vendored file computes what facebookresearch/dino computes (same seeds)."""
    official, upstream = Fixture("dino_official"), Fixture("dino_upstream")
    assert official.meta["keys"] == upstream.meta["keys"]
    for key, value in official.outputs.items():
        assert_close(key, value, upstream.outputs[key], atol=1e-6)
