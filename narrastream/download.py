"""Fetching published files: plain URLs (resumable, verified) and Hugging Face hub ids.

Hub ids go through ``huggingface_hub`` (its cache, progress bars, retries). The official DINO and
CLIP checkpoints live at plain URLs, for which :func:`download_url` keeps ``<dest>.part``, resumes
it with an HTTP ``Range`` request on the next attempt, shows a progress bar, and moves the file to
its final name only once its sha256 matches the pinned value (``torch.hub.download_url_to_file``
neither resumes nor keeps a partial file).

Nothing here retries a machine that has no network: a connection that cannot be opened is a
:class:`DownloadError` at once, and hub downloads are preceded by one short connection probe,
because ``huggingface_hub`` would otherwise retry for about 20 s before giving up.
``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``) turns every download off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

#: variables that turn downloads off, as huggingface_hub and transformers read them
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
#: a base URL serving a weights folder (``<mirror>/<file name>``), used instead of the publishers' URLs
MIRROR_ENV = "NARRASTREAM_WEIGHTS_MIRROR"
_CHUNK = 1 << 20
_TRUE = frozenset({"1", "on", "yes", "true"})


class DownloadError(OSError):
    """A file could not be fetched (no network, an HTTP error, an interrupted transfer); the message says
    what was tried and whether a partial file was kept for the next attempt."""


class ChecksumError(ValueError):
    """A file's sha256 is not the expected one (a truncated, corrupted or different file)."""

    def __init__(self, path: Path | str, expected: str, actual: str, detail: str = "") -> None:
        super().__init__(f"{path}: sha256 {actual} does not match the expected {expected}{detail}")
        self.path, self.expected, self.actual = Path(path), expected, actual


class _Interrupted(Exception):
    """The body of a response stopped before its end (the partial file stays)."""


def offline_reason() -> str | None:
    """``"HF_HUB_OFFLINE=1 is set"`` when downloads are turned off by the environment, else None.

    Read at each call (not at import, as huggingface_hub's constants are), so a test or a launcher
    may change it within one process."""
    for var in OFFLINE_VARS:
        value = os.environ.get(var, "")
        if value.strip().lower() in _TRUE:
            return f"{var}={value} is set"
    return None


def mirror_url(relative: str) -> str | None:
    """``$NARRASTREAM_WEIGHTS_MIRROR/<relative>`` when a mirror is set (a folder laid out like
    ``$NARRASTREAM_WEIGHTS``, served over HTTP inside your network), else None."""
    base = os.environ.get(MIRROR_ENV, "").strip()
    if not base:
        return None
    return base.rstrip("/") + "/" + relative.lstrip("/")


# ------------------------------------------------------------------------------------------- URLs


