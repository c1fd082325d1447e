"""The identities behind configuration ids: file hashes cached on disk, backbone weights without building
them, the judge as its endpoint reports it (the stand-in marks itself), generator identities."""

from __future__ import annotations

import json
import os
import socket

import openai
import pytest

from narrastream import hashing
from narrastream.adapters.synthetic import SyntheticGenerator
from narrastream.judges import build_judges
from narrastream.judges.base import Message
from narrastream.judges.identity import STAND_IN_MODEL, endpoint_host, forget_probes, judge_config_identity
from narrastream.judges.server import ChatCompletionsServer
from narrastream.judges.testing import protocol_responder, stand_in_server
from narrastream.metrics.backbones import BackboneProvider, WeightsNotFoundError
from narrastream.results.configuration import config_id, oracle_reasons, smoke_reasons


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------------- file hashes
def test_file_hashes_persist_across_processes(tmp_path):
    path = tmp_path / "ckpt.bin"
    path.write_bytes(b"a" * 1000)
    files = hashing.stats.files
    first = hashing.sha256_file(path)
    assert hashing.stats.files == files + 1
    hashing.clear_memory_cache()  # what a new process starts with
    hits = hashing.stats.disk_hits
    assert hashing.sha256_file(path) == first
    assert hashing.stats.files == files + 1 and hashing.stats.disk_hits == hits + 1  # not read again
    replacement = tmp_path / "new.bin"
    replacement.write_bytes(b"b" * 1000)
    os.replace(replacement, path)  # same path and size, another file
    assert hashing.sha256_file(path) != first and hashing.stats.files == files + 2


def test_directory_digest_does_not_depend_on_where_it_lies(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "w.bin").write_bytes(b"weights")
        (tmp_path / name / "vocab.json").write_text("{}")
    digests = [hashing.sha256_files(sorted((tmp_path / n).iterdir()), root=tmp_path / n) for n in ("a", "b")]
    assert digests[0] == digests[1]
    (tmp_path / "b" / "vocab.json").write_text('{"x": 1}')
    assert hashing.sha256_files(sorted((tmp_path / "b").iterdir()), root=tmp_path / "b") != digests[0]


# ----------------------------------------------------------------------------------------- backbones
def test_weights_identity_hashes_without_building(tmp_path, monkeypatch):
    monkeypatch.delenv("NARRASTREAM_WEIGHTS", raising=False)
    (tmp_path / "amt-s.pth").write_bytes(b"not even a checkpoint")  # never loaded: only hashed
    provider = BackboneProvider({"source": "files", "dir": str(tmp_path), "device": "cpu"})
    assert provider.weights_identity("amt_s") == "sha256:" + hashing.sha256_file(tmp_path / "amt-s.pth")
    assert provider._embedders == {}
    random = BackboneProvider({"source": "random", "size": "tiny", "seed": 3})
    assert random.weights_identity("dino_vitb16") == "random(seed=3,size=tiny)"
    with pytest.raises(WeightsNotFoundError, match="ViT-B-32.pt"):
        provider.weights_identity("clip_vitb32")


def test_languagebind_directory_identity_covers_weights_config_and_tokenizer(tmp_path, monkeypatch):
    monkeypatch.delenv("NARRASTREAM_WEIGHTS", raising=False)
    folder = tmp_path / "LanguageBind_Video_FT"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"weights")
    (folder / "vocab.json").write_text("{}")

    def identity() -> str:
        hashing.clear_memory_cache()
        return BackboneProvider({"source": "files", "dir": str(tmp_path)}).weights_identity("languagebind_video")

    first = identity()
    assert first.startswith("sha256:")
    (folder / "vocab.json").write_text('{"a": 0}')
    assert identity() != first
    moved = tmp_path / "elsewhere" / "LanguageBind_Video_FT"
    moved.parent.mkdir()
    folder.rename(moved)
    (moved / "vocab.json").write_text("{}")
    elsewhere = BackboneProvider({"source": "files", "dir": str(moved.parent)})
    assert elsewhere.weights_identity("languagebind_video") == first
    with pytest.raises(WeightsNotFoundError, match="LanguageBind_Video_FT"):  # a directory's own message
        BackboneProvider({"source": "files", "dir": str(tmp_path / "none")}).weights_identity("languagebind_video")


# ----------------------------------------------------------------------------------------- judge
def test_endpoint_host_never_carries_credentials_or_port():
    assert endpoint_host("https://user:sk-secret@api.example.com:8443/v1") == "api.example.com"
    assert endpoint_host("http://127.0.0.1:8000/v1") == "127.0.0.1" and endpoint_host(None) is None


def test_stand_in_server_never_answers_under_the_requested_name():
    with stand_in_server() as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0)
        response = client.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "hi"}])
        listed = client.models.list().data
        client.close()
    assert response.model == STAND_IN_MODEL and response.system_fingerprint == STAND_IN_MODEL
    assert [m.id for m in listed] == [STAND_IN_MODEL] and listed[0].model_dump()["narrastream_stand_in"] is True


