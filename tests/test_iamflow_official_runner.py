"""runners/iamflow_official/run.py through the real ``command`` adapter, with a stand-in for the authors' repo."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import pytest

from narrastream.adapters.base import GenerationError, GenerationRequest
from narrastream.adapters.command import CommandGenerator
from narrastream.data.script import Script

RUNNER = Path(__file__).resolve().parents[1] / "runners" / "iamflow_official" / "run.py"

PRINTOUT = """\
[Profiling Summary]
  Initialization:              12.50 ms
  Final VAE (concat):         900.00 ms (2.1%)
  Total:                   43210.00 ms
  Throughput:                   5.55 FPS

[Comparable Metrics]
  End-to-end total:        43210.00 ms
  Loop (no output decode): 40000.50 ms
  Core DiT time:           30000.25 ms
  Method overhead:         10000.25 ms
  Output decode total:      3209.50 ms

[Diffusion Breakdown]
  Pure denoising:          30000.25 ms (75.0%)
"""

FAKE_RUN_IAMFLOW = textwrap.dedent('''
    import argparse, json, os, sys
    import numpy as np
    from omegaconf import OmegaConf
    from narrastream.video.encode import write_mp4

    p = argparse.ArgumentParser()
    p.add_argument("--config_path"); p.add_argument("--data_path"); p.add_argument("--output_folder")
    p.add_argument("--seed", type=int); p.add_argument("--sample_index_offset", type=int, default=0)
    args, unknown = p.parse_known_args()
    mode = os.environ.get("FAKE_IAMFLOW_MODE", "ok")
    cfg = OmegaConf.load(args.config_path)
    prompts = [json.loads(l)["prompts"] for l in open(args.data_path) if l.strip()]
    print("fake iamflow: cwd", os.getcwd(), "WAN", os.environ.get("WAN_MODEL_PATH"))
    print("Switch frame indices:", cfg.switch_frame_indices, "num_output_frames", cfg.num_output_frames)
    print("prompts", len(prompts), len(prompts[0]), "seed", args.seed, "extra", unknown)
    if mode == "fail":
        print("torch.OutOfMemoryError: CUDA out of memory (pretend)", file=sys.stderr)
        sys.exit(1)
    if mode != "novideo":
        frames = np.full((5, 48, 64, 3), 10 * args.seed % 255, np.uint8)
        write_mp4(os.path.join(args.output_folder, f"rank0-{args.sample_index_offset}-0_iam.mp4"), frames, fps=16)
        json.dump({"global_registry": {}}, open(os.path.join(args.output_folder,
                  f"mapping_{args.sample_index_offset}.json"), "w"))
    print(PRINTOUT)
''').replace("print(PRINTOUT)", "print(" + repr(PRINTOUT) + ")")


def _load_runner():
    spec = importlib.util.spec_from_file_location("iamflow_official_run", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def fake_repo(tmp_path) -> Path:
    repo = tmp_path / "IAMFlow"
    (repo / "iamflow").mkdir(parents=True)
    (repo / "configs").mkdir()
    (repo / "iamflow" / "__init__.py").write_text("")
    (repo / "iamflow" / "run_iamflow.py").write_text(FAKE_RUN_IAMFLOW)
    (repo / "configs" / "iamflow.yaml").write_text(
        'num_output_frames: 240\nnum_frame_per_block: 3\nswitch_frame_indices: "40, 80, 120, 160, 200"\nseed: 1\n')
    return repo


def _request(tmp_path: Path, n: int = 6, seed: int = 2) -> GenerationRequest:
    script = Script(id=7, prompts=tuple(f"prompt {i}" for i in range(n)))
    return GenerationRequest(script=script, seed=seed, output_path=tmp_path / "videos" / "7-s2.mp4", fps=16,
                             seconds_per_segment=10, width=832, height=480)


def _gen(repo, mode="ok", timeout_s=60.0, extra_env=None) -> CommandGenerator:
    env = {"IAMFLOW_REPO": str(repo), "IAMFLOW_PYTHON": sys.executable, "FAKE_IAMFLOW_MODE": mode,
           **(extra_env or {})}
    return CommandGenerator(command=[sys.executable, str(RUNNER), "{request}"], env=env, timeout_s=timeout_s)


def test_parse_profile_reads_comparable_metrics():
    t = _load_runner().parse_profile(PRINTOUT)
    assert t["end_to_end"] == pytest.approx(43.21) and t["loop_no_output_decode"] == pytest.approx(40.0005)
    assert t["core_dit"] == pytest.approx(30.00025) and t["method_overhead"] == pytest.approx(10.00025)
    assert t["output_decode"] == pytest.approx(3.2095) and t["profiled_total"] == pytest.approx(43.21)
    assert t["throughput_latent_fps"] == pytest.approx(5.55)


def test_parse_profile_tolerates_missing_lines():
    parse = _load_runner().parse_profile
    assert parse("") == {} and parse("no profiling here\nTotal: n/a") == {}
    partial = parse("junk\n  Core DiT time:             12.00 ms\n")
    assert partial == {"core_dit": pytest.approx(0.012)}
    # with several reports (--seeds) the last one wins
    assert parse("  Core DiT time: 1000 ms\n  Core DiT time: 2000 ms\n")["core_dit"] == pytest.approx(2.0)


def test_round_trip_through_command_adapter(tmp_path, fake_repo):
    video = _gen(fake_repo).generate(_request(tmp_path))
    assert video.path == tmp_path / "videos" / "7-s2.mp4" and video.path.is_file()
    assert (video.num_frames, video.width, video.height) == (5, 64, 48) and video.fps == pytest.approx(16)
    assert video.switch_frames == [153, 309, 477, 633, 789]
    assert video.timings["core_dit"] == pytest.approx(30.00025)
    assert video.timings["end_to_end"] == pytest.approx(43.21)
    assert video.timings["output_decode"] == pytest.approx(3.2095) and video.timings["process_wall"] > 0
    facts = video.extra["iamflow"]
    assert facts["latent_switch_indices"] == [39, 78, 120, 159, 198] and facts["num_latent_frames"] == 240
    assert json.loads(Path(facts["mapping"]).read_text()) == {"global_registry": {}}
    work = tmp_path / "videos" / "7-s2.iamflow"
    assert json.loads((work / "script.jsonl").read_text()) == {"prompts": [f"prompt {i}" for i in range(6)]}
    log = (tmp_path / "videos" / "7-s2.log").read_text()
    assert "Switch frame indices: 39, 78, 120, 159, 198 num_output_frames 240" in log
    assert "prompts 1 6 seed 2" in log and f"cwd {fake_repo.resolve()}" in log


def test_other_geometry_and_extra_args(tmp_path, fake_repo):
    video = _gen(fake_repo, extra_env={"IAMFLOW_EXTRA_ARGS": "--ablation_mode no_vlm"}).generate(
        _request(tmp_path, n=3))
    assert video.switch_frames == [153, 309]
    assert video.extra["iamflow"]["num_latent_frames"] == 120
    assert "extra ['--ablation_mode', 'no_vlm']" in (tmp_path / "videos" / "7-s2.log").read_text()


def test_fixed_geometry_keeps_the_authors_config(tmp_path, fake_repo):
    video = _gen(fake_repo, extra_env={"IAMFLOW_FIXED_GEOMETRY": "1"}).generate(_request(tmp_path))
    assert video.switch_frames == [153, 309, 477, 633, 789]
    assert "Switch frame indices: 40, 80, 120, 160, 200" in (tmp_path / "videos" / "7-s2.log").read_text()


def test_failing_authors_process_is_a_generation_error_with_log_tail(tmp_path, fake_repo):
    with pytest.raises(GenerationError, match="exited with code 3") as info:
        _gen(fake_repo, mode="fail").generate(_request(tmp_path))
    assert "CUDA out of memory (pretend)" in str(info.value)
    assert "authors' process exited with code 1" in str(info.value)
    assert not (tmp_path / "videos" / "7-s2.mp4").exists()


def test_no_video_is_an_error(tmp_path, fake_repo):
    with pytest.raises(GenerationError, match="exited with code 5") as info:
        _gen(fake_repo, mode="novideo").generate(_request(tmp_path))
    assert "produced no mp4" in str(info.value)


def test_missing_repo_is_a_clear_error(tmp_path):
    with pytest.raises(GenerationError, match="exited with code 2") as info:
        _gen(tmp_path / "nowhere").generate(_request(tmp_path))
    assert "not an IAMFlow checkout" in str(info.value)
    with pytest.raises(GenerationError) as info:
        _gen("").generate(_request(tmp_path))
    assert "no IAMFlow repository given" in str(info.value) and "IAMFLOW_REPO" in str(info.value)


def test_timeout_of_the_authors_process(tmp_path, fake_repo):
    (fake_repo / "iamflow" / "run_iamflow.py").write_text("import time; time.sleep(30)\n")
    gen = _gen(fake_repo, extra_env={"IAMFLOW_TIMEOUT_S": "1"})
    with pytest.raises(GenerationError, match="exited with code 4") as info:
        gen.generate(_request(tmp_path))
    assert "timed out after 1 s" in str(info.value)


def test_model_config_composes_and_builds_the_command_adapter(monkeypatch, tmp_path):
    from narrastream.adapters import build_generator
    from narrastream.config import compose_config

    monkeypatch.delenv("IAMFLOW_REPO", raising=False)
    cfg = compose_config(["model=iamflow-official", f"model.params.env.IAMFLOW_PYTHON={sys.executable}"])
    model = cfg["model"]
    assert model["adapter"] == "command" and model["params"]["env"]["IAMFLOW_REPO"] == ""
    gen = build_generator(model["adapter"], **model["params"])
    assert isinstance(gen, CommandGenerator) and gen.argv[1] == "runners/iamflow_official/run.py"
