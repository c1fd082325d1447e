"""``narrastream status RUN_DIR``: progress of a run across its shards, read from the run folder only.

The expected items come from the run's ``config.yaml`` (data selection, seeds, shard count) through
the same :class:`~narrastream.harness.session.Session` code that assigns them to shards (no model is
loaded). Per stage and shard an item is

- generate: *done* when its sidecar and video exist, *failed* when a ``.failed.json`` says why,
  else *pending*;
- evaluate: *done* when every metric of ``protocol.run_metrics`` has a latest record that is not
  ``failed`` (``ok``, ``fallback`` or ``skipped``), *failed* when one of them failed, else *pending*.

Records are counted as they are: a record whose configuration has since changed counts as done here
and is recomputed by the next evaluate run. The time left is the pending items times the current
seconds per item of each shard (its last completions; a shard with none borrows the other shards'
rate), with shards running in parallel. Process states come from ``shards/*.json``.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from narrastream.harness.sharding import shard_items, shard_name
from narrastream.results.records import RecordStore
from narrastream.results.shard_state import read_states

RATE_WINDOW = 20  # completions that define the current rate


class StatusError(ValueError):
    """The folder is not a narrastream run (no config.yaml)."""


@dataclass
class StageProgress:
    stage: str
    shard: str
    done: int = 0
    failed: int = 0
    pending: int = 0
    seconds_per_item: float | None = None
    last_done: float | None = None  # epoch seconds of the latest completion

    @property
    def total(self) -> int:
        return self.done + self.failed + self.pending

    @property
    def seconds_left(self) -> float | None:
        if not self.pending:
            return 0.0
        return None if self.seconds_per_item is None else self.pending * self.seconds_per_item


@dataclass
class RunStatus:
    run_dir: str
    model: str
    shard_count: int
    scripts: int
    seeds: list[int]
    metrics: list[str]
    stages: list[StageProgress]
    shard_phases: dict[str, str]
    failed_metrics: dict[str, int]
    leaderboard: str  # written (up to date) | stale | not written
    now: float = field(default_factory=time.time)

    @property
    def items(self) -> int:
        return self.scripts * len(self.seeds)

    def totals(self, stage: str) -> StageProgress:
        rows = [r for r in self.stages if r.stage == stage]
        total = StageProgress(stage, "all", sum(r.done for r in rows), sum(r.failed for r in rows),
                              sum(r.pending for r in rows))
        lasts = [r.last_done for r in rows if r.last_done is not None]
        total.last_done = max(lasts) if lasts else None
        return total

    def stage_seconds_left(self, stage: str) -> float | None:
        """The stage's time left: its slowest shard's (shards run in parallel)."""
        left = [r.seconds_left for r in self.stages if r.stage == stage]
        return None if any(v is None for v in left) else max(left, default=0.0)

    def shard_seconds_left(self, shard: str) -> float | None:
        left = [r.seconds_left for r in self.stages if r.shard == shard]
        return None if any(v is None for v in left) else float(sum(left))

    @property
    def seconds_left(self) -> float | None:
        """The slowest shard's time left (shards run in parallel); None when no rate is known yet."""
        per_shard = [self.shard_seconds_left(shard_name(i, self.shard_count)) for i in range(self.shard_count)]
        return None if any(v is None for v in per_shard) else max(per_shard, default=0.0)

    @property
    def complete(self) -> bool:
        return all(r.pending == 0 and r.failed == 0 for r in self.stages)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for row, raw in zip(self.stages, data["stages"]):
            raw["seconds_left"] = row.seconds_left
        data["items"] = self.items
        data["seconds_left"] = self.seconds_left
        return data


def load_run_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise StatusError(f"{run_dir}: no config.yaml (not a narrastream run folder, or no stage has started)")
    cfg = yaml.safe_load(path.read_text()) or {}
    manifest_path = run_dir / "manifest.json"
    if manifest_path.is_file() and not cfg.get("data", {}).get("path"):
        data = json.loads(manifest_path.read_text()).get("data") or {}
        if data.get("path") and Path(data["path"]).is_file():  # the file the run actually read
            cfg.setdefault("data", {})["path"] = data["path"]
            cfg["data"]["official"] = bool(data.get("official"))
    return cfg