def download_url(url: str, dest: Path | str, *, sha256: str | None = None, retries: int = 2,
                 timeout: tuple[float, float] = (10.0, 60.0), progress: bool = True, desc: str | None = None,
                 headers: dict[str, str] | None = None) -> str:
    """Fetch ``url`` to ``dest`` and return the file's sha256.

    The bytes go to ``<dest>.part`` (with ``<dest>.part.json``: the URL and the server's validator);
    an interrupted transfer leaves them, and the next attempt -- in this call up to ``retries`` times
    while bytes keep arriving, or a later call -- asks only for the rest (``Range: bytes=N-``, with
    ``If-Range`` so that a changed file restarts from zero). A connection that cannot be opened fails
    at once. With ``sha256`` given, a file that does not match is deleted and :class:`ChecksumError`
    raised; only a verified (or unpinned) file is moved to ``dest``.

    Raises:
        DownloadError: the server could not be reached, answered an error, or the transfer broke.
        ChecksumError: the downloaded file is not the expected one (nothing is kept).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    meta = dest.with_name(dest.name + ".part.json")
    label = desc or dest.name
    if urlsplit(url).scheme == "file":  # a mirror on a shared disk: copied, then verified the same way
        digest = _copy_local(url, part, progress=progress, desc=label)
    else:
        digest = _download_http(url, part, meta, retries=retries, timeout=timeout, progress=progress, desc=label,
                                headers=headers or {})
    expected = sha256.lower() if sha256 else None
    if expected and digest != expected:
        part.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
        raise ChecksumError(url, expected, digest, detail=f" (not kept; {dest} was not written)")
    os.replace(part, dest)
    meta.unlink(missing_ok=True)
    log.info("downloaded %s to %s (sha256 %s)", url, dest, digest)
    return digest


def _download_http(url: str, part: Path, meta: Path, *, retries: int, timeout: tuple[float, float], progress: bool,
                   desc: str, headers: dict[str, str]) -> str:
    """Requests until the whole file is in ``part``: resumed while bytes keep arriving (``retries`` times)."""
    while True:
        before = _resumable_size(part, meta, url)
        try:
            digest = _fetch(url, part, meta, before, timeout=timeout, progress=progress, desc=desc, headers=headers)
        except _Interrupted as exc:
            now = part.stat().st_size if part.is_file() else 0
            if now > before and retries > 0:  # bytes arrived: resume at once
                retries -= 1
                log.warning("%s: transfer interrupted at %d bytes (%s); resuming", url, now, exc)
                continue
            raise DownloadError(f"{url}: the transfer was interrupted after {now} bytes ({exc}); {part} is "
                                "kept and the next attempt resumes it") from None
        if digest is not None:
            return digest


def _copy_local(url: str, part: Path, *, progress: bool, desc: str) -> str:
    from urllib.request import url2pathname

    from tqdm.auto import tqdm

    source = Path(url2pathname(urlsplit(url).path))
    if not source.is_file():
        raise DownloadError(f"{url}: no such file")
    hasher = hashlib.sha256()
    with source.open("rb") as src, part.open("wb") as out, \
            tqdm(total=source.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                 disable=not progress) as bar:
        while chunk := src.read(_CHUNK):
            out.write(chunk)
            hasher.update(chunk)
            bar.update(len(chunk))
    return hasher.hexdigest()


def _resumable_size(part: Path, meta: Path, url: str) -> int:
    """Bytes of a partial download of the same URL to resume from (0 after discarding any other)."""
    if not part.is_file():
        meta.unlink(missing_ok=True)
        return 0
    try:
        same = json.loads(meta.read_text()).get("url") == url
    except (OSError, ValueError):
        same = False
    if not same:
        part.unlink()
        meta.unlink(missing_ok=True)
        return 0
    return part.stat().st_size


def _fetch(url: str, part: Path, meta: Path, offset: int, *, timeout: tuple[float, float], progress: bool,
           desc: str, headers: dict[str, str]) -> str | None:
    """One request: append to (or restart) the partial file; the sha256 of the whole file, or None to
    ask again from zero (the server refused the range)."""
    import requests
    import urllib3
    from tqdm.auto import tqdm

    from narrastream import __version__

    request_headers = {"User-Agent": f"narrastream/{__version__}", "Accept-Encoding": "identity", **headers}
    if offset:
        request_headers["Range"] = f"bytes={offset}-"
        validator = _read_meta(meta).get("validator")
        if validator:
            request_headers["If-Range"] = validator
    try:
        response = requests.get(url, headers=request_headers, stream=True, timeout=timeout)
    except requests.RequestException as exc:  # no retry: an unreachable host stays unreachable
        raise DownloadError(f"could not reach {url}: {exc}") from None
    with response:
        if response.status_code == 416 and offset:  # the range is past the end: start again
            part.unlink(missing_ok=True)
            meta.unlink(missing_ok=True)
            return None
        if response.status_code not in (200, 206):
            raise DownloadError(f"{url}: HTTP {response.status_code} {response.reason}")
        length = _int(response.headers.get("Content-Length"))
        if response.status_code == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                meta.unlink(missing_ok=True)
                return None
        else:  # the whole file: the server ignores ranges, or the file changed since the partial one
            if offset:
                log.info("%s: the server sent the whole file; restarting the download", url)
            offset, total = 0, length
        hasher = hashlib.sha256()
        if offset:
            _hash_into(hasher, part)
        meta.write_text(json.dumps({"url": url, "size": total,
                                    "validator": response.headers.get("ETag") or response.headers.get("Last-Modified")}))
        received = offset
        with part.open("ab" if offset else "wb") as out, \
                tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                     disable=not progress, leave=True) as bar:
            try:
                for chunk in _body(response):
                    out.write(chunk)
                    hasher.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                raise _Interrupted(type(exc).__name__) from None
        if total is not None and received != total:
            raise _Interrupted(f"received {received} of {total} bytes")
        return hasher.hexdigest()


def _body(response: Any) -> Iterator[bytes]:
    """The body as it arrives: ``read1`` hands over every byte received before a connection drops (a
    fixed-size read would discard its partly filled buffer), so a resumed download loses nothing."""
    read1 = getattr(response.raw, "read1", None)  # urllib3 >= 2
    if read1 is None:
        yield from response.iter_content(1 << 16)
        return
    while chunk := read1(_CHUNK):
        yield chunk


def _read_meta(meta: Path) -> dict[str, Any]:
    try:
        return json.loads(meta.read_text())
    except (OSError, ValueError):
        return {}


def _hash_into(hasher: Any, path: Path) -> None:
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``(start, total)`` of ``Content-Range: bytes START-END/TOTAL`` (None where absent or ``*``)."""
    if not value or not value.startswith("bytes "):
        return None, None
    span, _, total = value[6:].partition("/")
    return _int(span.partition("-")[0]), _int(total)


