"""RAFT: torchvision's raft_large loaded from an ORIGINAL-layout checkpoint against princeton-vl/RAFT.

Fixture (tools/equivalence/make_fixtures.py raft, docs/equivalence.md): the original ``RAFT(args)``
(standard, not small; no mixed precision, no alternate correlation) of princeton-vl/RAFT 2888e15 on
seeded random weights, 3 refinement iterations, a 128x128 pair in both directions. The authors' state
dict is written as ``raft-things.pth`` is (a DataParallel ``module.`` prefix, the context encoder's
BatchNorm stored twice as ``norm3`` and ``downsample.1``) and loaded through
:func:`load_raft_checkpoint`, i.e. the explicit original -> torchvision key mapping; the frames go
through :class:`FlowEstimator` (the metric's preprocessing).

Tolerance: the same float32 arithmetic in another implementation (torchvision's correlation and
upsampling order their reductions differently), iterated 3 times through a GRU: the differences seen
are ~1e-5 px on flows of up to ~15 px (mean 4 px). atol 2e-3 px + rtol 1e-4 leaves a wide margin while a single
swapped or transposed tensor moves the flow by whole pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from equivalence_support import Fixture, assert_close, save_state
from narrastream.metrics.backbones.raft import FlowEstimator, load_raft_checkpoint

ATOL, RTOL = 2e-3, 1e-4


@pytest.fixture(scope="module")
def fixture() -> Fixture:
    return Fixture("raft")


def test_original_layout_raft_matches_the_authors(fixture, tmp_path):
    cfg = fixture.config
    assert (cfg["small"], cfg["mixed_precision"], cfg["alternate_corr"]) == (False, False, False)
    state = fixture.state_dict()
    assert any(".norm3." in k for k in state) and any(".downsample.1." in k for k in state)
    path = save_state(tmp_path / "raft-things.pth", state, prefix="module.")  # the official file's layout
    model = load_raft_checkpoint(path, "large")
    frames = [fixture.uniform_input(f"image{i}", f"raft/image{i}") for i in (1, 2)]
    frames = [np.ascontiguousarray(f.transpose(0, 2, 3, 1)).astype(np.uint8) for f in frames]  # (1, H, W, 3)
    a, b = np.concatenate([frames[0], frames[1]]), np.concatenate([frames[1], frames[0]])
    flow = FlowEstimator(model, device=torch.device("cpu")).flow(a, b, iters=cfg["iters"])
    theirs = fixture.outputs["flow/last"]
    assert np.abs(theirs).max() > 1.0  # a real motion field, not a constant that anything would match
    assert_close("raft flow/last", flow, theirs, atol=ATOL, rtol=RTOL)
