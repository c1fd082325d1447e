"""LanguageBind video + text towers: ours (transformers 5 CLIP modules) against PKU-YuanGroup/LanguageBind.

Fixture (tools/equivalence/make_fixtures.py languagebind, docs/equivalence.md): ``LanguageBindVideo``
of PKU-YuanGroup/LanguageBind 7070c53 (``languagebind/video/modeling_video.py``; the evaluator's
vendored copy differs only by an import fallback) under transformers 4.30.2 (the version the vendored
package pins), with LanguageBind_Video_FT's structure at small widths: both towers 32 wide, 2 layers,
2 heads, GELU; the video tower with temporal attention over 8 frames, 32 px frames in 8 px patches;
the full CLIP vocabulary (49408) and 77 positions; projections to 16. Its ``config.json`` is the
authors' own serialisation and its state dict (with the ``position_ids`` buffers transformers 4.30
saves) is written as ``pytorch_model.bin``: :func:`load_languagebind` reads both (strict).

Inputs: pixels ``(B, C, T, H, W)`` as their processor makes them; three ASCII prompts tokenised by
the authors' ``LanguageBindVideoTokenizer`` (the official call: max_length 77, padding to 77 with
``<|endoftext|>``, truncation) -- the ids are stored, so this compares token ids -> embeddings, not the
tokenizer. Outputs: the projected (unnormalised) video and text features, as the official wrapper
computes them before L2-normalising, and the text tower's last hidden state of the first prompt.

Tolerance: the same float32 operations through another transformers version (eager attention in both;
the padding mask is -finfo.min in 4.30 and a boolean/additive mask in 5), 2 layers of width 32:
differences seen are ~1e-6 on features of magnitude ~1; atol 2e-5 + rtol 1e-5. A transposed
projection or a swapped tensor changes them by O(0.1-1).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from equivalence_support import Fixture, assert_close, save_state
from narrastream.metrics.backbones.languagebind import arch_from_config, load_languagebind

ATOL, RTOL = 2e-5, 1e-5


@pytest.fixture(scope="module")
def fixture() -> Fixture:
    return Fixture("languagebind")


@pytest.fixture
def model(fixture, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(fixture.config))
    save_state(tmp_path / "pytorch_model.bin", fixture.state_dict())
    return load_languagebind(tmp_path, with_tokenizer=False)


def test_architecture_read_from_the_authors_config(fixture):
    arch = arch_from_config(fixture.config)
    text, vision = fixture.config["text_config"], fixture.config["vision_config"]
    assert (arch.text_width, arch.text_layers, arch.vocab_size, arch.context_length) == (
        text["hidden_size"], text["num_hidden_layers"], text["vocab_size"], text["max_position_embeddings"])
    assert (arch.vision_width, arch.vision_layers, arch.patch_size, arch.image_size, arch.num_frames) == (
        vision["hidden_size"], vision["num_hidden_layers"], vision["patch_size"], vision["image_size"], vision["num_frames"])
    assert (arch.text_act, arch.vision_act, arch.projection_dim) == ("gelu", "gelu", fixture.config["projection_dim"])


def test_video_tower_matches_the_authors(fixture, model):
    pixels = torch.from_numpy(fixture.uniform_input("pixels", "languagebind/pixels"))  # (B, C, T, H, W)
    with torch.inference_mode():
        ours = model.video_features(pixels.permute(0, 2, 1, 3, 4))  # ours takes (B, T, C, H, W)
    theirs = fixture.outputs["video_features"]
    assert np.abs(theirs[0] - theirs[1]).max() > 0.1  # two different clips give different features
    assert_close("languagebind video_features", ours, theirs, atol=ATOL, rtol=RTOL)


def test_text_tower_matches_the_authors(fixture, model):
    ids = torch.from_numpy(fixture.ints["input/input_ids"].astype(np.int64))
    mask = torch.from_numpy(fixture.ints["input/attention_mask"].astype(np.int64))
    assert ids.shape == (len(fixture.meta["prompts_ascii"]), 77) and int(ids[0, 0]) == 49406
    with torch.inference_mode():
        features = model.text_features(ids, mask)
        hidden = model.text_model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert_close("languagebind text_features", features, fixture.outputs["text_features"], atol=ATOL, rtol=RTOL)
    # every position, padding included (the causal + padding masks must agree too)
    assert_close("languagebind text_last_hidden/0", hidden[0], fixture.outputs["text_last_hidden/0"], atol=ATOL, rtol=RTOL)
