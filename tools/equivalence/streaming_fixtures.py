"""The streaming methods' fixtures: the authors' causal Wan DiT, KV caches, switches and memory bank.

Imported by ``make_fixtures.py`` (subcommands ``wan_forward``, ``self_forcing``, ``longlive`` [``--layout
lora``], ``memflow`` [``--layout sma``], ``iamflow`` [``--layout hard`` / ``bank``], ``deep_forcing``
[``--layout ds``], ``rolling_forcing``). Each maker imports the
authors' modules from a checkout, builds their ``CausalWanModel`` with the small configuration of
:data:`streaming_inputs.TINY_WAN` and seeded weights (in their key layout), and runs seeded inputs through
THEIR inference code: their model forward with their KV-cache dictionaries (``wan_forward``, ``iamflow
--layout bank``), their pipeline's unmodified block loop (``self_forcing``: ``CausalInferencePipeline``;
``longlive``, ``memflow``, ``iamflow``: ``InteractiveCausalInferencePipeline`` with its switches,
``_recache_after_switch``, memory bank or soft prompt transition; ``deep_forcing``: Self-Forcing's loop in
Deep Forcing's release with its deep-sink model; ``rolling_forcing``: ``inference_rolling_forcing``). Outputs: the latents of every block, and
the self-attention KV cache at chosen points (after each re-cache, at the end).

Shims (all here; none changes what is computed, each is named in the fixture's ``shims`` field):

* ``sdpa``: their attention goes through flash-attn (CUDA only; it casts float32 inputs to bf16) or,
  without it, through an SDPA fallback that casts to bf16 too. On the CPU both are replaced by
  ``scaled_dot_product_attention`` in the inputs' dtype: the same softmax(q k^T / sqrt(d)) v, in float32.
  No padding masks are involved (their calls pass no lengths; the shim refuses any).
* ``no_package_init``: ``wan``, ``wan.modules`` and ``pipeline`` are registered as empty packages so that
  their ``__init__`` (which imports the 14B pipelines, training code, ...) is not run.
* ``cuda_device``: their ``utils/memory.py`` and ``wan/modules/t5.py`` call ``torch.cuda.current_device()``
  at import; it is answered with 0 during the imports (the devices they build are only used in low-memory
  mode and by the umT5 encoder, which is not run).
* ``from_pretrained``: ``CausalWanModel.from_pretrained(wan_models/...)`` builds the model with the small
  configuration (their constructor, with the keyword arguments their wrapper passes) and loads the seeded
  state dict, instead of reading the 1.3B folder.
* ``model_constants``: their pipelines hard-code the 1.3B model's 30 blocks, 1560 tokens per frame, 12
  heads of 128 in ``num_transformer_blocks``, ``frame_seq_length`` and the cache initialisers; the tool sets
  the two attributes and re-shapes the zero caches their initialisers allocate.
* ``tokens_per_frame`` (MemFlow, IAMFlow, Deep Forcing, Rolling Forcing): their ``causal_model.py`` (Deep
  Forcing: also ``causal_model_DS.py``) writes 1560 (tokens per frame) as a literal in the memory-bank
  bookkeeping, the SMA chunk size, the attention budget (``max_attention_size``), Deep Forcing's first sink
  shift (``21 - capacity // 1560``) and Rolling Forcing's ``frame_length``; the tool loads those files with the
  literal replaced by the small frame's token count (the count of replacements is recorded). Deep Forcing's
  wrapper passes ``PC_capacity=1560*budget`` and ``PC_window=1560*recent``: the ``from_pretrained`` shim
  rescales them to the same frame counts of small frames. Rolling Forcing's pipeline allocates its buffer as
  ``1560 * 24`` tokens: it is re-shaped to 24 small frames (``model_constants``).
* ``seeded_noise``: ``torch.randn_like`` (their re-noising between denoising steps) returns the seeded draws
  of :class:`streaming_inputs.NoiseSequence`; the starting noise is passed in as their loops expect.
* ``text_encoder`` / ``vae``: stand-ins that return the seeded text features and skip the decode (the
  latents are what is compared).
* ``prompt_router`` (Self-Forcing, Deep Forcing, Rolling Forcing, which have no multi-prompt loop):
  runners/official_common.py's ``PromptRouter``, as their ``-official`` runners drive their loops (a hard
  switch; Rolling Forcing's window takes its newest block's prompt).
* ``seeded_noise`` in Rolling Forcing's loop: their re-noising draws ``randn_like`` of the whole window and
  keeps one block's slice; the slice holds that block's seeded draw, the rest of the window zeros
  (:func:`rolling_randn_like`).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import sys
import types
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
import seeded  # noqa: E402
import streaming_inputs as si  # noqa: E402

SELF_FORCING = ("guandeh17/Self-Forcing", "33593df3e81fa3ec10239271dd2c100facac6de1")
LONGLIVE = ("NVlabs/LongLive", "e52d9ef6865d843282a6b5e9d46d03b35f88929d")
MEMFLOW = ("KlingTeam/MemFlow", "7ed514771f5add2af7cc60889e8310ce2b70ab1e")
IAMFLOW = ("Eddie0521/IAMFlow", "7dda1d3e02e061ad7440f18bd264dffa2dfc5bfa")
#: the authors' release commit; github.com/cvlab-kaist/DeepForcing (docs/equivalence.md says where it was read)
DEEP_FORCING = ("cvlab-kaist/DeepForcing", "ea9961aa4bd5b554daeecdcf59e37c495fba9df6")
ROLLING_FORCING = ("TencentARC/RollingForcing", "a1477d09e85dc759a6a6728f55f77f59342ce388")

#: network -> layout -> (fixture name, repository, pinned commit, path of the code run)
STREAM_PINS: dict[str, dict[str, tuple[str, str, str, str]]] = {
    "wan_forward": {"upstream": ("wan_forward", *SELF_FORCING, "wan/modules/causal_model.py")},
    "self_forcing": {"upstream": ("self_forcing", *SELF_FORCING, "pipeline/causal_inference.py")},
    "longlive": {"upstream": ("longlive", *LONGLIVE, "pipeline/interactive_causal_inference.py"),
                 "lora": ("longlive_lora", *LONGLIVE, "utils/lora_utils.py")},
    "memflow": {"upstream": ("memflow", *MEMFLOW, "pipeline/interactive_causal_inference.py"),
                "sma": ("memflow_sma", *MEMFLOW, "wan/modules/causal_model.py")},
    "deep_forcing": {"upstream": ("deep_forcing", *DEEP_FORCING, "wan/modules/causal_model.py"),
                     "ds": ("deep_forcing_ds", *DEEP_FORCING, "wan/modules/causal_model_DS.py")},
    "rolling_forcing": {"upstream": ("rolling_forcing", *ROLLING_FORCING, "pipeline/rolling_forcing_inference.py")},
    "iamflow": {"upstream": ("iamflow_spt", *IAMFLOW, "iamflow/pipelines/interactive_causal_inference.py"),
                "hard": ("iamflow_hard", *IAMFLOW, "iamflow/pipelines/interactive_causal_inference.py"),
                "bank": ("iamflow_bank", *IAMFLOW, "iamflow/vendor/wan/modules/causal_model.py")},
}


# ------------------------------------------------------------------------------------- their modules
def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """Their ``attention`` / ``flash_attention`` ([B, L, H, D] in and out) as float SDPA (see ``sdpa``)."""
    lengths = [kwargs.get(name) for name in ("q_lens", "k_lens")] + list(args[:2])
    if any(x is not None for x in lengths) or kwargs.get("causal") or kwargs.get("window_size", (-1, -1)) != (-1, -1):
        raise RuntimeError("the attention shim only covers unmasked attention; their call passed lengths or a window")
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2).to(q.dtype), v.transpose(1, 2).to(q.dtype))
    return out.transpose(1, 2).contiguous()


def _package(name: str, path: Path) -> None:
    module = types.ModuleType(name)
    module.__path__ = [str(path)]
    sys.modules[name] = module


@contextlib.contextmanager
def _cuda_device_shim():
    original = torch.cuda.current_device
    torch.cuda.current_device = lambda: 0  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.cuda.current_device = original  # type: ignore[assignment]


#: where each repository keeps Wan, its pipelines and utilities (IAMFlow vendors them in its package)
LAYOUTS: dict[str, dict[str, Any]] = {
    "plain": {"wan": "wan", "pipeline": "pipeline", "utils": "utils",
              "packages": {"wan": "wan", "wan.modules": "wan/modules", "pipeline": "pipeline"}},
    "iamflow": {"wan": "iamflow.vendor.wan", "pipeline": "iamflow.pipelines", "utils": "iamflow.utils",
                "packages": {"iamflow": "iamflow", "iamflow.vendor": "iamflow/vendor",
                             "iamflow.vendor.wan": "iamflow/vendor/wan",
                             "iamflow.vendor.wan.modules": "iamflow/vendor/wan/modules",
                             "iamflow.pipelines": "iamflow/pipelines"}},
}


class Authors:
    """The authors' modules, imported from ``checkout`` with the shims above."""

    def __init__(self, checkout: Path, *, frame_tokens_literal: int | None = None, layout: str = "plain",
                 model_modules: tuple[str, ...] = ("causal_model",), model_class: str = "CausalWanModel") -> None:
        self.checkout = checkout
        self.names = LAYOUTS[layout]
        self.shims = ["sdpa", "no_package_init", "cuda_device", "from_pretrained", "model_constants",
                      "seeded_noise", "text_encoder", "vae"]
        sys.path.insert(0, str(checkout))
        for name, sub in self.names["packages"].items():
            _package(name, checkout / sub)
        wan = self.names["wan"]
        with _cuda_device_shim():
            for memory in (f"{self.names['utils']}.memory", "demo_utils.memory"):
                if (checkout / (memory.replace(".", "/") + ".py")).is_file():
                    importlib.import_module(memory)
        attention = importlib.import_module(f"{wan}.modules.attention")
        attention.attention = sdpa
        attention.flash_attention = sdpa
        model = importlib.import_module(f"{wan}.modules.model")
        model.flash_attention = sdpa
        self.replacements = 0
        modules = []
        for name in model_modules:  # e.g. Deep Forcing's wrapper imports causal_model and causal_model_DS
            if frame_tokens_literal is not None:
                self._load_with_frame_tokens(frame_tokens_literal, name)
            module = importlib.import_module(f"{wan}.modules.{name}")
            module.attention = sdpa
            modules.append(module)
        self.causal_model = modules[0]
        self.modules = modules
        self.model_class = model_class
        self.keys: list | None = None
        self.ints: dict | None = None

    def _load_with_frame_tokens(self, tokens: int, module_name: str = "causal_model") -> None:
        name = f"{self.names['wan']}.modules.{module_name}"
        path = self.checkout / (name.replace(".", "/") + ".py")
        source = path.read_text()
        self.replacements += source.count("1560")
        module = types.ModuleType(name)
        module.__file__ = str(path)
        sys.modules[name] = module
        exec(compile(source.replace("1560", str(tokens)), str(path), "exec"), module.__dict__)
        if "tokens_per_frame" not in self.shims:
            self.shims.append("tokens_per_frame")

    def model_cls(self, name: str | None = None) -> type:
        """Their model class (``CausalWanModel``, or e.g. Deep Forcing's ``CausalWanModelDS``)."""
        name = name or self.model_class
        for module in self.modules:
            if hasattr(module, name):
                return getattr(module, name)
        raise SystemExit(f"no {name} in {[m.__name__ for m in self.modules]}")

    def build_model(self, weights_seed: int, **kwargs: Any) -> torch.nn.Module:
        """Their CausalWanModel with the small configuration and the seeded weights (their key layout)."""
        cfg = dict(si.TINY_WAN)
        cfg["patch_size"] = tuple(cfg["patch_size"])
        model = self.model_cls()(model_type="t2v", **cfg, **kwargs).eval()
        keys, ints, aliases = seeded.describe(model.state_dict())
        if aliases or ints:
            raise SystemExit(f"unexpected shared or integer tensors in their state dict: {aliases}, {list(ints)}")
        model.load_state_dict(seeded.state_dict(weights_seed, keys, ints), strict=True)
        self.keys, self.ints = keys, ints
        return model

    def patch_from_pretrained(self, weights_seed: int, classes: tuple[str, ...] = ("CausalWanModel",),
                              kwargs_hook: Callable[[dict], dict] | None = None) -> None:
        """``CausalWanModel.from_pretrained(folder, **kwargs)`` -> the small seeded model (shim); ``classes``:
        the model classes their wrapper may build, ``kwargs_hook``: rescales token counts it computes."""
        authors = self

        def from_pretrained(cls, folder: str, **kwargs: Any) -> torch.nn.Module:
            authors.model_class = cls.__name__
            return authors.build_model(weights_seed, **(kwargs_hook(kwargs) if kwargs_hook else kwargs))

        for name in classes:
            self.model_cls(name).from_pretrained = classmethod(from_pretrained)


