"""The local VLM judge and ``serve-judge``, on a tiny random-weight Qwen2-VL built here (no downloads).

The model answers noise, but deterministic noise: greedy decoding must give the same text in process,
twice, and over HTTP through the real ``openai`` client.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from narrastream.judges.base import ImagePart, Message
from narrastream.judges.tiny_vlm import SPECIAL_TOKENS, build_tiny_qwen2_vl

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory) -> Path:
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny-qwen2-vl"))


@pytest.fixture(scope="session")
def judge(tiny_vlm_dir):
    from narrastream.judges.local import LocalVLMJudge

    judge = LocalVLMJudge(str(tiny_vlm_dir), device="cpu", model="tiny-qwen2-vl", max_tokens=12)
    yield judge
    judge.close()


@pytest.fixture(scope="session")
def jpeg() -> bytes:
    from PIL import Image

    image = Image.new("RGB", (32, 32), (200, 30, 30))
    image.paste((20, 40, 220), (16, 0, 32, 32))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG")
    return buffer.getvalue()


def test_loads_and_answers_deterministically(judge, jpeg):
    messages = [Message.user("hi", ImagePart(jpeg))]
    first = judge.complete(messages)
    assert isinstance(first, str)
    assert judge.complete(messages) == first
    assert judge.identity() == {"backend": "local", "model": "tiny-qwen2-vl", "endpoint": "",
                                "device": "cpu", "dtype": "float32"}
    assert judge.stats.requests == 2


def test_text_only_and_multi_turn(judge, jpeg):
    answer = judge.complete([Message.system("be brief"), Message.user("describe the picture")], max_tokens=4)
    assert isinstance(answer, str)
    turns = [Message.user(ImagePart(jpeg), "hello"), Message.assistant("world"), Message.user("again")]
    assert judge.complete(turns) == judge.complete(turns)


def test_undecodable_image_is_a_value_error(judge):
    with pytest.raises(ValueError, match="not a decodable image"):
        judge.complete([Message.user("hi", ImagePart(b"not a jpeg"))])


def test_missing_folder_is_a_clear_error(tmp_path):
    from narrastream.judges.local import LocalVLMJudge

    missing = tmp_path / "no-such-model"
    with pytest.raises(ValueError, match="no such folder") as info:
        LocalVLMJudge(str(missing))
    assert str(missing) in str(info.value) and "config.json" in str(info.value)


def test_folder_without_checkpoint_is_a_clear_error(tmp_path):
    from narrastream.judges.local import LocalVLMJudge

    with pytest.raises(ValueError, match="no config.json") as info:
        LocalVLMJudge(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_hub_id_resolves_from_the_local_cache(tiny_vlm_dir, tmp_path, judge):
    """A hub id (no folder of that name) loads from the Hugging Face cache layout, offline."""
    revision = "0" * 40
    repo = tmp_path / "hub" / "models--tiny--qwen2-vl"
    shutil.copytree(tiny_vlm_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    script = ("from narrastream.judges.local import LocalVLMJudge\n"
              "from narrastream.judges.base import Message\n"
              "print(ascii(LocalVLMJudge('tiny/qwen2-vl', device='cpu').complete([Message.user('hello')], max_tokens=5)))")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    expected = judge.complete([Message.user("hello")], max_tokens=5)
    assert proc.stdout.decode().strip() == ascii(expected)


@pytest.fixture()
def server(judge):
    from narrastream.judges.serve import make_responder
    from narrastream.judges.server import ChatCompletionsServer

    with ChatCompletionsServer(make_responder(judge), model=judge.model, port=0) as server:
        yield server


def test_served_answer_equals_in_process_answer(judge, server, jpeg):
    openai = pytest.importorskip("openai")
    from narrastream.judges.wire import to_openai

    client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=60)
    content = [{"type": "text", "text": "hi"},
               {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()}}]
    reply = client.chat.completions.create(model="tiny-qwen2-vl", max_tokens=7,
                                           messages=[{"role": "user", "content": content}])
    assert reply.choices[0].message.content == judge.complete([Message.user("hi", ImagePart(jpeg))], max_tokens=7)

    messages = [Message.system("be brief"), Message.user("describe the picture")]
    reply = client.chat.completions.create(model="tiny-qwen2-vl", messages=to_openai(messages))
    assert reply.choices[0].message.content == judge.complete(messages)  # server default: judge.max_tokens
    assert [m.id for m in client.models.list()] == ["tiny-qwen2-vl"]


def test_malformed_request_is_400(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=60)
    content = [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}]
    with pytest.raises(openai.BadRequestError, match="data: URLs"):
        client.chat.completions.create(model="tiny-qwen2-vl", messages=[{"role": "user", "content": content}])
    bad_jpeg = "data:image/jpeg;base64," + base64.b64encode(b"garbage").decode()
    with pytest.raises(openai.BadRequestError, match="not a decodable image"):
        client.chat.completions.create(model="tiny-qwen2-vl", messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": bad_jpeg}}]}])
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model="tiny-qwen2-vl", max_tokens=-1, messages=[{"role": "user", "content": "hi"}])


def test_cli_serve_judge_missing_model_exits_2(tmp_path):
    missing = tmp_path / "missing-model"
    proc = subprocess.run([sys.executable, "-m", "narrastream.cli", "serve-judge", "--model", str(missing), "--port", "0"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert str(missing) in proc.stderr and "no such folder" in proc.stderr


def test_judge_local_preset_builds_one_in_process_judge(tiny_vlm_dir, jpeg, tmp_path):
    """``judge=local judge.model=DIR``: planner, MLLM and VLM are the same in-process model."""
    from narrastream.config import compose_config
    from narrastream.judges import JudgeAnswerError, build_judges
    from narrastream.protocol.questions import ask_vlm_score

    cfg = compose_config(["judge=local", f"judge.model={tiny_vlm_dir}", f"judge.cache_dir={tmp_path}",
                          "judge.max_tokens=8", "judge.reask=0"])["judge"]
    judges = build_judges(cfg)
    assert judges.planner is judges.vlm and judges.vlm.backend == "local"
    assert isinstance(judges.vlm.complete([Message.user("hi", ImagePart(jpeg))]), str)
    # a random model never answers valid JSON: the question fails as a recorded judge failure, not a crash
    with pytest.raises(JudgeAnswerError):
        ask_vlm_score(judges.vlm, ["a prompt"], [[ImagePart(jpeg)]])
    assert judges.stats()["failures"] == 1


# ----------------------------------------------------------------------------- text-only LLM (IAMFlow's extractor)
def _build_tiny_qwen3(directory: Path) -> Path:
    """A 1-layer random Qwen3 causal LM with the same kind of tokenizer and a chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIAL_TOKENS[:3], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(["user assistant system: Mira walks in a red coat", '{"entities": []}'], trainer)
    template = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
                "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        chat_template=template)
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory) -> Path:
    return _build_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3"))


