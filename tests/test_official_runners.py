"""The five baselines' ``*_official`` runners through the real ``command`` adapter, with stand-in checkouts.

Each stand-in checkout has the authors' module layout (``pipeline``, ``utils.misc``, ``utils.lora_utils``,
``peft``...) and a fake pipeline whose loop makes the same kind of generator calls as the released one
(keyword arguments, ``current_start`` in tokens, context passes at ``context_noise``, a cross-attention
cache marked ``is_init``), with a generator whose output is the value of the prompt it was conditioned on
(``prompt k`` -> k, read from the cross-attention cache when it is initialised, so a runner that forgot to
invalidate it would keep the old prompt). The fake VAE paints each pixel frame with the gray level of its
latent frame's prompt, so the decoded mp4 shows which prompt produced which frame.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from narrastream.adapters.base import GenerationError, GenerationRequest
from narrastream.adapters.command import CommandGenerator
from narrastream.data.script import Script
from narrastream.video.decode import decode_video

RUNNERS = Path(__file__).resolve().parents[1] / "runners"
NAMES = ("longlive", "memflow", "self_forcing", "rolling_forcing", "deep_forcing")
PREFIX = {n: n.upper() for n in NAMES}


def _common():
    spec = importlib.util.spec_from_file_location("official_common", RUNNERS / "official_common.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["official_common"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


oc = _common()

# ------------------------------------------------------------------------------------------ stand-in checkouts

FAKEWAN = '''
import os
import torch


def prompt_value(prompt):
    return float(prompt.rsplit(" ", 1)[-1])


class FakeTextEncoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, text_prompts):
        print("fake text encoder: encoding", list(text_prompts), flush=True)
        values = torch.tensor([prompt_value(p) for p in text_prompts], dtype=self.w.dtype)
        return {"prompt_embeds": values.view(-1, 1, 1).expand(-1, 4, 8) * self.w}


class FakeModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(2, 2)


class FakeGenerator(torch.nn.Module):
    """x0 = the value of the prompt in the cross-attention cache (filled from conditional_dict when stale)."""

    def __init__(self):
        super().__init__()
        self.model = FakeModel()

    def forward(self, noisy_image_or_video, conditional_dict, timestep, kv_cache=None, crossattn_cache=None,
                current_start=0, **kwargs):
        if os.environ.get("FAKE_MODE") == "fail" and current_start > 0:
            raise RuntimeError("CUDA out of memory (pretend)")
        if not crossattn_cache[0]["is_init"]:
            for entry in crossattn_cache:
                entry["is_init"] = True
                entry["k"] = conditional_dict["prompt_embeds"]
        value = crossattn_cache[0]["k"].float().mean()
        x0 = torch.zeros_like(noisy_image_or_video) + value.to(noisy_image_or_video.dtype)
        return x0, x0


class FakeVAE(torch.nn.Module):
    """Pixel frame p comes from latent (p + 3) // 4; gray level 20 + 50 * prompt value."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def decode_to_pixel(self, latent, use_cache=False):
        values = latent.float().mean(dim=(2, 3, 4))
        index = [0] + [(p + 3) // 4 for p in range(1, 1 + 4 * (values.shape[1] - 1))]
        level = (values[:, index] * 50 + 20) / 255 * 2 - 1
        return level[:, :, None, None, None].expand(-1, -1, 3, 48, 64).to(latent.dtype)


class FakePipeline(torch.nn.Module):
    """What the three stand-in pipelines share: their parts, one block's 4 steps + context pass, the decode."""

    def __init__(self, args, device, generator=None, text_encoder=None, vae=None):
        super().__init__()
        self.args, self.frame_seq_length = args, 1560
        self.generator, self.text_encoder, self.vae = FakeGenerator(), FakeTextEncoder(), FakeVAE()
        self.num_frame_per_block = args.num_frame_per_block

    def begin(self, noise):
        print("fake pipeline: num_output_frames", self.args.num_output_frames, "seed", self.args.seed,
              "local_attn_size", self.args.model_kwargs.get("local_attn_size", -1),
              "switch_frame_indices", self.args.get("switch_frame_indices"),
              "noise checksum %.6f" % noise.float().abs().sum().item(), flush=True)
        self.crossattn_cache = [{"is_init": False, "k": None} for _ in range(2)]
        return torch.zeros_like(noise)

    def call(self, x, cond, timestep, start, **kwargs):
        return self.generator(noisy_image_or_video=x, conditional_dict=cond, timestep=timestep, kv_cache=None,
                              crossattn_cache=self.crossattn_cache, current_start=start * self.frame_seq_length,
                              **kwargs)[1]

    def block(self, noise, output, start, cond):
        block = self.num_frame_per_block
        x = noise[:, start:start + block]
        for t in self.args.denoising_step_list:
            x = self.call(x, cond, torch.full((1, block), float(t)), start)
        output[:, start:start + block] = x
        self.call(x, cond, torch.ones(1, block) * self.args.context_noise, start)

    def finish(self, output, return_latents):
        video = (self.vae.decode_to_pixel(output) * 0.5 + 0.5).clamp(0, 1)
        return (video, output) if return_latents else video
'''

FAKE_INTERACTIVE = '''
import torch
from fakewan import FakePipeline


class InteractiveCausalInferencePipeline(FakePipeline):
    def _recache_after_switch(self, output, current_start_frame, new_conditional_dict):
        for entry in self.crossattn_cache:
            entry["is_init"] = False
        start = max(0, current_start_frame - 12)
        self.call(output[:, start:current_start_frame], new_conditional_dict,
                  torch.zeros(1, current_start_frame - start), start, sink_recache_after_switch=False)
        for entry in self.crossattn_cache:
            entry["is_init"] = False

    def inference(self, noise, *, text_prompts_list, switch_frame_indices, return_latents=False, low_memory=False):
        assert len(switch_frame_indices) == len(text_prompts_list) - 1
        assert noise.shape[1] % self.num_frame_per_block == 0
        output = self.begin(noise)
        conds = [self.text_encoder(text_prompts=p) for p in text_prompts_list]
        segment, pending = 0, list(switch_frame_indices)
        for start in range(0, noise.shape[1], self.num_frame_per_block):
            if pending and start >= pending[0]:
                pending.pop(0)
                segment += 1
                self._recache_after_switch(output, start, conds[segment])
            self.block(noise, output, start, conds[segment])
        return self.finish(output, return_latents)
'''

FAKE_CAUSAL = '''
from fakewan import FakePipeline


class CausalInferencePipeline(FakePipeline):
    def inference(self, noise, text_prompts, initial_latent=None, return_latents=False, profile=False,
                  low_memory=False):
        assert self.args.independent_first_frame is False  # from their default_config.yaml, merged under
        output = self.begin(noise)
        cond = self.text_encoder(text_prompts=text_prompts)
        for start in range(0, noise.shape[1], self.num_frame_per_block):
            self.block(noise, output, start, cond)
        return self.finish(output, return_latents)
'''

FAKE_DEEP = FAKE_CAUSAL + '''

_build = CausalInferencePipeline.__init__


def _init(self, args, device, **kwargs):  # their wrapper reads these model_kwargs (inference.py sets the last 3)
    _build(self, args, device, **kwargs)
    kw = args.model_kwargs
    print("fake deep forcing: sink_size", kw.sink_size, "local_attn_size", kw.local_attn_size, "is_ds_only",
          kw.is_ds_only, "budget", kw.budget, "recent", kw.recent, flush=True)


CausalInferencePipeline.__init__ = _init
'''

FAKE_ROLLING = '''
import torch
from fakewan import FakePipeline


class CausalInferencePipeline(FakePipeline):
    def inference_rolling_forcing(self, noise, text_prompts, initial_latent=None, return_latents=False,
                                  profile=False):
        block, window = self.num_frame_per_block, len(self.args.denoising_step_list)
        blocks = noise.shape[1] // block
        output = self.begin(noise)
        cond = self.text_encoder(text_prompts=text_prompts)
        for w in range(blocks + window - 1):
            start, end = max(0, w - window + 1) * block, (min(blocks - 1, w) + 1) * block
            x0 = self.call(noise[:, start:end], cond, torch.full((1, end - start), 500.0), start)
            output[:, start:end] = x0
            self.call(x0[:, :block], cond, torch.zeros(1, block), start, updating_cache=True)
        return self.finish(output, return_latents)
'''

FAKE_UTILS = {
    "utils/__init__.py": "",
    "utils/misc.py": "import random\nimport numpy as np\nimport torch\n\n\ndef set_seed(seed, deterministic=False):\n"
                     "    random.seed(seed)\n    np.random.seed(seed)\n    torch.manual_seed(seed)\n",
    "utils/memory.py": "def get_cuda_free_memory_gb(device=None):\n    return 80.0\n\n\nclass DynamicSwapInstaller:\n"
                       "    @staticmethod\n    def install_model(model, **kwargs):\n        pass\n",
    "utils/lora_utils.py": "def configure_lora_for_model(model, model_name, lora_config, is_main_process=True):\n"
                           "    print('fake lora: rank', lora_config.rank, 'on', model_name, flush=True)\n"
                           "    return model\n",
    "utils/wan_wrapper.py": "# the stand-in keeps its classes in fakewan.py\n",
    "peft.py": "def set_peft_model_state_dict(model, state):\n"
               "    print('fake peft: loaded', sorted(state), flush=True)\n",
    "fakewan.py": FAKEWAN,
}

ARCH = ("denoising_step_list: [1000, 750, 500, 250]\nwarp_denoising_step: true\nnum_frame_per_block: 3\n"
        "model_name: Wan2.1-T2V-1.3B\n")
INTERACTIVE_CFG = (ARCH + "model_kwargs: {{local_attn_size: 12, timestep_shift: 5.0, sink_size: 3}}\n"
                   "num_output_frames: 240\nuse_ema: false\nseed: 1\nswitch_frame_indices: 40, 80, 120, 160, 200\n"
                   "global_sink: true\ncontext_noise: 0\ngenerator_ckpt: {ckpt}\nlora_ckpt: {lora}\n"
                   "adapter: {{type: lora, rank: 256, alpha: 256, dropout: 0.0, dtype: bfloat16}}\n")
DEFAULT_CFG = "independent_first_frame: false\ncontext_noise: 0\nnum_frame_per_block: 1\n"
SINGLE_CFG = ARCH + "generator_ckpt: checkpoints/ode_init.pt\nmodel_kwargs: {timestep_shift: 5.0}\n"

LAYOUT = {  # name -> (files, generator checkpoint, LoRA, EMA key)
    "longlive": ({"interactive_inference.py": "", "pipeline/__init__.py": "",
                  "pipeline/interactive_causal_inference.py": FAKE_INTERACTIVE,
                  "configs/longlive_interactive_inference.yaml": INTERACTIVE_CFG.format(
                      ckpt="longlive_models/models/longlive_base.pt", lora="longlive_models/models/lora.pt")},
                 "longlive_models/models/longlive_base.pt", "longlive_models/models/lora.pt", False),
    "memflow": ({"interactive_inference.py": "", "pipeline/__init__.py": "",
                 "pipeline/interactive_causal_inference.py": FAKE_INTERACTIVE,
                 "configs/interactive_inference.yaml": INTERACTIVE_CFG.format(
                     ckpt="checkpoints/base.pt", lora="checkpoints/lora.pt")},
                "checkpoints/base.pt", "checkpoints/lora.pt", False),
    "self_forcing": ({"inference.py": "",
                      "pipeline/__init__.py": "from .causal_inference import CausalInferencePipeline\n",
                      "pipeline/causal_inference.py": FAKE_CAUSAL, "demo_utils/__init__.py": "",
                      "demo_utils/memory.py": "from utils.memory import *  # noqa\n",
                      "configs/default_config.yaml": DEFAULT_CFG, "configs/self_forcing_dmd.yaml": SINGLE_CFG},
                     "checkpoints/self_forcing_dmd.pt", None, True),
    "rolling_forcing": ({"inference.py": "",
                         "pipeline/__init__.py": "from .rolling_forcing_inference import CausalInferencePipeline\n",
                         "pipeline/rolling_forcing_inference.py": FAKE_ROLLING,
                         "configs/default_config.yaml": DEFAULT_CFG,
                         "configs/rolling_forcing_dmd.yaml": SINGLE_CFG.replace(
                             "[1000, 750, 500, 250]", "[1000, 800, 600, 400, 200]")},
                        "checkpoints/rolling_forcing_dmd.pt", None, True),
    "deep_forcing": ({"inference.py": "",
                      "pipeline/__init__.py": "from .causal_inference import CausalInferencePipeline\n",
                      "pipeline/causal_inference.py": FAKE_DEEP, "demo_utils/__init__.py": "",
                      "demo_utils/memory.py": "from utils.memory import *  # noqa\n",
                      "wan/modules/causal_model.py": "", "wan/modules/causal_model_DS.py": "",
                      "configs/default_config.yaml": DEFAULT_CFG,
                      "configs/self_forcing_dmd/self_forcing_dmd_sink10.yaml": SINGLE_CFG.replace(
                          "{timestep_shift: 5.0}", "{timestep_shift: 5.0, local_attn_size: 21, sink_size: 10}"),
                      "configs/self_forcing_dmd/self_forcing_dmd_sink14.yaml": SINGLE_CFG.replace(
                          "{timestep_shift: 5.0}", "{timestep_shift: 5.0, local_attn_size: 21, sink_size: 14}")},
                     "checkpoints/self_forcing_dmd.pt", None, True),
}
WAN_FILES = ("config.json", "diffusion_pytorch_model.safetensors", "models_t5_umt5-xxl-enc-bf16.pth", "Wan2.1_VAE.pth")


def make_checkout(root: Path, name: str) -> Path:
    files, ckpt, lora, ema = LAYOUT[name]
    repo = root / f"{name}-checkout"
    for rel, text in {**FAKE_UTILS, **files}.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(textwrap.dedent(text))
    wan = repo / "wan_models" / "Wan2.1-T2V-1.3B"
    (wan / "google" / "umt5-xxl").mkdir(parents=True)
    for f in WAN_FILES:
        (wan / f).write_text("stand-in")
    state = {"model.proj.weight": torch.ones(2, 2), "model.proj.bias": torch.zeros(2)}
    if ema:  # released EMA weights carry FSDP wrapper prefixes, which the loader strips
        state = {"generator_ema": {f"_fsdp_wrapped_module.{k}": v for k, v in state.items()}}
    else:
        state = {"generator": state}
    (repo / ckpt).parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, repo / ckpt)
    if lora:
        torch.save({"generator_lora": {"lora_A": torch.zeros(1)}}, repo / lora)
    return repo


@pytest.fixture(scope="module")
def checkouts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkouts")
    return {name: make_checkout(root, name) for name in NAMES}


def _request(tmp_path: Path, n: int = 3, seconds: float = 1.25, seed: int = 2) -> GenerationRequest:
    script = Script(id=7, prompts=tuple(f"prompt {i}" for i in range(n)))
    return GenerationRequest(script=script, seed=seed, output_path=tmp_path / "videos" / f"7-s{seed}.mp4", fps=16,
                             seconds_per_segment=seconds, width=832, height=480)


def _gen(name: str, repo: Path | str, **env: str) -> CommandGenerator:
    p = PREFIX[name]
    full = {f"{p}_REPO": str(repo), f"{p}_DEVICE": "cpu", **{f"{p}_{k.upper()}": v for k, v in env.items()}}
    runner = RUNNERS / f"{name}_official" / "run.py"
    return CommandGenerator(command=[sys.executable, str(runner), "{request}"], env=full, timeout_s=240)


def _prompt_per_frame(path: Path) -> np.ndarray:
    frames, _ = decode_video(path)
    gray = frames.reshape(len(frames), -1).mean(axis=1)
    return np.rint((gray - 20) / 50).astype(int)  # the fake VAE paints 20 + 50 * prompt


def _log(video) -> str:
    return Path(video.extra["command"]["log"]).read_text()


# ------------------------------------------------------------------------------------------ arithmetic


def test_benchmark_geometry_switches_where_the_authors_loops_do():
    plan = oc.plan_switches(6, 10)
    assert plan.num_latent_frames == 240 and plan.requested == (40, 80, 120, 160, 200)
    assert plan.passed == plan.requested  # what LongLive's and MemFlow's configs give
    assert plan.starts == (42, 81, 120, 162, 201)  # their loops: first block start >= index
    assert plan.pixel_starts == [165, 321, 477, 645, 801]
    floor = oc.plan_switches(6, 10, align="floor")
    assert floor.passed == floor.starts == (39, 78, 120, 159, 198)  # narrastream's native plan
    assert floor.pixel_starts == [153, 309, 477, 633, 789]
    assert oc.latent_to_pixel(0) == 0 and oc.latent_to_pixel(240 - 1) + 3 == 956  # 957 frames, the last is 956


def test_plan_rejects_unusable_geometry():
    with pytest.raises(ValueError, match="whole"):
        oc.plan_switches(3, 1.03)
    with pytest.raises(ValueError, match="collapse"):
        oc.plan_switches(6, 0.25)  # one latent frame per segment: switches 3, 3, 3, 6, 6
    with pytest.raises(ValueError, match="fewer latent frames"):
        oc.plan_switches(1, 0.5)
    with pytest.raises(ValueError, match="alignment"):
        oc.plan_switches(2, 10, align="round")


def test_pure_starts_of_a_rolling_window():
    assert oc.pure_starts([42, 81], 3, 1, "oldest") == [42, 81]  # one block per call: the rule is moot
    assert oc.pure_starts([42, 81], 3, 5, "newest") == [42, 81]
    assert oc.pure_starts([42, 81], 3, 5, "oldest") == [54, 93]  # 4 more blocks of 3


def _call(router, start, frames, t=500.0, **kw):
    cache = [{"is_init": True}, {"is_init": True}]
    kwargs = router.route({"noisy_image_or_video": torch.zeros(1, frames, 1), "conditional_dict": "theirs",
                           "timestep": torch.full((1, frames), t), "current_start": start * 10,
                           "crossattn_cache": cache, **kw})
    return kwargs["conditional_dict"], cache[0]["is_init"]


def test_router_switches_on_denoising_calls_and_marks_the_cross_attention_stale():
    router = oc.PromptRouter(["c0", "c1", "c2"], [5, 10], 3, 10, 0.0, "newest")
    assert _call(router, 3, 3) == ("c0", True)
    assert _call(router, 6, 3) == ("c1", False)  # block 6..8 is the first starting at or after 5
    assert _call(router, 6, 3, t=0.0) == ("c1", True)  # its context pass keeps the prompt
    assert _call(router, 9, 3, t=0.0) == ("c1", True)  # a context pass never switches
    assert _call(router, 9, 6) == ("c2", False)  # a 2-block window: its newest block starts at 12
    assert router.events == [6, 12]
    with pytest.raises(RuntimeError, match="went back"):
        _call(router, 0, 3)
    oldest = oc.PromptRouter(["c0", "c1"], [6], 3, 10, 0.0, "oldest")
    assert _call(oldest, 3, 9)[0] == "c0" and _call(oldest, 6, 9)[0] == "c1" and oldest.events == [6]
    two = oc.PromptRouter(["c0", "c1", "c2"], [3, 4], 3, 10, 0.0, "newest")
    assert _call(two, 6, 3)[0] == "c2" and two.events == [6, 6]  # a call past two switches counts both


def test_request_errors_name_the_field(tmp_path):
    def bad(payload, field):
        path = tmp_path / "req.json"
        path.write_text(json.dumps(payload))
        with pytest.raises(oc.RunnerError, match=field) as info:
            oc.read_request(path)
        assert info.value.code == 2 and str(path) in str(info.value)

    ok = {"prompts": ["a"], "seed": 1, "output_path": "x.mp4"}
    bad({**ok, "prompts": []}, "'prompts'")
    bad({**ok, "seed": "1"}, "'seed'")
    bad({**ok, "seconds_per_segment": 0}, "'seconds_per_segment'")
    bad({k: v for k, v in ok.items() if k != "output_path"}, "'output_path'")
    (tmp_path / "req.json").write_text("{oops")
    with pytest.raises(oc.RunnerError, match="not valid JSON"):
        oc.read_request(tmp_path / "req.json")
    req = tmp_path / "good.json"
    req.write_text(json.dumps({**ok, "fps": 8, "width": 64, "height": 48}))
    assert len(oc.read_request(req).warnings) == 2  # fps and size differ from what their code writes


def test_runners_never_import_narrastream():
    for path in [RUNNERS / "official_common.py", *(RUNNERS / f"{n}_official" / "run.py" for n in NAMES)]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "narrastream" for n in names), path


# ------------------------------------------------------------------------------------------ end to end

EXPECTED_FRAMES = 1 + 4 * (15 - 1)  # 3 x 1.25 s at 16 fps: 60 px -> 15 latent frames -> 57 frames


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_through_the_command_adapter(tmp_path, checkouts, name):
    video = _gen(name, checkouts[name]).generate(_request(tmp_path))
    # requested latent switches 5, 10 -> first blocks at or after them: 6, 12 -> pixels 21, 45
    assert video.switch_frames == [21, 45]
    assert (video.num_frames, video.width, video.height) == (EXPECTED_FRAMES, 64, 48) and video.fps == 16
    if name != "rolling_forcing":  # (its windows' last writes are checked in test_rolling_forcing_window_rules)
        prompt = _prompt_per_frame(video.path)
        assert list(prompt[:21]) == [0] * 21 and prompt[21] == 1 and prompt[44] == 1 and prompt[45] == 2
    facts = video.extra["official"]
    assert facts["runner"] == f"{name}-official" and facts["num_latent_frames"] == 15
    assert facts["latent_switch_requested"] == [5, 10] and facts["latent_switch_starts"] == [6, 12]
    assert facts["checkpoint_load"]["missing"] == 0 and facts["checkpoint_load"]["unexpected"] == 0
    assert facts["commit"] is None and len(facts["pinned_commit"]) == 40
    assert video.device == "cpu" and video.device_count == 0 and video.peak_memory_bytes > 0
    for key in ("end_to_end", "model_load", "text_encode", "loop", "core_dit", "method_overhead",
                "output_decode", "pixel_fps", "process_wall"):
        assert video.timings[key] >= 0, key
    assert video.timings["core_dit"] > 0 and video.timings["output_decode"] > 0
    log = _log(video)
    assert "num_output_frames 15 seed 2" in log
    encoded = [line for line in log.splitlines() if line.startswith("fake text encoder: encoding")]
    assert len(encoded) == 3  # each prompt once: their own call for prompt 1 is served from the cache
    if name in ("longlive", "memflow"):
        assert "switch_frame_indices 5, 10" in log and video.timings["switch"] > 0
        assert "fake lora: rank 256 on generator" in log and "fake peft: loaded ['lora_A']" in log
        assert facts["use_ema"] is False and facts["checkpoint_load"]["key"] == "generator"
    else:
        assert facts["use_ema"] is True and facts["checkpoint_load"]["key"] == "generator_ema"
        assert facts["routing_events"] == [6, 12] and video.timings["switch"] == 0
    if name == "self_forcing":
        assert "local_attn_size 12" in log and facts["overrides"] == ["model_kwargs.local_attn_size=12"]
    if name == "deep_forcing":  # DS_PC_inference.sh: the sink10 config and inference.py's flag defaults
        assert "sink_size 10 local_attn_size 21 is_ds_only False budget 16 recent 4" in log
        assert facts["overrides"] == ["model_kwargs.is_ds_only=false", "model_kwargs.budget=16",
                                      "model_kwargs.recent=4"]
        assert facts["config"].endswith("configs/self_forcing_dmd/self_forcing_dmd_sink10.yaml")
        assert facts["pinned_commit"].startswith("ea9961a")
    if name == "rolling_forcing":
        assert facts["window_blocks"] == 5 and facts["mixed_latent_ranges"] == [[0, 6], [0, 12]]


def test_floor_alignment_and_seeded_noise(tmp_path, checkouts):
    first = _gen("longlive", checkouts["longlive"]).generate(_request(tmp_path / "a"))
    floor = _gen("longlive", checkouts["longlive"], switch_align="floor").generate(_request(tmp_path / "b"))
    assert floor.switch_frames == [9, 33] and floor.extra["official"]["latent_switch_passed"] == [3, 9]
    prompt = _prompt_per_frame(floor.path)
    assert prompt[8] == 0 and prompt[9] == 1 and prompt[32] == 1 and prompt[33] == 2

    def checksum(video):
        return next(line for line in _log(video).splitlines() if "noise checksum" in line).rsplit(" ", 1)[-1]

    assert checksum(first) == checksum(floor)  # same seed, same noise: set_seed precedes the draw
    other = _gen("longlive", checkouts["longlive"]).generate(_request(tmp_path / "c", seed=3))
    assert checksum(other) != checksum(first)


def test_rolling_forcing_window_rules(tmp_path, checkouts):
    # 3 x 5 s: 20 latent frames a segment; switches asked at 20, 40 -> blocks 21, 42 (60 latent frames)
    newest = _gen("rolling_forcing", checkouts["rolling_forcing"]).generate(_request(tmp_path / "n", seconds=5))
    assert newest.switch_frames == [81, 165]
    oldest = _gen("rolling_forcing", checkouts["rolling_forcing"], window_prompt="oldest").generate(
        _request(tmp_path / "o", seconds=5))
    assert oldest.extra["official"]["routing_events"] == [21, 42]
    assert oldest.switch_frames == [4 * 33 - 3, 4 * 54 - 3]  # 4 blocks of 3 later
    assert oldest.extra["official"]["mixed_latent_ranges"] == [[21, 33], [42, 54]]
    # the fake's output is the prompt of the last window writing a block: its own under "oldest"
    prompt = _prompt_per_frame(oldest.path)
    assert prompt[4 * 21 - 4] == 0 and prompt[4 * 21 - 3] == 1


def test_missing_checkout_is_a_clear_setup_error(tmp_path, checkouts):
    with pytest.raises(GenerationError, match="exited with code 2") as info:
        _gen("longlive", "").generate(_request(tmp_path))
    assert "no checkout given" in str(info.value) and "LONGLIVE_REPO" in str(info.value)
    with pytest.raises(GenerationError, match="exited with code 2") as info:
        _gen("memflow", tmp_path / "nowhere").generate(_request(tmp_path))
    assert "is not a KlingTeam/MemFlow checkout" in str(info.value) and "interactive_inference.py" in str(info.value)


def test_deep_forcing_needs_its_release(tmp_path, checkouts):
    page = tmp_path / "DeepForcing"  # what the authors' repository held before ea9961a: a project page
    page.mkdir()
    (page / "README.md").write_text("Coming Soon!")
    with pytest.raises(GenerationError, match="exited with code 2") as info:
        _gen("deep_forcing", page).generate(_request(tmp_path))
    assert "is not a cvlab-kaist/DeepForcing checkout" in str(info.value) and "ea9961a" in str(info.value)
    # a plain Self-Forcing checkout has the same layout but not their cache: refused, not run as Deep Forcing
    with pytest.raises(GenerationError, match="exited with code 2") as info:
        _gen("deep_forcing", checkouts["self_forcing"]).generate(_request(tmp_path))
    assert "wan/modules/causal_model_DS.py" in str(info.value)
    with pytest.raises(GenerationError, match="exited with code 2") as info:
        _gen("deep_forcing", checkouts["deep_forcing"], config="configs/nope.yaml").generate(_request(tmp_path))
    assert "config" in str(info.value) and "nope.yaml" in str(info.value)


def test_deep_forcing_deep_sink_only(tmp_path, checkouts):
    """DS_inference.sh: the sink14 config with --is_ds_only 1, through the config and --set."""
    video = _gen("deep_forcing", checkouts["deep_forcing"],
                 config="configs/self_forcing_dmd/self_forcing_dmd_sink14.yaml",
                 set="model_kwargs.is_ds_only=true").generate(_request(tmp_path))
    assert "sink_size 14 local_attn_size 21 is_ds_only True budget 16 recent 4" in _log(video)
    assert video.extra["official"]["overrides"][-1] == "model_kwargs.is_ds_only=true"
    assert video.switch_frames == [21, 45]


def test_missing_weights_are_listed_with_their_hub_ids(tmp_path):
    repo = make_checkout(tmp_path, "longlive")
    (repo / "longlive_models" / "models" / "lora.pt").unlink()
    (repo / "wan_models" / "Wan2.1-T2V-1.3B" / "Wan2.1_VAE.pth").unlink()
    with pytest.raises(GenerationError, match="exited with code 2") as info:
        _gen("longlive", repo).generate(_request(tmp_path))
    message = str(info.value)
    assert "2 weight file(s) missing" in message
    assert "lora.pt  <- huggingface.co/Efficient-Large-Model/LongLive-1.3B (models/lora.pt)" in message
    assert "Wan2.1_VAE.pth  <- huggingface.co/Wan-AI/Wan2.1-T2V-1.3B (Wan2.1_VAE.pth)" in message
    assert not (tmp_path / "videos" / "7-s2.mp4").exists()


def test_failures_of_their_code(tmp_path, checkouts):
    gen = _gen("self_forcing", checkouts["self_forcing"])
    gen.env["FAKE_MODE"] = "fail"
    with pytest.raises(GenerationError, match="exited with code 3") as info:
        gen.generate(_request(tmp_path))
    assert "CUDA out of memory (pretend)" in str(info.value) and "the authors' code failed" in str(info.value)
    broken = make_checkout(tmp_path, "memflow")
    (broken / "pipeline" / "interactive_causal_inference.py").write_text("import flash_attn_is_not_here\n")
    with pytest.raises(GenerationError, match="exited with code 2") as info:
        _gen("memflow", broken).generate(_request(tmp_path))
    assert "could not import" in str(info.value) and "MEMFLOW_PYTHON" in str(info.value)


@pytest.mark.parametrize("name", NAMES)
def test_model_config_composes_and_builds_the_command_adapter(monkeypatch, name):
    from narrastream.adapters import build_generator
    from narrastream.config import compose_config

    prefix = PREFIX[name]
    monkeypatch.delenv(f"{prefix}_REPO", raising=False)
    monkeypatch.setenv(f"{prefix}_PYTHON", "/envs/theirs/bin/python")
    model = compose_config([f"model={name}-official"])["model"]
    assert model["name"] == f"{name}-official" and model["adapter"] == "command"
    assert model["params"]["env"][f"{prefix}_REPO"] == "" and model["params"]["switching"] == "native"
    gen = build_generator(model["adapter"], **model["params"])
    assert isinstance(gen, CommandGenerator)
    assert gen.argv == ["/envs/theirs/bin/python", f"runners/{name}_official/run.py", "{request}"]