def run_status(run_dir: Path | str, *, shard_count: int | None = None, now: float | None = None) -> RunStatus:
    """Count done / failed / pending per stage and shard from the files of ``run_dir``."""
    from narrastream.harness.session import Session

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    count = int(shard_count or cfg["shard"]["count"])
    session = Session({**cfg, "run": {**cfg["run"], "dir": str(run_dir)}, "shard": {"index": 0, "count": 1}})
    metrics = [str(m) for m in cfg["protocol"]["run_metrics"]]
    latest = RecordStore(session.run.records_dir).latest()
    rows: list[StageProgress] = []
    failed_metrics: Counter[str] = Counter()
    for index in range(count):
        shard = shard_name(index, count)
        gen, ev = StageProgress("generate", shard), StageProgress("evaluate", shard)
        gen_times: list[tuple[float, float]] = []
        ev_times: list[tuple[float, float]] = []
        for script, seed in shard_items(session.items, index, count):
            _count_generation(session, script.id, seed, gen, gen_times)
            recs = [latest.get((session.model, script.id, seed, m)) for m in metrics]
            failed = [r for r in recs if r is not None and r.status == "failed"]
            failed_metrics.update(r.metric for r in failed)
            if failed:
                ev.failed += 1
            elif all(r is not None for r in recs):
                ev.done += 1
                ev_times.append((max(r.created for r in recs), sum(r.elapsed_s for r in recs)))
            else:
                ev.pending += 1
        for row, times in ((gen, gen_times), (ev, ev_times)):
            row.seconds_per_item, row.last_done = current_rate(times)
        rows += [gen, ev]
    _borrow_rates(rows)
    return RunStatus(
        run_dir=str(run_dir), model=session.model, shard_count=count, scripts=len(session.benchmark.scripts),
        seeds=[int(s) for s in cfg["run"]["seeds"]], metrics=metrics, stages=rows,
        shard_phases={name: state.phase for name, state in read_states(run_dir).items()},
        failed_metrics=dict(sorted(failed_metrics.items())), leaderboard=_leaderboard_state(run_dir, latest),
        now=time.time() if now is None else now)


def _count_generation(session, script_id: int, seed: int, row: StageProgress,
                      times: list[tuple[float, float]]) -> None:
    video = session.load_sidecar(script_id, seed)
    if video is not None:
        row.done += 1
        sidecar = session.run.video_path(session.model, script_id, seed).with_suffix(".json")
        times.append((sidecar.stat().st_mtime, float((video.timings or {}).get("end_to_end") or 0.0)))
    elif session.run.failure_path(session.model, script_id, seed).is_file():
        row.failed += 1
    else:
        row.pending += 1


def current_rate(times: list[tuple[float, float]]) -> tuple[float | None, float | None]:
    """Seconds per item over the last completions, and the time of the last one.

    ``times`` holds (completion time, the item's own duration). With two completions or more the rate
    is the span between the first and last of the window divided by the items in between (waits and
    loading included); with one, that item's own duration.
    """
    if not times:
        return None, None
    ends = sorted(t for t, _ in times)
    if len(ends) >= 2:
        window = ends[-RATE_WINDOW:]
        span = window[-1] - window[0]
        if span > 0:
            return span / (len(window) - 1), ends[-1]
    duration = sum(d for _, d in times) / len(times)
    return (duration if duration > 0 else None), ends[-1]


def _borrow_rates(rows: list[StageProgress]) -> None:
    """A shard without a rate of its own (not started) is assumed as fast as the others in that stage."""
    for stage in ("generate", "evaluate"):
        known = [r.seconds_per_item for r in rows if r.stage == stage and r.seconds_per_item is not None]
        if not known:
            continue
        mean = sum(known) / len(known)
        for row in rows:
            if row.stage == stage and row.seconds_per_item is None:
                row.seconds_per_item = mean


def _leaderboard_state(run_dir: Path, latest: dict) -> str:
    board = run_dir / "leaderboard.csv"
    if not board.is_file():
        return "not written"
    newest = max((r.created for r in latest.values()), default=0.0)
    return "written (up to date)" if board.stat().st_mtime >= newest else "stale (older than the latest record)"


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


def render(status: RunStatus) -> str:
    """A plain-text table: one row per stage and shard, a total per stage, then the time left."""
    from tabulate import tabulate

    header = (f"run {status.run_dir}: model {status.model}, {status.items} item(s) ({status.scripts} script(s) x "
              f"{len(status.seeds)} seed(s)), {len(status.metrics)} metric(s) per item, {status.shard_count} shard(s)")
    table = []
    for stage in ("generate", "evaluate"):
        for row in [r for r in status.stages if r.stage == stage] + [status.totals(stage)]:
            is_total = row.shard == "all"
            phase = "" if is_total else status.shard_phases.get(row.shard, "not started")
            last = "" if row.last_done is None else f"{format_seconds(status.now - row.last_done)} ago"
            rate = "" if is_total or row.seconds_per_item is None else f"{row.seconds_per_item:.1f}"
            left = status.stage_seconds_left(stage) if is_total else row.seconds_left
            table.append([stage, row.shard, phase, row.done, row.failed, row.pending, rate, format_seconds(left),
                          last])
    text = tabulate(table, headers=["stage", "shard", "process", "done", "failed", "pending", "s/item",
                                    "time left", "last done"], tablefmt="simple")
    lines = [header, "", text, ""]
    if status.failed_metrics:
        lines.append("failed metrics: " + ", ".join(f"{m} {n}" for m, n in status.failed_metrics.items())
                     + " (reasons in records/; rerunning retries them)")
    lines.append(f"leaderboard: {status.leaderboard}")
    pending = sum(r.pending for r in status.stages)
    if status.complete:
        lines.append("complete")
    elif not pending:
        lines.append("nothing pending; the failed items are retried by rerunning the same command")
    else:
        lines.append(f"time left at the current rate: {format_seconds(status.seconds_left)} (shards in parallel)")
    return "\n".join(lines) + "\n"
