"""Generation speed from the videos' sidecars: seconds per video, frame and pixel rates, the time in
each profiling boundary, peak memory and device, per model (and run folder or results file)."""

from __future__ import annotations

import statistics
from typing import Any, Sequence

from narrastream.report.sources import Source

#: profiling boundaries in the order a reader expects them; others follow alphabetically
BOUNDARIES = ("end_to_end", "loop", "core_dit", "method_overhead", "memory", "output_decode")


def speed_rows(sources: Sequence[Source]) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per (source, model) with videos, and the timing keys found (ordered)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for source in sources:
        for (model, _, _), video in source.sidecars.items():
            groups.setdefault((source.name, model), []).append(video)
    keys = {k for videos in groups.values() for v in videos for k in (v.get("timings") or {})}
    ordered = [k for k in BOUNDARIES if k in keys] + sorted(keys - set(BOUNDARIES))
    rows = []
    for (source, model), videos in sorted(groups.items()):
        timed = [v for v in videos if (v.get("timings") or {}).get("end_to_end")]
        seconds = [float(v["timings"]["end_to_end"]) for v in timed]
        total = sum(seconds)
        frames = sum(int(v.get("num_frames") or 0) for v in timed)
        pixels = sum(int(v.get("num_frames") or 0) * int(v.get("width") or 0) * int(v.get("height") or 0)
                     for v in timed)
        sizes = sorted({f"{v.get('width')}x{v.get('height')}@{v.get('fps'):g}" for v in videos
                        if v.get("width") and v.get("fps")})
        memory = [int(v["peak_memory_bytes"]) for v in videos if v.get("peak_memory_bytes")]
        devices = sorted({f"{v.get('device')}" + (f" x{v['device_count']}" if (v.get("device_count") or 0) > 1 else "")
                          for v in videos if v.get("device")})
        row = {
            "source": source, "model": model, "videos": len(videos), "timed": len(timed),
            "seconds_mean": statistics.fmean(seconds) if seconds else None,
            "seconds_median": statistics.median(seconds) if seconds else None,
            "frames_per_s": frames / total if total else None,
            "mpx_per_s": pixels / total / 1e6 if total else None,
            "size": ", ".join(sizes),
            "peak_memory_gib": max(memory) / 2**30 if memory else None,
            "device": ", ".join(devices),
            "boundaries": {},
        }
        for key in ordered:
            values = [float(v["timings"][key]) for v in timed if key in (v.get("timings") or {})]
            if values:
                mean = statistics.fmean(values)
                share = mean / row["seconds_mean"] if row["seconds_mean"] else None
                row["boundaries"][key] = {"mean": mean, "share": share, "videos": len(values)}
        rows.append(row)
    return rows, ordered
