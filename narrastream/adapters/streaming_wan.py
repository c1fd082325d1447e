"""``streaming_wan``: the causal Wan2.1-T2V-1.3B streaming generator (:mod:`narrastream.streaming`)
as an adapter. Self-Forcing, LongLive, MemFlow, the IAMFlow backbone, Deep Forcing and Rolling Forcing are
configurations of it (``eval_configs/model/``): cache, transition, memory and schedule policies plus their
checkpoint files.

Weights (``weights``): ``dit`` (a ``.safetensors``/``.pt`` generator checkpoint, or IAMFlow's FP8
safetensors), optional ``lora`` (PEFT, merged into the base before quantization), and ``wan``, the
Diffusers-format Wan2.1-T2V-1.3B folder for the umT5 encoder and the VAE. Each is looked for as an
explicit path, under ``weights.dir`` (else ``$NARRASTREAM_WEIGHTS``), in ``~/.cache/narrastream/weights``,
in the Hugging Face hub cache, then downloaded from the publisher's hub repository unless
``weights.allow_download=false`` or ``HF_HUB_OFFLINE=1``. A file that is not there and not downloaded is
a :class:`~narrastream.metrics.backbones.WeightsNotFoundError` naming the file, where it goes and the key.
``size: tiny`` builds seeded tiny random-weight components instead (``preset=tiny``).

IAMFlow's characters (``iam.entities``) come from the released LLM extractor (``llm``), from the prompts
alone (``prompt_names``, offline), or, as an explicitly named oracle ablation only, from the evaluator's
narrative annotations (``oracle``); :meth:`StreamingWanGenerator.identity` says which.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from narrastream.adapters.base import (
    AdapterConfigError,
    Capabilities,
    GeneratedVideo,
    GenerationError,
    GenerationRequest,
    Generator,
    PromptSwitching,
)
from narrastream.data.script import Script
from narrastream.metrics.backbones.weights import (
    WEIGHTS_ENV,
    FolderSpec,
    WeightSpec,
    resolve_folder,
    resolve_weights,
)

log = logging.getLogger(__name__)
WAN_DIFFUSERS_HUB = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
#: the catalogue name of the Wan2.1-T2V-1.3B Diffusers folder (``narrastream weights download NAME``)
WAN_FOLDER_NAME = "wan2.1_t2v_1.3b"
ENTITY_SOURCES = ("llm", "prompt_names", "oracle")
ORACLE_MARKER = "oracle"  # the model name of a run whose generator reads the evaluator's annotations contains it
ORACLE_CONFIG = "model=iamflow_oracle (name iamflow+oracle-entities)"


class StreamingWanGenerator(Generator):
    capabilities = Capabilities(switching=PromptSwitching.NATIVE, fps=16.0, resolution=(832, 480), gpus=1)

    def __init__(self, method: str, cache: Mapping[str, Any], transition: Mapping[str, Any],
                 memory: Mapping[str, Any] | None = None, block_frames: int = 3,
                 denoising_steps: Sequence[int] = (1000, 750, 500, 250), size: str = "full", seed: int = 0,
                 weights: Mapping[str, Any] | None = None, fp8: bool = False, dtype: str = "bfloat16",
                 device: str = "auto", crf: int = 18, architecture: Mapping[str, Any] | None = None,
                 iam: Mapping[str, Any] | None = None, model_name: str | None = None,
                 schedule: Mapping[str, Any] | None = None) -> None:
        from narrastream.streaming.pipeline import StreamingSpec

        if size not in ("full", "tiny"):
            raise AdapterConfigError(f"model.params.size={size!r}: expected full or tiny")
        self.method = method
        try:
            self.spec = StreamingSpec.from_config({"cache": dict(cache), "transition": dict(transition),
                                                   "memory": dict(memory or {}), "block_frames": block_frames,
                                                   "denoising_steps": list(denoising_steps),
                                                   "schedule": dict(schedule or {})})
        except (TypeError, ValueError) as exc:  # a bad policy value or key: a config error, exit 2
            raise AdapterConfigError(f"model.params ({method}): {exc}") from exc
        self.size, self.seed, self.fp8, self.crf = size, int(seed), bool(fp8), int(crf)
        self.weights = dict(weights or {})
        self.dtype = getattr(torch, dtype) if size == "full" else torch.float32
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                                   else ("cpu" if device == "auto" else device))
        self.architecture = dict(architecture or {})  # WanConfig overrides (default: Wan2.1-T2V-1.3B)
        self.iam = dict(iam or {})  # IAMFlow's identity agents (memory policy "identity")
        self.model_name = model_name
        self.entities = str(self.iam.get("entities", "llm"))
        _check_entity_source(self.entities, model_name)
        verifier = dict(self.iam.get("verifier") or {})
        if verifier.get("enabled") and verifier.get("mode", "async") == "async":
            lag, most = int(verifier.get("lag_blocks", 1)), self.spec.cache.local_budget // self.spec.block_frames - 1
            if not 0 <= lag <= most:  # a lagged choice needs its block still in the cache
                raise AdapterConfigError(
                    f"model.params.iam.verifier.lag_blocks={lag}: must be 0..{most} (the cache keeps "
                    f"{self.spec.cache.local_budget} local latent frames, {self.spec.block_frames} per block)")
        if verifier.get("enabled"):  # bad bounds are bad input, found before any model loads
            budget, breaker = verifier.get("max_wait_per_video_s"), verifier.get("breaker_timeouts", 3)
            if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                                       or not budget > 0):
                raise AdapterConfigError(f"model.params.iam.verifier.max_wait_per_video_s={budget!r}: "
                                         "expected a number of seconds > 0, or null (no bound)")
            if isinstance(breaker, bool) or not isinstance(breaker, int) or breaker < 0:
                raise AdapterConfigError(f"model.params.iam.verifier.breaker_timeouts={breaker!r}: "
                                         "expected an integer >= 0 (0: the breaker never opens)")
        self._oracle: Any = None  # the evaluator's annotations, read once (iam.entities=oracle only)
        self._iam_judges: dict[str, Any] = {}
        self._digests: dict[str, str] = {}
        self.pipeline = None
        self.loaded: dict[str, Any] = {}

    # ------------------------------------------------------------------ loading
    def prepare(self, scripts: Sequence[Script], *, total_scripts: int | None = None) -> None:
        if self.pipeline is not None:
            return
        from narrastream.streaming.pipeline import StreamingWanPipeline

        if self.spec.memory == "identity":  # the agents' sources first: a config error stops before any weight loads
            if self.entities == "llm":
                self._iam_judge("llm")
            elif self.entities == "oracle":
                self._check_oracle_covers(scripts)
            if (self.iam.get("verifier") or {}).get("enabled", False):
                self._iam_judge("verifier")

        if self.size == "tiny":
            from narrastream.streaming.tiny import build_tiny

            dit, text_encoder, decoder = build_tiny(self.seed, self.device)
            if self.fp8:  # the same FP8 code path as the real model: bf16 weights, FP8 attention linears
                from narrastream.streaming.fp8 import quantize_model

                dit = dit.to(torch.bfloat16)
                quantize_model(dit)
            self.loaded = {"size": "tiny", "seed": self.seed, "fp8": self.fp8}
        else:
            dit, text_encoder, decoder = self._load_full()
        self.pipeline = StreamingWanPipeline(dit, text_encoder, decoder, self.spec)

    def _allow_download(self) -> bool:
        return bool(self.weights.get("allow_download", True))

    def _file(self, role: str) -> Path:
        entry = self.weights.get(role) or {}
        return resolve_weights(weight_file_spec(self.method, role, entry), path=entry.get("path"),
                               weights_dir=self.weights.get("dir"), allow_download=self._allow_download())

    def _wan_folder(self) -> Path:
        entry = self.weights.get("wan") or {}
        return resolve_folder(wan_folder_spec(entry), path=entry.get("path"), weights_dir=self.weights.get("dir"),
                              allow_download=self._allow_download())

    def _load_full(self):
        from narrastream.streaming.fp8 import is_fp8_checkpoint, load_fp8_checkpoint, quantize_model
        from narrastream.streaming.lora import merge_lora
        from narrastream.streaming.text_encoder import UMT5TextEncoder
        from narrastream.streaming.vae import StreamingWanDecoder
        from narrastream.streaming.wan_model import CausalWanTransformer, WanConfig, load_wan_state_dict

        dit_path = self._file("dit")  # every file is resolved before anything heavy is loaded
        lora_path = self._file("lora") if self.weights.get("lora") else None
        wan = self._wan_folder()
        dit_entry = self.weights.get("dit") or {}
        with torch.device("meta"):
            dit = CausalWanTransformer(WanConfig(**self.architecture))
        dit = dit.to_empty(device="cpu")
        if is_fp8_checkpoint(dit_path):
            if lora_path is not None:
                raise ValueError(f"{dit_path} is already FP8: merge the LoRA before quantization, not after")
            load_fp8_checkpoint(dit, dit_path)
        else:
            load_wan_state_dict(dit, dit_path, key=dit_entry.get("key"), strip_prefix=dit_entry.get("strip_prefix"),
                                drop_key_parts=tuple(dit_entry.get("drop_key_parts") or ()))
            if lora_path is not None:
                dit = merge_lora(dit, lora_path)
            dit = dit.to(self.dtype)
            if self.fp8:
                quantize_model(dit)
        dit = dit.to(self.device).eval()
        text_encoder = UMT5TextEncoder.from_diffusers_layout(wan, dtype=self.dtype, device=self.device)
        decoder = StreamingWanDecoder.from_diffusers_layout(wan, dtype=torch.float32, device=self.device)
        self.loaded = {"dit": str(dit_path), "lora": str(lora_path) if lora_path else None, "wan": str(wan),
                       "fp8": self.fp8 or is_fp8_checkpoint(dit_path)}
        return dit, text_encoder, decoder

    def _identity_agent(self, script: Script):
        """IAMFlow's agent for one script (state never crosses scripts), with its verifier when enabled."""
        from narrastream.iamflow.agent import VISUAL_WEIGHT, IdentityAgent

        disambiguate = None
        if self.entities == "oracle":
            characters = self._oracle_characters(script)
        elif self.entities == "prompt_names":
            from narrastream.iamflow.prompt_names import prompt_name_entities

            characters = prompt_name_entities(script.prompts)
        else:  # llm (checked in __init__)
            from narrastream.iamflow.entities import EntityExtractionError, extract_script_entities

            try:
                characters, disambiguate = extract_script_entities(self._iam_judge("llm"), script.prompts)
            except EntityExtractionError as exc:
                raise GenerationError(f"{self.method}: script {script.id}: {exc}") from exc
        settings = dict(self.iam.get("verifier") or {})
        verifier = None
        if settings.get("enabled", False):
            from narrastream.iamflow.verifier import VisualVerifier

            verifier = VisualVerifier(self._iam_judge("verifier"), mode=str(settings.get("mode", "async")),
                                      timeout_s=float(settings.get("timeout_s", 30.0)),
                                      max_pending=int(settings.get("max_pending", 8)),
                                      frames=tuple(settings.get("frames", (0, 4, 8))),
                                      size=int(settings.get("size", 256)),
                                      max_wait_per_video_s=settings.get("max_wait_per_video_s"),
                                      breaker_timeouts=int(settings.get("breaker_timeouts", 3)))
        return IdentityAgent(script.prompts, characters, capacity=int(self.iam.get("capacity", 4)),
                             min_multi_entity=int(self.iam.get("min_multi_entity", 2)),
                             max_archived_frames=self.iam.get("max_archived_frames", 16),
                             retention=str(self.iam.get("retention", "entity_score")), verifier=verifier,
                             lag_blocks=int(settings.get("lag_blocks", 1)),
                             visual_weight=float(settings.get("weight", VISUAL_WEIGHT)), disambiguate=disambiguate)

    def _oracle_annotations(self):
        """The evaluator's annotations (``iam.annotations_path``, else the shipped file), read once."""
        if self._oracle is None:
            from narrastream.protocol.annotations import load_annotations

            self._oracle = load_annotations({"path": self.iam.get("annotations_path")})
        return self._oracle

    def _check_oracle_covers(self, scripts: Sequence[Script]) -> None:
        """Every script to generate is annotated for its prompts in the oracle's file (else exit 2 at start)."""
        annotations = self._oracle_annotations()
        missing = [s.id for s in scripts if characters_from_annotations(s, annotations) is None]
        if missing:
            shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
            raise AdapterConfigError(f"model.params.iam.annotations_path: {annotations.path or annotations.source} has "
                                     f"no entities for the prompts of {len(missing)} script(s) ({shown}): the oracle "
                                     "(iam.entities=oracle) cannot tell their characters")

    def _oracle_characters(self, script: Script) -> list[list[Any]]:
        characters = characters_from_annotations(script, self._oracle_annotations())
        if characters is None:
            raise GenerationError(f"{self.method}: script {script.id} has no narrative annotations for its prompts "
                                  "in the oracle's file, so its characters are unknown (iam.entities=oracle)")
        return characters

    def _iam_judge(self, role: str):
        """The LLM (``iam.llm``) or the verifier's VLM (``iam.verifier.judge``), built once per adapter.

        A local verifier model goes to the second GPU when there is one (the DiT keeps the first)."""
        if role not in self._iam_judges:
            from narrastream.judges import JudgeConfigError, build_judges

            section = self.iam.get("llm") if role == "llm" else (self.iam.get("verifier") or {}).get("judge")
            cfg = dict(section or {})
            key = "model.params.iam." + ("llm" if role == "llm" else "verifier.judge")
            if cfg.get("backend", "none") == "none" or not cfg.get("model"):
                raise AdapterConfigError(f"{key}: IAMFlow's {role} needs a judge config with a backend and a "
                                         "model (the keys of eval_configs/judge/*.yaml)")
            if cfg.get("backend") == "local" and cfg.get("device", "auto") == "auto" and role == "verifier" \
                    and torch.cuda.device_count() > 1:
                cfg["device"] = "cuda:1"
            follows_weights = cfg.get("local_files_only") is None
            if follows_weights:  # null: download only when the model's weights may be downloaded
                cfg["local_files_only"] = not self._allow_download()
            unreachable = _hub_model_unreachable(cfg)
            if unreachable:  # fail now rather than after huggingface_hub's retries
                raise AdapterConfigError(_judge_load_error(key, cfg, role, OSError(unreachable), follows_weights))
            try:
                judges = build_judges(cfg)
            except JudgeConfigError as exc:
                raise AdapterConfigError(_judge_load_error(key, cfg, role, exc, follows_weights)) from exc
            _record_local_model(f"{self.method}.{role}", cfg)
            judge = judges.vlm if role == "verifier" else judges.planner
            if role == "verifier" and not judge.vision:
                raise AdapterConfigError(f"{key}.model={cfg['model']}: a text-only model cannot verify frames; "
                                         "the verifier needs a vision-language model (Qwen3-VL class)")
            self._iam_judges[role] = judge
        return self._iam_judges[role]

    # ------------------------------------------------------------------ identity
    def identity(self) -> dict[str, Any]:
        """The method, the weights (content hashes of the files loaded, or ``random(seed=..)``), where the
        characters come from and whether that is the evaluator's answer key (``oracle``)."""
        ident: dict[str, Any] = {"method": self.method, "size": self.size, "fp8": self.fp8,
                                 "weights": self._weights_identity()}
        if self.spec.memory == "identity":
            ident["entities"] = self._entities_identity()
            verifier = dict(self.iam.get("verifier") or {})
            ident["verifier"] = str((verifier.get("judge") or {}).get("model")) if verifier.get("enabled") else None
        ident["oracle"] = self.spec.memory == "identity" and self.entities == "oracle"
        return ident

    def _weights_identity(self) -> dict[str, str]:
        if self.size == "tiny":
            random = f"random(seed={self.seed})"
            return {"dit": random, "wan": random}
        if not self.loaded:  # not prepared yet: the files that prepare() would load
            files = {"dit": self._file("dit"), "wan": self._wan_folder()}
            if self.weights.get("lora"):
                files["lora"] = self._file("lora")
        else:
            files = {role: Path(self.loaded[role]) for role in ("dit", "lora", "wan") if self.loaded.get(role)}
        return {role: self._digest(path) for role, path in files.items()}

    def _digest(self, path: Path) -> str:
        """``sha256:<hex>`` of a checkpoint file, or of a folder's files (the Wan text encoder, tokenizer, VAE)."""
        key = str(path)
        if key not in self._digests:
            from narrastream.hashing import sha256_file

            if path.is_dir():
                parts = sorted(f for sub in ("text_encoder", "tokenizer", "vae") for f in (path / sub).rglob("*")
                               if f.is_file())
                listing = "\n".join(f"{f.relative_to(path).as_posix()} {sha256_file(f)}" for f in parts)
                self._digests[key] = "sha256:" + hashlib.sha256(listing.encode("utf-8")).hexdigest()
            else:
                self._digests[key] = "sha256:" + sha256_file(path)
        return self._digests[key]

    def _entities_identity(self) -> str:
        if self.entities == "prompt_names":
            return "prompt_names"
        if self.entities == "oracle":
            annotations = self._oracle_annotations()
            name = annotations.path.name if annotations.path else annotations.source
            return f"oracle:{name}@sha256:{annotations.sha256}"
        llm = dict(self.iam.get("llm") or {})
        judge = self._iam_judges.get("llm")
        model = judge.model if judge is not None else llm.get("model")
        return f"llm:{model}"

    def close(self) -> None:
        for judge in self._iam_judges.values():
            judge.close()
        self._iam_judges.clear()

    # ------------------------------------------------------------------ generation
    def generate(self, request: GenerationRequest) -> GeneratedVideo:
        from narrastream.video.encode import write_mp4

        if self.pipeline is None:
            self.prepare([request.script])
        setup_started = time.perf_counter()
        agent = self._identity_agent(request.script) if self.spec.memory == "identity" else None
        setup_s = time.perf_counter() - setup_started
        try:
            result = self.pipeline.generate(list(request.script.prompts), seed=request.seed,
                                            seconds_per_segment=request.seconds_per_segment, fps=request.fps,
                                            height=request.height, width=request.width, memory_agent=agent)
        except ValueError as exc:
            raise GenerationError(f"{self.method}: {exc}") from exc
        finally:
            if agent is not None and agent.verifier is not None:
                agent.verifier.close()
        if agent is not None:
            result.details["iam"] = {"entities": self._entities_identity(), **agent.to_json()}  # where they came from
            # the agents' set-up (LLM extraction and ID matching) runs before the stream, as in the release,
            # whose profiler leaves it out of the end-to-end time; it is reported beside it
            result.timings["iam_setup"] = setup_s
        write_mp4(request.output_path, result.frames, fps=request.fps, crf=self.crf)
        device = self.pipeline.device
        return GeneratedVideo(
            path=Path(request.output_path), script_id=request.script.id, seed=request.seed, fps=request.fps,
            num_frames=len(result.frames), width=result.frames.shape[2], height=result.frames.shape[1],
            switch_frames=list(result.plan.pixel_starts[1:]), timings=result.timings,
            peak_memory_bytes=result.peak_memory_bytes,
            device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            device_count=torch.cuda.device_count() if device.type == "cuda" else 0,
            extra={"method": self.method, "policies": _policies(self.spec), "weights": self.loaded,
                   "switch_latent_frames": list(result.plan.switches), **result.details},
        )


