"""The typed schema of a run's configuration, checked at start-up before any model is loaded or video made.

``validate_config(cfg)`` checks the resolved config (``eval_configs/config.yaml`` and its groups) and
raises :class:`~narrastream.config.ConfigError` naming, for every problem at once, the key, the value and
what is allowed, with a did-you-mean for names (stages, metrics, adapters, dimensions, keys).

Why pydantic rather than Hydra structured configs: the YAML files stay the one place for defaults and
their comments (structured configs would repeat every default in a dataclass and freeze the keys of every
model, judge and protocol file), the project already uses pydantic for its records, and validators express
the checks that span keys (``shard.index < shard.count``, ``run_metrics`` within ``protocol.metrics``,
registered names). Keys the schema does not know are allowed when ``eval_configs/config.yaml`` declares
them (so a new key needs no schema change to work); any other unknown key is refused with a did-you-mean.

``python -m narrastream.config_schema`` prints the table of docs/configuration.md from this schema.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any, Literal, Mapping

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from narrastream.config import ConfigError, did_you_mean

STAGE_NAMES = ("generate", "evaluate", "leaderboard", "all")


def _problem(text: str) -> PydanticCustomError:
    """A complete problem sentence (it already names the key and the value)."""
    return PydanticCustomError("narrastream", "{text}", {"text": text})


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise PydanticCustomError("bool_not_number", "a boolean where a number is expected")
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]
NonNegInt = Annotated[int, Field(ge=0), BeforeValidator(_not_bool)]
PosInt = Annotated[int, Field(ge=1), BeforeValidator(_not_bool)]
PosFloat = Annotated[float, Field(gt=0), BeforeValidator(_not_bool)]
NonNegFloat = Annotated[float, Field(ge=0), BeforeValidator(_not_bool)]
Device = Annotated[str, Field(pattern=r"^(auto|cpu|mps|(cuda|xpu)(:\d+)?)$")]
DEVICE_TEXT = "auto, cpu, cuda, cuda:N or mps"
BackbonePrecision = Literal["auto", "fp32", "fp16", "bf16", "tf32"]


def _listed_twice(values: list[Any]) -> list[Any]:
    """The values that occur more than once, sorted."""
    return sorted({v for v in values if values.count(v) > 1})


class Section(BaseModel):
    # Extra keys are checked by _unknown_keys (against the schema and config.yaml), not here.
    model_config = ConfigDict(extra="allow")


class RunSection(Section):
    dir: str = Field(min_length=1, description="the run folder (created; must be writable)")
    seeds: list[NonNegInt] = Field(min_length=1, description="one video per script and seed; no seed twice")

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if twice := _listed_twice(seeds):
            raise _problem(f"run.seeds={_show(seeds)}: seed {twice[0]} is listed twice (each seed is one video)")
        return seeds


class DataSection(Section):
    path: str | None = Field(None, description="a script file (.jsonl/.json); null: $NARRASTREAM_DATA, cache, download")
    official: Literal["auto"] | bool = Field("auto", description="check the official shape (324 scripts of 6 prompts)")
    ids: list[NonNegInt] | None = Field(None, min_length=1, description="script ids (line indices); null: all")
    dimensions: list[str] | None = Field(None, min_length=1, description="taxonomy dimensions (official file only)")
    limit: PosInt | None = Field(None, description="the first N scripts of the selection; null: all")

    @field_validator("official", mode="before")
    @classmethod
    def _official(cls, value: Any) -> Any:
        if value not in ("auto", True, False):
            raise _problem(f"data.official={_show(value)}: not allowed. Allowed: auto, true, false")
        return value


class ShardSection(Section):
    index: NonNegInt = Field(0, description="this process's shard, 0..count-1")
    count: PosInt = Field(1, description="number of shards (item i goes to shard i % count)")

    @model_validator(mode="after")
    def _index_below_count(self) -> "ShardSection":
        if self.index >= self.count:
            raise _problem(f"shard.index={self.index}: not below shard.count={self.count}. "
                           f"Allowed: 0..{self.count - 1}")
        return self


class GenerationSection(Section):
    fps: PosFloat = Field(description="frames per second of generated videos")
    seconds_per_segment: PosFloat = Field(description="seconds per prompt")
    width: PosInt = Field(description="frame width in pixels")
    height: PosInt = Field(description="frame height in pixels")
    device: Device = Field("auto", description=DEVICE_TEXT)
    model_size: Literal["full", "tiny"] = Field("full", description="streaming models: real checkpoints or tiny random")
    latent_block_frames: PosInt = Field(3, description="streaming models: latent frames per block")


class VideoSection(Section):
    segmentation: Literal["time", "native"] = Field(description="cut segments by time or by the sidecar's switches")
    expected_fps: PosFloat | None = Field(None, description="refuse videos at another frame rate; null: any")
    min_last_fraction: float = Field(0.5, gt=0, le=1, description="shortest last segment, as a fraction")
    max_tail_fraction: NonNegFloat = Field(0.5, description="extra frames joined to the last segment, as a fraction")


class BackbonesSection(Section):
    source: Literal["files", "random"] = Field(description="real checkpoints, or seeded random weights (tests)")
    size: Literal["full", "tiny"] = Field("full", description="tiny needs source=random")
    seed: Int = Field(0, description="seed of random weights")
    device: Device = Field("auto", description=DEVICE_TEXT)
    precision: str | dict[str, str] = Field(
        "auto", description="auto, fp32, fp16, bf16, tf32, or {backbone: one of them}; auto is the official")
    batch_size: dict[str, PosInt | None] = Field(
        default_factory=dict, description="items per forward pass per backbone; null: the device's default")
    prefetch_videos: NonNegInt = Field(1, description="videos decoded ahead of the one being scored; 0: none")
    dir: str | None = Field(None, description="weights folder; null: $NARRASTREAM_WEIGHTS, then the cache")
    paths: dict[str, str] = Field(default_factory=dict, description="checkpoint file per backbone name")
    allow_download: bool = Field(True, description="download missing checkpoints")

    @field_validator("precision", mode="before")
    @classmethod
    def _precision(cls, value: Any) -> Any:
        allowed = list(BackbonePrecision.__args__)  # type: ignore[attr-defined]
        for key, one in (value.items() if isinstance(value, Mapping) else [(None, value)]):
            if one not in allowed:
                where = "backbones.precision" + (f".{key}" if key is not None else "")
                raise _problem(f"{where}={_show(one)}: not allowed.{did_you_mean(str(one), allowed)} "
                               f"Allowed: {', '.join(allowed)} (or a mapping of backbone name to one of them)")
        return value

    @field_validator("batch_size", "precision")
    @classmethod
    def _known_backbones(cls, value: Any, info: Any) -> Any:
        if isinstance(value, Mapping):
            from narrastream.metrics.backbones.provider import BACKBONES

            for name in value:
                if name not in BACKBONES:
                    raise _problem(f"backbones.{info.field_name}.{name}: unknown backbone.{did_you_mean(name, list(BACKBONES))} "
                                   f"Known: {', '.join(sorted(BACKBONES))}")
        return value

    @model_validator(mode="after")
    def _tiny_is_random(self) -> "BackbonesSection":
        if self.size == "tiny" and self.source != "random":
            raise _problem("backbones.size='tiny': needs backbones.source=random (checkpoint files are the "
                           f"official architectures), got backbones.source={self.source!r}")
        return self


class AnnotationsSection(Section):
    path: str | None = Field(None, description="frozen annotations file; null: the shipped one")


class BootstrapSection(Section):
    resamples: PosInt = Field(1000, description="bootstrap resamples of the scripts behind every interval")
    seed: Int = Field(0, description="seed of the resampling (same seed, same intervals)")
    level: Annotated[float, Field(gt=0, lt=1), BeforeValidator(_not_bool)] = Field(
        0.95, description="interval level, in (0, 1)")


class ReportSection(Section):
    with_reference: bool = Field(False, description="add the published rows to the leaderboard")
    bootstrap: BootstrapSection = Field(default_factory=BootstrapSection,
                                        description="intervals of leaderboard.csv/.md (docs/report.md)")


class ModelSection(Section):
    name: str = Field(min_length=1, description="the row's name and the folder videos/<name>/ (no / or \\)")
    adapter: str = Field(min_length=1, description="a registered generator (narrastream list generators)")
    params: dict[str, Any] = Field(default_factory=dict, description="the adapter's own settings")

    @field_validator("name")
    @classmethod
    def _folder_name(cls, name: str) -> str:
        if "/" in name or "\\" in name or name in (".", "..") or name != name.strip():
            raise _problem(f"model.name={name!r}: must be a plain folder name (no /, \\, surrounding spaces, . or ..)")
        return name


class ProtocolSection(Section):
    name: str = Field(description="protocol name")
    version: str | int | float = Field(description="changes whenever a score would change")
    segment_seconds: PosFloat = Field(description="seconds per prompt segment")
    dimensions: dict[str, list[str]] = Field(description="dimension -> its metrics")
    run_metrics: list[str] = Field(min_length=1, description="metrics computed; each with an entry in protocol.metrics")
    annotations: Literal["frozen", "live"] = Field("frozen", description="live needs a judge")
    metrics: dict[str, dict[str, Any]] = Field(description="registered metric -> its constants")

    @field_validator("run_metrics")
    @classmethod
    def _distinct(cls, names: list[str]) -> list[str]:
        if twice := _listed_twice(names):
            raise _problem(f"protocol.run_metrics={_show(names)}: {twice[0]!r} is listed twice")
        return names


class JudgeSection(Section):
    backend: Literal["none", "openai", "local"] = Field("none", description="none, an OpenAI API, or in process")
    model: str | None = Field(None, description="the VLM (openai: served name; local: folder or hub id)")
    planner_model: str | None = Field(None, description="the planner; null: the same model")
    base_url: str | None = Field(None, description="openai: the endpoint")
    api_key_env: str | None = Field(None, description="the NAME of the variable holding the key")
    timeout_s: PosFloat | None = Field(None, description="openai: seconds per request")
    max_retries: NonNegInt | None = Field(None, description="openai: the client's retries")
    reask: NonNegInt | None = Field(None, description="invalid answers asked again at most this often")
    breaker_threshold: PosInt | None = Field(None, description="consecutive unreachable answers that open the breaker")
    breaker_cooldown_s: NonNegFloat | None = Field(None, description="seconds the breaker stays open")
    concurrency: PosInt | None = Field(None, description="requests in flight")
    max_tokens: PosInt | None = Field(None, description="answer length")
    temperature: NonNegFloat | None = Field(None, description="sampling temperature")
    cache: bool | None = Field(None, description="cache validated answers on disk")
    cache_dir: str | None = Field(None, description="answer cache folder")
    image_max_side: PosInt | None = Field(None, description="key frames resized to this side; null: native")
    jpeg_quality: int | None = Field(None, ge=1, le=100, description="JPEG quality of key frames")
    device: Device | None = Field(None, description=f"local: {DEVICE_TEXT}")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] | None = Field(None, description="local: weights dtype")
    local_files_only: bool | None = Field(None, description="local: never download")

    @model_validator(mode="after")
    def _needs_model(self) -> "JudgeSection":
        if self.backend != "none" and not (self.model or "").strip():
            raise _problem(f"judge.model={_show(self.model)}: judge.backend={self.backend} needs a model name")
        if self.backend == "openai" and not (self.base_url or "").strip():
            raise _problem(f"judge.base_url={_show(self.base_url)}: judge.backend=openai needs an endpoint URL")
        return self


Stage = Literal["generate", "evaluate", "leaderboard", "all"]


class RunConfig(BaseModel):
    """The whole run configuration, as ``python -m narrastream.run`` resolves it."""

    model_config = ConfigDict(extra="allow")

    stage: Stage | list[Stage] = Field(description="the stages to run: one, all, or a list "
                                                  "(stage=[generate,evaluate]: a shard of `narrastream launch`)")
    run: RunSection
    data: DataSection
    shard: ShardSection
    generation: GenerationSection
    video: VideoSection
    backbones: BackbonesSection
    annotations: AnnotationsSection = Field(default_factory=AnnotationsSection)
    report: ReportSection
    model: ModelSection
    protocol: ProtocolSection
    judge: JudgeSection = Field(default_factory=JudgeSection)


#: sections whose keys are fixed: an unknown key there is a typo unless config.yaml declares it
FIXED_SECTIONS = ("run", "data", "shard", "generation", "video", "backbones", "annotations", "report")


def validate_config(cfg: Mapping[str, Any]) -> RunConfig:
    """Check the resolved config; raise :class:`ConfigError` listing every problem (key, value, allowed)."""
    try:
        checked = RunConfig.model_validate(dict(cfg))
    except ValidationError as exc:
        raise ConfigError([_describe(err) for err in exc.errors()]) from None
    problems = _unknown_keys(cfg) + _name_problems(cfg)
    if problems:
        raise ConfigError(problems)
    return checked


# ---------------------------------------------------------------------- names and keys
def _name_problems(cfg: Mapping[str, Any]) -> list[str]:
    """Registered names (adapters, metrics), taxonomy dimensions, and checks across sections."""
    from narrastream.adapters import GENERATORS
    from narrastream.metrics.base import METRICS

    problems = []
    adapter = cfg["model"]["adapter"]
    if adapter not in GENERATORS:
        problems.append(f"model.adapter={adapter!r}: unknown generator.{did_you_mean(adapter, GENERATORS.names())} "
                        f"Known: {', '.join(GENERATORS.names())}")
    protocol = cfg["protocol"]
    specs = protocol["metrics"]
    for name in specs:
        if name not in METRICS:
            problems.append(f"protocol.metrics.{name}: unknown metric {name!r}.{did_you_mean(name, METRICS.names())} "
                            f"Known: {', '.join(METRICS.names())}")
    for name in protocol["run_metrics"]:
        if name not in METRICS:
            problems.append(f"protocol.run_metrics={_show(protocol['run_metrics'])}: unknown metric {name!r}."
                            f"{did_you_mean(name, METRICS.names())} Known: {', '.join(METRICS.names())}")
        elif name not in specs:
            problems.append(f"protocol.run_metrics={_show(protocol['run_metrics'])}: {name!r} has no entry in "
                            f"protocol.metrics (its constants). Metrics with constants: {', '.join(specs)}")
    dims = cfg["data"].get("dimensions")
    if dims:
        from narrastream.data.taxonomy import load_taxonomy

        known = list(dict.fromkeys(load_taxonomy().dimension_of_template.values()))
        for dim in dims:
            if dim not in known:
                problems.append(f"data.dimensions={_show(dims)}: unknown dimension {dim!r}.{did_you_mean(dim, known)} "
                                f"Known: {', '.join(known)}")
    judge = cfg.get("judge") or {}
    if protocol.get("annotations") == "live" and judge.get("backend", "none") == "none":
        problems.append("protocol.annotations=live needs a judge (e.g. judge=siliconflow); judge=none can only "
                        "use the frozen annotations")
    return problems


@functools.lru_cache(maxsize=1)
def _declared_keys() -> dict[str, frozenset[str]]:
    """The keys eval_configs/config.yaml declares, per fixed section and at the top (``""``)."""
    import yaml

    from narrastream.paths import config_dir

    root = config_dir()
    raw = yaml.safe_load((root / "config.yaml").read_text()) or {}
    groups = {p.name for p in root.iterdir() if p.is_dir()}
    declared = {"": frozenset(raw) | groups | {"defaults", "hydra"}}
    for section in FIXED_SECTIONS:
        declared[section] = frozenset((raw.get(section) or {}).keys())
    return declared


def _unknown_keys(cfg: Mapping[str, Any]) -> list[str]:
    declared = _declared_keys()
    problems = []
    known_top = sorted(set(RunConfig.model_fields) | (declared[""] - {"defaults", "hydra"}))
    for key in cfg:
        if key not in known_top and key != "hydra":
            problems.append(f"{key}={_show(cfg[key])}: unknown top-level key.{did_you_mean(key, known_top)} "
                            f"Known: {', '.join(known_top)}")
    for section in FIXED_SECTIONS:
        values = cfg.get(section) or {}
        fields = RunConfig.model_fields[section].annotation.model_fields  # type: ignore[union-attr]
        known = list(dict.fromkeys([*fields, *sorted(declared[section])]))
        for key in values:
            if key not in known:
                close = did_you_mean(f"{section}.{key}", [f"{section}.{k}" for k in known], quote=False)
                problems.append(f"{section}.{key}={_show(values[key])}: unknown key.{close} "
                                f"Known: {', '.join(f'{section}.{k}' for k in known)}")
    return problems


# ---------------------------------------------------------------------- messages
_TEXTS = {
    "int_parsing": "not an integer",
    "int_type": "not an integer",
    "int_from_float": "not a whole number",
    "float_parsing": "not a number",
    "float_type": "not a number",
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "list_type": "expected a list, e.g. [0,5]",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
}


def _describe(err: Mapping[str, Any]) -> str:
    """One pydantic error as ``key=value: what is wrong. Allowed: ...``."""
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "narrastream":
        return str(ctx["text"])
    key = _key(err["loc"])
    if kind == "missing":
        return f"{key}: missing (a value is required)"
    value = err.get("input")
    if kind == "literal_error":
        allowed = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        what = f"not allowed.{did_you_mean(value, allowed)} Allowed: {', '.join(allowed)}"
    elif kind == "string_pattern_mismatch" and key.endswith("device"):
        what = f"not a device. Allowed: {DEVICE_TEXT}"
    elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        sign = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()), "?")
        what = f"must be {sign} {bound}" + (" (or null: all)" if key in ("data.limit", "data.ids") else "")
    elif kind == "too_short" and ctx.get("min_length") == 1:
        what = "must not be empty" + (" (null selects all)" if key.startswith("data.") else "")
    elif kind == "string_too_short":
        what = "must not be empty"
    elif kind == "bool_not_number":
        what = "a boolean where a number is expected"
    else:
        what = _TEXTS.get(kind, str(err.get("msg", kind)))
    return f"{key}={_show(value)}: {what}"


def _key(loc: tuple) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif not str(part).startswith(("function-", "literal[", "constrained-", "lax-", "json-")):
            text += f".{part}" if text else str(part)
    return text or "(config)"


def _show(value: Any, limit: int = 120) -> str:
    """A value as it would be written on the command line (short)."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = repr(value)
    elif isinstance(value, (list, tuple)):
        text = "[" + ",".join(_show(v, limit) for v in value) + "]"
    elif isinstance(value, Mapping):
        text = "{" + ",".join(f"{k}:{_show(v, limit)}" for k, v in value.items()) + "}"
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------- documentation
def schema_markdown() -> str:
    """The key table of docs/configuration.md, generated from this schema."""
    schema = RunConfig.model_json_schema()
    defs = schema.get("$defs", {})
    lines = ["| key | type and allowed values | meaning |", "|---|---|---|"]
    for name, prop in schema["properties"].items():
        ref = _ref(prop)
        if ref is None:
            lines.append(f"| `{name}` | {_type_text(prop)} | {prop.get('description', '')} |")
            continue
        lines += _section_rows(name, defs[ref], defs)
    return "\n".join(lines) + "\n"


