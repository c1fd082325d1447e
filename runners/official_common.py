"""What the ``*_official`` runners share: the authors' released code, driven in their own environment.

Each ``runners/<name>_official/run.py`` declares a :class:`RunnerSpec` (where the authors' code and weights
live, which of their classes and entry points to call) and hands it to :func:`main`, which speaks the
``command`` contract of runners/README.md:

1. read the request JSON (prompts, seed, fps, seconds per segment, output and sidecar paths);
2. check the checkout, the config and every weight file before anything expensive (exit 2 naming each
   missing file and where it is published);
3. build the authors' pipeline with their own classes and loaders, seed it as their scripts do, and run
   their multi-prompt inference with the prompts switching at the request's segment boundaries;
4. write the mp4 and the program sidecar: the switch frames their loop really used (observed, not
   assumed), timings, peak memory and device.

It runs under the AUTHORS' python (torch, omegaconf and av come from their requirements), so it never
imports narrastream. The time axis is narrastream's (``narrastream.streaming.switches``): 16 fps, latent
frame = pixel frame // 4, blocks of 3 latent frames, latent ``s`` decodes from pixel ``4s - 3``; where a
prompt starts follows the authors' loops (the first block at or after the requested latent index).

Exit codes: 0 ok; 2 bad request or set-up (checkout, config, weights, their code not importable);
3 the authors' code failed while generating (its traceback tail is printed before the message).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import shlex
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

NATIVE_FPS = 16
NATIVE_WIDTH, NATIVE_HEIGHT = 832, 480
#: (channels, height, width) of the noise the authors' scripts draw for 480x832 (Wan2.1 VAE latent)
LATENT_SHAPE = (16, 60, 104)
STRIDE = 4
CRF = 18
EXIT_SETUP, EXIT_AUTHORS = 2, 3
UNSET = ("", "none", "null")
ALIGNS = ("authors", "floor")
WINDOW_RULES = ("newest", "oldest")


class RunnerError(Exception):
    """A failure with its exit code; ``detail`` (a traceback tail) is printed before the message, so the
    message stays in the last log lines the command adapter copies into its failure record."""

    def __init__(self, message: str, code: int, detail: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Weight:
    """One file (or folder, ``path`` ending in ``/``) the authors' code loads, and where it is published."""

    path: str  # relative to the checkout (the authors' scripts use repo-relative paths) or absolute
    hub_repo: str
    hub_file: str

    def resolve(self, repo: Path) -> Path:
        return Path(self.path) if Path(self.path).is_absolute() else repo / self.path

    def present(self, repo: Path) -> bool:
        target = self.resolve(repo)
        return target.is_dir() if self.path.endswith("/") else target.is_file()


#: Wan2.1-T2V-1.3B as every Self-Forcing-derived checkout reads it: ``wan_models/Wan2.1-T2V-1.3B/`` in the
#: checkout (DiT config and weights for ``from_pretrained``, the umT5 encoder and tokenizer, the VAE).
WAN_1_3B: tuple[Weight, ...] = tuple(
    Weight(f"wan_models/Wan2.1-T2V-1.3B/{name}", "Wan-AI/Wan2.1-T2V-1.3B", name)
    for name in ("config.json", "diffusion_pytorch_model.safetensors", "models_t5_umt5-xxl-enc-bf16.pth",
                 "Wan2.1_VAE.pth", "google/umt5-xxl/")
)


#: Self-Forcing's DMD student, which Deep Forcing runs on unchanged (training-free)
SELF_FORCING_DMD = Weight("checkpoints/self_forcing_dmd.pt", "gdhe17/Self-Forcing", "checkpoints/self_forcing_dmd.pt")


