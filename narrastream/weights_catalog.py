"""Every published checkpoint a run can need, by name: ``narrastream weights list | download | verify``.

The catalogue is built from the code's own registries, so it cannot drift from what runs load: the
metric backbones (:data:`narrastream.metrics.backbones.WEIGHTS`, the LanguageBind folder) and, for
each streaming generator config in ``eval_configs/model/``, its ``model.params.weights`` entries
(``<method>.dit``, ``<method>.lora``, the shared Wan2.1 folder) and IAMFlow's local LLM
(``iamflow.llm``). ``download`` puts everything into one folder laid out as ``$NARRASTREAM_WEIGHTS``
expects (the LLM, which transformers loads by hub id, into ``DIR/hub``, a Hugging Face cache:
``HF_HUB_CACHE=DIR/hub``), for clusters without internet; ``verify`` checks such a folder.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal

from narrastream.download import DownloadError, hub_snapshot
from narrastream.hashing import sha256_file
from narrastream.metrics.backbones.weights import (
    WEIGHTS,
    WEIGHTS_ENV,
    ChecksumError,
    FolderSpec,
    WeightSpec,
    fetch_folder,
    fetch_weights,
    folder_identity,
    verify_file,
)
from narrastream.paths import cache_dir, config_dir

log = logging.getLogger(__name__)

Kind = Literal["file", "folder", "hub-cache"]
#: the catalogue's groups besides the model config names
BACKBONES_GROUP = "backbones"


@dataclass(frozen=True)
class Entry:
    """One downloadable thing: a checkpoint file, a model folder, or a model kept in a Hugging Face cache."""

    name: str
    kind: Kind
    file: WeightSpec | None = None
    folder: FolderSpec | None = None
    used_by: tuple[str, ...] = ()
    #: other names for the same file (a configuration whose method name differs, e.g. iamflow_backbone.dit)
    aliases: tuple[str, ...] = ()

    @property
    def relative(self) -> str:
        """Where it goes under the weights folder."""
        if self.file is not None:
            return self.file.filename
        assert self.folder is not None
        if self.kind == "hub-cache":
            return "hub/models--" + self.folder.hub_repo.replace("/", "--") + "/"
        return self.folder.dirname + "/"

    @property
    def source(self) -> str:
        if self.file is not None:
            return self.file.source or "-"
        assert self.folder is not None
        return f"hf://{self.folder.hub_repo}"

    @property
    def page(self) -> str:
        if self.file is not None:
            return self.file.publisher_page or "-"
        assert self.folder is not None
        return f"https://huggingface.co/{self.folder.hub_repo}"

    @property
    def pinned(self) -> str | None:
        return self.file.sha256 if self.file is not None else None


def _streaming_models() -> dict[str, dict[str, Any]]:
    """``{config name: model.params}`` of every streaming_wan config in eval_configs/model/."""
    from narrastream.config import compose_config

    models = {}
    for path in sorted((config_dir() / "model").glob("*.yaml")):
        text = path.read_text()
        if "streaming_wan" not in text and "defaults:" not in text:
            continue
        model = compose_config([f"model={path.stem}"])["model"]
        if model.get("adapter") == "streaming_wan":
            models[path.stem] = model["params"]
    return models


def catalog() -> dict[str, Entry]:
    """Every entry by name, and :func:`groups` for the names that stand for several."""
    from narrastream.metrics.backbones.languagebind import _folder_spec

    entries: dict[str, Entry] = {}
    for name, spec in WEIGHTS.items():
        if name == "languagebind_video":
            entries[name] = Entry(name, "folder", folder=_folder_spec(), used_by=(BACKBONES_GROUP,))
        else:
            entries[name] = Entry(name, "file", file=spec, used_by=(BACKBONES_GROUP,))
    for config, params in _streaming_models().items():
        for entry in _model_entries(params):
            same = next((e for e in entries.values() if (e.relative, e.source) == (entry.relative, entry.source)), None)
            if same is None:
                entries[entry.name] = dataclasses.replace(entry, used_by=(config,))
            else:  # one file used by several configs: one entry, the others' names as aliases
                aliases = same.aliases + ((entry.name,) if entry.name not in (same.name, *same.aliases) else ())
                entries[same.name] = dataclasses.replace(same, used_by=same.used_by + (config,), aliases=aliases)
    return entries


def _model_entries(params: dict[str, Any]) -> list[Entry]:
    from narrastream.adapters.streaming_wan import wan_folder_spec, weight_file_spec

    method, weights = str(params["method"]), dict(params.get("weights") or {})
    found = []
    for role in ("dit", "lora"):
        if weights.get(role):
            spec = weight_file_spec(method, role, weights[role])
            found.append(Entry(spec.name, "file", file=spec))
    if weights.get("wan") is not None:
        folder = wan_folder_spec(weights["wan"])
        found.append(Entry(folder.name, "folder", folder=folder))
    llm = dict((params.get("iam") or {}).get("llm") or {})
    model = str(llm.get("model") or "")
    if (params.get("memory") or {}).get("policy") == "identity" and llm.get("backend") == "local" \
            and model.count("/") == 1 and not Path(model).expanduser().exists():
        spec = FolderSpec(name=f"{method}.llm", dirname=model.split("/")[1], hub_repo=model, allow_patterns=None,
                          needs="config.json and the model files", required=("config.json",),
                          description=f"{method}'s entity-extraction LLM", config_key="model.params.iam.llm.model",
                          download_key="model.params.weights.allow_download")
        found.append(Entry(spec.name, "hub-cache", folder=spec))
    return found


def groups(entries: dict[str, Entry]) -> dict[str, list[str]]:
    """Names standing for several entries: ``backbones``, each model config name, ``all``."""
    named: dict[str, list[str]] = {"all": list(entries)}
    for name, entry in entries.items():
        for group in entry.used_by:
            named.setdefault(group, []).append(name)
    return named


def select(names: Iterable[str], entries: dict[str, Entry]) -> list[Entry]:
    """Entries for ``names`` (entry names or group names), in catalogue order.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    named = groups(entries)
    aliases = {alias: entry.name for entry in entries.values() for alias in entry.aliases}
    chosen: set[str] = set()
    for name in names:
        if name in entries:
            chosen.add(name)
        elif name in aliases:
            chosen.add(aliases[name])
        elif name in named:
            chosen.update(named[name])
        else:
            import difflib

            known = sorted(set(entries) | set(named) | set(aliases))
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown weights {name!r}; known: {', '.join(known)}.{hint}")
    return [entry for name, entry in entries.items() if name in chosen]