def weight_file_spec(method: str, role: str, entry: Mapping[str, Any]) -> WeightSpec:
    """The checkpoint of one role (``dit``, ``lora``) of a method, from its ``model.params.weights.<role>``."""
    return WeightSpec(name=f"{method}.{role}", filename=str(entry.get("filename")), hub_repo=entry.get("hub_repo"),
                      hub_filename=entry.get("hub_filename"), url=entry.get("url"), sha256=entry.get("sha256"),
                      description=f"{method} {role}", config_key=f"model.params.weights.{role}.path",
                      download_key="model.params.weights.allow_download")


def wan_folder_spec(entry: Mapping[str, Any]) -> FolderSpec:
    """The Wan2.1-T2V-1.3B Diffusers folder (umT5 text encoder, tokenizer, VAE) of ``model.params.weights.wan``."""
    return FolderSpec(
        name=WAN_FOLDER_NAME, dirname=str(entry.get("dirname", "Wan2.1-T2V-1.3B-Diffusers")),
        hub_repo=str(entry.get("hub_repo", WAN_DIFFUSERS_HUB)),
        allow_patterns=("vae/*", "text_encoder/*", "tokenizer/*"),
        needs="text_encoder/, tokenizer/ and vae/ in the Diffusers layout",
        required=("vae/config.json", "text_encoder/", "tokenizer/"),
        description="the Wan2.1-T2V-1.3B Diffusers folder", config_key="model.params.weights.wan.path",
        download_key="model.params.weights.allow_download")