@dataclass(frozen=True)
class RunnerSpec:
    """One released baseline: its checkout, config, weights and entry points."""

    name: str  # e.g. "longlive-official"
    env_prefix: str  # e.g. "LONGLIVE": LONGLIVE_REPO, LONGLIVE_CONFIG, ...
    upstream: str  # "owner/repo" on GitHub
    pinned_commit: str
    markers: tuple[str, ...]  # files a checkout must hold
    pipeline: str  # "module:Class", built as Class(config, device=device)
    method: str  # the pipeline's generation entry point
    kind: str  # "interactive": their own multi-prompt loop; "single": one-prompt loop, prompts routed here
    config: str | None  # default config, relative to the checkout; None: the user must give one
    checkpoint: Weight
    base_config: str | None = None  # merged under the config, as their inference.py does
    checkpoint_from_config: bool = False  # the config's ``generator_ckpt`` names the checkpoint
    use_ema: bool | None = None  # None: the config's ``use_ema``
    lora: Weight | None = None  # loaded when the config has an ``adapter`` section (``lora_ckpt`` names it)
    extra_weights: tuple[Weight, ...] = WAN_1_3B
    memory_module: str | None = None  # where get_cuda_free_memory_gb / DynamicSwapInstaller live
    low_memory_kwarg: bool = False  # their script passes ``low_memory=`` to the entry point
    rolling_window: bool = False  # one call denoises several blocks (Rolling Forcing)
    overrides: tuple[str, ...] = ()  # config dotlist applied before the user's ``--set``
    notice: str = ""  # appended to set-up errors (e.g. which commit holds the code)

    @property
    def readme(self) -> str:
        return f"runners/{self.name.replace('-official', '')}_official/README.md"


def interactive_spec(**fields: Any) -> RunnerSpec:
    """LongLive 1.0's layout, kept by MemFlow: ``interactive_inference.py`` builds an
    ``InteractiveCausalInferencePipeline`` whose ``inference`` switches the prompts itself; the checkpoint
    and LoRA paths come from the config; low-memory helpers in ``utils.memory``."""
    defaults: dict[str, Any] = dict(
        markers=("interactive_inference.py", "pipeline/interactive_causal_inference.py", "utils/lora_utils.py"),
        pipeline="pipeline.interactive_causal_inference:InteractiveCausalInferencePipeline", method="inference",
        kind="interactive", checkpoint_from_config=True, memory_module="utils.memory")
    return RunnerSpec(**{**defaults, **fields})


def single_prompt_spec(**fields: Any) -> RunnerSpec:
    """Self-Forcing's layout, kept by Rolling Forcing: ``inference.py`` merges ``configs/default_config.yaml``
    under the config, builds ``pipeline.CausalInferencePipeline`` and loads ``generator_ema`` (``--use_ema``);
    one prompt per video, so the prompts are routed here (``PromptRouter``)."""
    defaults: dict[str, Any] = dict(
        pipeline="pipeline:CausalInferencePipeline", method="inference", kind="single",
        base_config="configs/default_config.yaml", use_ema=True, memory_module="demo_utils.memory",
        low_memory_kwarg=True)
    return RunnerSpec(**{**defaults, **fields})


# --------------------------------------------------------------------------------------------- the time axis


@dataclass(frozen=True)
class SwitchPlan:
    """Latent frames to generate and the prompt switches handed to (or routed into) the authors' loop."""

    num_latent_frames: int
    block: int
    requested: tuple[int, ...]  # floor(i * seconds * fps / 4): where prompt i+1 is asked to start
    passed: tuple[int, ...]  # what the loop is given: ``requested`` ("authors") or floored to blocks ("floor")
    starts: tuple[int, ...]  # block starts where prompts 2..N begin: the first block start >= each ``passed``

    @property
    def pixel_starts(self) -> list[int]:
        return [latent_to_pixel(s) for s in self.starts]


def latent_to_pixel(latent: int, stride: int = STRIDE) -> int:
    """First pixel frame decoded from latent ``latent``: 0 for 0, ``stride * latent - (stride - 1)`` after."""
    return 0 if latent == 0 else stride * latent - (stride - 1)


