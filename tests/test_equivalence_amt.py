"""AMT-S: our implementation against MCG-NKU/AMT's ``networks/AMT-S.py`` on seeded random weights.

Fixture (tools/equivalence/make_fixtures.py amt, docs/equivalence.md): the authors' ``Model`` with
AMT-S's own arguments (radius 3, 4 correlation levels, 3 flow pairs, channels 20/32/44/56, skip 20;
the update blocks' widths are hard-coded there), MCG-NKU/AMT 70f988f (the evaluator vendors this file
unchanged but for import paths), two 128x128 pairs of frames /255 at ``embt`` 0.5 and 0.25, scale 1.
Weights are drawn at half the default scale (``weights_gain`` 0.5), else the random network's output is
mostly clamped to 0 or 1. The state dict is saved as ``amt-s.pth`` is (``{"state_dict": ...}``) and loaded through
:func:`load_amt_checkpoint` with the real ``s`` architecture (strict).

Tolerance: float32 rounding of reordered reductions through ~40 convolutions, 3 correlation lookups
and bilinear warps; frames are in [0, 1]. Differences seen are ~3e-6; atol 1e-4 (1/40 of a uint8
level, so the metric's truncation to uint8 could flip only at exact boundaries) still fails for a
single misplaced tensor, which moves pixels by O(0.1).
"""

from __future__ import annotations

import pytest
import torch

from equivalence_support import Fixture, assert_close, save_state
from narrastream.metrics.backbones.amt import CHECKPOINT_KEY, AMT_CONFIGS, load_amt_checkpoint

ATOL = 1e-4


@pytest.fixture(scope="module")
def fixture() -> Fixture:
    return Fixture("amt")


def test_amt_config_is_amt_s(fixture):
    cfg, ours = fixture.config, AMT_CONFIGS["s"]
    assert (cfg["corr_radius"], cfg["corr_lvls"], cfg["num_flows"], tuple(cfg["channels"]), cfg["skip_channels"]) == (
        ours.corr_radius, ours.corr_levels, ours.num_flows, ours.channels, ours.skip_channels)


def test_amt_s_matches_the_authors(fixture, tmp_path):
    path = save_state(tmp_path / "amt-s.pth", fixture.state_dict(), wrapper=CHECKPOINT_KEY)
    model = load_amt_checkpoint(path, "s").eval()
    img0, img1 = (torch.from_numpy(fixture.uniform_input(f"img{i}", f"amt/img{i}")) for i in (0, 1))
    embt = torch.tensor(fixture.meta["embt"], dtype=torch.float32).view(-1, 1, 1, 1)
    with torch.inference_mode():
        ours = model(img0, img1, embt, scale_factor=fixture.meta["scale_factor"])
    theirs = fixture.outputs["imgt_pred"]
    inside = ((theirs > 0.01) & (theirs < 0.99)).mean()
    assert inside > 0.5, f"only {inside:.0%} of the authors' output is unclamped: the fixture would test little"
    assert_close("amt imgt_pred", ours, theirs, atol=ATOL)
