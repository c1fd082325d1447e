"""Where model weights come from: a registry of the official checkpoints and one resolver.

:func:`resolve_weights` looks for a checkpoint where a user can put it (an explicit path,
``$NARRASTREAM_WEIGHTS``, the user cache, the Hugging Face hub cache) and, when it is nowhere, fetches
it from its publisher (downloads are on by default; ``allow_download=False`` or ``HF_HUB_OFFLINE=1``
turn them off, and the error then says where to put the file and which key switches them on).
Every file's sha256 is computed, checked against the pinned value where the publisher states one
(and against the sha256 the Hugging Face hub states for a cached file), and kept for the run
manifest (:func:`resolved_weights`). narrastream never re-hosts weights: every source is the
publisher's (or a mirror of your own, ``$NARRASTREAM_WEIGHTS_MIRROR``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from narrastream.download import (
    ChecksumError,
    DownloadError,
    download_url,
    hub_file,
    hub_lfs_sha256,
    mirror_url,
    offline_reason,
)
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
    #: the sha256 the publisher states (checked whenever the file is used); None where none is stated
    sha256: str | None = None
    hub_repo: str | None = None
    hub_filename: str | None = None
    description: str = ""
    #: the config key that names the file explicitly (default: ``backbones.paths.<name>``)
    config_key: str | None = None
    #: the config key that turns downloads on or off
    download_key: str = "backbones.allow_download"
    #: the publisher's page (the licence is theirs: users are pointed there, nothing is re-hosted)
    page: str | None = None

    @property
    def published(self) -> bool:
        return bool(self.url or self.hub_repo)

    @property
    def publisher_page(self) -> str | None:
        """Where users read the publisher's terms: ``page``, else the hub repository's page."""
        return self.page or (f"https://huggingface.co/{self.hub_repo}" if self.hub_repo else self.url)

    @property
    def source(self) -> str | None:
        """Where the publisher serves it: ``hf://repo/file`` or the URL."""
        if self.hub_repo:
            return f"hf://{self.hub_repo}/{self.hub_filename or self.filename}"
        return self.url


#: why a hub-hosted file is not pinned (see docs/weights.md, "Pins")
_HUB_UNPINNED = ("the hub states this file's LFS sha256 in its metadata, and it is checked at every download and "
                 "every use from the Hugging Face cache; it could not be read offline to pin it here")