def plan_switches(num_prompts: int, seconds: float, fps: float = NATIVE_FPS, block: int = 3,
                  align: str = "authors", stride: int = STRIDE) -> SwitchPlan:
    """Latent frames and switches for ``num_prompts`` segments of ``seconds`` at ``fps``.

    LongLive's and MemFlow's loops switch at the first block whose start is >= the given index, and their
    configs give 40, 80, 120, 160, 200 for 6 x 10 s: the prompts really start at 42, 81, 120, 162, 201
    (pixels 165, 321, 477, 645, 801). ``align="floor"`` hands block multiples instead (39, 78, 120, 159, 198:
    narrastream's native plan). 240 latent frames either way (957 pixel frames).
    """
    if num_prompts < 1:
        raise ValueError("the request has no prompts")
    if align not in ALIGNS:
        raise ValueError(f"switch alignment must be one of {ALIGNS}, got {align!r}")
    pixels = seconds * fps
    if seconds <= 0 or abs(pixels - round(pixels)) > 1e-6:
        raise ValueError(f"{seconds} s at {fps} fps is not a whole, positive number of frames")
    per = int(round(pixels))
    num_latent = (num_prompts * per // stride) // block * block
    if num_latent < block:
        raise ValueError(f"{num_prompts} x {seconds} s gives fewer latent frames than one block of {block}")
    requested = [i * per // stride for i in range(1, num_prompts)]
    passed = requested if align == "authors" else [r // block * block for r in requested]
    starts = [-(-p // block) * block for p in passed]
    bounds = [0, *starts, num_latent]
    if any(b <= a for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"segments of {seconds} s collapse on blocks of {block} latent frames: "
                         f"switches {starts} in {num_latent} latent frames")
    return SwitchPlan(num_latent, block, tuple(requested), tuple(passed), tuple(starts))


def pure_starts(events: Sequence[int], block: int, window_blocks: int, rule: str) -> list[int]:
    """Where each new prompt governs every denoising call of its frames, from the routing events.

    With one block per call this is the event itself. With a rolling window of W blocks (Rolling
    Forcing), block b is denoised in the W windows whose newest block is b .. b+W-1: routing by the
    newest block gives every call of block ``event`` the new prompt; routing by the oldest block only
    does so from ``event + (W-1) blocks`` on.
    """
    shift = (window_blocks - 1) * block if rule == "oldest" else 0
    return [int(e) + shift for e in events]


# --------------------------------------------------------------------------------------------- the request


@dataclass(frozen=True)
class Request:
    prompts: list[str]
    seed: int
    output_path: Path
    sidecar_path: Path | None
    fps: float
    seconds_per_segment: float
    script_id: int | None
    device: str
    warnings: list[str] = field(default_factory=list)


def read_request(path: str | Path) -> Request:
    """The request file, checked field by field (a bad one exits 2 naming the file and the field)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise RunnerError(f"cannot read the request {path}: {exc}", EXIT_SETUP) from exc
    except json.JSONDecodeError as exc:
        raise RunnerError(f"{path}:{exc.lineno}: the request is not valid JSON ({exc.msg})", EXIT_SETUP) from exc
    if not isinstance(data, dict):
        raise RunnerError(f"{path}: the request must be a JSON object", EXIT_SETUP)

    def bad(name: str, why: str) -> RunnerError:
        return RunnerError(f"{path}: field {name!r} {why}", EXIT_SETUP)

    prompts = data.get("prompts")
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise bad("prompts", "must be a non-empty list of non-empty strings")
    if not isinstance(data.get("output_path"), str) or not data["output_path"]:
        raise bad("output_path", "must be a path")
    seed = data.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise bad("seed", f"must be an integer, got {seed!r}")
    numbers = {}
    for name, default in (("fps", NATIVE_FPS), ("seconds_per_segment", 10.0)):
        value = data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise bad(name, f"must be a positive number, got {value!r}")
        numbers[name] = float(value)
    warnings = []
    if numbers["fps"] != NATIVE_FPS:
        warnings.append(f"requested {numbers['fps']:g} fps; the authors' code writes {NATIVE_FPS} fps, so the "
                        f"segments are planned at {NATIVE_FPS} fps")
    size = (data.get("width"), data.get("height"))
    if size not in ((NATIVE_WIDTH, NATIVE_HEIGHT), (None, None)):
        warnings.append(f"requested {size[0]}x{size[1]}; the authors' code writes {NATIVE_WIDTH}x{NATIVE_HEIGHT}")
    sidecar = data.get("sidecar_path")
    return Request(prompts=[str(p) for p in prompts], seed=seed, output_path=Path(data["output_path"]).resolve(),
                   sidecar_path=Path(sidecar).resolve() if sidecar else None, fps=numbers["fps"],
                   seconds_per_segment=numbers["seconds_per_segment"], script_id=data.get("script_id"),
                   device=str(data.get("device") or "auto"), warnings=warnings)


# --------------------------------------------------------------------------------------------- the checkout


@dataclass
class Options:
    repo: Path
    config: Path | None
    checkpoint: str | None
    lora: str | None
    device: str | None
    align: str
    window_rule: str
    overrides: list[str]


def check_checkout(spec: RunnerSpec, repo: str | None) -> Path:
    var = f"{spec.env_prefix}_REPO"
    if not repo:
        raise RunnerError(f"{spec.name}: no checkout given; set {var} (or model.params.env.{var}) or pass --repo "
                          f"to a clone of github.com/{spec.upstream} (see {spec.readme})", EXIT_SETUP)
    path = Path(repo).expanduser().resolve()
    missing = [m for m in spec.markers if not (path / m).is_file()]
    if missing:
        raise RunnerError(f"{spec.name}: {path} is not a {spec.upstream} checkout (missing {', '.join(missing)}); "
                          f"see {spec.readme}{spec.notice}", EXIT_SETUP)
    return path


def load_config(spec: RunnerSpec, opts: Options) -> Any:
    """The authors' config (merged over their ``default_config.yaml`` where their script does so), then the
    spec's and the user's dotlist overrides."""
    from omegaconf import OmegaConf

    if opts.config is None:
        raise RunnerError(f"{spec.name}: no config given; pass --config or set {spec.env_prefix}_CONFIG"
                          f"{spec.notice}", EXIT_SETUP)
    layers = []
    for part in ([spec.base_config] if spec.base_config else []) + [str(opts.config)]:
        path = Path(part) if Path(part).is_absolute() else opts.repo / part
        if not path.is_file():
            raise RunnerError(f"{spec.name}: config {path} not found", EXIT_SETUP)
        layers.append(OmegaConf.load(path))
    try:
        layers.append(OmegaConf.from_dotlist([*spec.overrides, *opts.overrides]))
    except Exception as exc:  # noqa: BLE001 - omegaconf raises several grammar errors
        raise RunnerError(f"{spec.name}: bad --set override: {exc}", EXIT_SETUP) from exc
    return OmegaConf.merge(*layers)


def weight_paths(spec: RunnerSpec, cfg: Any, opts: Options) -> tuple[Weight, Weight | None]:
    """The checkpoint and LoRA to load: flag > config (where the authors' script reads it) > spec default."""
    ckpt = spec.checkpoint
    if opts.checkpoint:
        ckpt = Weight(opts.checkpoint, ckpt.hub_repo, ckpt.hub_file)
    elif spec.checkpoint_from_config and cfg.get("generator_ckpt"):
        ckpt = Weight(str(cfg.generator_ckpt), ckpt.hub_repo, ckpt.hub_file)
    lora = None
    if spec.lora is not None and cfg.get("adapter"):
        lora = spec.lora
        if opts.lora:
            lora = Weight(opts.lora, lora.hub_repo, lora.hub_file)
        elif cfg.get("lora_ckpt"):
            lora = Weight(str(cfg.lora_ckpt), lora.hub_repo, lora.hub_file)
    return ckpt, lora


def check_weights(spec: RunnerSpec, repo: Path, weights: Sequence[Weight]) -> None:
    missing = [w for w in weights if not w.present(repo)]
    if missing:
        lines = "\n".join(f"  {w.resolve(repo)}  <- huggingface.co/{w.hub_repo} ({w.hub_file})" for w in missing)
        raise RunnerError(f"{spec.name}: {len(missing)} weight file(s) missing:\n{lines}\n"
                          f"download them as {spec.readme} says (the authors' README, paths relative to the "
                          f"checkout)", EXIT_SETUP)


def checkout_commit(repo: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def import_from(spec: RunnerSpec, target: str) -> Any:
    """``module:attr`` from the checkout; a failure is a set-up error (wrong python, missing dependency)."""
    module_name, _, attr = target.partition(":")
    try:
        module = __import__(module_name, fromlist=[attr] if attr else [])
        return getattr(module, attr) if attr else module
    except Exception as exc:  # noqa: BLE001 - any import-time failure of their code is a set-up problem
        raise RunnerError(f"{spec.name}: could not import {target} from the checkout: {exc!r}; run this runner "
                          f"with the python of the authors' environment ({spec.env_prefix}_PYTHON, see "
                          f"{spec.readme})", EXIT_SETUP, traceback.format_exc(limit=3)) from exc


# --------------------------------------------------------------------------------------------- instrumentation


class Clock:
    """Seconds per section, CUDA-synchronised at both ends so GPU work is charged where it ran."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.totals: dict[str, float] = {}
        self.in_recache = False

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        self.sync()
        started = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - started


class PromptRouter:
    """Hands the authors' one-prompt loop the prompt in force, call by call (a hard switch).

    Their loop calls the generator with keyword arguments, ``current_start`` in tokens. A denoising call
    gets the prompt of the block chosen by ``rule`` (its newest or oldest block; the same with one block
    per call); a context call (timestep == ``context_noise`` or ``updating_cache``) keeps the prompt in
    force, so a block's clean K/V are committed under the prompt that generated it. At a change the
    cross-attention caches are marked stale, so the new prompt's K/V are computed on the next call; the
    self-attention cache is kept (IAMFlow's ``no_transition``, narrastream's ``hard`` switch).
    """

    def __init__(self, conds: Sequence[Any], switches: Sequence[int], block: int, frame_seq_length: int,
                 context_noise: float, rule: str) -> None:
        self.conds, self.switches, self.block = list(conds), list(switches), block
        self.frame_seq_length, self.context_noise, self.rule = frame_seq_length, context_noise, rule
        self.active = 0
        self.events: list[int] = []

    def route(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        if "conditional_dict" not in kwargs or "noisy_image_or_video" not in kwargs:
            raise RuntimeError("the authors' loop called the generator without conditional_dict / "
                               "noisy_image_or_video keywords; this runner cannot route prompts through it")
        timestep = kwargs.get("timestep")
        context = bool(kwargs.get("updating_cache")) or (
            timestep is not None and bool((timestep == self.context_noise).all()))
        if not context:
            start = int(kwargs.get("current_start", 0)) // self.frame_seq_length
            frames = int(kwargs["noisy_image_or_video"].shape[1])
            block_start = start if self.rule == "oldest" else start + frames - self.block
            segment = sum(1 for s in self.switches if block_start >= s)
            if segment < self.active:
                raise RuntimeError(f"the loop went back to prompt {segment + 1} at latent frame {block_start}")
            if segment != self.active:
                for entry in kwargs.get("crossattn_cache") or []:
                    entry["is_init"] = False
                self.events.extend([block_start] * (segment - self.active))
                self.active = segment
        kwargs["conditional_dict"] = self.conds[self.active]
        return kwargs


def wrap_method(obj: Any, name: str, around: Callable[[Callable[..., Any], tuple, dict], Any]) -> None:
    """Shadow ``obj.name`` by an instance attribute calling ``around(original, args, kwargs)``."""
    original = getattr(obj, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return around(original, args, kwargs)

    setattr(obj, name, wrapper)


def instrument(pipeline: Any, clock: Clock, router: PromptRouter | None, recaches: list[int]) -> None:
    """Timing (and, for one-prompt loops, prompt routing) around the authors' generator, text encoder, VAE
    decode and KV re-cache, by instance attributes; their classes and loops stay as released."""

    def dit(original: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        if router is not None:
            kwargs = router.route(kwargs)
        with clock.section("recache_dit" if clock.in_recache else "dit"):
            return original(*args, **kwargs)

    cache: dict[Any, Any] = {}

    def text(original: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        prompts = kwargs.get("text_prompts", args[0] if args else None)
        key = tuple(prompts) if isinstance(prompts, (list, tuple)) else prompts
        if key not in cache:
            with clock.section("text_encode"):
                cache[key] = original(*args, **kwargs)
        return cache[key]

    def decode(original: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        with clock.section("output_decode"):
            return original(*args, **kwargs)

    def recache(original: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        recaches.append(int(kwargs.get("current_start_frame", args[1] if len(args) > 1 else -1)))
        clock.in_recache = True
        try:
            with clock.section("recache"):
                return original(*args, **kwargs)
        finally:
            clock.in_recache = False

    wrap_method(pipeline.generator, "forward", dit)
    wrap_method(pipeline.text_encoder, "forward", text)
    wrap_method(pipeline.vae, "decode_to_pixel", decode)
    if hasattr(pipeline, "_recache_after_switch"):
        wrap_method(pipeline, "_recache_after_switch", recache)


# --------------------------------------------------------------------------------------------- generation


def _device(torch: Any, requested: str) -> Any:
    if requested in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def _load_generator(torch: Any, pipeline: Any, ckpt: Path, use_ema: bool) -> dict[str, Any]:
    """Their checkpoint layout: ``generator`` or ``generator_ema`` (FSDP prefixes stripped, non-strict, as
    their EMA branch does); the plain ``generator`` loads strictly."""
    state = torch.load(ckpt, map_location="cpu")
    key = "generator_ema" if use_ema else "generator"
    if key not in state:
        raise RunnerError(f"checkpoint {ckpt} has no {key!r} entry (has {sorted(state)[:6]})", EXIT_SETUP)
    if not use_ema:
        pipeline.generator.load_state_dict(state[key])
        return {"key": key, "missing": 0, "unexpected": 0}
    cleaned = {k.replace("_fsdp_wrapped_module.", ""): v for k, v in state[key].items()}
    missing, unexpected = pipeline.generator.load_state_dict(cleaned, strict=False)
    return {"key": key, "missing": len(missing), "unexpected": len(unexpected)}


def _apply_lora(spec: RunnerSpec, torch: Any, pipeline: Any, cfg: Any, lora: Path) -> None:
    configure = import_from(spec, "utils.lora_utils:configure_lora_for_model")
    peft = import_from(spec, "peft")
    pipeline.generator.model = configure(pipeline.generator.model, model_name="generator",
                                         lora_config=cfg.adapter, is_main_process=True)
    state = torch.load(lora, map_location="cpu")
    if isinstance(state, dict) and "generator_lora" in state:
        state = state["generator_lora"]
    peft.set_peft_model_state_dict(pipeline.generator.model, state)
    pipeline.is_lora_enabled = True


def generate(spec: RunnerSpec, req: Request, opts: Options, cfg: Any, plan: SwitchPlan, ckpt: Path,
             lora: Path | None) -> dict[str, Any]:
    """Build the authors' pipeline as their inference script does, run it, return frames and facts."""
    import torch

    set_seed = import_from(spec, "utils.misc:set_seed")
    pipeline_cls = import_from(spec, spec.pipeline)
    device = _device(torch, opts.device or req.device)
    cuda = device.type == "cuda"
    warnings = list(req.warnings)
    if not cuda:
        warnings.append("running the authors' code on CPU: they target CUDA (flash attention, bf16)")
    clock = Clock(cuda)
    loaded = time.perf_counter()
    try:
        set_seed(req.seed)  # before the pipeline is built, as their scripts do; the noise is drawn after
        low_memory = False
        if cuda and spec.memory_module:
            free_gb = import_from(spec, f"{spec.memory_module}:get_cuda_free_memory_gb")
            low_memory = free_gb(device) < 40
        torch.set_grad_enabled(False)
        pipeline = pipeline_cls(cfg, device=device)
        use_ema = bool(cfg.get("use_ema", False)) if spec.use_ema is None else spec.use_ema
        load_report = _load_generator(torch, pipeline, ckpt, use_ema)
        if lora is not None:
            _apply_lora(spec, torch, pipeline, cfg, lora)
        pipeline = pipeline.to(dtype=torch.bfloat16)
        if low_memory:
            swap = import_from(spec, f"{spec.memory_module}:DynamicSwapInstaller")
            swap.install_model(pipeline.text_encoder, device=device)
        else:
            pipeline.text_encoder.to(device=device)
        pipeline.generator.to(device=device)
        pipeline.vae.to(device=device)
        model_load = time.perf_counter() - loaded
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)

        recaches: list[int] = []
        window_blocks = len(cfg.denoising_step_list) if spec.rolling_window else 1
        router = None
        if spec.kind == "single":
            router = PromptRouter([], plan.passed, plan.block, int(pipeline.frame_seq_length),
                                  float(cfg.get("context_noise", 0)), opts.window_rule)
        instrument(pipeline, clock, router, recaches)
        started = time.perf_counter()
        if router is not None:  # encoded once each (timed); their own call for prompt 1 hits the cache
            router.conds = [pipeline.text_encoder(text_prompts=[p]) for p in req.prompts]
        noise = torch.randn([1, plan.num_latent_frames, *LATENT_SHAPE], device=device, dtype=torch.bfloat16)
        entry = getattr(pipeline, spec.method)
        kwargs: dict[str, Any] = {"noise": noise, "return_latents": False}
        if spec.kind == "interactive":
            kwargs.update(text_prompts_list=[[p] for p in req.prompts], switch_frame_indices=list(plan.passed))
        else:
            kwargs["text_prompts"] = [req.prompts[0]]
        if spec.low_memory_kwarg and "low_memory" in inspect.signature(entry).parameters:
            kwargs["low_memory"] = low_memory
        with clock.section("inference"):
            video = entry(**kwargs)
        frames = (video[0].permute(0, 2, 3, 1).cpu() * 255.0).to(torch.uint8).numpy()
        end_to_end = time.perf_counter() - started
    except RunnerError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever their code raises is reported with its traceback
        raise RunnerError(f"{spec.name}: the authors' code failed: {exc!r}", EXIT_AUTHORS,
                          traceback.format_exc(limit=-8)) from exc

    events = router.events if router is not None else recaches
    starts = pure_starts(events, plan.block, window_blocks, opts.window_rule)
    expected = pure_starts(plan.starts, plan.block, window_blocks, opts.window_rule)
    if len(starts) != len(req.prompts) - 1:
        raise RunnerError(f"{spec.name}: {len(req.prompts)} prompts but the authors' loop switched "
                          f"{len(starts)} time(s) (at latent frames {events})", EXIT_AUTHORS)
    if starts != expected:
        warnings.append(f"the loop switched at latent frames {starts}, the plan said {expected}")
    t = clock.totals
    core = t.get("dit", 0.0)
    loop = t.get("inference", 0.0) - t.get("output_decode", 0.0)
    if spec.kind == "interactive":  # their loop encodes the prompts inside the entry point
        loop -= t.get("text_encode", 0.0)
    timings = {"end_to_end": end_to_end, "model_load": model_load, "text_encode": t.get("text_encode", 0.0),
               "loop": loop, "core_dit": core, "switch": t.get("recache", 0.0),
               "method_overhead": loop - core, "output_decode": t.get("output_decode", 0.0),
               "pixel_fps": len(frames) / end_to_end if end_to_end > 0 else 0.0}
    peak = (torch.cuda.max_memory_allocated(device) if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    span = (window_blocks - 1) * plan.block  # the blocks denoised under both prompts
    mixed = [([s, s + span] if opts.window_rule == "oldest" else [max(0, s - span), s]) for s in events] if span else []
    return {
        "frames": frames, "latent_starts": starts, "timings": {k: round(v, 4) for k, v in timings.items()},
        "peak_memory_bytes": int(peak), "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "device_count": torch.cuda.device_count() if cuda else 0, "warnings": warnings,
        "facts": {"routing_events": list(events), "window_blocks": window_blocks, "mixed_latent_ranges": mixed,
                  "low_memory": low_memory, "checkpoint_load": load_report, "use_ema": use_ema},
    }


def write_mp4(path: Path, frames: Any, fps: float) -> None:
    """(T, H, W, 3) uint8 RGB -> H.264 yuv420p mp4 at crf 18 (narrastream's default), atomically."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.mp4")
    height, width = int(frames.shape[1]), int(frames.shape[2])
    try:
        with av.open(str(tmp), "w") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"crf": str(CRF)}
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------- entry point


def run(spec: RunnerSpec, req: Request, opts: Options) -> dict[str, Any]:
    """One request, end to end; returns the program sidecar."""
    wall = time.perf_counter()
    os.chdir(opts.repo)  # the authors' code reads wan_models/... and checkpoints/... relative to the checkout
    sys.path.insert(0, str(opts.repo))
    cfg = load_config(spec, opts)
    block = int(cfg.get("num_frame_per_block", 3))
    try:
        plan = plan_switches(len(req.prompts), req.seconds_per_segment, NATIVE_FPS, block, opts.align)
    except ValueError as exc:
        raise RunnerError(f"{spec.name}: cannot plan {len(req.prompts)} x {req.seconds_per_segment} s: {exc}",
                          EXIT_SETUP) from exc
    if spec.rolling_window and opts.window_rule == "oldest":
        span = (len(cfg.denoising_step_list) - 1) * block
        bounds = [*plan.starts, plan.num_latent_frames]
        if any(s + span >= b for s, b in zip(plan.starts, bounds[1:])):
            raise RunnerError(f"{spec.name}: with --window-prompt oldest a prompt governs whole windows only "
                              f"{span} latent frames after its switch; segments of {req.seconds_per_segment} s "
                              f"are too short for that (switches {list(plan.starts)}); use newest", EXIT_SETUP)
    cfg.num_output_frames = plan.num_latent_frames
    cfg.seed = req.seed
    if spec.kind == "interactive":
        cfg.switch_frame_indices = ", ".join(str(s) for s in plan.passed)
    ckpt, lora = weight_paths(spec, cfg, opts)
    check_weights(spec, opts.repo, [ckpt, *([lora] if lora else []), *spec.extra_weights])
    commit = checkout_commit(opts.repo)
    for w in req.warnings:
        print(f"[{spec.name}] warning: {w}", file=sys.stderr, flush=True)
    print(f"[{spec.name}] {len(req.prompts)} prompts, {plan.num_latent_frames} latent frames, switches "
          f"{list(plan.passed)} handed to {spec.pipeline}.{spec.method} (seed {req.seed})", flush=True)
    result = generate(spec, req, opts, cfg, plan, ckpt.resolve(opts.repo),
                      lora.resolve(opts.repo) if lora else None)
    write_mp4(req.output_path, result["frames"], NATIVE_FPS)
    warnings = result["warnings"]
    if commit and not commit.startswith(spec.pinned_commit):
        warnings.append(f"checkout at {commit}, runner pinned at {spec.pinned_commit}")
    timings = dict(result["timings"], process_wall=round(time.perf_counter() - wall, 4))
    return {
        "switch_frames": [latent_to_pixel(s) for s in result["latent_starts"]],
        "timings": timings,
        "peak_memory_bytes": result["peak_memory_bytes"],
        "device": result["device"],
        "device_count": result["device_count"],
        "official": {
            "runner": spec.name, "script_id": req.script_id, "upstream": spec.upstream, "repo": str(opts.repo),
            "commit": commit, "pinned_commit": spec.pinned_commit,
            "config": str(opts.config if opts.config.is_absolute() else opts.repo / opts.config),
            "overrides": [*spec.overrides, *opts.overrides], "entry_point": f"{spec.pipeline}.{spec.method}",
            "checkpoint": str(ckpt.resolve(opts.repo)), "lora": str(lora.resolve(opts.repo)) if lora else None,
            "num_latent_frames": plan.num_latent_frames, "block": plan.block, "switch_align": opts.align,
            "window_rule": opts.window_rule, "latent_switch_requested": list(plan.requested),
            "latent_switch_passed": list(plan.passed), "latent_switch_starts": result["latent_starts"],
            "num_frames": int(len(result["frames"])), "fps": NATIVE_FPS, "crf": CRF,
            "warnings": warnings, **result["facts"],
        },
    }


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return default if value is None or value.strip().lower() in UNSET else value


def main(spec: RunnerSpec, argv: Sequence[str] | None = None) -> int:
    """The runner's command line; flags override ``<PREFIX>_*`` environment variables."""
    p = spec.env_prefix
    parser = argparse.ArgumentParser(prog=f"{spec.name} runner",
                                     description=f"Run github.com/{spec.upstream} for one narrastream request.")
    parser.add_argument("request")
    parser.add_argument("--repo", default=_env(f"{p}_REPO"), help=f"the authors' checkout [{p}_REPO]")
    parser.add_argument("--config", default=_env(f"{p}_CONFIG", spec.config), help=f"their config [{p}_CONFIG]")
    parser.add_argument("--checkpoint", default=_env(f"{p}_CHECKPOINT"), help=f"generator weights [{p}_CHECKPOINT]")
    parser.add_argument("--lora", default=_env(f"{p}_LORA"), help=f"LoRA weights [{p}_LORA]")
    parser.add_argument("--device", default=_env(f"{p}_DEVICE"), help=f"torch device [{p}_DEVICE, else the request]")
    parser.add_argument("--switch-align", choices=ALIGNS, default=_env(f"{p}_SWITCH_ALIGN", "authors"))
    parser.add_argument("--window-prompt", choices=WINDOW_RULES, default=_env(f"{p}_WINDOW_PROMPT", "newest"))
    parser.add_argument("--set", action="append", default=shlex.split(_env(f"{p}_SET", "") or ""),
                        metavar="KEY=VALUE", help=f"config override, repeatable [{p}_SET, space-separated]")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        req = read_request(args.request)
        repo = check_checkout(spec, args.repo)
        opts = Options(repo=repo, config=Path(args.config) if args.config else None, checkpoint=args.checkpoint,
                       lora=args.lora, device=args.device, align=args.switch_align,
                       window_rule=args.window_prompt, overrides=list(args.set))
        sidecar = run(spec, req, opts)
    except RunnerError as exc:
        if exc.detail:
            print(f"--- traceback (last frames) ---\n{exc.detail.rstrip()}\n---", file=sys.stderr)
        print(str(exc), file=sys.stderr, flush=True)
        return exc.code
    if req.sidecar_path:
        req.sidecar_path.parent.mkdir(parents=True, exist_ok=True)
        req.sidecar_path.write_text(json.dumps(sidecar, indent=2))
    print(f"[{spec.name}] wrote {req.output_path}: {sidecar['official']['num_frames']} frames, switch frames "
          f"{sidecar['switch_frames']}, timings {sidecar['timings']}", flush=True)
    return 0