def characters_from_annotations(script: Script, annotations: Any) -> list[list[Any]] | None:
    """The ORACLE entity source (``iam.entities=oracle``): each prompt's characters, with their looks, as the
    evaluator's narrative annotations tag them, or None when the script is not annotated for these prompts.

    Characters are the annotated entities named by a capitalised (proper) name; objects ("leather-bound
    notebook") are left out, as the release's extractor leaves them out.
    """
    from narrastream.iamflow.registry import ExtractedEntity

    annotation, _ = annotations.for_script(script.id, script.prompts)
    if annotation is None or annotation.segment_entities is None:
        return None
    return [[ExtractedEntity(e.name, tuple(e.attributes)) for e in segment if e.name[:1].isupper()]
            for segment in annotation.segment_entities]


def _check_entity_source(entities: str, model_name: str | None) -> None:
    """``iam.entities`` is known, and the evaluator's annotations are read only under a model name that says so."""
    if entities not in ENTITY_SOURCES:
        raise AdapterConfigError(f"model.params.iam.entities={entities!r}: expected one of {', '.join(ENTITY_SOURCES)}")
    marked = ORACLE_MARKER in str(model_name or "").lower()
    if entities == "oracle" and not marked:
        raise AdapterConfigError(
            f"model.params.iam.entities=oracle under model name {model_name!r}: the oracle reads the evaluator's "
            f"narrative annotations (its answer key), so its rows must not pass for the method; use {ORACLE_CONFIG}")
    if marked and entities != "oracle":
        raise AdapterConfigError(
            f"model.params.iam.entities={entities!r} under model name {model_name!r}: the name says oracle but the "
            "generator would not read the annotations; use model=iamflow, or keep iam.entities=oracle")