# --------------------------------------------------------------------------------------- network


_probes: dict[tuple[str, int], str | None] = {}
_probe_lock = threading.Lock()


def unreachable(url: str, timeout: float = 5.0) -> str | None:
    """Why ``url``'s host (or the proxy the environment names for it) cannot be reached, or None
    when a TCP connection opens. One probe per host and process: a machine without network learns
    it in milliseconds (a name that does not resolve) or ``timeout`` seconds, not after retries."""
    import requests.utils

    proxy = requests.utils.select_proxy(url, requests.utils.get_environ_proxies(url))
    target = urlsplit(proxy if proxy else url)
    host = target.hostname or ""
    port = target.port or (443 if target.scheme == "https" else 80)
    with _probe_lock:
        if (host, port) in _probes:
            return _probes[(host, port)]
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        reason = None
    except OSError as exc:
        reason = f"cannot connect to {host}:{port}" + (" (the proxy)" if proxy else "") + f": {exc}"
    with _probe_lock:
        _probes[(host, port)] = reason
    return reason


# ----------------------------------------------------------------------------------------- hub


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def _hub_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import HfHubHTTPError

    return (HfHubHTTPError, OSError, ValueError)


def _check_can_download(what: str) -> None:
    reason = offline_reason()
    if reason:
        raise DownloadError(f"{what}: not downloaded, {reason}")
    endpoint = hub_endpoint()
    reason = unreachable(endpoint)
    if reason:
        raise DownloadError(f"{what}: the hub ({endpoint}) is out of reach: {reason}")


def hub_file(repo: str, filename: str, *, allow_download: bool, local_dir: Path | None = None) -> Path | None:
    """A file of a hub repository: from the Hugging Face cache, else (``allow_download``) downloaded
    with ``hf_hub_download`` (into the cache, or ``local_dir``). None when it is not cached and
    downloads are off.

    Raises:
        DownloadError: downloads are allowed but the file could not be fetched (offline, no network,
            no such repository or file).
    """
    from huggingface_hub import hf_hub_download

    if local_dir is None:
        try:
            return Path(hf_hub_download(repo_id=repo, filename=filename, local_files_only=True))
        except _hub_errors() as exc:
            log.debug("hf://%s/%s: not in the Hugging Face cache (%s)", repo, filename, exc)
    if not allow_download:
        return None
    what = f"hf://{repo}/{filename}"
    _check_can_download(what)
    log.info("downloading %s", what)
    try:
        return Path(hf_hub_download(repo_id=repo, filename=filename,
                                    local_dir=str(local_dir) if local_dir is not None else None))
    except _hub_errors() as exc:
        raise DownloadError(f"{what}: {type(exc).__name__}: {exc}") from None


def hub_snapshot(repo: str, *, allow_patterns: Iterable[str] | None, allow_download: bool,
                 local_dir: Path | None = None, cache_dir: Path | None = None) -> Path | None:
    """A repository's files (``allow_patterns``): the cached snapshot (in ``cache_dir``, default the
    Hugging Face cache), else (``allow_download``) a ``snapshot_download`` (into that cache, or into
    ``local_dir``). None when not cached and downloads are off. Callers check that the folder holds
    what they need (a cached snapshot may be partial)."""
    from huggingface_hub import snapshot_download

    patterns = list(allow_patterns) if allow_patterns is not None else None
    cache = str(cache_dir) if cache_dir is not None else None
    if local_dir is None:
        try:
            return Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=True, cache_dir=cache))
        except _hub_errors() as exc:
            log.debug("hf://%s: not in the Hugging Face cache (%s)", repo, exc)
    if not allow_download:
        return None
    what = f"hf://{repo}"
    _check_can_download(what)
    log.info("downloading %s (%s)", what, ", ".join(patterns or ["all files"]))
    try:
        return Path(snapshot_download(repo, allow_patterns=patterns, cache_dir=cache,
                                      local_dir=str(local_dir) if local_dir is not None else None))
    except _hub_errors() as exc:
        raise DownloadError(f"{what}: {type(exc).__name__}: {exc}") from None


def hub_lfs_sha256(path: Path | str) -> str | None:
    """The sha256 the hub states for a cached file: the Hugging Face cache names each large (LFS)
    file's blob by its sha256, so a snapshot link ``.../blobs/<sha256>`` carries it. None otherwise."""
    path = Path(path)
    if not path.is_symlink():
        return None
    name = path.resolve().name
    if len(name) == 64 and all(c in "0123456789abcdef" for c in name):
        return name
    return None
