"""Bad input is exit code 2 with one line naming the key (or file, line) and the value, found before any work.

Each case of issue 12 (item 2) runs ``python -m narrastream.run`` in a subprocess and checks: exit code 2,
one line on stderr naming the key and the value (with a did-you-mean for names), no traceback, nothing
generated. The schema's messages are checked in process; a full disk and a read-only run folder are
simulated (a real tmpfs where this process may mount one, a patched ``os.write`` everywhere)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from narrastream.config import ConfigError, compose_config
from narrastream.config_schema import schema_markdown, validate_config

REPO = Path(__file__).resolve().parents[1]
#: three made-up scripts of two prompts: the tests do not depend on the official file
USER_SCRIPTS = [["a red ball rolls", "the ball stops"], ["a cat sleeps", "the cat wakes"],
                ["rain falls", "the sun comes out"]]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def run(*overrides: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "narrastream.run", *overrides], capture_output=True, text=True,
                          timeout=timeout, env=_env(), cwd=REPO)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.fixture()
def scripts(tmp_path) -> Path:
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"prompts": p}) + "\n" for p in USER_SCRIPTS))
    return path


def assert_refused(proc: subprocess.CompletedProcess, run_dir: Path, *expected: str) -> str:
    """Exit 2, exactly one stderr line containing every ``expected`` text, nothing generated."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = lines(proc.stderr)
    assert len(err) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for text in expected:
        assert text in err[0], err[0]
    assert not (run_dir / "videos").exists() or not any((run_dir / "videos").rglob("*"))
    assert not (run_dir / "records").exists()
    return err[0]


# ------------------------------------------------------------------ issue 12's cases, end to end
BAD = [
    (["shard.index=2", "shard.count=2"], ["shard.index=2", "shard.count=2", "0..1"]),
    (["shard.count=0"], ["shard.count=0", ">= 1"]),
    (["data.limit=-1"], ["data.limit=-1", ">= 1"]),
    (["data.limit=0"], ["data.limit=0", ">= 1"]),
    (["data.ids=[0,99999]"], ["data.ids", "99999", "0..2"]),
    (["data.ids=[abc]"], ["data.ids[0]='abc'", "not an integer"]),
    (["run.seeds=[]"], ["run.seeds=[]", "empty"]),
    (["stage=evalute"], ["stage='evalute'", "Did you mean 'evaluate'", "generate, evaluate, leaderboard, all"]),
    (["protocol.run_metrics=[subject_consistncy]"], ["protocol.run_metrics", "'subject_consistncy'",
                                                     "Did you mean 'subject_consistency'"]),
    (["model=syntetic"], ["model=syntetic", "Did you mean 'synthetic'", "precomputed"]),
    (["judge=silicnflow"], ["judge=silicnflow", "Did you mean 'siliconflow'"]),
    (["foo=1"], ["foo=1", "+foo=1"]),
    (["data.limt=3"], ["data.limt=3", "Did you mean data.limit"]),
    (["+data.limt=3"], ["data.limt=3", "Did you mean data.limit"]),
    (["model.adapter=syntheti"], ["model.adapter='syntheti'", "Did you mean 'synthetic'"]),
    (["data.ids=[0,"], ["data.ids=[0,", "cannot parse"]),
    (["model=precomputed"], ["model.params.folder", "missing"]),
]