def _hub_model_unreachable(cfg: Mapping[str, Any]) -> str | None:
    """Why a local judge's hub model, not in the Hugging Face cache, cannot be downloaded now (None: it is
    cached, is a folder, is not to be downloaded, or the hub answers)."""
    model = str(cfg.get("model") or "")
    if cfg.get("backend") != "local" or cfg.get("local_files_only", True) or Path(model).expanduser().is_dir():
        return None
    from huggingface_hub import try_to_load_from_cache

    from narrastream.download import hub_endpoint, offline_reason, unreachable

    if isinstance(try_to_load_from_cache(model, "config.json"), str) or offline_reason():
        return None  # cached, or transformers refuses at once under HF_HUB_OFFLINE
    reason = unreachable(hub_endpoint())
    return f"not in the Hugging Face cache, and the hub ({hub_endpoint()}) is out of reach: {reason}" if reason else None


def _record_local_model(name: str, cfg: Mapping[str, Any]) -> None:
    """Record a local judge's model files (each file's sha256) for the run manifest."""
    if cfg.get("backend") != "local":
        return
    from narrastream.download import hub_snapshot
    from narrastream.metrics.backbones.weights import record_folder

    model = str(cfg.get("model"))
    folder = Path(model).expanduser()
    if not folder.is_dir():
        folder = hub_snapshot(model, allow_patterns=None, allow_download=False)
        if folder is None:
            return
    spec = FolderSpec(name=name, dirname=folder.name, hub_repo=model, allow_patterns=None, needs="config.json",
                      required=("config.json",))
    record_folder(spec, folder, source="config" if Path(model).expanduser().is_dir() else "hf-cache")


