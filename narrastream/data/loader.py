"""Find, validate and load a script file: the official 324 scripts or a user's own.

Source order for the official file: ``data.path`` (an explicit path), the ``NARRASTREAM_DATA``
environment variable, the user cache (``~/.cache/narrastream/``), then a download from the pinned
upstream commit. Every problem is reported with the file, the line and what is wrong.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from tqdm.auto import tqdm

from narrastream.data.manifest import BenchmarkManifest
from narrastream.data.script import Script
from narrastream.data.taxonomy import load_taxonomy
from narrastream.hashing import sha256_file
from narrastream.paths import cache_dir

log = logging.getLogger(__name__)
ENV_VAR = "NARRASTREAM_DATA"


class ScriptFileError(ValueError):
    """A malformed script file; ``line`` is 1-based (None for whole-file problems)."""

    def __init__(self, path: Path | str, line: int | None, problem: str) -> None:
        self.path, self.line, self.problem = Path(path), line, problem
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


class DataSourceError(RuntimeError):
    """No source could provide the official file (offline, no path given)."""


@dataclass
class Benchmark:
    """The loaded scripts (after selection) plus the identity of the file they came from."""

    scripts: list[Script]
    path: Path
    sha256: str
    origin: str  # "data.path", "env", "cache", "download"
    official: bool
    total: int  # scripts in the file, before selection
    prompts_per_script: list[int] = field(default_factory=list)

    def identity(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "origin": self.origin,
            "official": self.official,
            "total_scripts": self.total,
            "selected_scripts": len(self.scripts),
        }


def parse_script_file(path: Path | str, *, prompts_per_script: int | None = None,
                      expected_count: int | None = None) -> list[tuple[str, ...]]:
    """Read and validate a ``.jsonl`` (one ``{"prompts": [...]}`` per line) or ``.json`` file.

    ``prompts_per_script`` and ``expected_count`` are enforced when given (the official set: 6, 324).
    Trailing blank lines are allowed; a blank line between scripts is an error, because it would
    shift every later script id.
    """
    path = Path(path)
    if not path.is_file():
        raise ScriptFileError(path, None, "file not found")
    text = _decode_utf8(path, path.read_bytes())
    if path.suffix == ".json":
        entries = _parse_json_document(path, text)
    else:
        entries = _parse_jsonl(path, text)
    prompts_list = [_validate_entry(path, line, obj, prompts_per_script) for line, obj in entries]
    if not prompts_list:
        raise ScriptFileError(path, None, "no scripts in file")
    if expected_count is not None and len(prompts_list) != expected_count:
        raise ScriptFileError(path, None, f"expected {expected_count} scripts, found {len(prompts_list)}")
    return prompts_list


def _decode_utf8(path: Path, raw: bytes) -> str:
    """The file's text; bytes that are not UTF-8 are a ScriptFileError naming the line and column."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ScriptFileError(path, line, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {column}); "
                                          "script files must be UTF-8") from None


