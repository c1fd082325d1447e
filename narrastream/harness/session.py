"""A configured run over one shard: the stages ``generate``, ``evaluate`` and ``leaderboard``.

Every stage reads and writes files of the run folder only, so each can be rerun alone and resumes
where a previous (possibly killed) run stopped: a video counts as done when its sidecar exists, a
metric when a record with the same cache key exists and did not fail (a fallback caused by a failed
judge counts as failed: see :func:`narrastream.metrics.base.needs_retry`).

Cache keys and record configurations name everything by content, never by location: the video and
the checkpoints by sha256 (cached on disk by path, size and mtime, so reruns read no big file again),
the judge by the model its endpoint reports. Moving a run folder recomputes nothing; replacing a
checkpoint recomputes what used it. Computing them loads no model.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections import deque
from contextlib import contextmanager
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import yaml
from tqdm.auto import tqdm

from narrastream.adapters import build_generator
from narrastream.adapters.base import (
    GeneratedVideo,
    GenerationError,
    GenerationRequest,
    Generator,
    SidecarError,
    read_sidecar,
    sidecar_path,
    write_json_atomic,
)
from narrastream.data import Benchmark, Script, ScriptLimits, load_benchmark
from narrastream.harness.prefetch import Prefetcher
from narrastream.harness.sharding import shard_items, shard_name
from narrastream.metrics.base import (
    ANNOTATIONS_FAILED,
    FALLBACK_CAUSE,
    Metric,
    MetricContext,
    SPEED_ONLY_PARAMS,
    MetricResult,
    build_metric,
    needs_retry,
)
from narrastream.protocol.annotations import (  # noqa: F401 - re-exported for older imports
    SHIPPED_ANNOTATIONS,
    AnnotationsError,
    NarrativeAnnotations,
    load_annotations,
)
from narrastream.hashing import sha256_file
from narrastream.preflight import environment_oserror
from narrastream.report.bootstrap import BootstrapSettings
from narrastream.results.configuration import config_id
from narrastream.results.lock import ShardLock
from narrastream.results.records import Record, RecordStore, latest_by_config, record_key
from narrastream.results.rundir import RunDir, environment_info

if TYPE_CHECKING:
    from narrastream.video import SegmentedVideo

log = logging.getLogger(__name__)
STAGES = ("generate", "evaluate", "leaderboard")


@dataclass
class StageSummary:
    """Counts of one stage in this invocation; ``failures`` holds one line per failed item."""

    stage: str
    done: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    judge_stats: dict[str, int] | None = None
    #: of ``skipped``: records carried over from another configuration (same cache key, nothing computed)
    reused: int = 0
    #: of ``done``: fallbacks written because the judge failed (a request, or a live annotation question);
    #: the next run computes them again (:func:`narrastream.metrics.base.needs_retry`)
    judge_fallbacks: int = 0
    #: records lines skipped because they are not valid records, per file (they do not count as done)
    invalid_records: dict[str, int] = field(default_factory=dict)

    def fail(self, message: str) -> None:
        self.failed += 1
        self.failures.append(message)

    def __str__(self) -> str:
        text = f"{self.stage}: {self.done} done, {self.skipped} already done, {self.failed} failed"
        if self.reused:
            text += f" ({self.reused} of the already done carried over from another configuration)"
        if self.judge_fallbacks:
            text += (f"; {self.judge_fallbacks} of the done are fallbacks written because the judge failed "
                     "(the next run computes them again)")
        if self.judge_stats:
            text += "; judge: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in self.judge_stats.items())
        if self.invalid_records:
            text += (f"; {sum(self.invalid_records.values())} invalid record line(s) skipped, not counted as done ("
                     + ", ".join(f"{path}: {n}" for path, n in self.invalid_records.items()) + ")")
        return text


def _locked(method):
    """Run a stage while holding the shard's lock (:meth:`Session.shard_lock`)."""

    @functools.wraps(method)
    def wrapper(self: "Session", *args: Any, **kwargs: Any) -> Any:
        with self.shard_lock():
            return method(self, *args, **kwargs)

    return wrapper