def test_judge_identity_is_what_the_endpoint_reports():
    cfg = {"backend": "openai", "model": "Qwen/Qwen3-VL-30B-A3B-Instruct", "cache": False}
    with stand_in_server() as server:
        judges = build_judges({**cfg, "base_url": server.base_url})
        ident = judges.config_identity()["vlm"]
        from_config = judge_config_identity({**cfg, "base_url": server.base_url})["vlm"]
    assert ident == from_config
    assert ident["model"] == STAND_IN_MODEL and ident["stand_in"] is True and ident["host"] == "127.0.0.1"
    assert ident["requested_model"] == "Qwen/Qwen3-VL-30B-A3B-Instruct" and judges.stand_in
    with ChatCompletionsServer(protocol_responder, model="Qwen/Qwen2.5-VL-7B-Instruct") as server:
        ident = judge_config_identity({**cfg, "base_url": server.base_url})["vlm"]
    assert ident["model"] == "Qwen/Qwen2.5-VL-7B-Instruct" and ident["stand_in"] is False  # served, not asked for
    with ChatCompletionsServer(protocol_responder, model=cfg["model"]) as server:
        ident = judge_config_identity({**cfg, "base_url": server.base_url})["vlm"]
    assert ident["model"] == cfg["model"] and ident["stand_in"] is False
    local = judge_config_identity({"backend": "local", "model": "/models/qwen"})["planner"]
    assert local == {"backend": "local", "model": "/models/qwen", "requested_model": "/models/qwen", "host": None,
                     "stand_in": False}
    assert judge_config_identity({"backend": "none"}) is None


def test_a_stand_in_started_after_the_probe_is_caught_in_its_answers():
    forget_probes()
    port = free_port()  # nothing listens when the judge is built
    judges = build_judges({"backend": "openai", "model": "Qwen/X", "base_url": f"http://127.0.0.1:{port}/v1",
                           "cache": False, "max_retries": 0})
    assert not judges.stand_in and judges.config_identity()["vlm"]["model"] == "Qwen/X"
    with stand_in_server(port=port):
        judges.vlm.complete([Message.user("hello")])
    assert judges.stand_in and judges.config_identity()["vlm"]["model"] == STAND_IN_MODEL


def test_answers_of_a_stand_in_are_cached_apart_from_the_real_model():
    """Same URL, same requested name: the stand-in's answers must not be served to the real model later."""
    from pydantic import BaseModel

    class Answer(BaseModel):
        x: int

    port = free_port()
    keys = []
    for make in (lambda: ChatCompletionsServer(protocol_responder, model="Qwen/X", port=port),
                 lambda: stand_in_server(port=port)):
        forget_probes()
        with make() as server:
            judges = build_judges({"backend": "openai", "model": "Qwen/X", "base_url": server.base_url, "cache": False})
            keys.append(judges.vlm.cache_key([Message.user("q")], Answer, "t/v1"))
    assert keys[0] != keys[1]


# ----------------------------------------------------------------------------------------- generator
def test_synthetic_identity_names_its_faults():
    plain, faulty = SyntheticGenerator(), SyntheticGenerator(faults=[{"kind": "frozen", "segment": 2}])
    assert plain.identity() == SyntheticGenerator().identity()
    assert plain.identity() != faulty.identity() and faulty.identity()["faults"][0]["kind"] == "frozen"
    json.dumps(faulty.identity())  # goes into sidecars and records


# ----------------------------------------------------------------------------------------- labels
def test_smoke_and_oracle_reasons():
    assert smoke_reasons({"backbones": {"a": "sha256:00", "b": "random(seed=0,size=full)"}}) == ["random weights"]
    assert smoke_reasons({"judge": {"vlm": {"stand_in": True}, "planner": {"stand_in": False}}}) == ["stand-in judge"]
    assert smoke_reasons({"backbones": {"a": "sha256:00"}, "judge": None}) == [] and smoke_reasons(None) == []
    assert oracle_reasons({"generator": {"oracle": True}}) == ["generator read the evaluation annotations"]
    assert oracle_reasons({"generator": {"adapter": "synthetic"}}) == []
    assert config_id({"a": 1, "b": 2}) == config_id({"b": 2, "a": 1}) != config_id({"a": 1, "b": 3})


def test_resolved_precision_separates_configurations_and_cache_keys(tmp_path):
    """fp16 and fp32 backbones give different scores: never one configuration, never a shared cache key
    (``auto`` is fp16 CLIP on CUDA, fp32 on the CPU: what counts is the precision actually run)."""
    from narrastream.harness.session import Session

    def session(precision: str) -> Session:
        return Session.from_overrides(["preset=tiny", "data.limit=1", f"run.dir={tmp_path / precision}",
                                       "protocol.run_metrics=[background_consistency]",
                                       f"backbones.precision={precision}"])

    auto, half = session("auto"), session("fp16")
    assert auto.backbones.precision_of("clip_vitb32") == "fp32"  # no CUDA here
    assert auto.run_configuration()["precision"] == {"clip_vitb32": "fp32"}
    assert half.run_configuration()["precision"] == {"clip_vitb32": "fp16"}
    assert config_id(auto.run_configuration()) != config_id(half.run_configuration())
    script = auto.benchmark.scripts[0]
    metric = auto.metrics()["background_consistency"]
    assert auto.cache_key(metric, None, script) != half.cache_key(metric, None, script)


def test_manifest_judge_endpoint_never_carries_credentials(tmp_path):
    """A key written into judge.base_url must not reach manifest.json (the identity shows the endpoint only)."""
    from narrastream.harness.session import Session

    session = Session.from_overrides(["preset=tiny", "data.limit=1", f"run.dir={tmp_path / 'run'}", "judge=vllm",
                                      "judge.base_url='http://user:sk-SECRET-1@127.0.0.1:9/v1?key=sk-SECRET-2'"])
    session.write_run_files()
    manifest = (tmp_path / "run" / "manifest.json").read_text()
    assert "sk-SECRET" not in manifest and "http://127.0.0.1:9/v1" in manifest
