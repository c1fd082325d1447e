"""``precomputed``: evaluate a folder of videos that someone else generated.

Three ways to tie videos to scripts, tried in this order:

1. a mapping file (``mapping=FILE``): JSON ``{"<script_id>": "path"}`` or CSV with ``script_id,path``;
   relative paths are relative to the mapping file;
2. the official layout: ``sample_<id>.<ext>`` files (ids are line indices of the script file);
3. natural sort order of all video files, only when their count equals the number of scripts.

A selected script without a video, or a video with no script, is an error listing the ids: the
official evaluator silently drops them, which changes the denominator of every mean.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any, Sequence

from narrastream.adapters.base import (
    Capabilities,
    GeneratedVideo,
    GenerationError,
    GenerationRequest,
    Generator,
    PromptSwitching,
)
from narrastream.data.script import Script

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".gif")
_OFFICIAL_NAME = re.compile(r"^sample_(\d+)$")


class PrecomputedVideosError(ValueError):
    """The folder does not match the scripts; the message lists the offending ids or files."""


_SCRIPT_ID = re.compile(r"[0-9]+")


def read_mapping_file(path: Path) -> dict[int, Path]:
    """Script id -> video path from a JSON object or a CSV with the columns ``script_id,path``.

    Ids are non-negative integers written in ASCII digits; each id appears once; a path is a
    non-empty string, relative to the mapping file's folder unless absolute. Anything else is a
    :class:`PrecomputedVideosError` naming the file and the entry (the line, for CSV).
    """
    path = Path(path)
    if not path.is_file():
        raise PrecomputedVideosError(f"precomputed: mapping file {path} does not exist")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise PrecomputedVideosError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x})") from None
    rows = _csv_rows(path, text) if path.suffix.lower() == ".csv" else _json_rows(path, text)
    paths: dict[int, Path] = {}
    first_seen: dict[int, str] = {}
    for where, label, sid, video in rows:
        script_id = _script_id(where, sid)
        if not isinstance(video, str):
            raise PrecomputedVideosError(
                f"{where}: the path of script {script_id} is {'null' if video is None else type(video).__name__}, "
                "not a string")
        if not video.strip():
            raise PrecomputedVideosError(f"{where}: the path of script {script_id} is empty")
        if "\x00" in video:
            raise PrecomputedVideosError(f"{where}: the path of script {script_id} contains a NUL character")
        if script_id in paths:
            raise PrecomputedVideosError(
                f"{where}: script {script_id} is mapped twice (also at {first_seen[script_id]}); "
                "each script needs exactly one video")
        video_path = Path(video).expanduser()
        paths[script_id] = video_path if video_path.is_absolute() else path.parent / video_path
        first_seen[script_id] = label
    return paths


def _script_id(where: str, sid: Any) -> int:
    if isinstance(sid, str) and _SCRIPT_ID.fullmatch(sid.strip()):
        return int(sid.strip())
    raise PrecomputedVideosError(f"{where}: script id {sid!r} is not a non-negative integer")


def _json_rows(path: Path, text: str) -> list[tuple[str, str, Any, Any]]:
    pairs_seen: list[list[tuple[str, Any]]] = []

    def keep_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        pairs_seen.append(pairs)  # duplicate keys survive here; json.loads' dict would keep the last
        return dict(pairs)

    try:
        data = json.loads(text, object_pairs_hook=keep_pairs)
    except json.JSONDecodeError as exc:
        raise PrecomputedVideosError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise PrecomputedVideosError(f"{path}: not valid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise PrecomputedVideosError(f"{path}: expected a JSON object mapping script id -> path, "
                                     f"got {type(data).__name__}")
    top = pairs_seen[-1]  # the outermost object is completed last
    return [(f"{path}: entry {key!r}", f"entry {key!r}", key, value) for key, value in top]


def _csv_rows(path: Path, text: str) -> list[tuple[str, str, Any, Any]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        columns = [c.strip() for c in header] if header else []
        if not {"script_id", "path"} <= set(columns):
            raise PrecomputedVideosError(f"{path}: a CSV mapping needs the columns script_id,path "
                                         f"(the header has {', '.join(map(repr, columns)) or 'nothing'})")
        if len(set(columns)) != len(columns):
            raise PrecomputedVideosError(f"{path}:1: a column name appears twice in the header")
        sid_col, path_col = columns.index("script_id"), columns.index("path")
        rows = []
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not row or not any(cell.strip() for cell in row):
                continue  # a blank line
            if len(row) != len(columns):
                raise PrecomputedVideosError(f"{where}: {len(row)} fields, the header has {len(columns)} "
                                             "(quote a path that contains a comma)")
            rows.append((where, f"line {reader.line_num}", row[sid_col], row[path_col]))
    except csv.Error as exc:
        raise PrecomputedVideosError(f"{path}:{reader.line_num}: not valid CSV ({exc})") from None
    return rows


def natural_key(name: str) -> list[Any]:
    """Sort key that puts ``sample_2`` before ``sample_10`` (case-insensitive)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _list_ids(ids: Sequence[int], limit: int = 20) -> str:
    ids = sorted(ids)
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