WEIGHTS: dict[str, WeightSpec] = {
    "dino_vitb16": WeightSpec(
        name="dino_vitb16",
        filename="dino_vitbase16_pretrain.pth",
        url="https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
        # Meta states no checksum for this file (not in facebookresearch/dino, not in the URL): not pinned
        sha256=None,
        description="DINO ViT-B/16 backbone (teacher), official release; subject_consistency",
        page="https://github.com/facebookresearch/dino",
    ),
    "clip_vitb32": WeightSpec(
        name="clip_vitb32",
        filename="ViT-B-32.pt",
        url=(
            "https://openaipublic.azureedge.net/clip/models/"
            "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt"
        ),
        # the publisher states it: the URL's path component is the file's sha256 (OpenAI's clip package checks it)
        sha256="40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
        description="OpenAI CLIP ViT-B/32 (TorchScript archive); background_consistency",
        page="https://github.com/openai/CLIP",
    ),
    "raft_things": WeightSpec(
        name="raft_things",
        filename="raft-things.pth",
        url="https://huggingface.co/RaphaelLiu/EvalCrafter-Models/resolve/main/RAFT/models/raft-things.pth",
        sha256=None,  # _HUB_UNPINNED (princeton-vl's models.zip states no checksum either)
        hub_repo="RaphaelLiu/EvalCrafter-Models",
        hub_filename="RAFT/models/raft-things.pth",
        description="RAFT (princeton-vl) trained on FlyingChairs+FlyingThings; temporal_flickering, boundary_smoothness",
        page="https://github.com/princeton-vl/RAFT",
    ),
    "amt_s": WeightSpec(
        name="amt_s",
        filename="amt-s.pth",
        url="https://huggingface.co/lalala125/AMT/resolve/main/amt-s.pth",
        sha256=None,  # _HUB_UNPINNED
        hub_repo="lalala125/AMT",
        hub_filename="amt-s.pth",
        description="AMT-S frame interpolation (MCG-NKU), weights under 'state_dict'; motion_smoothness",
        page="https://github.com/MCG-NKU/AMT",
    ),
    "vtss_koala": WeightSpec(
        name="vtss_koala",
        filename="vtss/infer.pth",
        url="https://huggingface.co/Koala-36M/Training_Suitability_Assessment/resolve/main/infer.pth",
        sha256=None,  # _HUB_UNPINNED
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
    """A checkpoint is not on this machine and was not downloaded; the message says where to put it,
    where the publisher serves it, why it was not fetched (``reason``) and what would fetch it (``hint``)."""

    def __init__(self, spec: WeightSpec, tried: list[str], detail: str | None = None, reason: str | None = None,
                 *, hint: str | None = None, what: str = "file", fix: str = "FILE",
                 message: str | None = None) -> None:
        self.spec = spec
        if message is not None:  # a complete message of its own (a resolver's, or several combined)
            super().__init__(message)
            return
        env = os.environ.get(WEIGHTS_ENV)
        where = spec.filename + ("/" if what == "folder" else "")
        lines = [detail or f"weights {spec.name!r} ({spec.filename}) were not found."]
        if reason:
            lines.append(f"Not downloaded: {reason}." + (f" {hint}" if hint else ""))
        lines += [
            f"Put the {what} at one of:",
            f"  ${WEIGHTS_ENV}/{where}" + (f"  (${WEIGHTS_ENV}={env})" if env else f"  (${WEIGHTS_ENV} is unset)"),
            f"  {cache_dir() / 'weights' / where}",
            f"or name it in the config: {spec.config_key or f'backbones.paths.{spec.name}'}={fix}.",
        ]
        if spec.published:
            lines.append(f"Its publisher serves it at {spec.source} (terms: {spec.publisher_page}; narrastream does not "
                         f"re-host weights). On a machine with internet, `narrastream weights download {spec.name} "
                         f"--dir DIR` fetches it for ${WEIGHTS_ENV}=DIR.")
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


def _download_refusal(spec: WeightSpec, allow_download: bool) -> tuple[str, str] | None:
    """``(why, what would allow it)`` when a missing published file may not be downloaded now, else None."""
    if not allow_download:
        return (f"downloads are off ({spec.download_key}=false)",
                f"With {spec.download_key}=true (the default) it is fetched when online.")
    reason = offline_reason()
    if reason:
        variable = reason.split("=")[0]
        return f"downloads are off ({reason})", f"Unset {variable} to let the run fetch it when online."
    return None


# ------------------------------------------------------------------------------------ the record

_resolved: dict[str, dict[str, Any]] = {}
_resolved_lock = threading.Lock()


def record_resolved(name: str, facts: dict[str, Any]) -> None:
    """Keep what a run loaded under ``name`` (path, size, sha256, where it came from) for its manifest."""
    with _resolved_lock:
        _resolved[name] = dict(facts)


def forget_resolved() -> None:
    """Start a new record (one run of several in a process)."""
    with _resolved_lock:
        _resolved.clear()


def resolved_weights() -> dict[str, dict[str, Any]]:
    """Every weights file or folder this process resolved, by name: ``{path, size, sha256, pinned_sha256,
    hub_sha256, verified, source, origin}`` (folders: ``{path, sha256, files: {relative path: {size,
    sha256}}, source, origin}``). What the run manifest's ``weights`` block holds."""
    with _resolved_lock:
        return {name: dict(facts) for name, facts in sorted(_resolved.items())}


def file_identity(path: Path | str) -> dict[str, Any]:
    """``{path, size, sha256}`` of a weights file, for run manifests and records."""
    path = Path(path).resolve()
    return {"path": str(path), "size": path.stat().st_size, "sha256": sha256_file(path)}


def folder_identity(directory: Path | str, files: Iterable[Path] | None = None) -> dict[str, Any]:
    """``{path, sha256, files}`` of a model folder: each file's size and sha256 (every file under it but
    hidden ones, or ``files``), and one sha256 over the sorted ``relative-path sha256`` lines."""
    directory = Path(directory)
    chosen = sorted(files) if files is not None else sorted(
        f for f in directory.rglob("*") if f.is_file() and not any(p.startswith(".") for p in f.relative_to(directory).parts))
    listing = {f.relative_to(directory).as_posix(): {"size": f.stat().st_size, "sha256": sha256_file(f)} for f in chosen}
    text = "\n".join(f"{rel} {facts['sha256']}" for rel, facts in sorted(listing.items()))
    return {"path": str(directory.resolve()), "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "files": listing}


def verify_file(spec: WeightSpec, path: Path, *, source: str, hub_sha256: str | None = None) -> Path:
    """Check ``path`` against the publisher's pinned sha256 and the hub's stated one, and record it.

    Raises:
        ChecksumError: the file is not the published one (truncated, corrupted, or another file).
    """
    actual = sha256_file(path)
    fix = f"; delete it and fetch it again (narrastream weights download {spec.name})" if spec.published else ""
    if spec.sha256 and actual != spec.sha256.lower():
        raise ChecksumError(path, spec.sha256.lower(), actual, detail=f" (the publisher's){fix}")
    stated = hub_sha256 or hub_lfs_sha256(path)
    if stated and actual != stated:
        raise ChecksumError(path, stated, actual, detail=f" (the sha256 the hub states for {spec.source}){fix}")
    record_resolved(spec.name, {
        "path": str(path.resolve()), "size": path.stat().st_size, "sha256": actual,
        "pinned_sha256": spec.sha256.lower() if spec.sha256 else None, "hub_sha256": stated,
        "verified": bool(spec.sha256 or stated), "source": source, "origin": spec.source,
    })
    return path


# ------------------------------------------------------------------------------------ resolution


def resolve_weights(
    spec: WeightSpec,
    *,
    path: Path | str | None = None,
    weights_dir: Path | str | None = None,
    allow_download: bool = True,
) -> Path:
    """The local file of a checkpoint, verified (:func:`verify_file`) and recorded for the manifest.

    Tried in order: ``path`` (which must exist), ``weights_dir`` (else ``$NARRASTREAM_WEIGHTS``) /
    filename, the user cache ``cache_dir()/weights/filename``, the Hugging Face hub cache when
    ``spec.hub_repo`` is set; then, unless ``allow_download`` is false or ``HF_HUB_OFFLINE`` is set, a
    download (:func:`fetch_weights`: the mirror, else the hub, else the URL).

    Raises:
        WeightsNotFoundError: nowhere to be found and not downloaded (the message says where to put the
            file, and why it was not fetched).
        ChecksumError: the file found is not the expected one.
    """
    if path is not None:
        explicit = Path(path).expanduser()
        if not explicit.is_file():
            raise WeightsNotFoundError(
                spec, [str(explicit)],
                detail=f"{spec.config_key or f'backbones.paths.{spec.name}'}={explicit}: no such file.")
        return verify_file(spec, explicit, source="config")

    tried: list[str] = []
    directory = weights_dir if weights_dir is not None else os.environ.get(WEIGHTS_ENV)
    candidates = [Path(directory).expanduser() / spec.filename] if directory else []
    candidates.append(cache_dir() / "weights" / spec.filename)
    for candidate in candidates:
        tried.append(str(candidate))
        if candidate.is_file():
            log.debug("%s: using %s", spec.name, candidate)
            return verify_file(spec, candidate, source="local")

    if spec.hub_repo:
        tried.append(f"{spec.source} (Hugging Face cache)")
        found = hub_file(spec.hub_repo, spec.hub_filename or spec.filename, allow_download=False)
        if found is not None:
            return verify_file(spec, found, source="hf-cache")

    if not spec.published and not mirror_url(spec.filename):
        raise WeightsNotFoundError(spec, tried)
    refusal = _download_refusal(spec, allow_download)
    if refusal:
        raise WeightsNotFoundError(spec, tried, reason=refusal[0], hint=refusal[1])
    try:
        return fetch_weights(spec)
    except DownloadError as exc:
        raise WeightsNotFoundError(spec, tried, reason=f"the download failed: {exc}") from None


def fetch_weights(spec: WeightSpec, directory: Path | str | None = None, *, progress: bool = True) -> Path:
    """Download a checkpoint and verify it: from ``$NARRASTREAM_WEIGHTS_MIRROR/<filename>`` when a
    mirror is set, else from the hub (``spec.hub_repo``), else from ``spec.url``.

    With ``directory`` the file lands at ``directory/<filename>`` (what ``narrastream weights download``
    does, for ``$NARRASTREAM_WEIGHTS``); without, URL downloads go to the user cache
    (``cache_dir()/weights``) and hub downloads to the Hugging Face cache.

    Raises:
        DownloadError: not fetched (offline, unreachable, an HTTP error, an interrupted transfer).
        ChecksumError: the file fetched is not the published one (nothing is kept under its name).
    """
    reason = offline_reason()
    if reason:
        raise DownloadError(f"{spec.name}: not downloaded, {reason}")
    base = Path(directory) if directory is not None else cache_dir() / "weights"
    target = base / spec.filename
    mirror = mirror_url(spec.filename)
    if mirror:
        download_url(mirror, target, sha256=spec.sha256, progress=progress, desc=spec.filename)
        return verify_file(spec, target, source="mirror")
    if spec.hub_repo:
        filename = spec.hub_filename or spec.filename
        if directory is None:
            found = hub_file(spec.hub_repo, filename, allow_download=True)
            if found is None:
                raise DownloadError(f"{spec.source}: not downloaded")
            return verify_file(spec, found, source="hub")
        return _hub_into(spec, filename, target)
    if spec.url:
        download_url(spec.url, target, sha256=spec.sha256, progress=progress, desc=spec.filename)
        return verify_file(spec, target, source="url")
    raise DownloadError(f"{spec.name}: no published source (neither a URL nor a hub id)")


def _hub_into(spec: WeightSpec, filename: str, target: Path) -> Path:
    """``hf_hub_download`` into a staging folder beside ``target`` (same disk), moved into place once
    verified against the pin and the sha256 the hub states (its download metadata's etag)."""
    staging = target.parent / ".narrastream-staging" / spec.name
    try:
        found = hub_file(spec.hub_repo or "", filename, allow_download=True, local_dir=staging)
        if found is None:
            raise DownloadError(f"{spec.source}: not downloaded")
        verify_file(spec, found, source="hub", hub_sha256=_local_dir_etag(staging, filename))
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(found, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if staging.parent.is_dir() and not any(staging.parent.iterdir()):
            staging.parent.rmdir()
    record_resolved(spec.name, {**resolved_weights()[spec.name], "path": str(target.resolve())})
    return target


def _local_dir_etag(local_dir: Path, filename: str) -> str | None:
    """The sha256 huggingface_hub recorded for a large file downloaded into ``local_dir`` (its etag), if any."""
    try:
        from huggingface_hub._local_folder import read_download_metadata  # not public API: optional

        metadata = read_download_metadata(local_dir, filename)
    except Exception:  # noqa: BLE001 - another huggingface_hub version: no stated hash, the file is still pinned
        return None
    etag = getattr(metadata, "etag", None) if metadata is not None else None
    return etag if etag and len(etag) == 64 and all(c in "0123456789abcdef" for c in etag) else None


@dataclass(frozen=True)
class FolderSpec:
    """A model published as a folder (a hub repository): config, weights and tokenizer files together."""

    #: the name of the entry (``narrastream weights download NAME``) and the folder users put on disk
    name: str
    dirname: str
    hub_repo: str
    #: the files fetched (``snapshot_download`` patterns); None: the whole repository
    allow_patterns: tuple[str, ...] | None
    #: what a usable folder holds, for messages
    needs: str
    #: relative paths that must exist (a trailing ``/``: a non-empty folder; ``a|b``: either)
    required: tuple[str, ...]
    description: str = ""
    #: the config key that names the folder explicitly (default: ``backbones.paths.<name>``)
    config_key: str | None = None
    download_key: str = "backbones.allow_download"

    @property
    def key(self) -> str:
        return self.config_key or f"backbones.paths.{self.name}"

    def as_weight_spec(self) -> WeightSpec:
        """The fields error messages share with single files."""
        return WeightSpec(name=self.name, filename=self.dirname, hub_repo=self.hub_repo, hub_filename="",
                          description=self.description, config_key=self.key, download_key=self.download_key)

    def missing(self, directory: Path) -> list[str]:
        """The required entries ``directory`` lacks (all of them when it is not a folder)."""
        lacking = []
        for entry in self.required:
            options = entry.split("|")
            if not any(_present(directory, option) for option in options):
                lacking.append(entry)
        return lacking

    def complete(self, directory: Path) -> bool:
        return directory.is_dir() and not self.missing(directory)

    def files(self, directory: Path) -> list[Path]:
        """The files of the folder that a run reads (hashed for the manifest)."""
        chosen = []
        for f in directory.rglob("*"):
            rel = f.relative_to(directory)
            if f.is_file() and not any(part.startswith(".") for part in rel.parts) and _matches(rel.as_posix(), self.allow_patterns):
                chosen.append(f)
        return sorted(chosen)


def _present(directory: Path, entry: str) -> bool:
    if entry.endswith("/"):
        folder = directory / entry
        return folder.is_dir() and any(folder.iterdir())
    return (directory / entry).is_file()


def _matches(relative: str, patterns: tuple[str, ...] | None) -> bool:
    from fnmatch import fnmatch

    return patterns is None or any(fnmatch(relative, pattern) for pattern in patterns)


def record_folder(spec: FolderSpec, directory: Path, *, source: str) -> Path:
    """Record a resolved folder (each file's size and sha256) for the run manifest."""
    record_resolved(spec.name, {**folder_identity(directory, spec.files(directory)), "source": source,
                                "origin": f"hf://{spec.hub_repo}"})
    return directory


def resolve_folder(spec: FolderSpec, *, path: Path | str | None = None, weights_dir: Path | str | None = None,
                   allow_download: bool = True) -> Path:
    """A model folder: ``path`` (which must be complete), ``weights_dir`` (else ``$NARRASTREAM_WEIGHTS``)
    ``/<dirname>``, ``cache_dir()/weights/<dirname>``, the Hugging Face cache, then (unless downloads are
    off) a ``snapshot_download`` into the Hugging Face cache. Recorded for the manifest.

    Raises:
        WeightsNotFoundError: not found and not downloaded (the message says where to put the folder).
    """
    from narrastream.download import hub_snapshot

    weight_spec = spec.as_weight_spec()
    if path is not None:
        explicit = Path(path).expanduser()
        lacking = spec.missing(explicit)
        if lacking:
            raise WeightsNotFoundError(weight_spec, [str(explicit)], what="folder", fix="DIR", detail=(
                f"{spec.key}={explicit}: not a {spec.description or spec.name} folder "
                f"(it needs {spec.needs}; missing: {', '.join(lacking)})."))
        return record_folder(spec, explicit, source="config")
    tried: list[str] = []
    root = weights_dir if weights_dir is not None else os.environ.get(WEIGHTS_ENV)
    for candidate in ([Path(root).expanduser() / spec.dirname] if root else []) + [cache_dir() / "weights" / spec.dirname]:
        tried.append(str(candidate))
        if spec.complete(candidate):
            return record_folder(spec, candidate, source="local")
    tried.append(f"hf://{spec.hub_repo} (Hugging Face cache)")
    cached = hub_snapshot(spec.hub_repo, allow_patterns=spec.allow_patterns, allow_download=False)
    if cached is not None and spec.complete(cached):
        return record_folder(spec, cached, source="hf-cache")
    detail = f"{spec.description or spec.name} ({spec.dirname}/ with {spec.needs}) was not found."
    refusal = _download_refusal(weight_spec, allow_download)
    if refusal:
        raise WeightsNotFoundError(weight_spec, tried, detail=detail, reason=refusal[0], hint=refusal[1],
                                   what="folder", fix="DIR")
    try:
        found = hub_snapshot(spec.hub_repo, allow_patterns=spec.allow_patterns, allow_download=True)
    except DownloadError as exc:
        raise WeightsNotFoundError(weight_spec, tried, detail=detail, reason=f"the download failed: {exc}",
                                   what="folder", fix="DIR") from None
    if found is None or not spec.complete(found):
        lacking = spec.missing(found) if found is not None else list(spec.required)
        raise WeightsNotFoundError(weight_spec, tried, detail=detail, what="folder", fix="DIR", reason=(
            f"the download of hf://{spec.hub_repo} lacks {', '.join(lacking)}"))
    return record_folder(spec, found, source="hub")


def fetch_folder(spec: FolderSpec, directory: Path | str) -> Path:
    """Download a model folder into ``directory/<dirname>`` (``snapshot_download`` with ``local_dir``:
    resumable, with progress bars) and record it.

    Raises:
        DownloadError: not fetched, or fetched without the files a run needs.
    """
    from narrastream.download import hub_snapshot

    reason = offline_reason()
    if reason:
        raise DownloadError(f"{spec.name}: not downloaded, {reason}")
    target = Path(directory) / spec.dirname
    hub_snapshot(spec.hub_repo, allow_patterns=spec.allow_patterns, allow_download=True, local_dir=target)
    lacking = spec.missing(target)
    if lacking:
        raise DownloadError(f"hf://{spec.hub_repo}: downloaded into {target}, but it lacks {', '.join(lacking)}")
    return record_folder(spec, target, source="hub")


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