class Session:
    """Everything a stage needs, built once from a resolved config (a plain nested dict)."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = cfg
        self.run = RunDir(Path(cfg["run"]["dir"]))
        self.model: str = cfg["model"]["name"]
        self.protocol: Mapping[str, Any] = cfg["protocol"]
        data = cfg["data"]
        self.benchmark: Benchmark = load_benchmark(
            data.get("path"), official=data.get("official", "auto"), ids=data.get("ids"),
            dimensions=data.get("dimensions"), limit=data.get("limit"),
            limits=ScriptLimits.from_config(cfg.get("limits")),
        )
        seeds = [int(s) for s in cfg["run"]["seeds"]]
        items = [(script, seed) for script in self.benchmark.scripts for seed in seeds]
        shard = cfg["shard"]
        self.items: list[tuple[Script, int]] = shard_items(items, int(shard["index"]), int(shard["count"]))
        self.shard = shard_name(int(shard["index"]), int(shard["count"]))
        self._backbones = None
        self._judges: Any = False  # built on first use (a local judge loads a model)
        self._judge_config: Any = False  # probed on first use (an HTTP request, no model)
        self._run_config: dict[str, Any] | None = None
        self.bootstrap = BootstrapSettings.from_config((cfg.get("report") or {}).get("bootstrap"))  # checked now
        self.annotation_mode = str(self.protocol.get("annotations", "frozen"))
        if self.annotation_mode == "live":
            if not (cfg.get("judge") or {}).get("backend", "none") != "none":
                raise AnnotationsError("protocol.annotations=live needs a judge (e.g. judge=siliconflow); "
                                       "judge=none can only use the frozen annotations")
            judge_cfg = cfg["judge"]
            planner = judge_cfg.get("planner_model") or judge_cfg.get("model")
            self._live_source = f"live:{planner}|{judge_cfg.get('model')}"
            self.annotations = NarrativeAnnotations(source=self._live_source)
            self._live_done = False
        else:
            self.annotations = load_annotations(cfg.get("annotations") or {}, self.annotation_mode)
            self._live_done = True
        self.annotation_failures: dict[int, list[str]] = {}
        self._lock: ShardLock | None = None

    @classmethod
    def from_overrides(cls, overrides: list[str] | None = None) -> "Session":
        """Compose the Hydra config from Python: ``Session.from_overrides(["preset=tiny"])``."""
        from narrastream.config import compose_config

        return cls(compose_config(overrides or []))

    @contextmanager
    def shard_lock(self) -> Iterator[ShardLock]:
        """Hold ``locks/<shard>.lock`` of the run folder (re-entrant within this session): a second process
        on the same folder and shard gets :class:`~narrastream.results.lock.ShardLockError` (exit 2)."""
        if self._lock is not None:
            yield self._lock
            return
        lock = ShardLock(self.run.lock_path(self.shard), self.shard)
        with lock:
            self._lock = lock
            try:
                yield lock
            finally:
                self._lock = None

    # ------------------------------------------------------------------ run files
    def write_run_files(self) -> None:
        self.run.root.mkdir(parents=True, exist_ok=True)
        manifest = {
            "run_id": self.run.run_id,
            "model": {k: self.cfg["model"].get(k) for k in ("name", "adapter", "params")},
            "data": self.benchmark.identity(),
            "protocol": {"name": self.protocol["name"], "version": self.protocol["version"]},
            "environment": environment_info(),
            "backbones": {"config": self.cfg.get("backbones")},
            "annotations": {**self.annotations.identity(), **self.annotations_identity()},
            "judge": self.judge_identity(),
        }
        self.run.write_manifest(manifest)
        tmp = self.run.config_path.with_suffix(".yaml.tmp")
        tmp.write_text(yaml.safe_dump(_plain(self.cfg), sort_keys=False))
        tmp.replace(self.run.config_path)

    # ------------------------------------------------------------------ generate
    @_locked
    def generate(self) -> StageSummary:
        summary = StageSummary("generate")
        model_cfg = self.cfg["model"]
        generator: Generator = build_generator(model_cfg["adapter"], **(model_cfg.get("params") or {}))
        generator.prepare(self.benchmark.scripts, total_scripts=self.benchmark.total)
        gen_cfg = self.cfg["generation"]
        try:
            for script, seed in tqdm(self.items, desc=f"generate {self.model}", unit="video"):
                out = self.run.video_path(self.model, script.id, seed)
                if self.load_sidecar(script.id, seed) is not None:
                    summary.skipped += 1
                    continue
                request = GenerationRequest(
                    script=script, seed=seed, output_path=out, fps=float(gen_cfg["fps"]),
                    seconds_per_segment=float(gen_cfg["seconds_per_segment"]), width=int(gen_cfg["width"]),
                    height=int(gen_cfg["height"]), device=str(gen_cfg.get("device", "auto")),
                )
                self._generate_one(generator, request, summary)
        finally:
            generator.close()
        return summary

    def _generate_one(self, generator: Generator, request: GenerationRequest, summary: StageSummary) -> None:
        sid, seed = request.script.id, request.seed
        failure_file = self.run.failure_path(self.model, sid, seed)
        out = Path(request.output_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            video = generator.generate(request)
        except Exception as exc:  # noqa: BLE001 - any adapter failure is recorded, then the run goes on
            if (disk := environment_oserror(exc)) is not None:
                if generator.writes_files:
                    out.unlink(missing_ok=True)  # a half-written video is not kept (it has no sidecar)
                raise disk from exc  # a full or read-only disk fails every video alike: stop (exit 2), keep the rest
            details = getattr(exc, "details", {}) if isinstance(exc, GenerationError) else {}
            if not isinstance(exc, GenerationError):
                log.exception("generator %s crashed on script %d seed %d", self.model, sid, seed)
            message = f"{type(exc).__name__}: {exc}"
            write_json_atomic(failure_file, {"script_id": sid, "seed": seed, "error": message,
                                             "generator": self.generator_identity(generator),
                                             "details": details, "time": time.time()})
            summary.fail(f"script {sid} seed {seed}: {message.splitlines()[0]}")
            return
        video.generator = self.generator_identity(generator)
        sidecar = video.to_sidecar(self.model, generator.capabilities)
        if Path(video.path).resolve().parent == out.resolve().parent:
            sidecar["path"] = Path(video.path).name  # inside the run: keep the folder relocatable
        sidecar["request"] = request.to_json()
        try:
            write_json_atomic(sidecar_path(out), sidecar)  # written last: marks the video as done
        except OSError:
            if generator.writes_files:
                out.unlink(missing_ok=True)  # no sidecar, no video: the next run makes it again
            raise
        failure_file.unlink(missing_ok=True)
        summary.done += 1

    def generator_identity(self, generator: Generator) -> dict[str, Any]:
        """What made (or failed to make) a video, for its sidecar or failure file and every record on it:
        the adapter, the generator's own :meth:`~narrastream.adapters.base.Generator.identity` (method,
        weights hashes, flags such as ``oracle``) and the requested output format."""
        gen_cfg = self.cfg["generation"]
        output = {"fps": float(gen_cfg["fps"]), "seconds_per_segment": float(gen_cfg["seconds_per_segment"]),
                  "width": int(gen_cfg["width"]), "height": int(gen_cfg["height"])}
        return {"adapter": self.cfg["model"]["adapter"], **generator.identity(), "output": output}

    def load_sidecar(self, script_id: int, seed: int) -> GeneratedVideo | None:
        """The finished video of an item, or None (not generated, failed, or its file vanished)."""
        side = sidecar_path(self.run.video_path(self.model, script_id, seed))
        if not side.is_file():
            return None
        try:
            video = read_sidecar(side, script_id=script_id, seed=seed)  # re-probes a video replaced in place
        except SidecarError as exc:
            log.warning("unusable sidecar: %s; the video will be regenerated", exc)
            return None
        return video if video.path.is_file() else None

    def generation_failure(self, script_id: int, seed: int) -> str | None:
        failure = self.run.failure_path(self.model, script_id, seed)
        if failure.is_file():
            return json.loads(failure.read_text()).get("error")
        return None

    # ------------------------------------------------------------------ evaluate
    @property
    def backbones(self):
        """The backbone provider, created on first use so a fully resumed run loads no model."""
        if self._backbones is None:
            from narrastream.metrics.backbones import BackboneProvider

            self._backbones = BackboneProvider(self.cfg["backbones"])
        return self._backbones

    @property
    def judges(self):
        """The judges (:class:`narrastream.judges.JudgeSet`) or None for ``judge=none``; built on first use."""
        if self._judges is False:
            from narrastream.judges import build_judges

            self._judges = build_judges(self.cfg.get("judge"))
        return self._judges

    def judge_identity(self) -> dict[str, Any]:
        """The judge config as records and manifests show it: models, endpoint, the key's variable name."""
        cfg = self.cfg.get("judge") or {}
        from narrastream.judges.identity import endpoint_label

        keys = ("backend", "base_url", "model", "planner_model", "api_key_env")
        shown = {k: cfg.get(k) for k in keys if k in cfg} or {"backend": "none"}
        if shown.get("base_url"):  # a key written into the URL never reaches the manifest
            shown["base_url"] = endpoint_label(str(shown["base_url"]))
        return shown

    def judge_record_identity(self) -> dict[str, Any] | None:
        """Who answers, as the endpoint reports it (probed once; no model is loaded), or None for judge=none:
        ``{"vlm": {backend, model, requested_model, host, stand_in}, "planner": {...}}``.

        A stand-in noticed in a response after the probe (judges already built) is reported too."""
        if self._judge_config is False:
            from narrastream.judges.identity import judge_config_identity

            self._judge_config = judge_config_identity(self.cfg.get("judge"))
        if self._judges not in (False, None) and self._judges.stand_in:
            return self._judges.config_identity()
        return self._judge_config

    def judge_config(self) -> dict[str, Any] | None:
        """The judge part of configurations and cache keys: the identity without the requested name."""
        ident = self.judge_record_identity()
        if ident is None:
            return None
        return {role: {k: v for k, v in j.items() if k != "requested_model"} for role, j in ident.items()}

    def annotations_identity(self) -> dict[str, Any]:
        """The annotations as records name them: ``{mode, version, sha256}`` (live: ``{mode, source}``).

        The version is the file's own (``NarrativeAnnotations.identity()["version"]``) or its name
        without ``.jsonl``; the sha256 is the file's content."""
        ident = self.annotations.identity()
        if self.annotation_mode == "frozen":
            path = ident.get("path")
            version = ident.get("version") or (Path(path).stem if path else ident.get("source"))
            return {"mode": "frozen", "version": version, "sha256": ident.get("sha256")}
        if self.annotation_mode == "live":
            return {"mode": "live", "source": self._live_source}
        return {"mode": self.annotation_mode}

    def protocol_identity(self) -> dict[str, Any]:
        """The protocol version plus a digest of its constants (metric settings, dimensions, segmentation)."""
        metrics = {name: {k: v for k, v in (params or {}).items() if k not in SPEED_ONLY_PARAMS}
                   for name, params in (self.protocol.get("metrics") or {}).items()}  # a batch size is no constant
        constants = {"metrics": metrics, "dimensions": self.protocol.get("dimensions"), "video": self.cfg["video"]}
        digest = hashlib.sha256(json.dumps(_plain(constants), sort_keys=True, default=str).encode()).hexdigest()
        return {"version": f"{self.protocol['name']}-{self.protocol['version']}",
                "segment_seconds": self.protocol["segment_seconds"], "segmentation": self.cfg["video"]["segmentation"],
                "constants": digest[:16]}

    def run_configuration(self) -> dict[str, Any]:
        """What every record of this evaluation shares: protocol, annotations, backbone weights (of the
        run's metrics), judge. Hashes checkpoints (cached) and probes the judge endpoint; loads no model."""
        if self._run_config is None:
            from narrastream.metrics.backbones import WeightsNotFoundError

            names = list(dict.fromkeys(b for m in self.metrics().values() for b in self._backbones_of(m)))
            weights, missing = {}, []
            for name in names:  # every missing checkpoint is named at once, before any work
                try:
                    weights[name] = self.backbones.weights_identity(name)
                except WeightsNotFoundError as exc:
                    missing.append(exc)
            if missing:
                raise WeightsNotFoundError.combine(missing)
            self._run_config = {
                "protocol": self.protocol_identity(),
                "annotations": self.annotations_identity(),
                "backbones": dict(sorted(weights.items())),
                "precision": {name: self.backbones.precision_of(name) for name in sorted(weights)},
            }
        return {**self._run_config, "judge": self.judge_config()}

    def configuration(self, script_id: int, seed: int, video: GeneratedVideo | None) -> dict[str, Any]:
        """The configuration of a record on an item: the run's, plus the generator named by the video's
        sidecar (or by its failure file, so that failures count in the same row; see
        :mod:`narrastream.results.configuration`)."""
        generator = video.generator if video is not None else None
        if video is None:
            failure = self.run.failure_path(self.model, script_id, seed)
            if failure.is_file():
                try:
                    generator = json.loads(failure.read_text()).get("generator")
                except json.JSONDecodeError:
                    generator = None
        return {**self.run_configuration(), "generator": generator}

    def ensure_annotations(self) -> None:
        """Live mode: ask the judges for this shard's scripts' annotations (cached answers are free)."""
        if self._live_done:
            return
        from narrastream.protocol.live_annotations import annotate_scripts

        scripts = list({script.id: script for script, _ in self.items}.values())
        self.annotations, self.annotation_failures = annotate_scripts(
            self.judges, scripts, workers=int(self.cfg["judge"].get("concurrency", 4)))
        self._live_done = True

    def metrics(self) -> dict[str, Metric]:
        specs = self.protocol["metrics"]
        names = list(self.protocol["run_metrics"])
        unknown = [n for n in names if n not in specs]
        if unknown:
            raise KeyError(f"protocol.run_metrics names {unknown}, which have no entry in protocol.metrics")
        return {name: build_metric(name, specs[name]) for name in names}

    @_locked
    def evaluate(self) -> StageSummary:
        """Score every pending (video, metric); a metric is done when this configuration has a record with
        the same cache key that did not fail, nor fall back because something failed. A record of another
        configuration with the same cache key (only settings the score does not depend on changed) is
        carried over, not computed again."""
        summary = StageSummary("evaluate")
        metrics = self.metrics()
        store = RecordStore(self.run.records_dir, self.shard)
        mine = [r for r in store.iter_all() if r.model == self.model]
        summary.invalid_records = store.invalid_counts()
        latest = latest_by_config(mine)
        reusable: dict[tuple, Record] = {}
        for rec in mine:
            if not needs_retry(rec.status, rec.details) and rec.configuration is not None:
                old = reusable.get((rec.key, rec.cache_key))
                if old is None or rec.created >= old.created:
                    reusable[(rec.key, rec.cache_key)] = rec
        self.ensure_annotations()  # live mode: before the cache keys, which include each script's annotations
        writer = _RecordWriter(self, store, latest, summary)
        work = []
        for script, seed in self.items:
            video = self.load_sidecar(script.id, seed)
            configuration = self.configuration(script.id, seed, video)
            cid = config_id(configuration)
            keys = {name: self.cache_key(metric, video, script) for name, metric in metrics.items()}
            pending = {}
            for name, metric in metrics.items():
                key = record_key(self.model, script.id, seed, name)
                previous = latest.get((key, cid))
                if (previous is not None and previous.cache_key == keys[name]
                        and not needs_retry(previous.status, previous.details)):
                    summary.skipped += 1
                elif (same := reusable.get((key, keys[name]))) is not None:
                    writer.carry_over(same, configuration)
                    summary.skipped += 1
                    summary.reused += 1
                else:
                    pending[name] = metric
            if pending:
                work.append((script, seed, video, pending, keys))
        if not work:
            return summary
        judged = any(getattr(m, "uses_judge", False) for _, _, _, pending, _ in work for m in pending.values())
        workers = int((self.cfg.get("judge") or {}).get("concurrency", 4)) if judged and self.judges else 0
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="judge") if workers else None
        if any(self._backbones_of(m) for *_, pending, _ in work for m in pending.values()):
            self.backbones  # noqa: B018 - built here, not in the prefetch thread (it loads no model)
        # the next video is decoded (and put on the GPU) in a background thread while this one is scored
        videos = Prefetcher(work, self._load_video, depth=int(self.cfg["backbones"].get("prefetch_videos", 1)),
                            name="decode")
        started = time.perf_counter()
        try:
            for (script, seed, video, pending, keys), segmented in tqdm(videos, total=len(work),
                                                                        desc=f"evaluate {self.model}", unit="video"):
                self._evaluate_item(script, seed, video, pending, keys, writer, pool, segmented)
                writer.drain(limit=4 * max(1, workers))
        finally:  # even when a setup error stops the loop, judge answers already in flight are recorded
            videos.close()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=False)
            writer.drain(limit=0)
            self.record_runtime(len(work), time.perf_counter() - started, videos)
        if self.judges is not None:
            summary.judge_stats = self.judges.stats()
        return summary

    def _load_video(self, item: tuple) -> "SegmentedVideo | str | None":
        """An item's video decoded and segmented (in the prefetch thread), its frames put on the GPU when the
        backbones run there; the reason as text when the video cannot be used; None when there is nothing to
        decode (no video, or native segmentation without switch frames: :meth:`_evaluate_item` records why)."""
        from narrastream.video import SegmentedVideo, SegmentRule, VideoLimits

        script, _, video, pending, _ = item
        vcfg = self.cfg["video"]
        if video is None or (vcfg["segmentation"] == "native" and not video.switch_frames):
            return None
        rule = SegmentRule(segment_seconds=float(self.protocol["segment_seconds"]),
                           min_last_fraction=float(vcfg["min_last_fraction"]),
                           max_tail_fraction=float(vcfg["max_tail_fraction"]))
        switch_frames = video.switch_frames if vcfg["segmentation"] == "native" else None
        try:
            segmented = SegmentedVideo.from_file(video.path, script.num_segments, rule=rule,
                                                 switch_frames=switch_frames, expected_fps=vcfg.get("expected_fps"),
                                                 limits=VideoLimits.from_config(self.cfg.get("limits")))
        except (ValueError, OSError) as exc:  # decode, fps and segmentation errors name the file
            return f"{type(exc).__name__}: {exc}"
        device = self._backbones.device if self._backbones is not None else None
        if device is not None and device.type == "cuda" and any(self._backbones_of(m) for m in pending.values()):
            try:
                segmented.device_frames(device)  # one upload, while the previous video is scored
            except Exception as exc:  # noqa: BLE001 - the metrics upload it themselves when they need it
                log.warning("could not put %s on %s ahead of time: %s", video.path, device, exc)
        return segmented

    def record_runtime(self, videos: int, seconds: float, prefetcher: Prefetcher | None = None) -> None:
        """Add what this evaluation cost to the run manifest, under ``evaluation_runtime.<shard>``: per backbone
        seconds, peak GPU memory, batch size, precision (:meth:`BackboneProvider.runtime`), and the loop's
        seconds, videos, time spent decoding (in the prefetch thread) and waiting for a decode."""
        if not self.run.manifest_path.is_file() or not videos:
            return
        loop: dict[str, Any] = {"videos": videos, "seconds": round(seconds, 3)}
        if prefetcher is not None:
            loop.update(prefetch_videos=prefetcher.depth, decode_seconds=round(prefetcher.load_seconds, 3),
                        waited_for_decode_seconds=round(prefetcher.wait_seconds, 3))
        backbones = self._backbones.runtime() if self._backbones is not None else {}
        loop["backbone_seconds"] = round(sum(b["seconds"] for b in backbones.values()), 3)
        self.run.add_to_manifest("evaluation_runtime", {self.shard: {"loop": loop, "backbones": backbones}})

    def _evaluate_item(self, script: Script, seed: int, video: GeneratedVideo | None, pending: dict[str, Metric],
                       keys: dict[str, str], writer: "_RecordWriter", pool: ThreadPoolExecutor | None,
                       segmented: "SegmentedVideo | str | None" = None) -> None:
        """Score one item; ``segmented`` is its video as :meth:`_load_video` decoded it (the prefetch thread),
        or the reason it could not be."""
        def record(name: str, result: MetricResult, elapsed: float = 0.0, backbones: dict | None = None) -> None:
            writer.write(script, seed, video, name, pending[name], keys[name], result, elapsed, backbones)

        if video is None:
            cause = self.generation_failure(script.id, seed)
            reason = (f"no video: generation failed ({cause.splitlines()[0]})" if cause
                      else f"no video for script {script.id} seed {seed}: run the generate stage first")
            for name in pending:
                record(name, MetricResult.failed(reason))
            return
        if self.cfg["video"]["segmentation"] == "native" and not video.switch_frames:
            for name in pending:
                record(name, MetricResult.failed(f"{video.path}: video.segmentation=native but the sidecar "
                                                 "has no switch_frames"))
            return
        if segmented is None:  # called without the prefetch: decode here
            segmented = self._load_video((script, seed, video, pending, keys))
        if isinstance(segmented, str):  # decode, fps and segmentation errors name the file
            for name in pending:
                record(name, MetricResult.failed(segmented))
            return
        assert segmented is not None
        video.timing = segmented.timing  # measured frame timing, into every record's details
        from narrastream.metrics.backbones import ChecksumError, WeightsNotFoundError

        annotation = self.script_annotations(script)
        ctx = MetricContext(script=script, backbones=self.backbones, annotations=annotation, judges=self.judges,
                            judge_images=self.judge_images())
        for name, metric in pending.items():
            started = time.perf_counter()
            identities: dict[str, Any] = {}
            try:
                identities = {b: self.backbones.identity(b) for b in self._backbones_of(metric)}
                if getattr(metric, "uses_judge", False):
                    prepared = metric.prepare(segmented, ctx)
                    if not isinstance(prepared, MetricResult):
                        if pool is None:
                            prepared = metric.finish(prepared, ctx)
                        else:  # asked in a worker while the next video decodes; written by the main thread
                            writer.submit(pool.submit(_timed, metric.finish, prepared, ctx), script, seed, video,
                                          name, metric, keys[name])
                            continue
                    result = prepared
                else:
                    result = metric.compute(segmented, ctx)
            except (WeightsNotFoundError, ChecksumError):
                raise  # a setup problem, the same for every video: stop with the message, record nothing
            except Exception as exc:  # noqa: BLE001 - recorded as failed with the reason; the run goes on
                log.exception("%s failed on script %d seed %d", name, script.id, seed)
                result = MetricResult.failed(f"{type(exc).__name__}: {exc}")
            record(name, result, time.perf_counter() - started, identities)
        segmented.release_device()  # the GPU copy of the frames goes with the item (the host frames stay for judges)

    def script_annotations(self, script: Script):
        """The script's annotations if they fit its prompts and segments (else None; a warning says why)."""
        annotation, why = self.annotations.for_script(script.id, script.prompts)
        if why:
            log.warning("%s (the metrics that need annotations fall back and record it)", why)
        for problem in annotation.check_segments(script.num_segments) if annotation else []:
            log.warning("annotations of script %d: %s (the metrics that need it fall back)", script.id, problem)
        return annotation

    def judge_images(self) -> dict[str, Any]:
        cfg = self.cfg.get("judge") or {}
        return {"max_side": cfg.get("image_max_side"), "quality": int(cfg.get("jpeg_quality", 95))}

    @staticmethod
    def _backbones_of(metric: Metric) -> list[str]:
        name = metric.params.get("backbone")
        return [name] if name else list(metric.backbones)

    def cache_key(self, metric: Metric, video: GeneratedVideo | None, script: Script) -> str:
        """Fingerprint of everything a score depends on, by content: metric, protocol, segmentation,
        the weights of the metric's backbones (sha256, or random seed and size), the judge as its
        endpoint reports it, the script's annotations, and the video's sha256 (not its path)."""
        video_id = None
        if video is not None:
            video_id = {"sha256": sha256_file(video.path), "switch_frames": video.switch_frames}
        payload = {
            "metric": metric.identity(),
            "protocol": [self.protocol["name"], self.protocol["version"], self.protocol["segment_seconds"]],
            "video_rules": self.cfg["video"],
            "backbones": {b: self.backbones.weights_identity(b) for b in self._backbones_of(metric)},
            # resolved on this device: "auto" is fp16 CLIP on CUDA but fp32 on the CPU
            "precision": {b: self.backbones.precision_of(b) for b in self._backbones_of(metric)},
            "video": video_id,
            "annotations": annotation.fingerprint() if (annotation := self.annotations.for_script(
                script.id, script.prompts)[0]) else None,
            "judge": self.judge_config() if getattr(metric, "uses_judge", False) else None,
        }
        return hashlib.sha256(json.dumps(_plain(payload), sort_keys=True, default=str).encode()).hexdigest()[:32]

    # ------------------------------------------------------------------ leaderboard
    def leaderboard(self) -> Path:
        from narrastream.report import build_leaderboard, write_leaderboard

        table = build_leaderboard([self.run.root], with_reference=bool(self.cfg["report"]["with_reference"]),
                                  bootstrap=self.bootstrap)
        for path, count in table.attrs.get("invalid_records", {}).items():
            log.warning("leaderboard: %d invalid record line(s) of %s skipped", count, path)
        csv_path = self.run.leaderboard_path("csv")
        write_leaderboard(table, csv_path, markdown_path=self.run.leaderboard_path("md"),
                          dimensions=self.protocol["dimensions"])
        return csv_path


