"""Where IAMFlow's characters come from (issue 11, item 4): the generator never reads the evaluator's answer key.

``model=iamflow`` defaults to the released LLM extractor (in this process); the tiny CPU path uses the
offline prompt-names extractor and runs end to end with every route to the annotations files blocked; the
annotations are readable only under the oracle configuration, whose name and identity say so.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from narrastream.adapters.base import AdapterConfigError, GenerationRequest
from narrastream.config import compose_config
from narrastream.data import load_benchmark
from narrastream.iamflow.prompt_names import prompt_name_entities, script_names
from narrastream.paths import benchmark_data_dir

ANNOTATIONS_DIR = benchmark_data_dir() / "annotations"


def _generator(*overrides: str):
    from narrastream.adapters.streaming_wan import StreamingWanGenerator

    cfg = compose_config(list(overrides))
    return StreamingWanGenerator(**cfg["model"]["params"]), cfg


# ----------------------------------------------------------------------------- configuration
def test_the_default_entity_source_is_the_released_llm_in_process():
    model = compose_config(["model=iamflow"])["model"]
    assert model["name"] == "iamflow"
    iam = model["params"]["iam"]
    assert iam["entities"] == "llm"
    assert iam["llm"]["backend"] == "local" and iam["llm"]["model"] == "Qwen/Qwen3-4B-Instruct-2507"
    assert "annotations_path" not in iam
    # the tiny CPU preset switches to the offline extractor; any source can still be chosen explicitly
    assert compose_config(["model=iamflow", "preset=tiny"])["model"]["params"]["iam"]["entities"] == "prompt_names"
    assert compose_config(["model=iamflow", "preset=tiny", "model.params.iam.entities=llm"]
                          )["model"]["params"]["iam"]["entities"] == "llm"
    oracle = compose_config(["model=iamflow_oracle", "annotations.path=/a/b.jsonl"])["model"]
    assert oracle["name"] == "iamflow+oracle-entities" and oracle["params"]["iam"]["entities"] == "oracle"
    assert oracle["params"]["iam"]["annotations_path"] == "/a/b.jsonl"  # the very file the evaluator reads


def test_oracle_entities_are_refused_under_a_name_that_hides_them():
    with pytest.raises(AdapterConfigError, match=r"model\.params\.iam\.entities=oracle under model name 'iamflow'"
                                                 r".*model=iamflow_oracle"):
        _generator("model=iamflow", "preset=tiny", "model.params.iam.entities=oracle")
    with pytest.raises(AdapterConfigError, match="model=iamflow_oracle"):
        _generator("model=iamflow_oracle", "preset=tiny", "model.name=iamflow")
    with pytest.raises(AdapterConfigError, match="the name says oracle"):
        _generator("model=iamflow_oracle", "preset=tiny", "model.params.iam.entities=prompt_names")
    generator, _ = _generator("model=iamflow_oracle", "preset=tiny")  # the oracle config itself is accepted
    assert generator.entities == "oracle"


def test_the_refusal_exits_2_before_any_generation(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "narrastream.run", "model=iamflow", "preset=tiny", "data.limit=1",
                           f"run.dir={run_dir}", "model.params.iam.entities=oracle"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "model.params.iam.entities=oracle" in proc.stderr and "iamflow_oracle" in proc.stderr
    assert not (run_dir / "videos").exists()


# ----------------------------------------------------------------------------- the offline extractor
def test_prompt_names_reads_names_not_sentence_openers():
    prompts = ["In the hall, Mina, a young woman in a coat, waits. The lamp flickers.",
               "Suddenly, Noah enters. Mina's eyes follow him.",
               "Glass breaks. Noah and Mina leave.",
               "They wait."]
    assert script_names(prompts) == {"Mina", "Noah"}  # not In, The, Suddenly, Glass, They
    assert [[e.name for e in found] for found in prompt_name_entities(prompts)] == [
        ["Mina"], ["Noah", "Mina"], ["Noah", "Mina"], []]
    assert all(e.attributes == () for found in prompt_name_entities(prompts) for e in found)
    # a sentence opener is a name only before a comma or "and <Name>": Clara and Luca both count here
    assert script_names(["Clara, tired, sits.", "Luca and Clara talk."]) == {"Clara", "Luca"}
    assert script_names(["Clara sits."]) == set()  # the documented miss: a name that only opens sentences


# ----------------------------------------------------------------------------- never reading the answer key
class AnnotationsGuard:
    """While ``active``, every way to open a file under benchmark_data/annotations (``open``, ``Path.open``,
    ``Path.read_text``; ``read_bytes`` goes through ``Path.open``) raises AssertionError."""

    def __init__(self) -> None:
        self.blocked = ANNOTATIONS_DIR.resolve()
        self.active = False
        self.hits: list[str] = []

    def check(self, path) -> None:
        if not self.active:
            return
        try:
            target = Path(path).resolve()
        except (TypeError, ValueError):
            return
        if target == self.blocked or self.blocked in target.parents:
            self.hits.append(str(target))
            raise AssertionError(f"read the evaluator's annotations: {target}")


@pytest.fixture()
def annotations_guard(monkeypatch) -> AnnotationsGuard:
    guard = AnnotationsGuard()
    real_open, real_path_open, real_read_text = builtins.open, Path.open, Path.read_text

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)):
            guard.check(file)
        return real_open(file, *args, **kwargs)

    def guarded_path_open(self, *args, **kwargs):
        guard.check(self)
        return real_path_open(self, *args, **kwargs)

    def guarded_read_text(self, *args, **kwargs):
        guard.check(self)
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(Path, "open", guarded_path_open)
    monkeypatch.setattr(Path, "read_text", guarded_read_text)
    return guard


def _guard_the_generator(monkeypatch, guard: AnnotationsGuard) -> None:
    """Activate the guard inside the streaming generator's own steps (construction, prepare, generate,
    identity), so the evaluator around it may read the annotations as it always does."""
    from narrastream.adapters.streaming_wan import StreamingWanGenerator

    for name in ("__init__", "prepare", "generate", "identity"):
        real = getattr(StreamingWanGenerator, name)

        def guarded(self, *args, _real=real, **kwargs):
            guard.active = True
            try:
                return _real(self, *args, **kwargs)
            finally:
                guard.active = False

        monkeypatch.setattr(StreamingWanGenerator, name, guarded)


def test_the_tiny_path_runs_end_to_end_without_the_annotations(annotations_guard, monkeypatch, tmp_path):
    """``model=iamflow preset=tiny data.limit=1`` through the app's own ``execute`` (generate, evaluate,
    leaderboard), offline, with the annotations files unreadable whenever the generator runs."""
    from narrastream.run import execute

    _guard_the_generator(monkeypatch, annotations_guard)
    run_dir = tmp_path / "run"
    cfg = compose_config(["model=iamflow", "preset=tiny", "data.limit=1", f"run.dir={run_dir}",
                          "video.segmentation=native", "protocol.run_metrics=[subject_consistency,boundary_smoothness]"])
    assert execute(cfg) == 0
    assert annotations_guard.hits == []
    sidecar = json.loads((run_dir / "videos" / "iamflow" / "0-s0.json").read_text())
    iam = sidecar["extra"]["iam"]
    assert iam["entities"] == "prompt_names"
    assert [e["name"] for e in iam["registry"]["entities"]] == ["Noah"]
    if "generator" in sidecar:  # the harness records the identity (issue 11 item 1)
        assert sidecar["generator"]["entities"] == "prompt_names" and sidecar["generator"]["oracle"] is False


def test_the_guard_catches_a_generator_that_reads_the_annotations(annotations_guard, monkeypatch, official_path,
                                                                   tmp_path):
    """The same guard, the same way, stops the oracle's run: it is a real probe, not a formality."""
    from narrastream.run import execute

    _guard_the_generator(monkeypatch, annotations_guard)
    cfg = compose_config(["model=iamflow_oracle", "preset=tiny", "data.limit=1", f"run.dir={tmp_path / 'run'}",
                          "protocol.run_metrics=[subject_consistency]"])
    with pytest.raises(AssertionError, match="read the evaluator's annotations"):
        execute(cfg)
    assert annotations_guard.hits


