"""Where model weights come from: a registry of the official checkpoints and one resolver.

No machine is assumed to be online. :func:`resolve_weights` looks for a checkpoint in the places a
user can put it (an explicit path, ``$NARRASTREAM_WEIGHTS``, the user cache, the Hugging Face hub
cache) and downloads it only when allowed. A checkpoint with a known sha256 is always verified, so a
truncated or substituted file cannot silently change the scores.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from narrastream.hashing import sha256_file
from narrastream.paths import cache_dir

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

WEIGHTS_ENV = "NARRASTREAM_WEIGHTS"


@dataclass(frozen=True)
class WeightSpec:
    """One checkpoint: the file name users put on disk, and where it can be fetched from."""

    name: str
    filename: str
    url: str | None = None
    sha256: str | None = None
    hub_repo: str | None = None
    hub_filename: str | None = None
    description: str = ""
    #: the config key that names the file explicitly (default: ``backbones.paths.<name>``)
    config_key: str | None = None


WEIGHTS: dict[str, WeightSpec] = {
    "dino_vitb16": WeightSpec(
        name="dino_vitb16",
        filename="dino_vitbase16_pretrain.pth",
        url="https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
        # Meta publishes no checksum for this file, and none could be confirmed from a reliable source;
        # record the sha256 of a verified download here to pin it.
        sha256=None,
        description="DINO ViT-B/16 backbone (teacher), official release; subject_consistency",
    ),
    "clip_vitb32": WeightSpec(
        name="clip_vitb32",
        filename="ViT-B-32.pt",
        url=(
            "https://openaipublic.azureedge.net/clip/models/"
            "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt"
        ),
        # the URL's path component is the file's sha256 (OpenAI's clip package verifies it)
        sha256="40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
        description="OpenAI CLIP ViT-B/32 (TorchScript archive); background_consistency",
    ),
    "raft_things": WeightSpec(
        name="raft_things",
        filename="raft-things.pth",
        url="https://huggingface.co/RaphaelLiu/EvalCrafter-Models/resolve/main/RAFT/models/raft-things.pth",
        # no published checksum could be confirmed offline; record the sha256 of a verified download to pin it
        sha256=None,
        hub_repo="RaphaelLiu/EvalCrafter-Models",
        hub_filename="RAFT/models/raft-things.pth",
        description="RAFT (princeton-vl) trained on FlyingChairs+FlyingThings; temporal_flickering, boundary_smoothness",
    ),
    "amt_s": WeightSpec(
        name="amt_s",
        filename="amt-s.pth",
        url="https://huggingface.co/lalala125/AMT/resolve/main/amt-s.pth",
        # no published checksum could be confirmed offline; record the sha256 of a verified download to pin it
        sha256=None,
        hub_repo="lalala125/AMT",
        hub_filename="amt-s.pth",
        description="AMT-S frame interpolation (MCG-NKU), weights under 'state_dict'; motion_smoothness",
    ),
    "vtss_koala": WeightSpec(
        name="vtss_koala",
        filename="vtss/infer.pth",
        url="https://huggingface.co/Koala-36M/Training_Suitability_Assessment/resolve/main/infer.pth",
        # no published checksum could be confirmed offline; record the sha256 of a verified download to pin it
        sha256=None,
        hub_repo="Koala-36M/Training_Suitability_Assessment",
        hub_filename="infer.pth",
        description="Koala-36M Training Suitability Assessment (FAST-VQA DiViDeAddEvaluator, swin_tiny_grpb), weights under 'state_dict'; vtss",
    ),
    # A model directory (config.json, weights, tokenizer), found by languagebind.resolve_languagebind_dir:
    # backbones.paths.languagebind_video=DIR, else <weights dir>/LanguageBind_Video_FT, the cache, the hub.
    "languagebind_video": WeightSpec(
        name="languagebind_video",
        filename="LanguageBind_Video_FT/pytorch_model.bin",
        description="LanguageBind_Video_FT (video + text towers, directory with config and tokenizer); dynamic_trajectory",
    ),
}


class WeightsNotFoundError(FileNotFoundError):
    """A checkpoint is not on this machine; the message says where to put it."""

    def __init__(self, spec: WeightSpec, tried: list[str], detail: str | None = None, *,
                 message: str | None = None) -> None:
        self.spec = spec
        if message is not None:  # a resolver's own complete message (model directories)
            super().__init__(message)
            return
        env = os.environ.get(WEIGHTS_ENV)
        lines = [detail or f"weights {spec.name!r} ({spec.filename}) were not found."]
        lines += [
            "Put the file at one of:",
            f"  ${WEIGHTS_ENV}/{spec.filename}" + (f"  (${WEIGHTS_ENV}={env})" if env else f"  (${WEIGHTS_ENV} is unset)"),
            f"  {cache_dir() / 'weights' / spec.filename}",
            f"or name it in the config: {spec.config_key or f'backbones.paths.{spec.name}'}=FILE.",
        ]
        if spec.hub_repo:
            lines.append(f"It is published as hf://{spec.hub_repo}/{spec.hub_filename or spec.filename} "
                         "(found in the Hugging Face cache when downloaded there).")
        if spec.url:
            lines.append(f"With backbones.allow_download=true it is fetched from {spec.url} when online.")
        if tried:
            lines.append("Looked in: " + ", ".join(tried))
        super().__init__("\n".join(lines))

    @classmethod
    def combine(cls, errors: "list[WeightsNotFoundError]") -> "WeightsNotFoundError":
        """One error naming every missing checkpoint, so a user fixes them all in one go."""
        if len(errors) == 1:
            return errors[0]
        text = f"{len(errors)} checkpoints were not found:\n\n" + "\n\n".join(str(e) for e in errors)
        return cls(errors[0].spec, [], message=text)


class ChecksumError(ValueError):
    """A checkpoint's sha256 is not the expected one (a truncated, corrupted or different file)."""

    def __init__(self, path: Path, expected: str, actual: str) -> None:
        super().__init__(f"{path}: sha256 {actual} does not match the expected {expected}")
        self.path, self.expected, self.actual = path, expected, actual