def _parse_jsonl(path: Path, text: str) -> list[tuple[int, Any]]:
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    entries = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            raise ScriptFileError(path, number, "blank line in the middle of the file (script ids are line indices)")
        try:
            entries.append((number, json.loads(raw)))
        except json.JSONDecodeError as exc:
            raise ScriptFileError(path, number, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    return entries


def _parse_json_document(path: Path, text: str) -> list[tuple[int, Any]]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScriptFileError(path, exc.lineno, f"not valid JSON ({exc.msg})") from None
    items = doc if isinstance(doc, list) else [doc]
    # A JSON document has no per-script lines; report the 1-based item index instead.
    return [(i, item) for i, item in enumerate(items, start=1)]


def _validate_entry(path: Path, line: int, obj: Any, prompts_per_script: int | None) -> tuple[str, ...]:
    if not isinstance(obj, dict):
        raise ScriptFileError(path, line, f"expected a JSON object with 'prompts', got {type(obj).__name__}")
    if "prompts" not in obj:
        raise ScriptFileError(path, line, "no 'prompts' field")
    prompts = obj["prompts"]
    if not isinstance(prompts, list) or not prompts:
        raise ScriptFileError(path, line, "'prompts' must be a non-empty list of strings")
    for k, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise ScriptFileError(path, line, f"prompt {k} is {type(prompt).__name__}, not a string")
        if not prompt.strip():
            raise ScriptFileError(path, line, f"prompt {k} is empty")
    if prompts_per_script is not None and len(prompts) != prompts_per_script:
        raise ScriptFileError(
            path, line, f"{len(prompts)} prompts; the official set has {prompts_per_script} per script"
        )
    return tuple(prompts)


def resolve_official_source(path: str | os.PathLike | None = None, *, manifest: BenchmarkManifest | None = None,
                            download: bool = True) -> tuple[Path, str]:
    """Find the official file: explicit path, ``$NARRASTREAM_DATA``, cache, then download."""
    manifest = manifest or BenchmarkManifest.load()
    if path:
        return Path(path).expanduser(), "data.path"
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser(), "env"
    cached = cache_dir() / manifest.commit / manifest.file
    if cached.is_file():
        return cached, "cache"
    if not download:
        raise DataSourceError(f"official scripts not found: pass data.path=FILE or set {ENV_VAR}")
    download_official(manifest, cached)
    return cached, "download"


def download_official(manifest: BenchmarkManifest, dest: Path) -> Path:
    """Download the file of the pinned commit into ``dest`` atomically, with a progress bar."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s", manifest.url)
    try:
        with urllib.request.urlopen(manifest.url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
            with os.fdopen(fd, "wb") as out, tqdm(total=total, unit="B", unit_scale=True,
                                                 desc=manifest.file) as bar:
                for block in iter(lambda: response.read(1 << 16), b""):
                    out.write(block)
                    bar.update(len(block))
    except OSError as exc:
        raise DataSourceError(
            f"could not download the official scripts from {manifest.url} ({exc}). "
            f"Offline? Pass data.path=FILE or set {ENV_VAR} to a local copy."
        ) from exc
    os.replace(tmp, dest)
    return dest


def load_benchmark(path: str | os.PathLike | None = None, *, official: bool | str = "auto",
                   ids: Iterable[int] | None = None, dimensions: Iterable[str] | None = None,
                   limit: int | None = None, download: bool = True) -> Benchmark:
    """Load scripts, validate them, derive the taxonomy (official file) and apply the selection.

    ``official="auto"`` treats the file as the official set when it comes from the environment,
    cache or download, or when its name or sha256 matches the manifest; a user's own file may have
    any number of scripts and prompts per script.
    """
    manifest = BenchmarkManifest.load()
    source, origin = resolve_official_source(path, manifest=manifest, download=download)
    digest = sha256_file(source) if source.is_file() else ""
    if official == "auto":
        official = (origin != "data.path" or source.name == manifest.file or digest in manifest.known_sha256)
    if official and digest and digest not in manifest.known_sha256:
        log.warning("%s: sha256 %s is not a known copy of the official file", source, digest)
    prompts_list = parse_script_file(
        source,
        prompts_per_script=manifest.prompts_per_script if official else None,
        expected_count=manifest.expected_count if official else None,
    )
    taxonomy = load_taxonomy() if official else None
    scripts = [
        Script(id=i, prompts=prompts, **(taxonomy.derive(i) if taxonomy else {}))
        for i, prompts in enumerate(prompts_list)
    ]
    selected = select_scripts(scripts, ids=ids, dimensions=dimensions, limit=limit, source=source)
    return Benchmark(
        scripts=selected, path=source, sha256=digest, origin=origin, official=bool(official),
        total=len(scripts), prompts_per_script=sorted({len(p) for p in prompts_list}),
    )


def select_scripts(scripts: Sequence[Script], *, ids: Iterable[int] | None = None,
                   dimensions: Iterable[str] | None = None, limit: int | None = None,
                   source: Path | str = "scripts") -> list[Script]:
    """Apply ``data.ids``, ``data.dimensions`` then ``data.limit``, in script-id order.

    A bad selection (an id not in the file, an unknown dimension, nothing selected) is a
    :class:`~narrastream.config.ConfigError` naming the key and the value."""
    from narrastream.config import ConfigError

    chosen = list(scripts)
    if ids is not None:
        try:
            wanted = [int(i) for i in ids]
        except (TypeError, ValueError):
            raise ConfigError(f"data.ids={list(ids)}: script ids are integers (line indices of {source})") from None
        known = {s.id for s in scripts}
        unknown = sorted(set(wanted) - known)
        if unknown:
            raise ConfigError(f"data.ids={wanted}: {unknown} not in {source}. Allowed: ids 0..{len(scripts) - 1}")
        keep = set(wanted)
        chosen = [s for s in chosen if s.id in keep]
    if dimensions is not None:
        wanted_dims = list(dimensions)
        if any(s.dimension is None for s in chosen):
            raise ConfigError(f"data.dimensions={wanted_dims}: needs the official file; user script files "
                              "carry no taxonomy")
        valid = sorted(set(load_taxonomy().dimension_of_template.values()))
        bad = sorted(set(wanted_dims) - set(valid))
        if bad:
            raise ConfigError(f"data.dimensions={wanted_dims}: unknown {bad}. Allowed: {', '.join(valid)}")
        chosen = [s for s in chosen if s.dimension in set(wanted_dims)]
    if limit is not None:
        if int(limit) < 1:
            raise ConfigError(f"data.limit={limit}: must be >= 1 (or null: all)")
        chosen = chosen[: int(limit)]
    if scripts and not chosen:
        raise ConfigError(f"data.ids={None if ids is None else list(ids)}, data.dimensions="
                          f"{None if dimensions is None else list(dimensions)}: select no script of {source}")
    return chosen
