"""Loading, validating and selecting scripts; the derived taxonomy against the official copy."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from narrastream.cli import main as cli_main
from narrastream.data import ScriptFileError, ScriptLimits, load_benchmark, load_taxonomy, parse_script_file
from narrastream.data.loader import download_official, resolve_official_source, sha256_file
from narrastream.data.manifest import BenchmarkManifest


def test_official_file_loads_with_manifest_shape(official_path):
    bench = load_benchmark(official_path)
    manifest = BenchmarkManifest.load()
    assert bench.official and bench.total == manifest.expected_count == 324
    assert bench.prompts_per_script == [6]
    assert bench.sha256 == sha256_file(official_path)
    assert [s.id for s in bench.scripts] == list(range(324))


def test_scene_phrase_in_every_prompt(official_path):
    for script in load_benchmark(official_path).scripts:
        for prompt in script.prompts:
            assert script.scene in prompt.lower(), (script.id, script.scene)


def test_cast_size_per_template_matches_named_characters(official_path):
    cast = load_taxonomy().cast
    for script in load_benchmark(official_path).scripts:
        named = {n for p in script.prompts for n in cast if re.search(rf"\b{n}\b", p)}
        assert len(named) == script.cast_size, (script.id, sorted(named))


def test_dimension_sizes(official_path):
    counts = Counter(s.dimension for s in load_benchmark(official_path).scripts)
    assert counts == {"solo_continuity": 36, "entry_and_copresence": 36, "object_handoff": 72,
                      "long_range_callback": 36, "lookalike_identity": 72, "group_dynamics": 72}


def test_taxonomy_arithmetic():
    tax = load_taxonomy()
    d = tax.derive(123)  # 123 = round 1, scene (123 // 9) % 12 = 1, template 6
    assert d == {"template": 6, "scene": "cafe corner table", "round": 1, "cast_size": 5,
                 "dimension": "group_dynamics"}


def test_selection(official_path):
    assert [s.id for s in load_benchmark(official_path, ids=[5, 3, 200]).scripts] == [3, 5, 200]
    look = load_benchmark(official_path, dimensions=["lookalike_identity"], limit=4).scripts
    assert [s.id for s in look] == [5, 8, 14, 17]
    assert len(load_benchmark(official_path, limit=3).scripts) == 3
    with pytest.raises(ValueError, match="999"):
        load_benchmark(official_path, ids=[999])
    with pytest.raises(ValueError, match="unknown"):
        load_benchmark(official_path, dimensions=["nope"])


def test_user_file_any_number_of_prompts(tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text(json.dumps({"prompts": ["a red ball rolls", "it stops"]}) + "\n"
                 + json.dumps({"prompts": ["one", "two", "three"]}) + "\n\n")
    bench = load_benchmark(f)
    assert not bench.official and bench.total == 2
    assert [s.num_segments for s in bench.scripts] == [2, 3]
    assert bench.scripts[0].dimension is None
    with pytest.raises(ValueError, match="official"):
        load_benchmark(f, dimensions=["solo_continuity"])


def test_json_document_format(tmp_path):
    f = tmp_path / "mine.json"
    f.write_text(json.dumps([{"prompts": ["a"]}, {"prompts": ["b", "c"]}]))
    assert parse_script_file(f) == [("a",), ("b", "c")]


def _official_copy_with(tmp_path: Path, official_path: Path, line_no: int, replacement: str) -> Path:
    lines = official_path.read_text().splitlines()
    lines[line_no - 1] = replacement
    out = tmp_path / "streambench_324.jsonl"
    out.write_text("\n".join(lines) + "\n")
    return out


@pytest.mark.parametrize("line, replacement, problem", [
    (7, "{not json", "not valid JSON"),
    (12, json.dumps({"text": ["x"]}), "no 'prompts' field"),
    (40, json.dumps({"prompts": ["a", "", "c", "d", "e", "f"]}), "prompt 1 is empty"),
    (41, json.dumps({"prompts": ["a", 3, "c", "d", "e", "f"]}), "prompt 1 is int, not a string"),
    (300, json.dumps({"prompts": ["a", "b", "c", "d", "e"]}), "5 prompts; the official set has 6"),
    (100, "", "blank line in the middle"),
])
def test_verify_names_line_and_problem(tmp_path, official_path, capsys, line, replacement, problem):
    broken = _official_copy_with(tmp_path, official_path, line, replacement)
    assert cli_main(["data", "verify", "--path", str(broken)]) == 2
    err = capsys.readouterr().err
    assert f"{broken}:{line}:" in err and problem in err


def test_verify_prints_count_and_sha(official_path, capsys):
    assert cli_main(["data", "verify", "--path", str(official_path)]) == 0
    out = capsys.readouterr().out
    assert "scripts: 324" in out and "prompts per script: 6" in out and sha256_file(official_path) in out


def test_verify_console_script_exit_code(tmp_path):
    bad = tmp_path / "streambench_324.jsonl"
    bad.write_text('{"prompts": ["a"]}\n')
    proc = subprocess.run([sys.executable, "-m", "narrastream.cli", "data", "verify", "--path", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and f"{bad}:1:" in proc.stderr


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ScriptFileError, match="file not found"):
        parse_script_file(tmp_path / "nope.jsonl")


def test_source_order(tmp_path, monkeypatch, official_path):
    manifest = BenchmarkManifest.load()
    monkeypatch.setenv("NARRASTREAM_DATA", str(official_path))
    assert resolve_official_source(tmp_path / "given.jsonl", manifest=manifest) == (tmp_path / "given.jsonl", "data.path")
    assert resolve_official_source(None, manifest=manifest) == (official_path, "env")
    monkeypatch.delenv("NARRASTREAM_DATA")
    monkeypatch.setenv("NARRASTREAM_CACHE", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / manifest.commit / manifest.file
    cached.parent.mkdir(parents=True)
    cached.write_bytes(official_path.read_bytes())
    assert resolve_official_source(None, manifest=manifest) == (cached, "cache")


def test_download_is_atomic_and_pinned(tmp_path, official_path):
    manifest = BenchmarkManifest.load()
    assert manifest.commit in manifest.url and manifest.path_in_repository in manifest.url
    local = BenchmarkManifest(**{**manifest.__dict__, "url": official_path.resolve().as_uri()})
    dest = tmp_path / "dl" / "streambench_324.jsonl"
    download_official(local, dest)
    assert sha256_file(dest) == sha256_file(official_path)
    assert not list(dest.parent.glob("*.part"))


def test_hf_export(tmp_path, official_path):
    import datasets

    assert cli_main(["data", "export", "--format", "hf", "--out", str(tmp_path / "hf"),
                     "--path", str(official_path)]) == 0
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert len(ds) == 324
    assert {"id", "prompts", "template", "scene", "round", "cast_size", "dimension"} <= set(ds.column_names)
    assert ds[5]["dimension"] == "lookalike_identity" and len(ds[5]["prompts"]) == 6


def test_no_official_sentence_is_committed(official_path):
    repo = Path(__file__).resolve().parents[1]
    tracked = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True)
    if tracked.returncode != 0 or not tracked.stdout:
        pytest.skip("not a git checkout")
    probes = {p[:70] for s in load_benchmark(official_path).scripts for p in s.prompts}
    for name in tracked.stdout.split():
        path = repo / name
        if not path.is_file() or path.stat().st_size > 5_000_000:
            continue
        text = path.read_text(errors="ignore")
        leaked = [p for p in probes if p in text]
        assert not leaked, f"{name} contains official script text: {leaked[0]!r}"


def test_an_over_long_prompt_is_refused_with_its_size_and_the_key(tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text(json.dumps({"prompts": ["fine"]}) + "\n" + json.dumps({"prompts": ["ok", "x" * 5000]}) + "\n")
    with pytest.raises(ScriptFileError, match=rf"{f}:2: prompt 1 is 5000 characters long, more than "
                                              r"limits.max_prompt_chars=4000; raise the limit"):
        load_benchmark(f)
    assert load_benchmark(f, limits=ScriptLimits(max_prompt_chars=5000)).total == 2
    doc = tmp_path / "mine.json"
    doc.write_text(json.dumps([{"prompts": ["a"]}, {"prompts": ["y" * 11]}]))
    with pytest.raises(ScriptFileError, match=rf"{doc}:2: prompt 0 is 11 characters long"):
        parse_script_file(doc, limits=ScriptLimits(max_prompt_chars=10))


def test_a_huge_line_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    f = tmp_path / "huge.jsonl"
    size = 3 * 2**20
    with open(f, "w") as out:
        out.write(json.dumps({"prompts": ["a"]}) + "\n")
        out.write('{"prompts": ["' + "z" * size + '"]}\n')
        out.write(json.dumps({"prompts": ["b"]}) + "\n")
    parsed = []
    real_loads = json.loads
    monkeypatch.setattr("narrastream.data.loader.json.loads", lambda s, *a, **k: parsed.append(len(s)) or real_loads(s))
    with pytest.raises(ScriptFileError) as err:
        parse_script_file(f)
    message = str(err.value)
    assert message.startswith(f"{f}:2: line is {size + 18} bytes long") and "limits.max_script_line_chars=100000" in message
    assert max(parsed) < 100  # the long line was never handed to the JSON parser


def test_line_limit_counts_characters_not_bytes(tmp_path):
    f = tmp_path / "wide.jsonl"
    prompt = "é" * 40  # 2 bytes each
    f.write_text(json.dumps({"prompts": [prompt]}, ensure_ascii=False) + "\n", encoding="utf-8")
    line_chars = len(json.dumps({"prompts": [prompt]}, ensure_ascii=False))
    assert parse_script_file(f, limits=ScriptLimits(max_line_chars=line_chars)) == [(prompt,)]
    with pytest.raises(ScriptFileError, match=rf":1: line is {line_chars} characters long, more than "
                                              rf"limits.max_script_line_chars={line_chars - 1}"):
        parse_script_file(f, limits=ScriptLimits(max_line_chars=line_chars - 1))


def test_non_utf8_and_odd_line_breaks(tmp_path):
    f = tmp_path / "latin1.jsonl"
    f.write_bytes(b'{"prompts": ["a"]}\n{"prompts": ["caf\xe9"]}\n')
    with pytest.raises(ScriptFileError, match=rf"{f}:2: not UTF-8 text \(byte 18 of the line is 0xe9\)"):
        parse_script_file(f)
    doc = tmp_path / "latin1.json"
    doc.write_bytes(b'[{"prompts": ["a"]},\n {"prompts": ["caf\xe9"]}]')
    with pytest.raises(ScriptFileError, match=rf"{doc}:2: not UTF-8 text"):
        parse_script_file(doc)
    sep = tmp_path / "sep.jsonl"  # U+2028 inside a JSON string is not a line break; CRLF and a BOM are fine
    sep.write_bytes('\ufeff{"prompts": ["one\u2028two"]}\r\n{"prompts": ["b"]}\r\n'.encode())
    assert parse_script_file(sep) == [("one\u2028two",), ("b",)]


def test_run_with_an_over_long_prompt_exits_2_before_any_work(tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text(json.dumps({"prompts": ["a" * 50, "b"]}) + "\n")
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "narrastream.run", "preset=tiny", f"data.path={f}",
                           f"run.dir={run_dir}", "limits.max_prompt_chars=20"], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{f}:1: prompt 0 is 50 characters long, more than limits.max_prompt_chars=20" in proc.stderr
    assert "Traceback" not in proc.stderr and not (run_dir / "videos").exists()