def _resize_caches(pipe: Any, heads: int, head_dim: int, text_len: int, cache_tokens: int | None = None) -> None:
    """Wrap their cache initialisers: same buffers, the small model's 2 heads of 32 instead of 12 x 128 (and
    its text length instead of 512 in the cross-attention caches; ``cache_tokens``: the self-attention
    buffer's length where their initialiser writes it as a literal in 1560-token frames)."""
    for name in ("_initialize_kv_cache", "_initialize_crossattn_cache", "_initialize_kv_bank"):
        original = getattr(pipe, name, None)
        if original is None:
            continue

        def wrapper(*args: Any, _original: Callable = original, **kwargs: Any) -> None:
            _original(*args, **kwargs)
            for attr in ("kv_cache1", "kv_cache_clean", "crossattn_cache", "prev_crossattn_cache", "kv_bank1"):
                for entry in getattr(pipe, attr, None) or []:
                    for key, value in entry.items():
                        if torch.is_tensor(value) and value.dim() == 4 and value.shape[2:] == (12, 128):
                            tokens = (text_len if "crossattn" in attr
                                      else cache_tokens if cache_tokens is not None and attr == "kv_cache_clean"
                                      else value.shape[1])
                            entry[key] = value.new_zeros(value.shape[0], tokens, heads, head_dim)

        setattr(pipe, name, wrapper)