@pytest.mark.parametrize("overrides,expected", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_input_is_one_line_and_exit_2(tmp_path, scripts, overrides, expected):
    run_dir = tmp_path / "run"
    proc = run("preset=tiny", f"data.path={scripts}", f"run.dir={run_dir}", *overrides)
    assert_refused(proc, run_dir, *expected)
    assert not run_dir.exists()  # found before Hydra or narrastream wrote anything


def test_non_utf8_scripts_name_file_and_line(tmp_path, scripts):
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(scripts.read_bytes() + json.dumps({"prompts": ["x", "y"]}).encode().replace(b"x", b"caf\xe9")
                    + b"\n")
    run_dir = tmp_path / "run"
    assert_refused(run("preset=tiny", f"data.path={bad}", f"run.dir={run_dir}"), run_dir,
                   f"{bad}:4", "UTF-8", "0xe9")
    proc = subprocess.run([sys.executable, "-m", "narrastream.cli", "data", "verify", "--path", str(bad)],
                          capture_output=True, text=True, env=_env(), cwd=REPO)
    assert proc.returncode == 2 and len(lines(proc.stderr)) == 1 and f"{bad}:4" in proc.stderr, proc.stderr
    bad.write_text(scripts.read_text() + '{"prompts": ["x",\n')
    proc = subprocess.run([sys.executable, "-m", "narrastream.cli", "data", "verify", "--path", str(bad)],
                          capture_output=True, text=True, env=_env(), cwd=REPO)
    assert proc.returncode == 2 and f"{bad}:4" in proc.stderr and "not valid JSON" in proc.stderr, proc.stderr


def test_metric_typo_is_found_before_the_generator_runs(tmp_path, scripts):
    """The worst case of the issue: it used to fail only after the generate stage."""
    run_dir = tmp_path / "run"
    proc = run("preset=tiny", f"data.path={scripts}", f"run.dir={run_dir}", "stage=all",
               "protocol.run_metrics=[subject_consistency,vtss,subject_consistncy]")
    assert_refused(proc, run_dir, "subject_consistncy", "Did you mean 'subject_consistency'")


def test_execute_validates_before_the_session(tmp_path, monkeypatch):
    """Programmatic runs (compose_config + execute) get the same check, before the Session is built."""
    import narrastream.harness.session as session_module
    from narrastream.run import execute

    def no_session(*args, **kwargs):
        raise AssertionError("the Session was built before the configuration was validated")

    monkeypatch.setattr(session_module, "Session", no_session)
    cfg = compose_config(["preset=tiny", f"run.dir={tmp_path / 'run'}"])
    cfg["protocol"]["run_metrics"] = ["subject_consistncy"]
    with pytest.raises(ConfigError, match="subject_consistency"):
        execute(cfg)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ the schema's messages, in process
def _problem(overrides: list[str], edit=None) -> str:
    cfg = compose_config(["preset=tiny", *overrides])
    if edit:
        edit(cfg)
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    return str(info.value)


def test_shipped_configs_validate():
    for model in sorted(p.stem for p in (REPO / "eval_configs" / "model").glob("*.yaml")):
        extra = {"precomputed": ["model.params.folder=/x"], "command": ["model.params.command=true"]}.get(model, [])
        validate_config(compose_config([f"model={model}", *extra]))
    for judge in sorted(p.stem for p in (REPO / "eval_configs" / "judge").glob("*.yaml")):
        extra = ["judge.model=/m"] if judge == "local" else []
        validate_config(compose_config([f"judge={judge}", "preset=tiny", *extra]))


@pytest.mark.parametrize("overrides,expected", [
    (["shard.count=true"], "shard.count=true: a boolean where a number is expected"),
    (["generation.device=gpu"], "generation.device='gpu': not a device"),
    (["generation.fps=0"], "generation.fps=0: must be > 0"),
    (["generation.width=64.5"], "generation.width=64.5: not a whole number"),
    (["backbones.source=files", "backbones.size=tiny"], "backbones.size='tiny': needs backbones.source=random"),
    (["backbones.source=file"], "backbones.source='file': not allowed. Did you mean 'files'?"),
    (["run.seeds=[0,1,0]"], "run.seeds=[0,1,0]: seed 0 is listed twice"),
    (["model.name=a/b"], "model.name='a/b': must be a plain folder name"),
    (["data.dimensions=[lookalike_identiti]"], "Did you mean 'lookalike_identity'?"),
    (["data.official=maybe"], "data.official='maybe': not allowed. Allowed: auto, true, false"),
    (["data.ids=5"], "data.ids=5: expected a list"),
    (["video.segmentation=natve"], "video.segmentation='natve': not allowed. Did you mean 'native'?"),
    (["protocol.annotations=live"], "protocol.annotations=live needs a judge"),
    (["judge=openai", "judge.concurrency=0"], "judge.concurrency=0: must be >= 1"),
    (["judge=local", "judge.model=/m", "judge.dtype=fp8"], "judge.dtype='fp8': not allowed"),
    (["+protocol.metrics.vtsss={}"], "protocol.metrics.vtsss: unknown metric 'vtsss'. Did you mean 'vtss'?"),
    (["+foo=1"], "foo=1: unknown top-level key"),
])
def test_schema_names_key_value_and_allowed(overrides, expected):
    assert expected in _problem(overrides)


def test_every_problem_is_named_at_once_in_one_line():
    text = _problem(["shard.count=0", "stage=evalute", "data.limit=0"])
    assert "\n" not in text
    assert all(k in text for k in ("shard.count=0", "stage='evalute'", "data.limit=0"))


def test_run_metric_without_constants_is_refused():
    def drop(cfg):
        del cfg["protocol"]["metrics"]["vtss"]

    assert "'vtss' has no entry in protocol.metrics" in _problem([], drop)


def test_keys_declared_in_config_yaml_pass_without_a_schema_change(monkeypatch):
    """A key another change adds to eval_configs/config.yaml is not refused as unknown."""
    import narrastream.config_schema as schema

    declared = dict(schema._declared_keys())
    monkeypatch.setattr(schema, "_declared_keys", lambda: {**declared, "data": declared["data"] | {"max_chars"},
                                                          "": declared[""] | {"limits"}})
    cfg = compose_config(["preset=tiny", "+data.max_chars=10", "+limits={a: 1}"])
    validate_config(cfg)


def test_docs_table_is_generated_from_the_schema():
    doc = (REPO / "docs" / "configuration.md").read_text()
    assert schema_markdown() in doc, "regenerate the table: python -m narrastream.config_schema"


def test_hydra_modes_still_work(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "narrastream.run", "--cfg", "job", "preset=tiny"],
                          capture_output=True, text=True, env=_env(), cwd=REPO)
    assert proc.returncode == 0 and "stage: all" in proc.stdout, proc.stderr