def file_identity(path: Path | str) -> dict[str, Any]:
    """``{path, size, sha256}`` of a weights file, for run manifests and records."""
    path = Path(path).resolve()
    return {"path": str(path), "size": path.stat().st_size, "sha256": sha256_file(path)}


def _verified(spec: WeightSpec, path: Path) -> Path:
    if spec.sha256:
        actual = sha256_file(path)
        if actual != spec.sha256.lower():
            raise ChecksumError(path, spec.sha256.lower(), actual)
    return path


def _from_hub(spec: WeightSpec, allow_download: bool) -> Path | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(hf_hub_download(
            repo_id=spec.hub_repo,
            filename=spec.hub_filename or spec.filename,
            local_files_only=not allow_download,
        ))
    except (LocalEntryNotFoundError, EntryNotFoundError, RepositoryNotFoundError, OSError) as e:
        log.debug("%s: not in the Hugging Face hub cache (%s)", spec.name, e)
        return None


def _download(spec: WeightSpec, target: Path) -> Path:
    import torch.hub

    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s from %s to %s", spec.name, spec.url, target)
    torch.hub.download_url_to_file(spec.url, str(target), progress=True)
    try:
        return _verified(spec, target)
    except ChecksumError:
        target.unlink(missing_ok=True)  # never leave a bad download where the next run would find it
        raise


def resolve_weights(
    spec: WeightSpec,
    *,
    path: Path | str | None = None,
    weights_dir: Path | str | None = None,
    allow_download: bool = False,
) -> Path:
    """The local file of a checkpoint, verified against ``spec.sha256`` when one is known.

    Tried in order: ``path`` (which must exist), ``weights_dir`` (else ``$NARRASTREAM_WEIGHTS``) /
    filename, the user cache ``cache_dir()/weights/filename``, the Hugging Face hub cache when
    ``spec.hub_repo`` is set (fetched only if ``allow_download``), then -- only if ``allow_download``
    -- a download of ``spec.url`` into the user cache.

    Raises:
        WeightsNotFoundError: nowhere to be found (the message says where to put the file).
        ChecksumError: the file found is not the expected one.
    """
    if path is not None:
        explicit = Path(path).expanduser()
        if not explicit.is_file():
            raise WeightsNotFoundError(
                spec, [str(explicit)], detail=f"backbones.paths.{spec.name}={explicit}: no such file."
            )
        return _verified(spec, explicit)

    tried: list[str] = []
    directory = weights_dir if weights_dir is not None else os.environ.get(WEIGHTS_ENV)
    candidates = [Path(directory).expanduser() / spec.filename] if directory else []
    candidates.append(cache_dir() / "weights" / spec.filename)
    for candidate in candidates:
        tried.append(str(candidate))
        if candidate.is_file():
            log.debug("%s: using %s", spec.name, candidate)
            return _verified(spec, candidate)

    if spec.hub_repo:
        tried.append(f"hf://{spec.hub_repo}/{spec.hub_filename or spec.filename}")
        found = _from_hub(spec, allow_download)
        if found is not None:
            return _verified(spec, found)

    if allow_download and spec.url:
        return _download(spec, cache_dir() / "weights" / spec.filename)
    raise WeightsNotFoundError(spec, tried)


def load_state_strict(model: "torch.nn.Module", state: dict[str, Any], path: Path | str, label: str) -> "torch.nn.Module":
    """``model.load_state_dict(state, strict=True)``, but a mismatch is a ValueError that lists the
    missing, unexpected and wrongly shaped keys (the first 20 of each) and names the file."""
    from narrastream.checkpoints import compare_state

    expected = model.state_dict()
    diff = compare_state(expected, state)
    if diff:
        mismatched = [f"{key} {got} (expected {want})" for key, got, want in diff.shapes]
        lines = [f"{path}: does not match {label} ({len(expected)} tensors)"]
        for kind, keys in (("missing", diff.missing), ("unexpected", diff.unexpected), ("wrong shape", mismatched)):
            if keys:
                lines.append(f"  {kind} ({len(keys)}): " + ", ".join(keys[:20]) + (" ..." if len(keys) > 20 else ""))
        raise ValueError("\n".join(lines))
    model.load_state_dict(state, strict=True)
    return model.eval()