def test_local_backend_picks_a_text_llm_by_its_config(tiny_llm_dir, tiny_vlm_dir, jpeg):
    from narrastream.judges import JudgeConfigError, build_judges
    from narrastream.judges.local import LocalLLMJudge, LocalVLMJudge

    llm = build_judges({"backend": "local", "model": str(tiny_llm_dir), "device": "cpu", "cache": False,
                        "max_tokens": 8}).planner
    assert isinstance(llm, LocalLLMJudge) and llm.vision is False
    question = [Message.system("List the people."), Message.user("Mira walks in a red coat")]
    first = llm.complete(question)
    assert isinstance(first, str) and llm.complete(question) == first  # greedy: the same answer twice
    with pytest.raises(JudgeConfigError, match="text-only"):
        llm.complete([Message.user(ImagePart(jpeg), "what is this?")])
    vlm = build_judges({"backend": "local", "model": str(tiny_vlm_dir), "device": "cpu", "cache": False}).vlm
    assert isinstance(vlm, LocalVLMJudge) and vlm.vision is True
    for judge in (llm, vlm):
        judge.close()


def test_a_text_llm_extracts_or_fails_honestly(tiny_llm_dir):
    """Random weights answer noise: the extraction is re-asked, then fails naming the prompt."""
    from narrastream.iamflow.entities import EntityExtractionError, extract_script_entities
    from narrastream.judges import build_judges

    llm = build_judges({"backend": "local", "model": str(tiny_llm_dir), "device": "cpu", "cache": False,
                        "max_tokens": 8, "reask": 1}).planner
    with pytest.raises(EntityExtractionError, match="prompt 1: entity extraction failed"):
        extract_script_entities(llm, ["Mira walks in a red coat", "Mira sits"])
    assert llm.stats.requests == 2 and llm.stats.reasks == 1
    llm.close()