# ------------------------------------------------------------------ mapping files
def test_mapping_with_a_null_path_names_file_and_id(tmp_path):
    from narrastream.adapters.precomputed import PrecomputedGenerator, PrecomputedVideosError
    from narrastream.data.script import Script

    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"0": "a.mp4", "1": None}))
    gen = PrecomputedGenerator(folder=str(tmp_path), mapping=str(mapping))
    with pytest.raises(PrecomputedVideosError, match=r"map.json: entry '1': the path of script 1 is null"):
        gen.prepare([Script(id=0, prompts=("a",)), Script(id=1, prompts=("b",))], total_scripts=2)
    mapping.write_bytes(b'{"0": "a.mp4",\n "1": "caf\xe9.mp4"}')
    with pytest.raises(PrecomputedVideosError, match=r"map.json:2: not UTF-8 text"):
        gen.prepare([Script(id=0, prompts=("a",))], total_scripts=2)
    csv_map = tmp_path / "map.csv"
    csv_map.write_text("script_id,path\n0,a.mp4\n1\n")
    gen = PrecomputedGenerator(folder=str(tmp_path), mapping=str(csv_map))
    with pytest.raises(PrecomputedVideosError, match=r"map.csv:3: 1 fields, the header has 2"):
        gen.prepare([Script(id=0, prompts=("a",))], total_scripts=2)


