"""Find, validate and load a script file: the official 324 scripts or a user's own.

Source order for the official file: ``data.path`` (an explicit path), the ``NARRASTREAM_DATA``
environment variable, the user cache (``~/.cache/narrastream/``), then a download from the pinned
upstream commit. Every problem is reported with the file, the line and what is wrong.

Size limits (:class:`ScriptLimits`, the config's ``limits.max_prompt_chars`` and
``limits.max_script_line_chars``) are enforced while reading: a ``.jsonl`` line is measured before it
is parsed, so a 200 MB line is refused without being held in memory or copied into every sidecar.
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


@dataclass(frozen=True)
class ScriptLimits:
    """The longest prompt and ``.jsonl`` line accepted, in characters (None: no limit).

    The official prompts are at most 375 characters and their lines 1,729; text encoders truncate
    far below the defaults, which only stop runaway input.
    """

    max_prompt_chars: int | None = 4000
    max_line_chars: int | None = 100_000

    def __post_init__(self) -> None:
        for key, value in (("max_prompt_chars", self.max_prompt_chars), ("max_script_line_chars", self.max_line_chars)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"limits.{key} must be a positive integer or null, got {value!r}")

    @classmethod
    def from_config(cls, limits: Any) -> "ScriptLimits":
        """From the config's ``limits`` section (missing keys keep the defaults)."""
        limits = limits or {}
        return cls(max_prompt_chars=limits.get("max_prompt_chars", cls.max_prompt_chars),
                   max_line_chars=limits.get("max_script_line_chars", cls.max_line_chars))


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
                      expected_count: int | None = None, limits: ScriptLimits = ScriptLimits()) -> list[tuple[str, ...]]:
    """Read and validate a ``.jsonl`` (one ``{"prompts": [...]}`` per line) or ``.json`` file.

    ``prompts_per_script`` and ``expected_count`` are enforced when given (the official set: 6, 324).
    Trailing blank lines are allowed; a blank line between scripts is an error, because it would
    shift every later script id. The file must be UTF-8 (a leading byte-order mark is allowed).
    """
    path = Path(path)
    if not path.is_file():
        raise ScriptFileError(path, None, "file not found")
    if path.suffix == ".json":
        entries = _parse_json_document(path, path.read_bytes())
    else:
        entries = _parse_jsonl(path, limits)
    prompts_list = [_validate_entry(path, line, obj, prompts_per_script, limits) for line, obj in entries]
    if not prompts_list:
        raise ScriptFileError(path, None, "no scripts in file")
    if expected_count is not None and len(prompts_list) != expected_count:
        raise ScriptFileError(path, None, f"expected {expected_count} scripts, found {len(prompts_list)}")
    return prompts_list


def _read_lines(path: Path, max_chars: int | None) -> Iterable[tuple[int, str]]:
    """``(line number, text)`` of each line split at ``\n`` only (JSON strings may hold U+2028).

    A line longer than ``max_chars`` is measured without being kept, then refused.
    """
    # UTF-8 needs at most 4 bytes a character: a line within the limit is read in one piece
    max_bytes = None if max_chars is None else 4 * max_chars + 2
    with open(path, "rb") as f:
        number = 0
        while True:
            raw = f.readline() if max_bytes is None else f.readline(max_bytes)
            if not raw:
                return
            number += 1
            if max_bytes is not None and len(raw) == max_bytes and not raw.endswith(b"\n"):
                size = len(raw) + _skip_to_line_end(f)
                raise ScriptFileError(
                    path, number, f"line is {size} bytes long, more than limits.max_script_line_chars={max_chars} "
                    "characters; raise the limit (limits.max_script_line_chars=N) if the file is right")
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte-order mark
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ScriptFileError(path, number, f"not UTF-8 text (byte {exc.start + 1} of the line is "
                                      f"0x{raw[exc.start]:02x})") from None
            text = text.removesuffix("\n").removesuffix("\r")
            if max_chars is not None and len(text) > max_chars:
                raise ScriptFileError(
                    path, number, f"line is {len(text)} characters long, more than limits.max_script_line_chars="
                    f"{max_chars}; raise the limit (limits.max_script_line_chars=N) if the file is right")
            yield number, text


def _skip_to_line_end(f) -> int:
    """Bytes up to and including the next newline, read in blocks and dropped."""
    skipped = 0
    while block := f.readline(1 << 20):
        skipped += len(block)
        if block.endswith(b"\n"):
            break
    return skipped


def _parse_jsonl(path: Path, limits: ScriptLimits = ScriptLimits()) -> list[tuple[int, Any]]:
    entries: list[tuple[int, Any]] = []
    blank: int | None = None  # first of the blank lines seen since the last script
    for number, raw in _read_lines(path, limits.max_line_chars):
        if not raw.strip():
            blank = blank or number
            continue
        if blank is not None:
            raise ScriptFileError(path, blank, "blank line in the middle of the file (script ids are line indices)")
        try:
            entries.append((number, json.loads(raw)))
        except json.JSONDecodeError as exc:
            raise ScriptFileError(path, number, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
        except RecursionError:
            raise ScriptFileError(path, number, "not valid JSON (nested too deeply)") from None
    return entries


def _parse_json_document(path: Path, data: bytes) -> list[tuple[int, Any]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ScriptFileError(path, line, f"not UTF-8 text (byte 0x{data[exc.start]:02x})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScriptFileError(path, exc.lineno, f"not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise ScriptFileError(path, None, "not valid JSON (nested too deeply)") from None
    items = doc if isinstance(doc, list) else [doc]
    # A JSON document has no per-script lines; report the 1-based item index instead.
    return [(i, item) for i, item in enumerate(items, start=1)]


def _validate_entry(path: Path, line: int, obj: Any, prompts_per_script: int | None,
                    limits: ScriptLimits = ScriptLimits()) -> tuple[str, ...]:
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
        if limits.max_prompt_chars is not None and len(prompt) > limits.max_prompt_chars:
            raise ScriptFileError(
                path, line, f"prompt {k} is {len(prompt)} characters long, more than limits.max_prompt_chars="
                f"{limits.max_prompt_chars}; raise the limit (limits.max_prompt_chars=N) if the prompt is right")
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
                   limit: int | None = None, download: bool = True,
                   limits: ScriptLimits = ScriptLimits()) -> Benchmark:
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
        limits=limits,
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
