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


def natural_key(name: str) -> list[Any]:
    """Sort key that puts ``sample_2`` before ``sample_10`` (case-insensitive)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _list_ids(ids: Sequence[int], limit: int = 20) -> str:
    ids = sorted(ids)
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def _decode_mapping(path: Path) -> str:
    """A mapping file's text; bytes that are not UTF-8 are an error naming the line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise PrecomputedVideosError(f"{path}:{line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x}); "
                                     "mapping files must be UTF-8") from None


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
        path = self.mapping_file
        assert path is not None
        if not path.is_file():
            raise PrecomputedVideosError(f"precomputed: mapping file {path} does not exist")
        text = _decode_mapping(path)
        if path.suffix.lower() == ".csv":
            reader = csv.DictReader(text.splitlines())
            if not reader.fieldnames or not {"script_id", "path"} <= set(reader.fieldnames):
                raise PrecomputedVideosError(f"{path}: a CSV mapping needs the columns script_id,path")
            rows = [(line, row["script_id"], row["path"]) for line, row in enumerate(reader, start=2)]
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise PrecomputedVideosError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(data, dict):
                raise PrecomputedVideosError(f"{path}: expected a JSON object mapping script id -> path")
            rows = [(None, k, v) for k, v in data.items()]
        paths: dict[int, Path] = {}
        for line, sid, video in rows:
            where = f"{path}:{line}" if line else f"{path}: entry {sid!r}"
            try:
                script_id = int(sid)
            except (TypeError, ValueError):
                raise PrecomputedVideosError(f"{where}: script id {sid!r} is not an integer") from None
            if not isinstance(video, str) or not video.strip():
                raise PrecomputedVideosError(f"{where}: the path of script {script_id} is {json.dumps(video)}; "
                                             "expected a video file name (a non-empty string)")
            video_path = Path(video).expanduser()
            if not video_path.is_absolute():
                video_path = path.parent / video_path
            if script_id in paths:
                raise PrecomputedVideosError(f"{where}: script {script_id} is mapped twice")
            paths[script_id] = video_path
        return paths

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