def _judge_load_error(key: str, cfg: Mapping[str, Any], role: str, exc: Exception, follows_weights: bool) -> str:
    """The start-up error for an IAMFlow judge that cannot be built, naming the keys that fix it."""
    message = f"{key}.model={cfg.get('model')}: IAMFlow's {role} cannot be loaded: {exc}"
    if cfg.get("backend") != "local":
        return message
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    hints = [f"put it in the Hugging Face cache (huggingface-cli download {cfg.get('model')}) or name a folder "
             f"({key}.model=DIR)"]
    if cfg.get("local_files_only", True):
        switch = " or model.params.weights.allow_download=true" if follows_weights else ""
        hints.append(f"or let it download ({key}.local_files_only=false{switch})")
    elif offline:
        hints.append("HF_HUB_OFFLINE is set, so nothing is downloaded")
    if role == "llm":
        hints.append(f"or serve it ({key}.backend=openai {key}.base_url=URL), or run without an LLM "
                     "(model.params.iam.entities=prompt_names: names from the prompts only, not the released method)")
    return message + "\n" + "; ".join(hints)


def _policies(spec) -> dict[str, Any]:
    from dataclasses import asdict

    cache = {k: v for k, v in asdict(spec.cache).items() if k not in ("kind", "sma", "sma_top_k")}
    policies = {"cache": spec.cache.kind, "local_attn_size": spec.cache.local_attn_size,
                "sink_size": getattr(spec.cache, "sink_size", getattr(spec.cache, "anchor_frames", 0)),
                "sma": spec.cache.sma, "transition": spec.transition, "memory": spec.memory,
                "bank_size": spec.bank_size, "block_frames": spec.block_frames,
                **({"memory_compress": spec.memory_compress} if spec.memory == "narrative" else {}),
                "denoising_steps": list(spec.denoising_steps)}
    if spec.cache.kind in ("deep_sink", "rolling_anchor"):  # their own geometry (budget, recent, cache_frames...)
        policies["cache_params"] = cache
    if spec.schedule != "block":
        policies["schedule"] = {"policy": spec.schedule, "window_prompt": spec.window_prompt}
    return policies
