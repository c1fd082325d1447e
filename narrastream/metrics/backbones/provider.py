"""Backbones by name, loaded once per process and handed to metrics through ``MetricContext``.

A :class:`BackboneProvider` is built from the ``backbones`` config section::

    source: files          # files: the official checkpoints | random: seeded random weights
    size: full             # random only: full (the official architecture) or tiny (tests)
    seed: 0                # random only
    device: auto           # auto | cpu | cuda | cuda:N
    precision: auto        # auto (the official: fp16 CLIP on CUDA, else fp32) | fp32 | fp16 | bf16 | tf32,
                           # or {name: value} per backbone
    batch_size: {}         # name -> items per forward pass (RAFT, AMT: per 832x480 pair); null/absent: the device's default
    prefetch_videos: 1     # the evaluation loop decodes this many videos ahead (narrastream.harness.prefetch)
    dir: null              # weights folder (else $NARRASTREAM_WEIGHTS)
    paths: {}              # name -> checkpoint file
    allow_download: true   # fetch a missing checkpoint from its publisher (off: false, or HF_HUB_OFFLINE=1)

``get(name)`` returns the backbone wrapped for metrics -- an :class:`ImageEmbedder` (``embed``) or, for
optical flow, a :class:`~narrastream.metrics.backbones.raft.FlowEstimator` (``flow``); ``identity(name)`` what to write in manifests and
records; ``runtime()`` what each loaded backbone cost (seconds, peak GPU memory, batch size:
:mod:`~narrastream.metrics.backbones.execution`); ``weights_identity(name)`` what a score depends on (the checkpoint's content sha256, or the
random seed and size) without building the network, for cache keys and configuration ids. Random weights are built under a fixed seed on the CPU, so every process, on any device,
starts from bit-identical weights.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from narrastream.metrics.backbones.execution import PRECISIONS, Execution, Precision, resolved_precision
from narrastream.metrics.backbones.raft import FlowEstimator
from narrastream.hashing import sha256_file, sha256_files
from narrastream.metrics.backbones.weights import (
    WEIGHTS,
    WeightsNotFoundError,
    WeightSpec,
    file_identity,
    resolve_weights,
)
from narrastream.registry import RegistryError

if TYPE_CHECKING:
    from narrastream.metrics.backbones.amt import Interpolator
    from narrastream.metrics.backbones.languagebind import VideoTextEncoder
    from narrastream.metrics.backbones.vtss import QualityScorer

log = logging.getLogger(__name__)

#: the precision of the stored weights handed to a backbone's wrapper (bf16 and tf32 run fp32 weights)
WeightPrecision = Literal["fp32", "fp16"]
_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16}
_CONFIG_KEYS = frozenset({"source", "size", "seed", "device", "precision", "dir", "paths", "allow_download",
                          "batch_size", "prefetch_videos"})


class ImageEmbedder:
    """A vision model with its own preprocessing: uint8 frames in, L2-normalised float32 features out."""

    def __init__(
        self,
        module: nn.Module,
        preprocess: Callable[[np.ndarray], torch.Tensor],
        *,
        dim: int,
        device: torch.device,
        input_dtype: torch.dtype,
        execution: Execution | None = None,
    ) -> None:
        self.module = module.eval()
        self.preprocess = preprocess
        self.dim = dim
        self.device = device
        self.input_dtype = input_dtype
        self.execution = execution or Execution(device=device, batch_size=32)

    def embed(self, frames: np.ndarray, batch_size: int | None = None) -> torch.Tensor:
        """Features ``(N, D)`` float32 on the CPU for frames ``(N, H, W, 3)`` uint8.

        Preprocessing runs on the CPU (the same pixels on every device), the forward pass on
        ``device`` in batches of ``batch_size`` (default: the configured ``backbones.batch_size``).
        Features are normalised in the model's precision, then cast to float32, as the official
        evaluator does.
        """
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be (N, H, W, 3), got shape {frames.shape}")
        size = self.execution.batch_for(requested=batch_size)

        def step(start: int, stop: int) -> torch.Tensor:
            pixels = self.preprocess(frames[start:stop]).to(self.device, self.input_dtype)
            return F.normalize(self.module(pixels), dim=-1).float().cpu()

        with self.execution.running(len(frames)):
            return torch.cat([torch.empty(0, self.dim), *self.execution.map(len(frames), step, size)])


#: what ``BackboneProvider.get`` hands to metrics
Backbone = Union[ImageEmbedder, FlowEstimator, "Interpolator", "VideoTextEncoder", "QualityScorer"]


@dataclass(frozen=True)
class BackboneSpec:
    """How to make one named backbone: from random weights, from its checkpoint, wrapped for metrics."""

    weights: WeightSpec
    #: model family, the prefix of the architecture label in identities ("dino-vitb16")
    family: str
    #: architecture per ``size`` (``full`` is the official checkpoint's), as the family's builder names it
    architectures: Mapping[str, str]
    #: precision ``auto`` resolves to fp16 on CUDA (as the official evaluator runs it) or always fp32
    half_on_cuda: bool
    build: Callable[[str], nn.Module]
    load: Callable[[Path], nn.Module]
    #: wraps the loaded model for metrics (an ImageEmbedder, a FlowEstimator...), its weights in fp32 or fp16
    embedder: Callable[[nn.Module, torch.device, WeightPrecision], Backbone]
    #: items per forward pass: ``(cpu, cuda)`` defaults of ``backbones.batch_size``
    batch_sizes: tuple[int, int] = (8, 32)
    #: the network runs at the video's resolution (RAFT, AMT): the batch size is per 832x480 frame
    per_pixels: bool = False
    #: finds the checkpoint (``path=, weights_dir=, allow_download=``); default: ``resolve_weights``
    #: of ``weights``. Models that are a directory (config, weights, tokenizer) bring their own.
    resolve: Callable[..., Path] | None = None
    #: the files whose content makes the checkpoint (given the resolved path); default: that one file
    files: Callable[[Path], list[Path]] | None = None

    def checkpoint_files(self, path: Path) -> list[Path]:
        return self.files(path) if self.files is not None else [path]

    def find_checkpoint(self, *, path: str | None, weights_dir: str | None, allow_download: bool) -> Path:
        if self.resolve is not None:
            return self.resolve(path=path, weights_dir=weights_dir, allow_download=allow_download)
        return resolve_weights(self.weights, path=path, weights_dir=weights_dir, allow_download=allow_download)


def _lazy(module: str, name: str, *bound: Any, **keywords: Any) -> Callable[..., Any]:
    """``narrastream.metrics.backbones.<module>.<name>(*args, *bound, **keywords)``, imported at the first
    call, so that naming a backbone never imports the libraries of the others."""

    def call(*args: Any) -> Any:
        target = getattr(importlib.import_module(f"narrastream.metrics.backbones.{module}"), name)
        return target(*args, *bound, **keywords)

    call.__name__ = call.__qualname__ = f"{module}.{name}"
    return call


def _wrapped(module: str, name: str) -> Callable[[nn.Module, torch.device, WeightPrecision], Backbone]:
    """The usual wrapper: ``<name>(model.to(device, dtype), device=, dtype=)`` from ``module``."""

    def wrap(model: nn.Module, device: torch.device, precision: WeightPrecision) -> Backbone:
        dtype = _DTYPES[precision]
        wrapper = getattr(importlib.import_module(f"narrastream.metrics.backbones.{module}"), name)
        return wrapper(model.to(device, dtype), device=device, dtype=dtype)

    return wrap


def _load_dino(path: Path) -> nn.Module:
    from narrastream.metrics.backbones.dino import build_dino_vit, load_dino_checkpoint

    return load_dino_checkpoint(build_dino_vit("vitb16"), path)


def _dino_embedder(model: nn.Module, device: torch.device, precision: WeightPrecision) -> ImageEmbedder:
    from narrastream.metrics.backbones.dino import dino_preprocess

    dtype = _DTYPES[precision]
    return ImageEmbedder(model.to(device, dtype), dino_preprocess, dim=model.embed_dim, device=device, input_dtype=dtype)


def _clip_embedder(model: nn.Module, device: torch.device, precision: WeightPrecision) -> ImageEmbedder:
    from narrastream.metrics.backbones.clip import clip_preprocess, set_clip_precision

    visual = set_clip_precision(model, precision).visual.to(device)
    return ImageEmbedder(
        visual, clip_preprocess, dim=visual.output_dim, device=device, input_dtype=visual.conv1.weight.dtype
    )


def _build_languagebind(arch: str) -> nn.Module:
    from narrastream.metrics.backbones.languagebind import build_languagebind

    return build_languagebind("full" if arch == "video_ft" else arch)


def _languagebind_encoder(model: nn.Module, device: torch.device, precision: WeightPrecision) -> Backbone:
    from narrastream.metrics.backbones.languagebind import VideoTextEncoder

    return VideoTextEncoder(model, device=device, dtype=_DTYPES[precision])


def _languagebind_files(path: Path) -> list[Path]:
    """A LanguageBind directory's content: the weights file loaded, config.json and the tokenizer files."""
    from narrastream.metrics.backbones.languagebind import TOKENIZER_FILES

    directory = path.parent if path.is_file() else path
    others = [directory / n for n in ("config.json", *TOKENIZER_FILES) if (directory / n).is_file()]
    return [path, *others]