class TextStandIn:
    """Their text encoder's interface: ``(text_prompts=[p]) -> {"prompt_embeds": [1, L, D]}``."""

    def __init__(self, prompts: list[str], contexts: list[torch.Tensor]) -> None:
        self.table = dict(zip(prompts, contexts))

    def __call__(self, text_prompts: list[str]) -> dict[str, torch.Tensor]:
        return {"prompt_embeds": torch.cat([self.table[p] for p in text_prompts])}


class VaeStandIn:
    def decode_to_pixel(self, latent: torch.Tensor, use_cache: bool = False) -> torch.Tensor:
        return latent.new_zeros(latent.shape[0], latent.shape[1], 3, 8, 8)


@contextlib.contextmanager
def seeded_randn_like(inputs_seed: int):
    """``torch.randn_like`` -> the seeded re-noising draws, in the authors' ``[B*F, C, H, W]`` layout."""
    sequence = si.NoiseSequence(inputs_seed)
    original = torch.randn_like

    def randn_like(t: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        ours = si.to_tensor(sequence.next())  # [1, C, F, H, W]
        theirs = ours.permute(0, 2, 1, 3, 4).flatten(0, 1)
        if tuple(theirs.shape) != tuple(t.shape):
            raise RuntimeError(f"randn_like{tuple(t.shape)}: the seeded draw has shape {tuple(theirs.shape)}")
        return theirs.to(t.dtype)

    torch.randn_like = randn_like  # type: ignore[assignment]
    try:
        yield sequence
    finally:
        torch.randn_like = original  # type: ignore[assignment]


def _inputs_meta(inputs_seed: int, num_prompts: int, num_frames: int, mix: dict | None = None
                 ) -> tuple[dict, list[torch.Tensor], torch.Tensor]:
    contexts = [si.to_tensor(c) for c in si.stream_contexts(inputs_seed, num_prompts, mix)]
    blocks = num_frames // si.BLOCK_FRAMES
    noise = torch.cat([si.to_tensor(si.block_noise(inputs_seed, b)) for b in range(blocks)], dim=2)
    meta = {"contexts": {"shape": list(contexts[0].shape), "range": [-1.0, 1.0], "zero_tail": si.CONTEXT_PADDING,
                         "checksums": [seeded.checksum(c) for c in contexts]},
            "noise": {"shape": list(noise.shape), "layout": "b c f h w", "range": [-si.NOISE_BOUND, si.NOISE_BOUND],
                      "checksum": seeded.checksum(noise)}}
    return meta, contexts, noise


def _args(**model_kwargs: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.create({"denoising_step_list": si.DENOISING_STEPS, "warp_denoising_step": True,
                             "num_frame_per_block": si.BLOCK_FRAMES, "independent_first_frame": False,
                             "context_noise": 0, "global_sink": True, "model_kwargs": model_kwargs})


def _pipeline(authors: Authors, cls_path: str, args: Any, contexts: list[torch.Tensor], weights_seed: int,
              classes: tuple[str, ...] = ("CausalWanModel",), kwargs_hook: Callable[[dict], dict] | None = None,
              cache_tokens: int | None = None) -> Any:
    authors.patch_from_pretrained(weights_seed, classes, kwargs_hook)
    module_name, cls_name = cls_path.rsplit(".", 1)
    with _cuda_device_shim():  # their t5.py takes torch.cuda.current_device() as a default argument
        WanDiffusionWrapper = importlib.import_module(f"{authors.names['utils']}.wan_wrapper").WanDiffusionWrapper
        cls = getattr(importlib.import_module(f"{authors.names['pipeline']}.{module_name}"), cls_name)
    generator = WanDiffusionWrapper(**args.model_kwargs, is_causal=True)
    prompts = [f"prompt {i}" for i in range(len(contexts))]
    kwargs = dict(generator=generator, text_encoder=TextStandIn(prompts, contexts), vae=VaeStandIn())
    pipe = cls(args, "cpu", **kwargs)
    pipe.num_transformer_blocks = si.TINY_WAN["num_layers"]
    pipe.frame_seq_length = si.FRAME_TOKENS
    _resize_caches(pipe, si.TINY_WAN["num_heads"], si.TINY_WAN["dim"] // si.TINY_WAN["num_heads"], si.TINY_WAN["text_len"],
                   cache_tokens)
    pipe.prompts = prompts
    return pipe


def _cache_snapshot(kv_cache: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Their stored K/V, every layer: ``[L, B, local_end_index, H, D]`` (sink first, then the window)."""
    ends = {int(c["local_end_index"].item()) for c in kv_cache}
    if len(ends) != 1:
        raise RuntimeError(f"layers disagree on the cache end: {ends}")
    end = ends.pop()
    k = torch.stack([c["k"][:, :end] for c in kv_cache]).numpy().copy()
    v = torch.stack([c["v"][:, :end] for c in kv_cache]).numpy().copy()
    return k, v


def _latents(output: torch.Tensor) -> np.ndarray:
    """Their ``[B, F, C, H, W]`` latents in narrastream's ``[B, C, F, H, W]``."""
    return output.permute(0, 2, 1, 3, 4).contiguous().numpy()


def _common_meta(authors: Authors, extra: dict[str, Any]) -> dict[str, Any]:
    return {"config": {"wan": si.TINY_WAN, "latent_hw": list(si.LATENT_HW), "frame_tokens": si.FRAME_TOKENS,
                       "block_frames": si.BLOCK_FRAMES, "denoising_steps": si.DENOISING_STEPS, **extra},
            "shims": authors.shims, "keys": authors.keys, "aliases": {}}


# ------------------------------------------------------------------------------------- wan_forward
#: (start frame, per-frame timesteps of the two batch rows, commit?) of the direct forwards
WAN_FORWARD_CALLS = [
    (0, [[1000.0, 900.0, 800.0], [250.0, 500.0, 750.0]], False),  # denoising pass, empty cache
    (0, [[0.0] * 3, [0.0] * 3], True),                             # context pass: commits frames 0..2
    (3, [[937.5] * 3, [625.0] * 3], False),                        # next block reads the committed frames
]


def make_wan_forward(checkout: Path, layout: str, weights_seed: int, inputs_seed: int) -> tuple[dict, dict, dict]:
    """Their ``CausalWanModel._forward_inference`` with their KV-cache dictionaries, batch of 2."""
    authors = Authors(checkout)
    model = authors.build_model(weights_seed, local_attn_size=-1, sink_size=0)
    heads, head_dim = si.TINY_WAN["num_heads"], si.TINY_WAN["dim"] // si.TINY_WAN["num_heads"]
    batch, capacity = 2, 6 * si.FRAME_TOKENS
    kv_cache = [{"k": torch.zeros(batch, capacity, heads, head_dim), "v": torch.zeros(batch, capacity, heads, head_dim),
                 "global_end_index": torch.tensor([0]), "local_end_index": torch.tensor([0])}
                for _ in range(si.TINY_WAN["num_layers"])]
    cross = [{"k": torch.zeros(batch, si.TINY_WAN["text_len"], heads, head_dim),
              "v": torch.zeros(batch, si.TINY_WAN["text_len"], heads, head_dim), "is_init": False}
             for _ in range(si.TINY_WAN["num_layers"])]
    context = torch.cat([si.to_tensor(si.context(inputs_seed, i)) for i in range(batch)])
    shape = (batch, si.TINY_WAN["in_dim"], si.BLOCK_FRAMES, *si.LATENT_HW)
    outputs: dict[str, np.ndarray] = {}
    inputs: dict[str, Any] = {"context": {"shape": list(context.shape), "checksum": seeded.checksum(context)}}
    with torch.no_grad():
        for n, (start, t, commit) in enumerate(WAN_FORWARD_CALLS):
            x = si.to_tensor(seeded.uniform(inputs_seed, f"wan_forward/x{n}", shape, -si.NOISE_BOUND, si.NOISE_BOUND))
            inputs[f"x{n}"] = {"shape": list(shape), "range": [-si.NOISE_BOUND, si.NOISE_BOUND], "checksum": seeded.checksum(x)}
            flow = model(x, t=torch.tensor(t), context=context, seq_len=32760, kv_cache=kv_cache,
                         crossattn_cache=cross, current_start=start * si.FRAME_TOKENS)
            outputs[f"flow{n}"] = flow.numpy()
            if commit:  # the committed K/V (later calls also write their block: their cache has no commit flag)
                outputs["cache_k"], outputs["cache_v"] = _cache_snapshot(kv_cache)
    meta = _common_meta(authors, {"batch": batch, "calls": WAN_FORWARD_CALLS, "local_attn_size": -1, "sink_size": 0})
    meta["inputs"] = inputs
    return meta, authors.ints or {}, outputs


# ------------------------------------------------------------------------------------- Self-Forcing
#: 2 prompts of 2.625 s at 16 fps: 42 pixel frames each -> 21 latent frames, the switch floored to 9;
#: a 12-frame rolling window (the self_forcing-official runner's override) evicts from block 4 on
SELF_FORCING_STREAM = {"prompts": 2, "seconds_per_segment": 2.625, "fps": 16, "frames": 21, "switches": [9],
                       "local_attn_size": 12, "sink_size": 0}


def make_self_forcing(checkout: Path, layout: str, weights_seed: int, inputs_seed: int) -> tuple[dict, dict, dict]:
    """Their ``CausalInferencePipeline.inference`` block loop, prompts routed as the official runner does."""
    sys.path.insert(0, str(REPO / "runners"))
    from official_common import PromptRouter  # type: ignore[import-not-found]

    stream = SELF_FORCING_STREAM
    authors = Authors(checkout)
    authors.shims.append("prompt_router")
    args = _args(timestep_shift=5.0, local_attn_size=stream["local_attn_size"], sink_size=stream["sink_size"])
    inputs, contexts, noise = _inputs_meta(inputs_seed, stream["prompts"], stream["frames"], stream.get("mix"))
    pipe = _pipeline(authors, "causal_inference.CausalInferencePipeline", args, contexts, weights_seed)
    router = PromptRouter([pipe.text_encoder(text_prompts=[p]) for p in pipe.prompts], stream["switches"],
                          si.BLOCK_FRAMES, si.FRAME_TOKENS, 0, "newest")
    generator = pipe.generator
    original = generator.forward
    generator.forward = lambda *a, **kw: original(*a, **router.route(kw))
    with seeded_randn_like(inputs_seed) as draws, torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        _, output = pipe.inference(noise.permute(0, 2, 1, 3, 4), text_prompts=[pipe.prompts[0]], return_latents=True)
    if draws.calls != 3 * stream["frames"] // si.BLOCK_FRAMES or router.events != stream["switches"]:
        raise SystemExit(f"unexpected loop: {draws.calls} re-noisings, switches at {router.events}")
    k, v = _cache_snapshot(pipe.kv_cache1)
    meta = _common_meta(authors, stream)
    meta["inputs"] = inputs
    return meta, authors.ints or {}, {"latents": _latents(output), "final_cache_k": k, "final_cache_v": v}


# ------------------------------------------------------------------------------ LongLive and MemFlow
#: 3 prompts of 2.5 s at 16 fps: 30 latent frames, switches floored to 9 and 18. The switch at 9 re-caches
#: from frame 0 (the sink rewritten too); at 18 the range [6, 18) starts after 0, so the sink is kept and
#: frames 9..17 are rewritten. Sink 3 + 9-frame window: the first eviction is at block 4.
LONGLIVE_STREAM = {"prompts": 3, "seconds_per_segment": 2.5, "fps": 16, "frames": 30, "switches": [9, 18],
                   "local_attn_size": 12, "sink_size": 3, "global_sink": True}
#: 3 prompts of 3.75 s: 45 latent frames (15 blocks), switches at 15 and 30. The bank (3 frames, a candidate
#: every 3 blocks) fills at frame 18 and is compressed from block 10 on.
MEMFLOW_STREAM = {"prompts": 3, "seconds_per_segment": 3.75, "fps": 16, "frames": 45, "switches": [15, 30],
                  "local_attn_size": 12, "sink_size": 3, "global_sink": True, "bank_size": 3, "record_interval": 3}


def _interactive(authors: Authors, stream: dict, model_kwargs: dict, weights_seed: int, inputs_seed: int,
                 extra_args: dict | None = None) -> tuple[dict, dict]:
    args = _args(timestep_shift=5.0, **model_kwargs)
    for key, value in (extra_args or {}).items():
        args[key] = value
    inputs, contexts, noise = _inputs_meta(inputs_seed, stream["prompts"], stream["frames"], stream.get("mix"))
    pipe = _pipeline(authors, "interactive_causal_inference.InteractiveCausalInferencePipeline", args,
                     contexts, weights_seed)
    outputs: dict[str, np.ndarray] = {}
    recaches: list[int] = []
    original = pipe._recache_after_switch

    def recache(output: torch.Tensor, current_start_frame: int, new_conditional_dict: dict) -> None:
        original(output, current_start_frame, new_conditional_dict)
        recaches.append(int(current_start_frame))
        outputs[f"recache{current_start_frame}/k"], outputs[f"recache{current_start_frame}/v"] = _cache_snapshot(pipe.kv_cache1)

    pipe._recache_after_switch = recache
    alphas: list[float | None] = []
    if hasattr(pipe, "_get_current_transition_alpha"):  # IAMFlow: the SPT alpha of every block
        get_alpha = pipe._get_current_transition_alpha

        def alpha() -> float | None:
            alphas.append(get_alpha())
            return alphas[-1]

        pipe._get_current_transition_alpha = alpha
    distances: list[float] = []
    if hasattr(pipe, "_compute_prompt_distance"):
        distance = pipe._compute_prompt_distance

        def prompt_distance(cond_old: dict, cond_new: dict) -> float:
            distances.append(distance(cond_old, cond_new))
            return distances[-1]

        pipe._compute_prompt_distance = prompt_distance
    windows: list[int] = []
    scheduler = getattr(pipe, "transition_scheduler", None)
    if scheduler is not None and hasattr(scheduler, "update_for_switch"):  # the adaptive SPT window
        update = scheduler.update_for_switch

        def update_for_switch(semantic_distance: float) -> None:
            update(semantic_distance)
            windows.append(int(scheduler.window_frames))

        scheduler.update_for_switch = update_for_switch
    with seeded_randn_like(inputs_seed) as draws, torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        _, output = pipe.inference(noise.permute(0, 2, 1, 3, 4), text_prompts_list=[[p] for p in pipe.prompts],
                                   switch_frame_indices=list(stream["switches"]), return_latents=True)
    expected_recaches = stream["switches"] if stream.get("transition", "kv_recache") == "kv_recache" else []
    if draws.calls != 3 * stream["frames"] // si.BLOCK_FRAMES or recaches != expected_recaches:
        raise SystemExit(f"unexpected loop: {draws.calls} re-noisings, re-caches at {recaches}")
    outputs["latents"] = _latents(output)
    meta = _common_meta(authors, stream)
    meta["inputs"] = inputs
    if alphas:
        meta["block_alphas"] = alphas
    if distances:
        meta["prompt_distances"] = distances
        meta["spt_windows"] = windows
    return meta, outputs


#: interactive_inference.py's adapter section (configs/longlive_interactive_inference.yaml): rank 256, alpha 256
LONGLIVE_ADAPTER = {"type": "lora", "rank": 256, "alpha": 256, "dropout": 0.0, "dtype": "bfloat16", "verbose": False}


def make_longlive(checkout: Path, layout: str, weights_seed: int, inputs_seed: int) -> tuple[dict, dict, dict]:
    """Their ``InteractiveCausalInferencePipeline.inference``: sink, rolling window, KV re-cache at switches.
    ``lora``: the same with their LoRA on the generator, as their ``interactive_inference.py`` applies it
    (``configure_lora_for_model``, then ``peft.set_peft_model_state_dict`` with the ``generator_lora`` dict):
    the seeded adapter's keys are recorded as ``lora_keys``."""
    stream = dict(LONGLIVE_STREAM, lora=LONGLIVE_ADAPTER if layout == "lora" else None)
    authors = Authors(checkout)
    lora_keys: list = []
    if layout == "lora":
        _patch_lora(authors, weights_seed, lora_keys)
    meta, outputs = _interactive(authors, stream, {"local_attn_size": stream["local_attn_size"],
                                                   "sink_size": stream["sink_size"]}, weights_seed, inputs_seed)
    if layout == "lora":
        meta["lora_keys"] = lora_keys
    return meta, authors.ints or {}, outputs


def _patch_lora(authors: Authors, weights_seed: int, lora_keys: list) -> None:
    """Wrap the pipeline constructor: their LoRA set-up on the generator, the seeded adapter loaded by PEFT."""
    sys.path.insert(0, str(REPO))
    from narrastream._compat import ensure_torchvision  # peft imports transformers' models, which import torchvision

    ensure_torchvision()
    import peft
    from omegaconf import OmegaConf

    with _cuda_device_shim():
        lora_utils = importlib.import_module(f"{authors.names['utils']}.lora_utils")
        interactive = importlib.import_module(f"{authors.names['pipeline']}.interactive_causal_inference")
    cls = interactive.InteractiveCausalInferencePipeline
    original = cls.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.generator.model = lora_utils.configure_lora_for_model(self.generator.model, "generator",
                                                                   OmegaConf.create(LONGLIVE_ADAPTER), is_main_process=False)
        keys, ints, _ = seeded.describe(peft.get_peft_model_state_dict(self.generator.model))
        result = peft.set_peft_model_state_dict(self.generator.model, seeded.state_dict(weights_seed, keys, ints))
        if getattr(result, "unexpected_keys", None):
            raise SystemExit(f"PEFT did not take the adapter keys: {result.unexpected_keys[:5]}")
        lora_keys.extend(keys)

    cls.__init__ = __init__
    authors.shims.append("lora_from_seed")


def make_memflow(checkout: Path, layout: str, weights_seed: int, inputs_seed: int) -> tuple[dict, dict, dict]:
    """MemFlow's interactive loop: LongLive's plus the narrative memory bank (SMA off as released, or on)."""
    stream = dict(MEMFLOW_STREAM, sma=layout == "sma")
    authors = Authors(checkout, frame_tokens_literal=si.FRAME_TOKENS)
    meta, outputs = _interactive(authors, stream, {"local_attn_size": stream["local_attn_size"],
                                                   "sink_size": stream["sink_size"], "bank_size": stream["bank_size"],
                                                   "record_interval": stream["record_interval"],
                                                   "SMA": stream["sma"]}, weights_seed, inputs_seed)
    meta["frame_tokens_literal_replacements"] = authors.replacements
    return meta, authors.ints or {}, outputs


# ------------------------------------------------------------------------------------------- IAMFlow
#: 3 prompts of 3.75 s: 45 latent frames, switches at 15 and 30. Prompt 1's features are 35 % prompt 0's, so
#: the adaptive SPT window of the first switch is 6 frames (3 + 12 d = 7.9) and the ramp completes (alphas
#: 0, 0, 0.5 then none); the second switch (d > 1) gets 15 frames, still ramping when the video ends.
IAMFLOW_STREAM = {"prompts": 3, "seconds_per_segment": 3.75, "fps": 16, "frames": 45, "switches": [15, 30],
                  "local_attn_size": 12, "sink_size": 3, "global_sink": True, "bank_size": 6, "sma": True,
                  "mix": {"1": [0, 0.35]}}
#: configs/iamflow.yaml's SPT section
IAMFLOW_SPT = {"scheduler_type": "adaptive", "base_scheduler": "cosine", "min_window": 3, "max_window": 15,
               "window_frames": 9, "delay_frames": 3, "steepness": 6.0, "frames_per_chunk": 3}


def make_iamflow(checkout: Path, layout: str, weights_seed: int, inputs_seed: int) -> tuple[dict, dict, dict]:
    """IAMFlow's backbone loop (``InteractiveCausalInferencePipeline``, no agents): sink, window, SMA, and the
    soft prompt transition (``upstream``) or its ``no_transition`` hard switch (``hard``); ``bank``: their
    model forward over an injected memory bank with SMA routing (what the identity agents feed it)."""
    authors = Authors(checkout, frame_tokens_literal=si.FRAME_TOKENS, layout="iamflow")
    if layout == "bank":
        return make_iamflow_bank(authors, weights_seed, inputs_seed)
    transition = "soft" if layout == "upstream" else "hard"
    stream = dict(IAMFLOW_STREAM, transition=transition)
    extra = ({"spt_enabled": True, "spt": IAMFLOW_SPT, "transition_strategy": "soft_prompt_transition"}
             if transition == "soft" else {"spt_enabled": False, "transition_strategy": "no_transition"})
    stream["spt"] = IAMFLOW_SPT if transition == "soft" else None
    meta, outputs = _interactive(authors, stream, {"local_attn_size": stream["local_attn_size"],
                                                   "sink_size": stream["sink_size"], "bank_size": stream["bank_size"],
                                                   "record_interval": 3, "SMA": stream["sma"]},
                                 weights_seed, inputs_seed, extra)
    meta["frame_tokens_literal_replacements"] = authors.replacements
    return meta, authors.ints or {}, outputs


#: (start frame, timestep, commit, memory-bank frames attended) of the direct forwards of ``iamflow_bank``
IAMFLOW_BANK_CALLS = [(0, 0.0, True, 0), (3, 0.0, True, 0), (6, 937.5, False, 4), (6, 0.0, True, 4),
                      (9, 625.0, False, 2)]
IAMFLOW_BANK_FRAMES = 4


def make_iamflow_bank(authors: Authors, weights_seed: int, inputs_seed: int) -> tuple[dict, dict, dict]:
    """Their ``CausalWanModel`` with SMA over (sink ; bank): two clean blocks committed (the sink and one
    window block), then 4 seeded memory frames in their ``kv_bank`` (``iam_bank_length``) and forwards that
    route over the 7 (then 5) frame chunks."""
    model = authors.build_model(weights_seed, local_attn_size=12, sink_size=3, bank_size=6, record_interval=3,
                                SMA=True, sparse_top_k=6)
    model.local_attn_size = 12
    for module in model.modules():
        if hasattr(module, "max_attention_size"):
            module.max_attention_size = 12 * si.FRAME_TOKENS
    layers, heads = si.TINY_WAN["num_layers"], si.TINY_WAN["num_heads"]
    head_dim = si.TINY_WAN["dim"] // heads
    kv_cache = [{"k": torch.zeros(1, 12 * si.FRAME_TOKENS, heads, head_dim),
                 "v": torch.zeros(1, 12 * si.FRAME_TOKENS, heads, head_dim),
                 "global_end_index": torch.tensor([0]), "local_end_index": torch.tensor([0])} for _ in range(layers)]
    cross = [{"k": torch.zeros(1, si.TINY_WAN["text_len"], heads, head_dim),
              "v": torch.zeros(1, si.TINY_WAN["text_len"], heads, head_dim), "is_init": False} for _ in range(layers)]
    bank_shape = (layers, 1, IAMFLOW_BANK_FRAMES * si.FRAME_TOKENS, heads, head_dim)
    bank_k = si.to_tensor(seeded.uniform(inputs_seed, "iamflow_bank/k", bank_shape, -si.NOISE_BOUND, si.NOISE_BOUND))
    bank_v = si.to_tensor(seeded.uniform(inputs_seed, "iamflow_bank/v", bank_shape, -si.NOISE_BOUND, si.NOISE_BOUND))
    kv_bank = [{"k": torch.zeros(1, 6 * si.FRAME_TOKENS, heads, head_dim), "v": torch.zeros(1, 6 * si.FRAME_TOKENS, heads, head_dim),
                "k_new": torch.zeros(1, si.FRAME_TOKENS, heads, head_dim), "v_new": torch.zeros(1, si.FRAME_TOKENS, heads, head_dim),
                "global_end_index": torch.tensor([0]), "local_end_index": torch.tensor([0])} for _ in range(layers)]
    for layer, entry in enumerate(kv_bank):  # what the identity agent's injection writes
        entry["k"][:, :bank_shape[2]] = bank_k[layer]
        entry["v"][:, :bank_shape[2]] = bank_v[layer]
    context = si.to_tensor(si.context(inputs_seed, 0))
    shape = (1, si.TINY_WAN["in_dim"], si.BLOCK_FRAMES, *si.LATENT_HW)
    outputs: dict[str, np.ndarray] = {}
    inputs: dict[str, Any] = {"context": {"shape": list(context.shape), "checksum": seeded.checksum(context)},
                              "bank_k": {"shape": list(bank_shape), "range": [-si.NOISE_BOUND, si.NOISE_BOUND],
                                         "checksum": seeded.checksum(bank_k)},
                              "bank_v": {"shape": list(bank_shape), "range": [-si.NOISE_BOUND, si.NOISE_BOUND],
                                         "checksum": seeded.checksum(bank_v)}}
    with torch.no_grad():
        for n, (start, t, commit, bank_frames) in enumerate(IAMFLOW_BANK_CALLS):
            x = si.to_tensor(seeded.uniform(inputs_seed, f"iamflow_bank/x{n}", shape, -si.NOISE_BOUND, si.NOISE_BOUND))
            inputs[f"x{n}"] = {"shape": list(shape), "range": [-si.NOISE_BOUND, si.NOISE_BOUND], "checksum": seeded.checksum(x)}
            flow = model(x, t=torch.full((1, si.BLOCK_FRAMES), t), context=context, seq_len=32760, kv_cache=kv_cache,
                         crossattn_cache=cross, current_start=start * si.FRAME_TOKENS, kv_bank=kv_bank,
                         update_bank=False, q_bank=False, update_cache=commit,
                         iam_bank_length=bank_frames * si.FRAME_TOKENS)
            outputs[f"flow{n}"] = flow.numpy()
    meta = _common_meta(authors, {"calls": IAMFLOW_BANK_CALLS, "local_attn_size": 12, "sink_size": 3, "sma": True,
                                  "bank_frames": IAMFLOW_BANK_FRAMES})
    meta["inputs"] = inputs
    meta["frame_tokens_literal_replacements"] = authors.replacements
    return meta, authors.ints or {}, outputs


# ------------------------------------------------------------------------------------------- Deep Forcing
#: 2 prompts of 8.25 s at 16 fps: 66 latent frames (22 blocks), a hard switch at 33. DS_PC_inference.sh's
#: cache (self_forcing_dmd_sink10.yaml: 21 frames, sink 10; --Budget 16 --Recent 4; PC_topc_max_reuse 7):
#: it overflows at frames 21, 27, ..., 63 (8 Participative Compressions, the last ones excluding tokens
#: already chosen 7 times), the sink re-placed in RoPE time at each.
DEEP_FORCING_STREAM = {"prompts": 2, "seconds_per_segment": 8.25, "fps": 16, "frames": 66, "switches": [33],
                       "local_attn_size": 21, "sink_size": 10, "compression": "participative", "budget": 16,
                       "recent": 4, "max_reuse": 7}
#: DS_inference.sh: self_forcing_dmd_sink14.yaml with --is_ds_only 1 (causal_model_DS.py): overflows evict the
#: oldest non-sink frames from frame 21 on; 2 prompts of 3.75 s, 30 latent frames, a hard switch at 15
DEEP_SINK_STREAM = {"prompts": 2, "seconds_per_segment": 3.75, "fps": 16, "frames": 30, "switches": [15],
                    "local_attn_size": 21, "sink_size": 14, "compression": "none"}
RELEASE_FRAME_TOKENS = 1560


def _frame_token_kwargs(kwargs: dict) -> dict:
    """Their wrapper passes ``PC_capacity=1560*budget``, ``PC_window=1560*recent`` (tokens of 1560-token
    frames, a literal in utils/wan_wrapper.py): the same frame counts in the small frame's tokens."""
    out = dict(kwargs)
    for key in ("PC_capacity", "PC_window"):
        if key in out:
            frames, rest = divmod(int(out[key]), RELEASE_FRAME_TOKENS)
            if rest:
                raise SystemExit(f"{key}={out[key]} is not a whole number of 1560-token frames")
            out[key] = frames * si.FRAME_TOKENS
    return out


def make_deep_forcing(checkout: Path, layout: str, weights_seed: int, inputs_seed: int) -> tuple[dict, dict, dict]:
    """Their ``CausalInferencePipeline.inference`` (Self-Forcing's block loop) with their deep-sink cache, the
    model their wrapper builds from ``model_kwargs`` as their ``inference.py`` sets them (``is_ds_only``,
    ``budget``, ``recent``); prompts routed as the ``deep_forcing-official`` runner does (hard switch).
    ``upstream``: Deep Sink + Participative Compression (``causal_model.py``); the indices each compression
    keeps (per layer, their ``_mkv_select_indices``) and the final top-C choice counts are recorded.
    ``ds``: Deep Sink only (``causal_model_DS.py``)."""
    sys.path.insert(0, str(REPO / "runners"))
    from official_common import PromptRouter  # type: ignore[import-not-found]

    ds = layout == "ds"
    stream = DEEP_SINK_STREAM if ds else DEEP_FORCING_STREAM
    authors = Authors(checkout, frame_tokens_literal=si.FRAME_TOKENS, model_modules=("causal_model", "causal_model_DS"))
    authors.shims.append("prompt_router")
    keeps: list[np.ndarray] = []
    if not ds:
        module = authors.modules[0]
        select = module._mkv_select_indices

        def select_indices(*args: Any, **kwargs: Any) -> Any:
            keep_lists, protect_lists, chosen = select(*args, **kwargs)
            if len(keep_lists) != 1:
                raise SystemExit("batch size 1 expected")
            keeps.append(keep_lists[0].numpy().copy())
            return keep_lists, protect_lists, chosen

        module._mkv_select_indices = select_indices
    args = _args(timestep_shift=5.0, local_attn_size=stream["local_attn_size"], sink_size=stream["sink_size"],
                 is_ds_only=ds, budget=stream.get("budget", 16), recent=stream.get("recent", 4))
    inputs, contexts, noise = _inputs_meta(inputs_seed, stream["prompts"], stream["frames"], stream.get("mix"))
    pipe = _pipeline(authors, "causal_inference.CausalInferencePipeline", args, contexts, weights_seed,
                     classes=("CausalWanModel", "CausalWanModelDS"), kwargs_hook=_frame_token_kwargs)
    want = "CausalWanModelDS" if ds else "CausalWanModel"
    if type(pipe.generator.model).__name__ != want:
        raise SystemExit(f"their wrapper built {type(pipe.generator.model).__name__}, not {want}")
    if not ds:
        pc = pipe.generator.model.PC_cfg
        if (pc.capacity, pc.window, pc.topc_max_reuse) != (stream["budget"] * si.FRAME_TOKENS,
                                                           stream["recent"] * si.FRAME_TOKENS, stream["max_reuse"]):
            raise SystemExit(f"unexpected PC configuration {vars(pc)}")
    router = PromptRouter([pipe.text_encoder(text_prompts=[p]) for p in pipe.prompts], stream["switches"],
                          si.BLOCK_FRAMES, si.FRAME_TOKENS, 0, "newest")
    generator = pipe.generator
    original = generator.forward
    generator.forward = lambda *a, **kw: original(*a, **router.route(kw))
    with seeded_randn_like(inputs_seed) as draws, torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        _, output = pipe.inference(noise.permute(0, 2, 1, 3, 4), text_prompts=[pipe.prompts[0]], return_latents=True)
    if draws.calls != 3 * stream["frames"] // si.BLOCK_FRAMES or router.events != stream["switches"]:
        raise SystemExit(f"unexpected loop: {draws.calls} re-noisings, switches at {router.events}")
    outputs = {"latents": _latents(output)}
    meta = _common_meta(authors, stream)
    meta["inputs"] = inputs
    meta["frame_tokens_literal_replacements"] = authors.replacements
    cache = pipe.kv_cache1
    meta["sink_time_start"] = [int(c["sink_base_abs_start_frame"].item()) for c in cache]
    meta["cached_tokens"] = [int(c["local_end_index"].item()) for c in cache]
    if not ds:
        layers = si.TINY_WAN["num_layers"]
        width = max(len(k) for k in keeps)
        table = np.full((len(keeps), width), -1, dtype=np.float32)  # exact integers (< 2**24)
        for row, keep in enumerate(keeps):
            table[row, :len(keep)] = keep
        outputs["keep_indices"] = table
        counts = np.stack([c["topc_select_counts"][0, :int(c["local_end_index"].item())].numpy() for c in cache])
        outputs["final_topc_counts"] = counts.astype(np.float32)
        meta["compressions_per_layer"] = len(keeps) // layers
        meta["max_topc_count"] = int(counts.max())
    return meta, authors.ints or {}, outputs


# ----------------------------------------------------------------------------------------- Rolling Forcing
#: 3 prompts of 3 s at 16 fps: 36 latent frames (12 blocks, 16 windows of up to 5 blocks), prompts switching at
#: 12 and 24 (a window takes its newest block's prompt, as the rolling_forcing-official runner routes them).
#: Their 24-frame buffer keeps the anchor (block 0) and evicts first in, first out from block 8's commit on.
ROLLING_FORCING_STREAM = {"prompts": 3, "seconds_per_segment": 3.0, "fps": 16, "frames": 36, "switches": [12, 24],
                          "denoising_steps": [1000, 800, 600, 400, 200], "local_attn_size": 21, "cache_frames": 24,
                          "window_prompt": "newest"}


@contextlib.contextmanager
def rolling_randn_like(inputs_seed: int, num_blocks: int, steps: int):
    """``torch.randn_like`` in their rolling loop: one call per re-noised block, shaped as the WHOLE window
    (``[F_window, C, H, W]``; they keep the block's slice). The block's slice holds its seeded draw
    ``streaming_inputs.renoise(seed, block, k)`` (its k-th re-noising); the rest of the window is zero."""
    order = []
    for w in range(num_blocks + steps - 1):
        first, last = max(0, w - steps + 1), min(num_blocks - 1, w)
        order += [(first, last, b, w - b + 1) for b in range(first, last + 1) if w - b < steps - 1]
    state = types.SimpleNamespace(calls=0)
    original = torch.randn_like

    def randn_like(t: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        first, last, block, k = order[state.calls]
        state.calls += 1
        frames = (last - first + 1) * si.BLOCK_FRAMES
        if tuple(t.shape) != (frames, si.TINY_WAN["in_dim"], *si.LATENT_HW):
            raise RuntimeError(f"randn_like{tuple(t.shape)}: expected the window of blocks {first}..{last}")
        draw = si.to_tensor(si.renoise(inputs_seed, block, k))[0].permute(1, 0, 2, 3)  # [F, C, H, W]
        out = torch.zeros_like(t)
        offset = (block - first) * si.BLOCK_FRAMES
        out[offset:offset + si.BLOCK_FRAMES] = draw.to(t.dtype)
        return out

    torch.randn_like = randn_like  # type: ignore[assignment]
    try:
        yield state, len(order)
    finally:
        torch.randn_like = original  # type: ignore[assignment]


def make_rolling_forcing(checkout: Path, layout: str, weights_seed: int, inputs_seed: int) -> tuple[dict, dict, dict]:
    """Their ``CausalInferencePipeline.inference_rolling_forcing`` (pipeline/rolling_forcing_inference.py) with
    their ``causal_model.py`` (anchor = first block, working cache, 21 frames attended, a 24-frame buffer),
    prompts routed per window as the ``rolling_forcing-official`` runner does (``newest``)."""
    sys.path.insert(0, str(REPO / "runners"))
    from official_common import PromptRouter  # type: ignore[import-not-found]

    stream = ROLLING_FORCING_STREAM
    authors = Authors(checkout, frame_tokens_literal=si.FRAME_TOKENS)
    authors.shims.append("prompt_router")
    steps = stream["denoising_steps"]
    args = _args(timestep_shift=5.0)  # configs/rolling_forcing_dmd.yaml's model_kwargs
    args.denoising_step_list = steps
    inputs, contexts, noise = _inputs_meta(inputs_seed, stream["prompts"], stream["frames"], stream.get("mix"))
    pipe = _pipeline(authors, "rolling_forcing_inference.CausalInferencePipeline", args, contexts, weights_seed,
                     cache_tokens=stream["cache_frames"] * si.FRAME_TOKENS)
    router = PromptRouter([pipe.text_encoder(text_prompts=[p]) for p in pipe.prompts], stream["switches"],
                          si.BLOCK_FRAMES, si.FRAME_TOKENS, 0, stream["window_prompt"])
    generator = pipe.generator
    original = generator.forward
    calls: list[list] = []

    def forward(*a: Any, **kw: Any) -> Any:
        kw = router.route(kw)
        calls.append([int(kw["current_start"]) // si.FRAME_TOKENS, int(kw["noisy_image_or_video"].shape[1]),
                      bool(kw.get("updating_cache"))])
        return original(*a, **kw)

    generator.forward = forward
    blocks = stream["frames"] // si.BLOCK_FRAMES
    with rolling_randn_like(inputs_seed, blocks, len(steps)) as (draws, expected), torch.no_grad(), \
            contextlib.redirect_stdout(io.StringIO()):
        _, output = pipe.inference_rolling_forcing(noise.permute(0, 2, 1, 3, 4), text_prompts=[pipe.prompts[0]],
                                                   return_latents=True)
    if draws.calls != expected or router.events != stream["switches"]:
        raise SystemExit(f"unexpected loop: {draws.calls} re-noisings ({expected} expected), switches at {router.events}")
    if len(pipe.kv_cache_clean[0]["k"][0]) != stream["cache_frames"] * si.FRAME_TOKENS:
        raise SystemExit("their buffer was not resized")
    meta = _common_meta(authors, stream)
    meta["inputs"] = inputs
    meta["frame_tokens_literal_replacements"] = authors.replacements
    meta["forwards"] = calls  # (start frame, frames, updating_cache) of every generator call
    return meta, authors.ints or {}, {"latents": _latents(output)}


MAKERS = {"wan_forward": make_wan_forward, "self_forcing": make_self_forcing, "longlive": make_longlive,
          "memflow": make_memflow, "iamflow": make_iamflow, "deep_forcing": make_deep_forcing,
          "rolling_forcing": make_rolling_forcing}