def test_identity_names_the_entity_source_and_the_weights(official_path, tmp_path):
    script = load_benchmark(official_path, ids=[0]).scripts[0]
    generator, _ = _generator("model=iamflow", "preset=tiny")
    assert generator.identity() == {"method": "iamflow", "size": "tiny", "fp8": True,
                                    "weights": {"dit": "random(seed=0)", "wan": "random(seed=0)"},
                                    "entities": "prompt_names", "verifier": None, "oracle": False}
    assert _generator("model=iamflow")[0]._entities_identity() == "llm:Qwen/Qwen3-4B-Instruct-2507"
    backbone, _ = _generator("model=iamflow_backbone", "preset=tiny")
    assert backbone.identity()["oracle"] is False and "entities" not in backbone.identity()

    oracle, _ = _generator("model=iamflow_oracle", "preset=tiny")
    oracle.prepare([script])
    ident = oracle.identity()
    shipped = oracle._oracle_annotations()
    assert ident["oracle"] is True
    assert ident["entities"] == f"oracle:{shipped.path.name}@sha256:{shipped.sha256}"
    out = tmp_path / "0-s0.mp4"
    video = oracle.generate(GenerationRequest(script=script, seed=0, output_path=out, fps=4, seconds_per_segment=2,
                                              width=64, height=48))
    assert video.extra["iam"]["entities"] == ident["entities"]
    names = {e["name"] for e in video.extra["iam"]["registry"]["entities"]}
    assert names == {"Noah"}  # the annotated character; the annotated objects ("table", "book") are left out


