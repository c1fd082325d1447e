"""IAMFlow's identity agent: the §3.5 token weights and semantic score, and the agent inside the
streaming pipeline (registration, archive, retrieval, injection into the bank, the sidecar trace)."""

from __future__ import annotations

import math

import pytest
import torch

from narrastream.data import load_benchmark
from narrastream.iamflow.agent import IdentityAgent, entity_token_weights, semantic_scores
from narrastream.iamflow.registry import ExtractedEntity

pytest.importorskip("diffusers")


def test_token_weights_follow_the_release():
    prompt = "x" * 50 + "Noah" + "y" * 46  # name at characters 50..54 of 100
    w = entity_token_weights(prompt, [ExtractedEntity("Noah", ())], 512)
    lo, hi = math.floor((0.50 - 0.02) * 512), math.floor((0.54 + 0.02) * 512)
    assert torch.all(w[lo:hi] == 2.5) and w[lo - 1] == 1.0 and w[hi] == 1.0
    assert torch.all(w[:40] == 0.7) and w[40] == 1.0 and torch.all(w[471:] == 0.5) and w[470] == 1.0
    none = entity_token_weights("nobody here", [ExtractedEntity("Noah", ())], 512)
    assert torch.all(none[51:435] == 1.5) and none[50] == 1.0 and none[435] == 1.0 and none[0] == 1.0


def test_semantic_score_by_hand():
    text = torch.zeros(1, 2, 1, 4)
    text[0, 0, 0] = torch.tensor([1.0, 0, 0, 0])
    text[0, 1, 0] = torch.tensor([0, 1.0, 0, 0])
    weights = torch.tensor([3.0, 1.0])  # q = (0.75, 0.25, 0, 0)
    frames = torch.zeros(2, 1, 2, 1, 4)
    frames[0, 0, :, 0] = torch.tensor([[2.0, 0, 0, 0], [0, 0, 0, 0]])  # mean (1, 0, 0, 0)
    frames[1, 0, :, 0] = torch.tensor([[0, 2.0, 0, 0], [0, 2.0, 0, 0]])  # mean (0, 2, 0, 0)
    assert semantic_scores(text, weights, frames).tolist() == pytest.approx([0.75 / 2, 0.5 / 2])


def test_agent_in_the_pipeline(official_path):
    from narrastream.iamflow.prompt_names import prompt_name_entities
    from narrastream.streaming.kv_cache import CachePolicy
    from narrastream.streaming.pipeline import StreamingSpec, StreamingWanPipeline
    from narrastream.streaming.tiny import build_tiny

    script = load_benchmark(official_path, ids=[5]).scripts[0]  # look-alikes: Evan, Luca, Milan, Dario
    characters = prompt_name_entities(script.prompts)  # the offline extractor: the prompts' names only
    assert [e.name for e in characters[0]] == ["Evan", "Luca"]
    agent = IdentityAgent(script.prompts, characters, max_archived_frames=5)
    spec = StreamingSpec(cache=CachePolicy.sink(6, 2, sma=True), transition="soft", memory="identity", bank_size=6,
                         block_frames=1)
    writes = []
    dit, text_encoder, decoder = build_tiny(0)
    pipeline = StreamingWanPipeline(dit, text_encoder, decoder, spec)
    original = agent._inject

    def spy(state, frames):
        original(state, frames)
        writes.append(state.bank.length)

    agent._inject = spy
    pipeline.generate(script.prompts, seed=0, seconds_per_segment=2, fps=4, height=48, width=64, memory_agent=agent)
    out = agent.to_json()
    names = {e["name"]: e["id"] for e in out["registry"]["entities"]}
    assert names == {"Evan": 1, "Luca": 2, "Milan": 3, "Dario": 4}  # look-alikes keep distinct IDs
    active = out["memory_trace"]["active_per_prompt"]
    assert set(active) == {str(p) for p in range(6)} or set(active) == set(range(6))
    assert out["archived_frames"] <= 5 and max(writes) >= 2  # bounded archive; the bank held frames
    retrieve = [e for e in out["memory_trace"]["events"] if e["event"] == "retrieve"]
    assert [e["prompt"] for e in retrieve] == [1, 2, 3, 4, 5]


def test_agent_needs_entities_for_every_prompt():
    with pytest.raises(ValueError, match="entities for 1 prompts"):
        IdentityAgent(["a", "b"], [[]])