def _section_rows(prefix: str, section: Mapping[str, Any], defs: Mapping[str, Any]) -> list[str]:
    """One row per key of a section; a nested section (``report.bootstrap``) gives a row per key of its own."""
    rows = []
    for field, sub in section["properties"].items():
        ref = _ref(sub)
        if ref is not None:
            rows += _section_rows(f"{prefix}.{field}", defs[ref], defs)
        else:
            rows.append(f"| `{prefix}.{field}` | {_type_text(sub)} | {sub.get('description', '')} |")
    return rows


def _ref(prop: Mapping[str, Any]) -> str | None:
    target = prop.get("$ref") or next((p.get("$ref") for p in prop.get("allOf", []) if "$ref" in p), None)
    return target.rsplit("/", 1)[-1] if target else None


def _type_text(prop: Mapping[str, Any]) -> str:
    if "anyOf" in prop:
        parts = [p for p in prop["anyOf"] if p.get("type") != "null"]
        nullable = len(parts) < len(prop["anyOf"])
        text = " or ".join(_type_text({**p, **{k: v for k, v in prop.items() if k in ("minItems",)}}) for p in parts)
        return text + (" or null" if nullable else "")
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    if "const" in prop:
        return f"`{prop['const']}`"
    kind = prop.get("type")
    bounds = []
    for key, sign in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if key in prop:
            bounds.append(f"{sign} {prop[key]}")
    if kind == "integer":
        return "int" + (f" {', '.join(bounds)}" if bounds else "")
    if kind == "number":
        return "float" + (f" {', '.join(bounds)}" if bounds else "")
    if kind == "string":
        return "string" + (", non-empty" if prop.get("minLength") else "")
    if kind == "boolean":
        return "bool"
    if kind == "array":
        return f"list of {_type_text(prop.get('items', {}))}" + (", non-empty" if prop.get("minItems") else "")
    if kind == "object":
        return "mapping"
    return "any"


if __name__ == "__main__":
    print(schema_markdown(), end="")