def test_full_size_identity_hashes_the_files_loaded(tmp_path):
    """``weights``: the sha256 of the DiT file and of the Wan folder's files, not their paths."""
    dit = tmp_path / "iamflow_fp8.safetensors"
    dit.write_bytes(b"not really a checkpoint")
    wan = tmp_path / "Wan2.1-T2V-1.3B-Diffusers"
    for part in ("vae/config.json", "text_encoder/model.safetensors", "tokenizer/tokenizer.json"):
        (wan / part).parent.mkdir(parents=True, exist_ok=True)
        (wan / part).write_text(part)
    generator, _ = _generator("model=iamflow", f"model.params.weights.dit.path={dit}",
                              f"model.params.weights.wan.path={wan}")
    weights = generator.identity()["weights"]
    assert weights["dit"] == "sha256:" + hashlib.sha256(b"not really a checkpoint").hexdigest()
    first = weights["wan"]
    assert first.startswith("sha256:")
    (wan / "vae" / "config.json").write_text("another VAE")
    again, _ = _generator("model=iamflow", f"model.params.weights.dit.path={dit}",
                          f"model.params.weights.wan.path={wan}")
    assert again.identity()["weights"]["wan"] != first  # a changed file is another identity


def test_the_oracle_config_runs_and_says_so(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "narrastream.run", "model=iamflow_oracle", "preset=tiny",
                           "data.limit=1", f"run.dir={run_dir}", "video.segmentation=native",
                           "protocol.run_metrics=[subject_consistency,boundary_smoothness]"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sidecar = json.loads((run_dir / "videos" / "iamflow+oracle-entities" / "0-s0.json").read_text())
    assert sidecar["model"] == "iamflow+oracle-entities"
    assert sidecar["extra"]["iam"]["entities"].startswith("oracle:narrastream-324.")
    if "generator" in sidecar:  # the harness records the identity (issue 11 item 1)
        assert sidecar["generator"]["oracle"] is True
    assert set(pd.read_csv(run_dir / "leaderboard.csv")["model"]) == {"iamflow+oracle-entities"}
