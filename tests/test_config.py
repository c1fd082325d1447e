"""The Hydra config tree: defaults, presets, model configs, and mandatory values."""

from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf.errors import MissingMandatoryValue

from narrastream.config import compose_config


def test_defaults_are_the_published_setting():
    cfg = compose_config([])
    assert cfg["model"]["name"] == "synthetic" and cfg["stage"] == "all"
    assert (cfg["generation"]["fps"], cfg["generation"]["width"], cfg["generation"]["height"]) == (16, 832, 480)
    assert cfg["generation"]["seconds_per_segment"] == cfg["protocol"]["segment_seconds"] == 10
    assert cfg["backbones"]["source"] == "files" and cfg["run"]["dir"] == "runs/synthetic"
    assert "hydra" not in cfg


def test_tiny_preset_shrinks_everything():
    cfg = compose_config(["preset=tiny"])
    assert cfg["protocol"]["segment_seconds"] == cfg["generation"]["seconds_per_segment"] == 2
    assert cfg["generation"]["fps"] == 4 and cfg["generation"]["width"] == 64
    assert (cfg["backbones"]["source"], cfg["backbones"]["size"]) == ("random", "tiny")


def test_every_protocol_metric_belongs_to_a_dimension():
    protocol = compose_config([])["protocol"]
    listed = [m for ms in protocol["dimensions"].values() for m in ms]
    assert len(listed) == len(set(listed)) == 11  # each metric in exactly one dimension
    assert set(protocol["run_metrics"]) <= set(listed)
    assert set(protocol["run_metrics"]) <= set(protocol["metrics"])


def test_model_params_round_trip_to_the_adapter(tmp_path):
    from narrastream.adapters import build_generator

    cfg = compose_config(["model=precomputed", f"model.params.folder={tmp_path}", "model.params.layout=official"])
    gen = build_generator(cfg["model"]["adapter"], **cfg["model"]["params"])
    assert gen.folder == tmp_path and gen.layout == "official"


def test_missing_mandatory_value_is_a_clear_error(tmp_path):
    with pytest.raises(MissingMandatoryValue):
        compose_config(["model=precomputed"])
    proc = subprocess.run([sys.executable, "-m", "narrastream.run", "model=precomputed", f"run.dir={tmp_path}"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "model.params.folder" in proc.stderr
