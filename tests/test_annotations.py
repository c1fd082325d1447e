"""Narrative annotations: the typed object, the JSONL loader, and their use in a run."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from narrastream.metrics.base import MetricContext
from narrastream.protocol.annotations import (
    AnnotationsError, NarrativeAnnotations, ScriptAnnotations, annotations_for, parse_script_annotations)
from narrastream.results.records import RecordStore

GOOD = {"script_id": 3, "segment_weights": [10, 20, 30], "continuity": [True, False],
        "entity_groups": {"Noah": [1, 0, 2]},
        "segment_entities": [[{"name": "Noah", "attributes": ["green shirt"]}], [], []]}


def _write(tmp_path, *objs, raw: str = ""):
    path = tmp_path / "ann.jsonl"
    path.write_text("# authored for a test\n" + "".join(json.dumps(o) + "\n" for o in objs) + raw)
    return path


def test_load_typed_annotations(tmp_path):
    ann = NarrativeAnnotations.load(_write(tmp_path, GOOD, {"script_id": 4}))
    three = ann.get(3)
    assert three.segment_weights == (10, 20, 30) and three.continuity == (True, False)
    assert three.entity_groups == {"Noah": (1, 0, 2)}  # order kept: the anchor is the first listed
    assert three.segment_entities[0][0].attributes == ("green shirt",)
    assert ann.get(4).segment_weights is None and ann.get(5) is None
    assert three.check_segments(3) == []
    assert "3 segment weights for 6 segments" in three.check_segments(6)[0]
    assert ann.identity()["scripts"] == 2 and len(ann.identity()["sha256"]) == 64
    assert ann.identity()["version"] == "ann"  # no "# version:" header: the file name


def test_version_and_rules_headers_are_read(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('# version: mine.v3\n# rules: {"segment_weights": "w-x"}\n' + json.dumps(GOOD) + "\n")
    ann = NarrativeAnnotations.load(path)
    assert ann.version == "mine.v3" and ann.identity()["version"] == "mine.v3"
    assert ann.rules == {"segment_weights": "w-x"}
    path.write_text("# rules: {oops\n")
    with pytest.raises(AnnotationsError, match=r":1: the '# rules:' header is not valid JSON"):
        NarrativeAnnotations.load(path)


@pytest.mark.parametrize("obj, message", [
    ({"segment_weights": [1]}, "'script_id' must be a non-negative integer"),
    ({"script_id": 1, "segment_weights": [0, 50]}, "segment_weights[0] = 0, expected an integer 1..100"),
    ({"script_id": 1, "continuity": [1, 0]}, "'continuity' must be a list of true/false"),
    ({"script_id": 1, "entity_groups": {"Noah": ["0"]}}, "entity_groups['Noah'] must be a list of segment indices"),
    ({"script_id": 1, "segment_entities": [[{"name": "a"}] * 5]}, "at most 4 entities"),
])
def test_malformed_annotations_name_line_and_field(tmp_path, obj, message):
    path = _write(tmp_path, GOOD, obj)
    with pytest.raises(AnnotationsError) as info:
        NarrativeAnnotations.load(path)
    assert f"{path}:3:" in str(info.value) and message in str(info.value)


def test_duplicate_and_bad_json(tmp_path):
    with pytest.raises(AnnotationsError, match="annotated twice"):
        NarrativeAnnotations.load(_write(tmp_path, GOOD, GOOD))
    with pytest.raises(AnnotationsError, match=r":3: not valid JSON"):
        NarrativeAnnotations.load(_write(tmp_path, GOOD, raw="{oops\n"))


def test_context_takes_weights_from_annotations():
    ann = ScriptAnnotations(script_id=0, segment_weights=(5, 10))
    assert MetricContext(script=None, backbones=None, annotations=ann).segment_weights == (5, 10)
    assert MetricContext(script=None, backbones=None).segment_weights is None


@pytest.mark.slow
def test_annotated_run_is_ok_and_new_annotations_recompute(tmp_path):
    path = tmp_path / "ann.jsonl"
    path.write_text("".join(json.dumps({"script_id": i, "segment_weights": [10, 20, 30, 40, 50, 60]}) + "\n"
                            for i in range(2)))
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "narrastream.run", "preset=tiny", "data.limit=2", f"run.dir={run_dir}",
            f"annotations.path={path}"]
    subprocess.run(args, check=True, capture_output=True)
    consistency = ("subject_consistency", "background_consistency")
    records = [r for r in RecordStore(run_dir / "records").iter_all() if r.metric in consistency]
    assert len(records) == 4 and {r.status for r in records} == {"ok"} and not any(r.fallbacks for r in records)
    count = len(list(RecordStore(run_dir / "records").iter_all()))
    path.write_text(json.dumps({"script_id": 0, "segment_weights": [60, 50, 40, 30, 20, 10]}) + "\n")
    subprocess.run(args, check=True, capture_output=True)
    latest = RecordStore(run_dir / "records").latest()
    assert len(list(RecordStore(run_dir / "records").iter_all())) == 2 * count  # both scripts' annotations changed
    assert latest[("synthetic", 1, 0, "subject_consistency")].status == "fallback"  # script 1 lost its weights
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"script_id": "x"}\n')
    proc = subprocess.run([*args[:-1], f"annotations.path={bad}"], capture_output=True, text=True)
    assert proc.returncode == 2 and f"{bad}:1:" in proc.stderr


# ----------------------------------------------------------------------------- the shipped files
from types import SimpleNamespace  # noqa: E402
from pathlib import Path  # noqa: E402

from narrastream.data import load_benchmark  # noqa: E402
from narrastream.protocol.annotation_checks import is_placeholder, mentions, verify  # noqa: E402
from narrastream.protocol.annotation_rules import Lexicon, apply_overrides, build_file, build_script  # noqa: E402
from narrastream.protocol.annotations import (  # noqa: E402
    DEFAULT_VERSION, SHIPPED_ANNOTATIONS, load_annotations, prompts_sha256, shipped_annotations_path)
from narrastream.paths import benchmark_data_dir  # noqa: E402
from narrastream.protocol.grounding import Grounding, bases, content_words  # noqa: E402

SHIPPED = benchmark_data_dir() / SHIPPED_ANNOTATIONS
V1 = benchmark_data_dir() / "annotations" / "narrastream-324.v1.jsonl"


def test_v2_is_the_default_and_v1_stays_loadable_by_name():
    assert DEFAULT_VERSION == "narrastream-324.v2" and SHIPPED.name == "narrastream-324.v2.jsonl"
    default = load_annotations({})
    assert default.source == "frozen:narrastream-324.v2.jsonl" and default.version == "narrastream-324.v2"
    assert default.rules["segment_weights"].startswith("w-v2 (docs/protocol.md#segment-weights-rule-w-v2)")
    assert shipped_annotations_path("narrastream-324.v1") == V1 and shipped_annotations_path() == SHIPPED
    old = load_annotations({"version": "narrastream-324.v1"})
    assert old.version == "narrastream-324.v1" and old.sha256 != default.sha256
    assert load_annotations({"version": "narrastream-324.v1", "path": str(SHIPPED)}).version == DEFAULT_VERSION
    with pytest.raises(AnnotationsError, match="'narrastream-324.v9' is not shipped.*narrastream-324.v1"):
        load_annotations({"version": "narrastream-324.v9"})


def test_frozen_is_the_default_and_none_disables():
    assert load_annotations({}, "none").source == "none"
    with pytest.raises(AnnotationsError, match="expected frozen, live or none"):
        load_annotations({}, "thawed")


def test_every_rule_anchor_exists_in_the_protocol_doc():
    doc = (benchmark_data_dir().parent / "docs" / "protocol.md").read_text()
    headings = {"-".join(re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).split())
                for line in doc.splitlines() if line.startswith("#")}
    for rule in NarrativeAnnotations.load(SHIPPED).rules.values():
        anchor = rule.split("#", 1)[1].rstrip(")")
        assert anchor in headings, rule


def test_shipped_v2_is_rebuilt_byte_for_byte(official_path):
    bench = load_benchmark(official_path)
    assert build_file(bench.scripts, bench.sha256).encode("utf-8") == SHIPPED.read_bytes()


def test_build_tool_check_mode(official_path):
    proc = subprocess.run([sys.executable, "tools/build_annotations.py", "--scripts", str(official_path), "--check"],
                          capture_output=True, text=True, timeout=300, cwd=benchmark_data_dir().parent)
    assert proc.returncode == 0 and "identical to the rebuild" in proc.stdout


def test_shipped_v2_passes_every_check(official_path):
    bench = load_benchmark(official_path)
    shipped = NarrativeAnnotations.load(SHIPPED)
    assert len(shipped.scripts) == 324
    report = verify(shipped, bench.scripts)
    assert report.problems == [] and report.attributes > 5000 and report.named_characters > 4000
    header = SHIPPED.read_text().splitlines()[:8]
    assert any("not the official" in line for line in header)  # provenance stated in the file
    assert "# version: narrastream-324.v2" in header and any(line.startswith("# inputs: ") for line in header)
    for ann in shipped.scripts.values():
        assert len(set(ann.segment_weights)) >= 2  # weights discriminate
    # the four scripts where v1 dropped a named character for an object
    for sid, name in ((105, "Nora"), (150, "Nora"), (249, "Clara"), (284, "Evan")):
        assert name in shipped.get(sid).entity_groups


def test_v1_counts_are_reported_not_hidden(official_path):
    report = verify(NarrativeAnnotations.load(V1), load_benchmark(official_path).scripts)
    assert report.attributes == 16404 and report.count("ungrounded_attribute") == 8967
    assert report.count("placeholder_name") == 270 and report.count("untagged_character") == 249
    assert "ungrounded attributes: 8967 of 16404" in report.summary()


def _mutated(tmp_path, change, sid: int = 0) -> Path:
    lines = SHIPPED.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(f'{{"script_id": {sid},'))
    obj = json.loads(lines[at])
    change(obj)
    lines[at] = json.dumps(obj)
    path = tmp_path / "mutated.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _noah(obj, k):
    return next(e for e in obj["segment_entities"][k] if e["name"] == "Noah")


@pytest.mark.parametrize("change, kind, message", [
    (lambda o: _noah(o, 0)["attributes"].__setitem__(0, "red hat"), "ungrounded_attribute",
     "attribute 'red hat' is not grounded in segment 0"),
    (lambda o: o["segment_entities"][1].append({"name": "giraffe", "attributes": []}), "ungrounded_name",
     "entity name 'giraffe' is not in the prompt"),
    (lambda o: o["entity_groups"].__setitem__("Luna", [2]), "ungrounded_name", "'Luna': not named in segment 2"),
    (lambda o: o["segment_entities"][0].append({"name": "items", "attributes": []}), "placeholder_name",
     "placeholder entity name 'items'"),
    (lambda o: o["entity_groups"].pop("Noah"), "untagged_character", "names Noah, who has no entity group"),
    (lambda o: o["entity_groups"].__setitem__("Noah", [0, 1, 2, 4, 5]), "untagged_character",
     "segment 3 names Noah, whose entity group misses segment 3"),
    (lambda o: o["segment_entities"][3].remove(_noah(o, 3)), "untagged_character",
     "segment 3 names Noah, who is not among its entities"),
    (lambda o: o["entity_groups"].__setitem__("Noah", [0, 9]), "structure", "out of range"),
    (lambda o: o.__setitem__("prompts_sha256", "0" * 64), "structure", "made for other prompts"),
    (lambda o: o.pop("continuity"), "structure", "no continuity"),
])
def test_verify_finds_each_kind_of_problem(tmp_path, official_path, change, kind, message):
    bench = load_benchmark(official_path, ids=[0])
    report = verify(NarrativeAnnotations.load(_mutated(tmp_path, change)), bench.scripts)
    assert [p for p in report.problems if p.kind == kind and message in str(p) and p.script_id == 0], \
        [str(p) for p in report.problems]


# ----------------------------------------------------------------------------- rules on our own prompts
# Our own sentences (never the official ones), in the shape of the scripts.
OWN = ["In the tea room, Noah, a tall man with a green apron and a shaved head, lifts a small, sealed cup.",
       "In the tea room, Mina enters, then Mina sits. Noah hands the cup to Mina, his green apron creased.",
       "In the tea room, Mina holds the cup. Noah and Kai stand by the window.",
       "In the tea room, Noah and Kai talk; his apron is folded. Clara waves."]
OWN_CAST = ("Noah", "Mina", "Kai", "Clara")


def _own(prompts=OWN) -> SimpleNamespace:
    return SimpleNamespace(id=7, prompts=prompts)


def _own_annotations(line: dict) -> NarrativeAnnotations:
    return annotations_for([parse_script_annotations({"script_id": 7, **line})])


def test_rules_read_looks_states_and_objects_from_the_prompts():
    line = build_script(OWN, Lexicon.load(), OWN_CAST, ["tea room"])
    seg = [{e["name"]: e["attributes"] for e in entities} for entities in line["segment_entities"]]
    assert seg[0] == {"Noah": ["tall man", "green apron", "shaved head"], "cup": ["small", "sealed", "lifted by Noah"]}
    assert seg[1]["Mina"] == ["sitting"] and seg[1]["cup"] == ["small", "sealed", "handed by Noah"]
    assert seg[1]["Noah"] == ["tall man", "green apron", "shaved head"]  # "his green apron": Noah, the only "his"
    assert seg[2]["Mina"] == ["holding cup"] and seg[2]["cup"] == ["small", "sealed", "held by Mina"]
    assert seg[2]["Kai"] == ["standing"] and "Kai" not in seg[0]  # no look the script never gave Kai
    assert seg[3]["Kai"] == [] and seg[3]["Clara"] == []  # "his apron" with two men: attributed to nobody
    assert line["entity_groups"] == {"Noah": [0, 1, 2, 3], "Mina": [1, 2], "Kai": [2, 3], "Clara": [3],
                                     "cup": [0, 1, 2]}
    assert line["continuity"] == [True, True, True]  # same scene named throughout (c-v2)
    assert line["segment_weights"][1] > line["segment_weights"][3]  # an entry and a handoff beat small talk
    report = verify(_own_annotations(line), [_own()], cast=OWN_CAST)
    assert report.problems == [], [str(p) for p in report.problems]


def test_characters_take_the_places_before_objects():
    prompts = ["In the tea room, Noah, Mina, Kai and Clara pass a cup and a vase around.",
               "In the tea room, Kai rests."]
    line = build_script(prompts, Lexicon.load(), OWN_CAST, ["tea room"])
    assert [e["name"] for e in line["segment_entities"][0]] == ["Noah", "Mina", "Kai", "Clara"]
    assert "cup" not in line["entity_groups"]  # an object read once and never tagged has no group


def test_overrides_add_drop_and_set_attributes():
    line = {"entity_groups": {"Noah": [0], "cup": [0]},
            "segment_entities": [[{"name": "Noah", "attributes": []}, {"name": "cup", "attributes": []}]]}
    out = apply_overrides(line, [{"id": "a", "segment": 0, "drop": "cup"},
                                 {"id": "b", "segment": 0, "add": {"name": "teapot", "attributes": ["blue"]}},
                                 {"id": "c", "segment": 0, "entity": "Noah", "attributes": ["seated"]}])
    assert out["segment_entities"][0] == [{"name": "Noah", "attributes": ["seated"]},
                                          {"name": "teapot", "attributes": ["blue"]}]
    assert "cup" not in out["entity_groups"] and out["overrides"] == ["a", "b", "c"]


def test_attributes_may_come_from_where_the_entity_was_last_described():
    line = build_script(OWN, Lexicon.load(), OWN_CAST, ["tea room"])
    assert verify(_own_annotations(line), [_own()], cast=OWN_CAST).ok
    # the look said in segment 0 is grounded in segment 2 (Noah is tagged in 0), not before it is said
    early = json.loads(json.dumps(line))
    early["segment_entities"][0][1]["attributes"].append("handed by Noah")  # said only in segment 1
    problems = verify(_own_annotations(early), [_own()], cast=OWN_CAST).problems
    assert [p.kind for p in problems] == ["ungrounded_attribute"] and "'handed by Noah'" in str(problems[0])


# ----------------------------------------------------------------------------- the normalisation
def test_grounding_normalisation():
    text = Grounding("Mina gently lifts the leather-bound books; Milan's navy sweater. Nico holds it; Kai sits.")
    assert text.missing("lifted by Mina") == []  # inflection; "by" is a function word
    assert text.missing("leather-bound book") == [] and text.missing("navy sweaters") == []
    assert text.missing("held by Nico") == []  # irregular forms
    assert text.missing("Milan") == [] and text.missing("sitting") == []
    assert text.missing("seated") == ["seated"]  # a different word, not an inflection of "sits"
    assert text.missing("dark green work shirt") == ["dark", "green", "work", "shirt"]
    assert content_words("the small, ornate bookend near the center") == ["small", "ornate", "bookend", "center"]
    assert "place" in bases("placing") and "stop" in bases("stopped") and "tie" in bases("tied")
    assert bases("longer") == frozenset({"longer"})


def test_placeholders_and_mentions():
    assert is_placeholder("items") and is_placeholder("small object") and is_placeholder("key object")
    assert is_placeholder("it") and not is_placeholder("key") and not is_placeholder("key task piece".replace(
        "piece", "notebook")) and not is_placeholder("two young men")
    assert mentions("Noah waves", "Noah", ["Noah"]) and not mentions("Noahs waves", "Noah", ["Noah"])
    assert mentions("Milan's jacket", "Milan", ["Milan"]) and mentions("two cups of tea", "cup", [])


def test_annotations_apply_only_to_the_prompts_they_were_made_for():
    ann = ScriptAnnotations(script_id=0, segment_weights=(1, 2), prompts_sha256=prompts_sha256(["a", "b"]))
    annotations = NarrativeAnnotations(scripts={0: ann}, source="frozen:x")
    assert annotations.for_script(0, ["a", "b"]) == (ann, None)
    got, why = annotations.for_script(0, ["a", "changed"])
    assert got is None and "made for other prompts" in why
    assert annotations.for_script(7, ["a"])[1] == "script 7 has no annotations in frozen:x"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "narrastream.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_annotations_verify(tmp_path, official_path):
    ok = _cli("annotations", "verify", "--path", str(official_path))
    assert ok.returncode == 0 and "324 scripts annotated" in ok.stdout and "every check passed" in ok.stdout
    assert "ungrounded attributes: 0 of" in ok.stdout and "untagged named characters: 0 of" in ok.stdout
    assert "version narrastream-324.v2" in ok.stdout
    old = _cli("annotations", "verify", "--version", "narrastream-324.v1", "--path", str(official_path),
               "--max-problems", "0")
    assert old.returncode == 2 and "ungrounded attributes: 8967 of 16404" in old.stdout
    bad = _mutated(tmp_path, lambda o: o["segment_weights"].__setitem__(0, 7) or o["segment_entities"][0].append(
        {"name": "zebra", "attributes": []}))
    proc = _cli("annotations", "verify", "--file", str(bad), "--path", str(official_path))
    assert proc.returncode == 2 and "script 0: segment 0: entity name 'zebra' is not in the prompt" in proc.stdout
    assert "ungrounded entity names: 1 of" in proc.stdout
    nope = _cli("annotations", "verify", "--version", "nope", "--path", str(official_path))
    assert nope.returncode == 2 and "'nope' is not shipped" in nope.stderr


def test_cli_check_reference():
    proc = _cli("protocol", "check-reference")
    assert proc.returncode == 0 and "IAMFlow" in proc.stdout
    worst = float(proc.stdout.split("largest difference: ")[1].split()[0])
    assert worst < 0.005