class PrecomputedGenerator(Generator):
    """Points the harness at existing videos; never copies or re-encodes them."""

    capabilities = Capabilities(switching=PromptSwitching.EXTERNAL)
    writes_files = False

    def __init__(self, folder: str, mapping: str | None = None, layout: str = "auto") -> None:
        if layout not in ("auto", "mapping", "official", "natural"):
            raise ValueError(f"precomputed: layout must be auto, mapping, official or natural, got {layout!r}")
        self.folder = Path(folder).expanduser()
        self.mapping_file = Path(mapping).expanduser() if mapping else None
        self.layout = "mapping" if self.mapping_file else layout
        self.paths: dict[int, Path] = {}
        self.resolved_layout: str | None = None

    # ------------------------------------------------------------------ resolution
    def prepare(self, scripts: Sequence[Script], *, total_scripts: int | None = None) -> None:
        total = total_scripts if total_scripts is not None else len(scripts)
        if self.layout == "mapping":
            available = self._from_mapping()
        else:
            if not self.folder.is_dir():
                raise PrecomputedVideosError(f"precomputed: video folder {self.folder} does not exist")
            videos = sorted((p for p in self.folder.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS),
                            key=lambda p: natural_key(p.name))
            official = {p: _OFFICIAL_NAME.match(p.stem) for p in videos}
            use_official = self.layout == "official" or (self.layout == "auto" and any(official.values()))
            available = self._from_official(videos, official) if use_official else self._from_natural(videos, total)
        extra = sorted(i for i in available if not 0 <= i < total)
        if extra:
            raise PrecomputedVideosError(
                f"precomputed: {len(extra)} video(s) with no script (ids {_list_ids(extra)}; "
                f"the script file has ids 0..{total - 1})"
            )
        missing = sorted(s.id for s in scripts if s.id not in available)
        if missing:
            raise PrecomputedVideosError(
                f"precomputed: no video for {len(missing)} script(s) in {self.mapping_file or self.folder}: "
                f"ids {_list_ids(missing)}"
            )
        absent = sorted(s.id for s in scripts if not available[s.id].is_file())
        if absent:  # a mapping file can name anything; find a typo now, not after hours of other work
            shown = "; ".join(f"{i}: {available[i]}" for i in absent[:5])
            raise PrecomputedVideosError(
                f"precomputed: {self.mapping_file or self.folder} maps {len(absent)} script(s) to a file that "
                f"does not exist: {shown}{' ...' if len(absent) > 5 else ''}")
        self.paths = available

    def _from_official(self, videos: list[Path], matches: dict[Path, re.Match | None]) -> dict[int, Path]:
        self.resolved_layout = "official"
        strays = [p.name for p, m in matches.items() if m is None]
        if strays:
            raise PrecomputedVideosError(
                f"precomputed: {self.folder} uses sample_<id> names but also holds {len(strays)} other "
                f"video(s): {', '.join(strays[:10])}. Move them out or use a mapping file."
            )
        paths: dict[int, Path] = {}
        for path, match in matches.items():
            sid = int(match.group(1))  # type: ignore[union-attr]
            if sid in paths:
                raise PrecomputedVideosError(f"precomputed: two videos for script {sid}: {paths[sid].name}, {path.name}")
            paths[sid] = path
        return paths

    def _from_natural(self, videos: list[Path], total: int) -> dict[int, Path]:
        self.resolved_layout = "natural"
        if len(videos) != total:
            raise PrecomputedVideosError(
                f"precomputed: {self.folder} holds {len(videos)} video(s) for {total} scripts, and none is "
                f"named sample_<id>: sort order can only map them when the counts match. Name them "
                f"sample_<id>.mp4 or pass a mapping file (script id -> path)."
            )
        return dict(enumerate(videos))

    def _from_mapping(self) -> dict[int, Path]:
        self.resolved_layout = "mapping"
        assert self.mapping_file is not None
        return read_mapping_file(self.mapping_file)

    def identity(self) -> dict[str, Any]:
        """Videos made elsewhere: records identify each by its content sha256; the folder is no identity
        (moving it changes nothing)."""
        return {"method": "precomputed"}

    # ------------------------------------------------------------------ generation
    def generate(self, request: GenerationRequest) -> GeneratedVideo:
        from narrastream.video.decode import VideoDecodeError, probe_video

        path = self.paths.get(request.script.id)
        if path is None:
            raise GenerationError(f"precomputed: prepare() found no video for script {request.script.id}")
        try:
            info = probe_video(path)
        except VideoDecodeError as exc:
            raise GenerationError(str(exc)) from exc
        return GeneratedVideo(
            path=path.resolve(), script_id=request.script.id, seed=request.seed, fps=info.fps,
            num_frames=info.num_frames, width=info.width, height=info.height,
            extra={"layout": self.resolved_layout, "size_bytes": path.stat().st_size},
        )