def test_the_verifier_refuses_a_text_only_model(tiny_llm_dir):
    from narrastream.adapters.base import AdapterConfigError
    from narrastream.adapters.streaming_wan import StreamingWanGenerator
    from narrastream.config import compose_config

    params = compose_config(["model=iamflow", "preset=tiny", "model.params.iam.verifier.enabled=true",
                             "model.params.iam.verifier.judge.backend=local",
                             f"model.params.iam.verifier.judge.model={tiny_llm_dir}",
                             "+model.params.iam.verifier.judge.device=cpu"])["model"]["params"]
    generator = StreamingWanGenerator(**params)
    with pytest.raises(AdapterConfigError, match="text-only model cannot verify frames"):
        generator.prepare([])


# ----------------------------------------------------------------------------- IAMFlow's default LLM backend
def test_iamflow_default_llm_backend_loads_a_folder(tiny_llm_dir, official_path, tmp_path):
    """``model=iamflow``'s extractor is a transformers model in this process by default (no server): a folder
    loads at start; its random weights answer noise, so the script fails naming the prompt, nothing guessed."""
    from narrastream.adapters.base import GenerationError, GenerationRequest
    from narrastream.adapters.streaming_wan import StreamingWanGenerator
    from narrastream.config import compose_config
    from narrastream.data import load_benchmark
    from narrastream.judges.local import LocalLLMJudge

    params = compose_config(["model=iamflow", "preset=tiny", "model.params.iam.entities=llm",
                             f"model.params.iam.llm.model={tiny_llm_dir}", "model.params.iam.llm.device=cpu",
                             "model.params.iam.llm.max_tokens=8", "model.params.iam.llm.reask=0",
                             "model.params.iam.llm.cache=false"])["model"]["params"]
    assert params["iam"]["llm"]["backend"] == "local"  # the default, not overridden here
    generator = StreamingWanGenerator(**params)
    script = load_benchmark(official_path, ids=[0]).scripts[0]
    generator.prepare([script])
    llm = generator._iam_judges["llm"]
    assert isinstance(llm, LocalLLMJudge) and llm.device == "cpu"
    assert generator.identity()["entities"] == f"llm:{tiny_llm_dir}" and generator.identity()["oracle"] is False
    request = GenerationRequest(script=script, seed=0, output_path=tmp_path / "0-s0.mp4", fps=4,
                                seconds_per_segment=2, width=64, height=48)
    with pytest.raises(GenerationError, match="prompt 1: entity extraction failed"):
        generator.generate(request)
    assert llm.stats.requests >= 1 and not request.output_path.exists()
    generator.close()


@pytest.mark.parametrize("local_only, expected", [
    (None, "huggingface-cli download Qwen/Qwen3-4B-Instruct-2507"),   # the default: follows weights.allow_download
    ("false", "HF_HUB_OFFLINE is set"),                                # downloads allowed, but offline
])
def test_iamflow_hub_llm_missing_offline_exits_2_at_start(tmp_path, local_only, expected):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "narrastream.run", "model=iamflow", "preset=tiny", "data.limit=1",
            f"run.dir={run_dir}", "model.params.iam.entities=llm"]
    if local_only is not None:
        args.append(f"model.params.iam.llm.local_files_only={local_only}")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}  # an empty cache, no network
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "model.params.iam.llm.model=Qwen/Qwen3-4B-Instruct-2507: IAMFlow's llm cannot be loaded" in proc.stderr
    assert expected in proc.stderr and "model.params.iam.entities=prompt_names" in proc.stderr
    assert "Traceback" not in proc.stderr and not (run_dir / "videos").exists()
