"""VTSS (FAST-VQA DiViDeAddEvaluator, swin_tiny_grpb): ours against the IVEBench code the evaluator adapted.

Fixture (tools/equivalence/make_fixtures.py vtss, docs/equivalence.md): RyanChenYN/IVEBench 2dcf890
(``metrics/quality/training_suitability_assessment``, the commit NarraStream-Bench's third_party README
names), ``DiViDeAddEvaluator`` built with infer.yml's arguments and ``swin_tiny_grpb`` at small widths
(embed 8, depths 2/2/2/2, heads 1/2/2/4) but the real patch 2x4x4, 7x7 spatial windows, fragment biases
in stages 1-3 and 224 px fragments; 8 frames (window depth 2) instead of 32. Two clips through the
official call ``model({"fragments": x}, reduce_scores=False)``. The state dict, with the authors'
``relative_position_index`` buffers, is saved as ``infer.pth`` is (``{"state_dict": ...}``) and loaded
through :func:`load_vtss_checkpoint` (strict).

Tolerance: float32 rounding of reordered reductions (window attention, LayerNorm) through 8 Swin
blocks; the quality map values are O(0.1-1). Differences seen are ~4e-7; atol 2e-5 keeps a margin and
still fails for one misplaced tensor (O(0.01-1) changes).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from equivalence_support import Fixture, assert_close, save_state
from narrastream.metrics.backbones import vtss as vtss_module
from narrastream.metrics.backbones.vtss import CHECKPOINT_KEY, VTSSEvaluator, load_vtss_checkpoint

ATOL = 2e-5


@pytest.fixture(scope="module")
def fixture() -> Fixture:
    return Fixture("vtss")


@pytest.fixture
def equiv_arch(fixture, monkeypatch) -> str:
    b, head = fixture.config["backbone"], fixture.config["vqa_head"]
    assert tuple(b["window_size"][1:]) == vtss_module.FRAGMENT_GRID[1:]  # the gate assumes the 7x7 fragment grid
    assert head["in_channels"] == b["embed_dim"] * 2 ** (len(b["depths"]) - 1)
    monkeypatch.setitem(vtss_module.ARCHS, "equiv", dict(
        patch_size=tuple(b["patch_size"]), embed_dim=b["embed_dim"], depths=tuple(b["depths"]), num_heads=tuple(b["num_heads"]),
        window_size=tuple(b["window_size"]), frag_biases=tuple(b["frag_biases"]), head_hidden=head["hidden_channels"]))
    return "equiv"


def test_our_index_buffers_are_the_authors(fixture, equiv_arch):
    ours = VTSSEvaluator(equiv_arch).state_dict()
    stored = {k: v for k, v in fixture.ints.items() if k.endswith("relative_position_index")}
    assert stored and set(stored) == {k for k in ours if k.endswith("relative_position_index")}
    for key, value in stored.items():
        assert torch.equal(ours[key], torch.from_numpy(np.asarray(value)).to(ours[key].dtype)), key


def test_vtss_matches_the_authors(fixture, equiv_arch, tmp_path):
    path = save_state(tmp_path / "infer.pth", fixture.state_dict(), wrapper=CHECKPOINT_KEY)
    model = load_vtss_checkpoint(path, equiv_arch).eval()
    x = torch.from_numpy(fixture.uniform_input("fragments", "vtss/fragments"))
    with torch.inference_mode():
        ours = model(x)
    theirs = fixture.outputs["quality_map"]
    assert theirs.std() > 0.01  # a map that varies, not a constant
    assert_close("vtss quality_map", ours, theirs, atol=ATOL)