def default_dir() -> Path:
    """``$NARRASTREAM_WEIGHTS``, else the user cache's weights folder (where runs look)."""
    env = os.environ.get(WEIGHTS_ENV)
    return Path(env).expanduser() if env else cache_dir() / "weights"


# ------------------------------------------------------------------------------------ download


def download(entry: Entry, directory: Path, *, progress: bool = True) -> tuple[str, Path]:
    """Fetch one entry into ``directory`` unless it is there already; ``(what happened, path)``.

    Raises:
        DownloadError, ChecksumError: not fetched, or not the published file (nothing kept).
    """
    directory = Path(directory)
    if entry.kind == "file":
        assert entry.file is not None
        target = directory / entry.file.filename
        if target.is_file():
            return "already there", verify_file(entry.file, target, source="local")
        return "downloaded", fetch_weights(entry.file, directory, progress=progress)
    assert entry.folder is not None
    if entry.kind == "folder":
        target = directory / entry.folder.dirname
        if entry.folder.complete(target):
            return "already there", target
        return "downloaded", fetch_folder(entry.folder, directory)
    cache = directory / "hub"
    found = _hub_cache_snapshot(entry.folder, cache)
    if found is not None:
        return "already there", found
    found = hub_snapshot(entry.folder.hub_repo, allow_patterns=entry.folder.allow_patterns, allow_download=True,
                         cache_dir=cache)
    if found is None or not entry.folder.complete(found):
        raise DownloadError(f"hf://{entry.folder.hub_repo}: downloaded into {cache}, but it lacks "
                            f"{', '.join(entry.folder.required)}")
    return "downloaded", found


def _hub_cache_snapshot(folder: FolderSpec, cache: Path) -> Path | None:
    found = hub_snapshot(folder.hub_repo, allow_patterns=folder.allow_patterns, allow_download=False, cache_dir=cache) \
        if cache.is_dir() else None
    return found if found is not None and folder.complete(found) else None


# -------------------------------------------------------------------------------------- verify


@dataclass
class Check:
    """What ``weights verify`` found for one entry."""

    name: str
    status: Literal["ok", "unpinned", "missing", "incomplete", "corrupt"]
    path: Path
    size: int | None = None
    sha256: str | None = None
    detail: str = ""

    @property
    def good(self) -> bool:
        return self.status in ("ok", "unpinned")


def verify(entry: Entry, directory: Path) -> Check:
    """Check one entry in ``directory``: present, non-empty, sha256 against the pin (files), complete
    (folders: the files a run needs), and the sha256 of what is there."""
    directory = Path(directory)
    if entry.kind == "file":
        assert entry.file is not None
        path = directory / entry.file.filename
        part = path.with_name(path.name + ".part")
        if not path.is_file():
            if part.is_file():
                return Check(entry.name, "incomplete", path, part.stat().st_size, None,
                             f"a partial download ({part.name}); `narrastream weights download {entry.name}` resumes it")
            return Check(entry.name, "missing", path)
        size = path.stat().st_size
        if size == 0:
            return Check(entry.name, "corrupt", path, 0, None, "empty file")
        try:
            verify_file(entry.file, path, source="local")
        except ChecksumError as exc:
            return Check(entry.name, "corrupt", path, size, exc.actual,
                         f"sha256 differs from the pinned {exc.expected}")
        digest = sha256_file(path)
        if entry.file.sha256:
            return Check(entry.name, "ok", path, size, digest, "matches the publisher's sha256")
        return Check(entry.name, "unpinned", path, size, digest, "no publisher-stated sha256 to compare with")
    assert entry.folder is not None
    if entry.kind == "hub-cache":
        cache = directory / "hub"
        found = hub_snapshot(entry.folder.hub_repo, allow_patterns=entry.folder.allow_patterns, allow_download=False,
                             cache_dir=cache) if cache.is_dir() else None
        if found is None:
            return Check(entry.name, "missing", cache / entry.relative.removeprefix("hub/"))
        path = found
    else:
        path = directory / entry.folder.dirname
        if not path.is_dir():
            return Check(entry.name, "missing", path)
    lacking = entry.folder.missing(path)
    if lacking:
        return Check(entry.name, "incomplete", path, None, None, "lacks " + ", ".join(lacking))
    identity = folder_identity(path, entry.folder.files(path))
    size = sum(f["size"] for f in identity["files"].values())
    return Check(entry.name, "unpinned", path, size, identity["sha256"],
                 f"{len(identity['files'])} files (sha256 over their sha256s)")