def _resolve_languagebind(*, path: str | None, weights_dir: str | None, allow_download: bool) -> Path:
    from narrastream.metrics.backbones.languagebind import resolve_languagebind_weights

    return resolve_languagebind_weights(path, weights_dir=weights_dir, allow_download=allow_download)


BACKBONES: dict[str, BackboneSpec] = {
    "dino_vitb16": BackboneSpec(
        weights=WEIGHTS["dino_vitb16"],
        family="dino",
        architectures={"full": "vitb16", "tiny": "tiny"},
        half_on_cuda=False,
        build=_lazy("dino", "build_dino_vit"),
        load=_load_dino,
        embedder=_dino_embedder,
        batch_sizes=(32, 64),
    ),
    "clip_vitb32": BackboneSpec(
        weights=WEIGHTS["clip_vitb32"],
        family="clip",
        architectures={"full": "vitb32", "tiny": "tiny"},
        half_on_cuda=True,
        build=_lazy("clip", "build_clip_vit"),
        load=_lazy("clip", "load_clip_checkpoint", precision="fp32", device="cpu"),
        embedder=_clip_embedder,
        batch_sizes=(32, 64),
    ),
    "raft_things": BackboneSpec(
        weights=WEIGHTS["raft_things"],
        family="raft",
        architectures={"full": "large", "tiny": "tiny"},
        half_on_cuda=False,  # the official evaluator runs RAFT with mixed_precision off
        build=_lazy("raft", "build_raft"),
        load=_lazy("raft", "load_raft_checkpoint", "large"),
        embedder=_wrapped("raft", "FlowEstimator"),
        batch_sizes=(8, 32),  # 32 pairs at 832x480: about 8 GB of correlation volumes
        per_pixels=True,
    ),
    "amt_s": BackboneSpec(
        weights=WEIGHTS["amt_s"],
        family="amt",
        architectures={"full": "s", "tiny": "tiny"},
        half_on_cuda=False,  # the official evaluator runs AMT in fp32
        build=_lazy("amt", "build_amt"),
        load=_lazy("amt", "load_amt_checkpoint", "s"),
        embedder=_wrapped("amt", "Interpolator"),
        batch_sizes=(4, 16),
        per_pixels=True,
    ),
    "vtss_koala": BackboneSpec(
        weights=WEIGHTS["vtss_koala"],
        family="vtss",
        architectures={"full": "full", "tiny": "tiny"},
        half_on_cuda=False,  # no half precision is documented for VTSS: fp32
        build=_lazy("vtss", "build_vtss"),
        load=_lazy("vtss", "load_vtss_checkpoint", "full"),
        embedder=_wrapped("vtss", "QualityScorer"),
        batch_sizes=(4, 8),  # clips of 32 x 224^2; a segment has 4
    ),
    "languagebind_video": BackboneSpec(
        weights=WEIGHTS["languagebind_video"],
        family="languagebind",
        architectures={"full": "video_ft", "tiny": "tiny"},
        half_on_cuda=False,  # the official evaluator runs LanguageBind in fp32
        build=_build_languagebind,
        load=_lazy("languagebind", "load_languagebind"),  # the weights file in the model folder
        embedder=_languagebind_encoder,
        resolve=_resolve_languagebind,
        files=_languagebind_files,
        batch_sizes=(4, 8),  # clips of 8 frames; a video has 6
    ),
}