@pytest.mark.slow
def test_mapping_with_a_null_path_exits_2_end_to_end(tmp_path, scripts):
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"0": "a.mp4", "1": None, "2": "c.mp4"}))
    run_dir = tmp_path / "run"
    proc = run("model=precomputed", f"model.params.folder={tmp_path}", f"model.params.mapping={mapping}",
               "preset=tiny", f"data.path={scripts}", f"run.dir={run_dir}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in lines(proc.stderr) if "[ERROR]" in line]
    assert len(errors) == 1 and f"{mapping}: entry '1'" in errors[0] and "null" in errors[0]
    assert not (run_dir / "records").exists()


# ------------------------------------------------------------------ read-only folder, full disk
def _mount_tmpfs(path: Path, options: str) -> bool:
    """A real tmpfs where this process may mount one (root with CAP_SYS_ADMIN); else False."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    except OSError:
        return False
    return proc.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True)


def test_read_only_run_folder_is_named(tmp_path, scripts):
    folder = tmp_path / "ro"
    mounted = _mount_tmpfs(folder, "size=1m,ro")
    if not mounted:
        if os.geteuid() == 0:
            pytest.skip("root ignores permissions and cannot mount a read-only tmpfs here")
        folder.mkdir(exist_ok=True)
        folder.chmod(0o555)
    try:
        for run_dir in (folder, folder / "sub"):
            proc = run("preset=tiny", f"data.path={scripts}", f"run.dir={run_dir}")
            line = assert_refused(proc, run_dir, f"run.dir='{run_dir}'", str(run_dir))
            assert "read-only" in line or "permission denied" in line
    finally:
        if mounted:
            _umount(folder)
        else:
            folder.chmod(0o755)


_ENOSPC_AFTER = textwrap.dedent("""
    import errno, os, runpy, sys
    limit, records = int(sys.argv[1]), sys.argv[2]
    real_write, count = os.write, [0]

    def write(fd, data):  # the disk fills up after `limit` writes into the records folder
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if target.startswith(records):
            count[0] += 1
            if count[0] > limit:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    os.write = write
    sys.argv = ["narrastream.run", *sys.argv[3:]]
    runpy.run_module("narrastream.run", run_name="__main__")
""")


def _records(run_dir: Path) -> list:
    from narrastream.results.records import RecordStore

    return list(RecordStore(run_dir / "records").iter_all())


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to map descriptors to paths")
def test_full_disk_stops_with_exit_2_and_keeps_what_was_computed(tmp_path, scripts):
    run_dir = tmp_path / "run"
    args = ["preset=tiny", f"data.path={scripts}", f"run.dir={run_dir}",
            "protocol.run_metrics=[subject_consistency,background_consistency,conditional_adjacent]"]
    proc = subprocess.run([sys.executable, "-c", _ENOSPC_AFTER, "4", str(run_dir / "records"), *args],
                          capture_output=True, text=True, env=_env(), cwd=REPO, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = lines(proc.stderr)[-1]
    assert "no space left on device" in last and str(run_dir) in last, last
    kept = {(r.script_id, r.metric): r.score for r in _records(run_dir)}
    assert len(kept) == 4
    videos = {p: p.stat().st_mtime_ns for p in (run_dir / "videos").rglob("*.mp4")}
    assert len(videos) == 3
    proc = run(*args)  # space is back: the same command finishes the work
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = _records(run_dir)
    assert len(after) == 9 and len({(r.script_id, r.metric) for r in after}) == 9
    assert all({(r.script_id, r.metric): r.score for r in after}[k] == v for k, v in kept.items())
    assert {p: p.stat().st_mtime_ns for p in videos} == videos  # no video made again


@pytest.mark.slow
def test_full_tmpfs_during_generation(tmp_path, scripts):
    """A real full disk (a 64 KiB tmpfs, where this process may mount one): exit 2, the path named, the
    finished videos kept; once there is room, the same command completes without regenerating them."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "size=64k"):
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        run_dir = disk / "run"
        args = ["preset=tiny", f"data.path={scripts}", f"run.dir={run_dir}", "protocol.run_metrics=[vtss]"]
        proc = run(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        last = lines(proc.stderr)[-1]
        assert "no space left on device" in last and str(disk) in last, last
        assert not list(run_dir.rglob("*.tmp"))  # no temporary file left behind
        done = {p: p.stat().st_mtime_ns for p in (run_dir / "videos").rglob("*.mp4")}
        assert all(p.with_suffix(".json").is_file() for p in done)
        subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
        proc = run(*args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert {p: p.stat().st_mtime_ns for p in done} == done
        assert len(_records(run_dir)) == 3
    finally:
        _umount(disk)


def test_disk_error_messages():
    from narrastream.preflight import disk_error_message, environment_oserror

    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/r/x.json")
    assert disk_error_message(full, "/r").startswith("/r/x.json: no space left on device")
    assert disk_error_message(OSError(errno.ENOSPC, "x"), "/r").startswith("/r: no space left")
    assert "read-only" in disk_error_message(OSError(errno.EROFS, "x", "/r"), "/r")
    try:
        try:
            raise full
        except OSError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as wrapped:
        assert environment_oserror(wrapped) is full
    assert environment_oserror(ValueError("x")) is None
