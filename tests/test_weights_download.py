"""Weights that download themselves: resumable verified URL downloads against a local HTTP server,
refusals when downloads are off, the hub path without network, the manifest record, and the
``narrastream weights download | verify`` commands. Nothing here leaves this machine: the server is a
thread on 127.0.0.1, and the "no network" cases point at a closed local port."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from narrastream import cli
from narrastream.download import ChecksumError, DownloadError, download_url, unreachable
from narrastream.metrics.backbones import WEIGHTS, BackboneProvider, WeightSpec, WeightsNotFoundError, resolve_weights
from narrastream.metrics.backbones.weights import FolderSpec, forget_resolved, resolve_folder, resolved_weights

BLOB = bytes(range(256)) * 4096  # 1 MiB, not a multiple of the server's or the client's chunk sizes
BLOB = BLOB + b"tail" * 1001


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FileServer:
    """A local HTTP server: serves ``files`` (path -> bytes) with ETags and ranges (``If-Range`` honoured),
    records each request's path and headers, and can cut the body of the next response short."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[dict[str, str]] = []
        self.cut_after: int | None = None  # bytes of the next body to send before dropping the connection
        self.ranges = True
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # noqa: N802 - the http.server API
                server.requests.append({"path": self.path, **{k: v for k, v in self.headers.items()}})
                data = server.files.get(self.path)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                etag = f'"{sha(data)[:16]}"'
                start = 0
                wanted = self.headers.get("Range")
                if_range = self.headers.get("If-Range")
                if wanted and server.ranges and (if_range is None or if_range == etag):
                    start = int(wanted.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", etag)
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if server.cut_after is not None:
                    cut, server.cut_after = server.cut_after, None
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FileServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture(autouse=True)
def _fresh_probes(monkeypatch):
    """Reachability is remembered per host and process; local ports are reused between tests."""
    import narrastream.download

    monkeypatch.setattr(narrastream.download, "_probes", {})


@pytest.fixture
def server(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the suite runs offline; these tests use 127.0.0.1 only
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("NARRASTREAM_WEIGHTS", raising=False)
    monkeypatch.delenv("NARRASTREAM_WEIGHTS_MIRROR", raising=False)
    with FileServer() as running:
        yield running


def closed_port() -> int:
    """A local port nothing listens on: connecting is refused at once, like a machine without network."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------ download_url


def test_download_with_progress_and_sha256(server, tmp_path, capsys):
    server.files["/w/model.pth"] = BLOB
    dest = tmp_path / "weights" / "model.pth"
    digest = download_url(f"{server.url}/w/model.pth", dest, sha256=sha(BLOB).upper(), desc="model.pth")
    assert digest == sha(BLOB) and dest.read_bytes() == BLOB
    assert not dest.with_name("model.pth.part").exists() and not dest.with_name("model.pth.part.json").exists()
    err = capsys.readouterr().err
    assert "model.pth" in err and "100%" in err  # the progress bar ran to the end
    assert "Range" not in server.requests[0]


def test_wrong_sha256_is_refused_and_nothing_kept(server, tmp_path):
    server.files["/model.pth"] = BLOB
    dest = tmp_path / "model.pth"
    with pytest.raises(ChecksumError) as info:
        download_url(f"{server.url}/model.pth", dest, sha256="0" * 64, progress=False)
    assert sha(BLOB) in str(info.value) and "0" * 64 in str(info.value) and "not kept" in str(info.value)
    assert not dest.exists() and not dest.with_name("model.pth.part").exists()


def test_interrupted_transfer_resumes_with_a_range_request(server, tmp_path):
    server.files["/model.pth"] = BLOB
    dest, part = tmp_path / "model.pth", tmp_path / "model.pth.part"
    server.cut_after = 300_000
    with pytest.raises(DownloadError, match="interrupted after 300000 bytes.*kept and the next attempt resumes it"):
        download_url(f"{server.url}/model.pth", dest, sha256=sha(BLOB), retries=0, progress=False)
    assert not dest.exists() and part.stat().st_size == 300_000
    assert download_url(f"{server.url}/model.pth", dest, sha256=sha(BLOB), retries=0, progress=False) == sha(BLOB)
    assert dest.read_bytes() == BLOB and not part.exists()
    assert len(server.requests) == 2
    assert server.requests[1]["Range"] == "bytes=300000-"
    assert server.requests[1]["If-Range"] == f'"{sha(BLOB)[:16]}"'  # the partial file's validator


def test_interruption_within_one_call_is_resumed(server, tmp_path):
    server.files["/model.pth"] = BLOB
    server.cut_after = 123_457
    dest = tmp_path / "model.pth"
    assert download_url(f"{server.url}/model.pth", dest, sha256=sha(BLOB), retries=1, progress=False) == sha(BLOB)
    assert dest.read_bytes() == BLOB
    assert [r.get("Range") for r in server.requests] == [None, "bytes=123457-"]


def test_a_changed_file_restarts_from_zero(server, tmp_path):
    """The partial file was of another version: If-Range makes the server send the whole new file."""
    server.files["/model.pth"] = BLOB
    server.cut_after = 5000
    dest = tmp_path / "model.pth"
    with pytest.raises(DownloadError):
        download_url(f"{server.url}/model.pth", dest, retries=0, progress=False)
    new = BLOB[::-1]
    server.files["/model.pth"] = new
    assert download_url(f"{server.url}/model.pth", dest, sha256=sha(new), progress=False) == sha(new)
    assert dest.read_bytes() == new


def test_a_server_without_ranges_sends_the_whole_file_again(server, tmp_path):
    server.files["/model.pth"] = BLOB
    server.ranges = False
    server.cut_after = 70_000
    dest = tmp_path / "model.pth"
    assert download_url(f"{server.url}/model.pth", dest, sha256=sha(BLOB), retries=1, progress=False) == sha(BLOB)
    assert dest.read_bytes() == BLOB


def test_http_errors_and_unreachable_hosts_fail_at_once(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_url(f"{server.url}/nothing.pth", tmp_path / "x.pth", progress=False)
    port = closed_port()
    with pytest.raises(DownloadError, match=f"could not reach http://127.0.0.1:{port}/x.pth"):
        download_url(f"http://127.0.0.1:{port}/x.pth", tmp_path / "x.pth", progress=False)
    assert not (tmp_path / "x.pth").exists() and not (tmp_path / "x.pth.part").exists()
    assert "cannot connect to 127.0.0.1" in unreachable(f"http://127.0.0.1:{port}/")
    assert unreachable(server.url) is None


# --------------------------------------------------------------------------------- the resolver


def test_registry_points_at_a_mirror_and_records_the_file(server, monkeypatch):
    """$NARRASTREAM_WEIGHTS_MIRROR serves a weights folder: the registry's DINO comes from it, into the cache."""
    server.files["/dino_vitbase16_pretrain.pth"] = BLOB
    monkeypatch.setenv("NARRASTREAM_WEIGHTS_MIRROR", server.url + "/")
    forget_resolved()
    got = resolve_weights(WEIGHTS["dino_vitb16"])  # downloads are on by default
    from narrastream.paths import cache_dir

    assert got == cache_dir() / "weights" / "dino_vitbase16_pretrain.pth" and got.read_bytes() == BLOB
    record = resolved_weights()["dino_vitb16"]
    assert record["sha256"] == sha(BLOB) and record["size"] == len(BLOB) and record["source"] == "mirror"
    assert record["pinned_sha256"] is None and record["verified"] is False
    assert resolve_weights(WEIGHTS["dino_vitb16"]) == got and len(server.requests) == 1  # found, not fetched again


def test_a_pinned_file_that_does_not_match_is_refused(server, monkeypatch):
    """CLIP's pin is the publisher's (its URL): any other bytes are refused and not kept."""
    server.files["/ViT-B-32.pt"] = BLOB
    monkeypatch.setenv("NARRASTREAM_WEIGHTS_MIRROR", server.url)
    with pytest.raises(ChecksumError, match=WEIGHTS["clip_vitb32"].sha256):
        resolve_weights(WEIGHTS["clip_vitb32"])
    from narrastream.paths import cache_dir

    assert not list((cache_dir() / "weights").glob("ViT-B-32.pt*"))


@pytest.mark.parametrize("switch", ["HF_HUB_OFFLINE", "allow_download=false"])
def test_downloads_off_refuse_with_a_clear_message(server, monkeypatch, switch):
    server.files["/dino_vitbase16_pretrain.pth"] = BLOB
    monkeypatch.setenv("NARRASTREAM_WEIGHTS_MIRROR", server.url)
    if switch == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        provider = BackboneProvider({"source": "files", "device": "cpu"})
    else:
        provider = BackboneProvider({"source": "files", "device": "cpu", "allow_download": False})
    with pytest.raises(WeightsNotFoundError) as info:
        provider.get("dino_vitb16")
    message = str(info.value)
    assert "dino_vitbase16_pretrain.pth" in message and "$NARRASTREAM_WEIGHTS/dino_vitbase16_pretrain.pth" in message
    assert "backbones.paths.dino_vitb16=FILE" in message
    assert "narrastream weights download dino_vitb16 --dir DIR" in message
    if switch == "HF_HUB_OFFLINE":
        assert "downloads are off (HF_HUB_OFFLINE=1 is set)" in message and "Unset HF_HUB_OFFLINE" in message
    else:
        assert "downloads are off (backbones.allow_download=false)" in message
        assert "backbones.allow_download=true (the default)" in message
    assert server.requests == []  # nothing was fetched


def test_no_network_fails_fast_with_a_clear_message(monkeypatch, tmp_path):
    """Downloads on, but the publisher cannot be reached: one refused connection, no retries, a message
    that says what failed and where to put the file."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("NARRASTREAM_WEIGHTS_MIRROR", raising=False)
    port = closed_port()
    spec = WeightSpec("dino_vitb16", "dino_vitbase16_pretrain.pth", url=f"http://127.0.0.1:{port}/dino.pth")
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights(spec)
    message = str(info.value)
    assert f"Not downloaded: the download failed: could not reach http://127.0.0.1:{port}/dino.pth" in message
    assert "Put the file at one of" in message

    # a hub id: the cache is looked at, then one probe of the endpoint; huggingface_hub's own retrying
    # download is never started
    import huggingface_hub

    calls = []
    real = huggingface_hub.hf_hub_download

    def spy(*args, **kwargs):
        calls.append(kwargs.get("local_files_only", False))
        if not kwargs.get("local_files_only"):
            raise AssertionError("a network download was attempted")
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", spy)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    hub_spec = WeightSpec("amt_s", "amt-s.pth", hub_repo="org/amt", hub_filename="amt-s.pth")
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights(hub_spec)
    assert "the hub (http://127.0.0.1:" in str(info.value) and "is out of reach" in str(info.value)
    assert "hf://org/amt/amt-s.pth" in str(info.value)
    assert calls and all(calls)  # cache lookups only


def test_hub_cache_files_are_checked_against_the_hubs_sha256(tmp_path, monkeypatch):
    """The Hugging Face cache names a large file's blob by the sha256 the hub states for it."""
    import huggingface_hub.constants

    def cached(content: bytes, blob_name: str) -> None:
        repo = tmp_path / "hub" / "models--org--repo"
        commit = "b" * 40
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        (repo / "blobs" / blob_name).write_bytes(content)
        (repo / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
        link = repo / "snapshots" / commit / "model.pth"
        link.unlink(missing_ok=True)
        link.symlink_to(repo / "blobs" / blob_name)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    spec = WeightSpec("m", "model.pth", hub_repo="org/repo")
    cached(BLOB, sha(BLOB))
    forget_resolved()
    resolve_weights(spec)
    assert resolved_weights()["m"]["hub_sha256"] == sha(BLOB) and resolved_weights()["m"]["verified"] is True
    cached(BLOB[:-1], sha(BLOB))  # a truncated blob under the hub's name
    with pytest.raises(ChecksumError, match="the sha256 the hub states for hf://org/repo/model.pth"):
        resolve_weights(spec)


def test_model_folder_missing_with_downloads_off(tmp_path, monkeypatch):
    monkeypatch.setenv("NARRASTREAM_WEIGHTS", str(tmp_path))
    spec = FolderSpec(name="wan2.1_t2v_1.3b", dirname="Wan2.1-T2V-1.3B-Diffusers", hub_repo="org/wan",
                      allow_patterns=("vae/*",), needs="vae/", required=("vae/config.json",),
                      config_key="model.params.weights.wan.path", download_key="model.params.weights.allow_download")
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_folder(spec, allow_download=False)
    message = str(info.value)
    assert "Put the folder at one of:\n  $NARRASTREAM_WEIGHTS/Wan2.1-T2V-1.3B-Diffusers/" in message
    assert f"$NARRASTREAM_WEIGHTS={tmp_path}" in message and "model.params.weights.wan.path=DIR" in message
    assert "downloads are off (model.params.weights.allow_download=false)" in message
    assert "narrastream weights download wan2.1_t2v_1.3b --dir DIR" in message
    (tmp_path / "Wan2.1-T2V-1.3B-Diffusers" / "vae").mkdir(parents=True)
    (tmp_path / "Wan2.1-T2V-1.3B-Diffusers" / "vae" / "config.json").write_text("{}")
    forget_resolved()
    assert resolve_folder(spec, allow_download=False) == tmp_path / "Wan2.1-T2V-1.3B-Diffusers"
    record = resolved_weights()["wan2.1_t2v_1.3b"]
    assert record["files"] == {"vae/config.json": {"size": 2, "sha256": sha(b"{}")}}


def test_generator_weights_off_name_the_models_key(tmp_path, monkeypatch):
    from narrastream.adapters.streaming_wan import StreamingWanGenerator
    from narrastream.config import compose_config

    monkeypatch.setenv("NARRASTREAM_WEIGHTS", str(tmp_path))
    params = compose_config(["model=longlive", "model.params.weights.allow_download=false"])["model"]["params"]
    with pytest.raises(WeightsNotFoundError) as info:
        StreamingWanGenerator(**params).prepare([])
    message = str(info.value)
    assert "longlive_base.pt" in message and "model.params.weights.dit.path=FILE" in message
    assert "downloads are off (model.params.weights.allow_download=false)" in message
    assert "narrastream weights download longlive.dit" in message
    assert compose_config(["model=longlive"])["model"]["params"]["weights"]["allow_download"] is True
    assert compose_config([])["backbones"]["allow_download"] is True


def test_the_run_manifest_records_what_was_loaded(tmp_path):
    from narrastream.results.rundir import RunDir
    from narrastream.run import forget_weights, record_weights

    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    run.write_manifest({"run_id": "run", "data": {"sha256": "abc"}})
    weights = tmp_path / "w.pth"
    weights.write_bytes(BLOB)
    forget_weights()
    resolve_weights(WeightSpec("m", "w.pth", sha256=sha(BLOB)), path=weights)
    record_weights(run)
    manifest = run.read_manifest()
    assert manifest["data"] == {"sha256": "abc"}
    entry = manifest["weights"]["m"]
    assert entry["sha256"] == sha(BLOB) and entry["pinned_sha256"] == sha(BLOB) and entry["verified"] is True
    assert entry["size"] == len(BLOB) and entry["path"] == str(weights.resolve()) and entry["source"] == "config"


# ---------------------------------------------------------------------------------- the commands


def test_weights_download_into_a_folder_from_a_mirror(server, tmp_path, capsys):
    server.files["/dino_vitbase16_pretrain.pth"] = BLOB
    server.files["/ViT-B-32.pt"] = b"not OpenAI's CLIP"
    target = tmp_path / "weights"
    assert cli.main(["weights", "download", "dino_vitb16", "--dir", str(target), "--mirror", server.url, "-q"]) == 0
    assert (target / "dino_vitbase16_pretrain.pth").read_bytes() == BLOB
    out = capsys.readouterr().out
    assert "dino_vitb16: downloaded" in out and f"export NARRASTREAM_WEIGHTS={target}" in out
    assert cli.main(["weights", "download", "dino_vitb16", "--dir", str(target), "--mirror", server.url, "-q"]) == 0
    assert "dino_vitb16: already there" in capsys.readouterr().out and len(server.requests) == 1
    # a pinned file served with other bytes: refused, nothing under its name
    assert cli.main(["weights", "download", "clip_vitb32", "--dir", str(target), "--mirror", server.url, "-q"]) == 2
    assert "clip_vitb32: FAILED" in capsys.readouterr().err and not list(target.glob("ViT-B-32.pt*"))
    assert cli.main(["weights", "download", "--dir", str(target)]) == 2  # names or --all
    assert "pass --all" in capsys.readouterr().err
    assert cli.main(["weights", "download", "dinov2", "--dir", str(target)]) == 2
    assert "unknown weights 'dinov2'" in capsys.readouterr().err
    assert "NARRASTREAM_WEIGHTS_MIRROR" not in os.environ  # --mirror is for that command only


def test_weights_download_of_a_hub_file_lands_under_its_own_name(server, tmp_path, monkeypatch, capsys):
    """Hub files go through huggingface_hub (faked here: no network) into a staging folder, then to
    DIR/<filename>, the layout $NARRASTREAM_WEIGHTS expects; the staging folder is removed."""
    import huggingface_hub

    def fake(repo_id, filename, local_files_only=False, local_dir=None, **kwargs):
        assert repo_id == "RaphaelLiu/EvalCrafter-Models" and filename == "RAFT/models/raft-things.pth"
        assert local_dir is not None and not local_files_only
        path = Path(local_dir) / filename
        path.parent.mkdir(parents=True)
        path.write_bytes(BLOB)
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    monkeypatch.setenv("HF_ENDPOINT", server.url)  # reachable: the probe passes
    target = tmp_path / "weights"
    assert cli.main(["weights", "download", "raft_things", "--dir", str(target), "-q"]) == 0
    assert (target / "raft-things.pth").read_bytes() == BLOB and sorted(p.name for p in target.iterdir()) == [
        "raft-things.pth"]

    # the sha256 the hub states (the etag huggingface_hub records for the download) must match
    from huggingface_hub._local_folder import write_download_metadata

    def lying(repo_id, filename, local_files_only=False, local_dir=None, **kwargs):
        path = Path(fake(repo_id, filename, local_files_only, local_dir))
        write_download_metadata(Path(local_dir), filename, "c" * 40, sha(b"another file"))
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lying)
    other = tmp_path / "other"
    assert cli.main(["weights", "download", "raft_things", "--dir", str(other), "-q"]) == 2
    err = capsys.readouterr().err
    assert "raft_things: FAILED" in err and sha(b"another file") in err and "the sha256 the hub states" in err
    assert not other.exists() or list(other.iterdir()) == []  # nothing kept, the staging folder removed


def test_weights_verify_a_folder(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "weights"
    (folder / "vtss").mkdir(parents=True)
    good, other = BLOB, BLOB[:-1] + b"!"
    (folder / "dino_vitbase16_pretrain.pth").write_bytes(good)     # pinned below: matches
    (folder / "amt-s.pth").write_bytes(other)                       # pinned below: corrupted
    (folder / "vtss" / "infer.pth").write_bytes(good)               # unpinned: present, sha256 shown
    (folder / "raft-things.pth.part").write_bytes(good[:1000])      # an interrupted download
    monkeypatch.setitem(WEIGHTS, "dino_vitb16", dataclasses.replace(WEIGHTS["dino_vitb16"], sha256=sha(good)))
    monkeypatch.setitem(WEIGHTS, "amt_s", dataclasses.replace(WEIGHTS["amt_s"], sha256=sha(good)))
    code = cli.main(["weights", "verify", "--dir", str(folder), "backbones"])
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.split() and line.split()[0] in WEIGHTS}
    assert rows == {"dino_vitb16": "ok", "amt_s": "corrupt", "vtss_koala": "unpinned", "raft_things": "incomplete",
                    "clip_vitb32": "missing", "languagebind_video": "missing"}
    assert code == 2
    assert sha(other) in out and sha(good) in out  # the corrupt file's actual sha256 and the pin
    assert "1 ok, 1 unpinned, 2 missing, 1 incomplete, 1 corrupt" in out
    assert "narrastream weights download clip_vitb32 raft_things amt_s languagebind_video" in out
    assert cli.main(["weights", "verify", "--dir", str(folder), "dino_vitb16", "vtss_koala"]) == 0


def test_weights_list_names_every_source(capsys):
    assert cli.main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("dino_vitb16", "clip_vitb32", "languagebind_video", "iamflow.dit", "iamflow.llm", "longlive.lora",
                 "wan2.1_t2v_1.3b", "self_forcing.dit"):
        assert name in out
    assert "never re-hosts weights" in out


def test_json_of_a_partial_download_is_reused_only_for_the_same_url(server, tmp_path):
    server.files["/a.pth"] = BLOB
    server.files["/b.pth"] = BLOB[::-1]
    server.cut_after = 1000
    dest = tmp_path / "model.pth"
    with pytest.raises(DownloadError):
        download_url(f"{server.url}/a.pth", dest, retries=0, progress=False)
    assert json.loads((tmp_path / "model.pth.part.json").read_text())["url"] == f"{server.url}/a.pth"
    download_url(f"{server.url}/b.pth", dest, sha256=sha(BLOB[::-1]), progress=False)  # another URL: from zero
    assert "Range" not in server.requests[-1] and dest.read_bytes() == BLOB[::-1]
    assert os.listdir(tmp_path) == ["model.pth"]


def test_iamflow_llm_without_network_is_refused_before_the_hub_client_retries(tmp_path, monkeypatch):
    from narrastream.adapters.streaming_wan import _hub_model_unreachable

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    cfg = {"backend": "local", "model": "org/llm", "local_files_only": False}
    reason = _hub_model_unreachable(cfg)
    assert reason and "not in the Hugging Face cache, and the hub (http://127.0.0.1:" in reason
    assert _hub_model_unreachable({**cfg, "local_files_only": True}) is None  # not to be downloaded anyway
    assert _hub_model_unreachable({**cfg, "model": str(tmp_path)}) is None   # a folder
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _hub_model_unreachable(cfg) is None  # transformers refuses at once by itself