def _name_offset(name: str) -> int:
    """A per-backbone seed offset that is the same in every process (unlike ``hash``)."""
    return zlib.crc32(name.encode())


class BackboneProvider:
    """Loads each backbone once, on first use, and describes it for run manifests."""

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        config = dict(config or {})
        unknown = set(config) - _CONFIG_KEYS
        if unknown:
            raise ValueError(f"unknown backbones config keys {sorted(unknown)}; known: {sorted(_CONFIG_KEYS)}")
        self.source: str = config.get("source", "files")
        self.size: str = config.get("size", "full")
        self.seed: int = int(config.get("seed", 0))
        precision = config.get("precision", "auto")
        #: ``backbones.precision``: one value for every backbone, or ``{name: value}`` (others: auto)
        self.precision: str | dict[str, str] = dict(precision) if isinstance(precision, Mapping) else str(precision)
        sizes = config.get("batch_size") or {}
        if not isinstance(sizes, Mapping):
            raise ValueError(f"backbones.batch_size must be a mapping of backbone name to a positive integer, got {sizes!r}")
        self.batch_sizes: dict[str, int] = {str(k): v for k, v in sizes.items() if v is not None}
        self.weights_dir: str | None = config.get("dir")
        self.paths: dict[str, str] = dict(config.get("paths") or {})
        self.allow_download: bool = bool(config.get("allow_download", True))
        if self.source not in ("files", "random"):
            raise ValueError(f"backbones.source must be 'files' or 'random', got {self.source!r}")
        if self.size not in ("full", "tiny"):
            raise ValueError(f"backbones.size must be 'full' or 'tiny', got {self.size!r}")
        if self.source == "files" and self.size != "full":
            raise ValueError("backbones.size=tiny needs source=random: checkpoint files are the official architectures")
        for value in (self.precision.values() if isinstance(self.precision, dict) else [self.precision]):
            if value not in ("auto", *PRECISIONS):
                raise ValueError(f"backbones.precision must be auto, {', '.join(PRECISIONS)} (or a mapping of "
                                 f"backbone name to one of them), got {value!r}")
        for name, size in self.batch_sizes.items():
            if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
                raise ValueError(f"backbones.batch_size.{name}={size!r}: must be a positive integer")
        for name in [*self.paths, *self.batch_sizes, *(self.precision if isinstance(self.precision, dict) else [])]:
            self._spec(name)
        device = config.get("device", "auto")
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        self._embedders: dict[str, Backbone] = {}
        self._identities: dict[str, dict[str, Any]] = {}
        self._weights: dict[str, str] = {}
        self._load_seconds: dict[str, float] = {}
        self._lock = threading.RLock()  # get() holds it while loading, which asks weights_identity()

    @staticmethod
    def known() -> list[str]:
        return sorted(BACKBONES)

    def _spec(self, name: str) -> BackboneSpec:
        spec = BACKBONES.get(name)
        if spec is None:
            close = difflib.get_close_matches(name, BACKBONES, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise RegistryError(f"unknown backbone {name!r}; known: {', '.join(self.known())}.{hint}")
        return spec

    def precision_of(self, name: str) -> Precision:
        """The precision backbone ``name`` runs in on this provider's device (``auto`` resolved, ``tf32`` off
        CUDA is ``fp32``), without building it: part of a record's configuration and cache key, since fp16
        CLIP on CUDA and fp32 CLIP on the CPU give different scores
        (:func:`~narrastream.metrics.backbones.execution.resolved_precision`)."""
        spec = self._spec(name)
        requested = self.precision.get(name, "auto") if isinstance(self.precision, dict) else self.precision
        return resolved_precision(requested, self.device, spec.half_on_cuda)

    def batch_size_of(self, name: str) -> int:
        """Items per forward pass of ``name`` (``backbones.batch_size``, else its default on this device);
        for RAFT and AMT per 832x480 frame pair (smaller frames go in proportionally larger batches)."""
        spec = self._spec(name)
        return int(self.batch_sizes.get(name, spec.batch_sizes[1 if self.device.type == "cuda" else 0]))

    def runtime(self) -> dict[str, dict[str, Any]]:
        """What each backbone loaded in this process cost so far, for the run manifest: ``{name: {seconds,
        calls, items, forwards, peak_memory_bytes (None off CUDA), max_batch, oom_halvings, load_seconds,
        batch_size, batch_size_per, precision, device}}`` (``seconds``: wall time of its calls, preprocessing
        and transfers included; ``load_seconds``: building or loading it, once)."""
        with self._lock:
            loaded = dict(self._embedders)
        out = {}
        for name, backbone in sorted(loaded.items()):
            execution: Execution | None = getattr(backbone, "execution", None)
            if execution is None:
                continue
            out[name] = {**execution.stats.to_dict(), "load_seconds": round(self._load_seconds.get(name, 0.0), 4),
                         "batch_size": execution.batch_size,
                         "batch_size_per": "832x480 frame" if execution.per_pixels else "item",
                         "precision": execution.precision, "device": str(execution.device)}
        return out

    def get(self, name: str) -> Backbone:
        """The loaded backbone ``name``, wrapped for metrics (loaded on the first call, then shared)."""
        spec = self._spec(name)
        with self._lock:
            if name not in self._embedders:
                self._embedders[name] = self._load(name, spec)
        return self._embedders[name]

    def _load(self, name: str, spec: BackboneSpec) -> Backbone:
        started = time.perf_counter()
        precision = self.precision_of(name)
        architecture = spec.architectures[self.size]
        identity: dict[str, Any] = {"name": name, "architecture": f"{spec.family}-{architecture}", "source": self.source}
        if self.source == "random":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed + _name_offset(name))
                model = spec.build(architecture)
            identity.update(path=None, sha256=None, size=None, seed=self.seed)
            log.info("backbone %s: random %s weights (seed %d)", name, architecture, self.seed)
        else:
            path = spec.find_checkpoint(
                path=self.paths.get(name), weights_dir=self.weights_dir, allow_download=self.allow_download
            )
            model = spec.load(path)
            identity.update(file_identity(path), seed=None)
            log.info("backbone %s: loaded %s", name, path)
        identity["weights"] = self.weights_identity(name)
        weights: WeightPrecision = "fp16" if precision == "fp16" else "fp32"
        embedder = spec.embedder(model, self.device, weights)
        embedder.execution = Execution(device=self.device, precision=precision, batch_size=self.batch_size_of(name),
                                       per_pixels=spec.per_pixels)
        identity.update(device=str(self.device), dtype=str(_DTYPES[weights]).removeprefix("torch."), precision=precision)
        self._load_seconds[name] = time.perf_counter() - started
        self._identities[name] = identity
        return embedder

    def identity(self, name: str) -> dict[str, Any]:
        """``{name, architecture, source, weights, path, sha256, size, seed, device, dtype}`` (loads the backbone)."""
        self.get(name)
        return dict(self._identities[name])

    def weights_identity(self, name: str) -> str:
        """What the backbone's scores depend on, without building it: ``sha256:<hex>`` of the checkpoint
        content (for a model directory, of its weights, config and tokenizer files together), or
        ``random(seed=N,size=S)``. Resolving finds the checkpoint exactly as loading does, so a missing
        file raises :class:`WeightsNotFoundError` here, before any work; digests are cached on disk
        (:func:`narrastream.hashing.sha256_file`), so a rerun reads no checkpoint again."""
        spec = self._spec(name)
        with self._lock:
            known = self._weights.get(name)
        if known is not None:
            return known
        if self.source == "random":
            value = f"random(seed={self.seed},size={self.size})"
        else:
            try:
                path = spec.find_checkpoint(
                    path=self.paths.get(name), weights_dir=self.weights_dir, allow_download=self.allow_download
                )
            except WeightsNotFoundError:
                raise
            except FileNotFoundError as exc:  # a model directory's resolver: its message says where to put it
                raise WeightsNotFoundError(spec.weights, [], message=str(exc)) from None
            files = spec.checkpoint_files(Path(path))
            digest = sha256_file(files[0]) if len(files) == 1 else sha256_files(files, root=Path(path).parent)
            value = f"sha256:{digest}"
        with self._lock:
            self._weights[name] = value
        return value