def _timed(fn, *args: Any) -> tuple[MetricResult, float]:
    started = time.perf_counter()
    try:
        result = fn(*args)
    except Exception as exc:  # noqa: BLE001 - a crash in a worker is recorded like one in the main thread
        log.exception("judge metric crashed")
        result = MetricResult.failed(f"{type(exc).__name__}: {exc}")
    return result, time.perf_counter() - started


class _RecordWriter:
    """Appends records from the main thread only: results computed in workers queue up as futures."""

    def __init__(self, session: Session, store: RecordStore, latest: dict, summary: StageSummary) -> None:
        self.session, self.store, self.latest, self.summary = session, store, latest, summary
        self.pending: deque = deque()

    def submit(self, future: Future, *args: Any) -> None:
        self.pending.append((future, args))

    def drain(self, limit: int) -> None:
        """Write finished results; block on the oldest while more than ``limit`` are in flight."""
        while self.pending and (self.pending[0][0].done() or len(self.pending) > limit):
            future, (script, seed, video, name, metric, key) = self.pending.popleft()
            result, elapsed = future.result()
            self.write(script, seed, video, name, metric, key, result, elapsed, {})

    def carry_over(self, record: Record, configuration: dict[str, Any]) -> None:
        """Append ``record`` again under ``configuration``: the same computation (same cache key) is valid
        there, because only settings the score does not depend on differ."""
        s = self.session
        cid = config_id(configuration)
        rec = replace(record, run_id=s.run.run_id, config_id=cid, configuration=configuration,
                      reused_from=record.config_id, shard=s.shard, created=time.time())
        self.store.append(rec)
        self.latest[(rec.key, cid)] = rec

    def write(self, script: Script, seed: int, video: GeneratedVideo | None, name: str, metric: Metric, key: str,
              result: MetricResult, elapsed: float = 0.0, backbones: dict | None = None) -> None:
        s = self.session
        uses_judge = getattr(metric, "uses_judge", False)
        configuration = s.configuration(script.id, seed, video)  # now: a stand-in noticed mid-run is in it
        details = dict(result.details)
        if video is not None and video.timing:
            details.setdefault("video_timing", video.timing)
        failed_questions = s.annotation_failures.get(script.id)
        if result.status == "fallback" and failed_questions and FALLBACK_CAUSE not in details:
            from narrastream.protocol.live_annotations import caused_by_failed_questions

            if caused_by_failed_questions(failed_questions, result.fallbacks):
                details[FALLBACK_CAUSE] = ANNOTATIONS_FAILED
        rec = Record(
            run_id=s.run.run_id, model=s.model, script_id=script.id, seed=seed, metric=name,
            score=result.score, status=result.status, reason=result.reason, fallbacks=result.fallbacks,
            items=result.items, details=details,
            protocol=f"{s.protocol['name']}-{s.protocol['version']}", metric_version=metric.version, cache_key=key,
            backbones=backbones or {}, judge=s.judge_record_identity() if uses_judge else None,
            config_id=config_id(configuration), configuration=configuration,
            video=str(video.path) if video else None, video_sha256=sha256_file(video.path) if video else None,
            shard=s.shard, elapsed_s=round(elapsed, 4),
        )
        previous = self.latest.get((rec.key, rec.config_id))
        repeat = (previous is not None and previous.status == "failed" and rec.status == "failed"
                  and previous.reason == rec.reason and previous.cache_key == rec.cache_key)
        if not repeat:  # the same failure again adds no record
            self.store.append(rec)
            self.latest[(rec.key, rec.config_id)] = rec
        if result.status == "failed":
            self.summary.fail(f"{name} script {script.id} seed {seed}: {result.reason}")
        else:
            self.summary.done += 1
            if needs_retry(rec.status, rec.details):
                self.summary.judge_fallbacks += 1


def _plain(obj: Any) -> Any:
    """Nested mappings/sequences -> plain dicts/lists (OmegaConf containers included)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
