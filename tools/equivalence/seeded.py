"""Deterministic weights and inputs shared by the fixture tool and the equivalence tests.

A fixture never stores weights. It stores the seed and the list of ``(name, shape, dtype)`` of the
authors' state dict; both sides fill every floating-point tensor with :func:`weight`, which depends
only on ``(seed, name, shape)``. The test therefore rebuilds, bit for bit, the state dict the authors'
model ran with, *in the authors' layout*, and pushes it through our official-layout loader: a wrong key
mapping puts a tensor in the wrong place and the outputs differ.

Integer tensors (index buffers, ``num_batches_tracked``, ``position_ids``) are not random: the fixture
stores their values (see :func:`save_fixture`).

Values are drawn with numpy's PCG64 as float64 uniforms (exact integer arithmetic, the same on every
platform and numpy version that keeps the PCG64 stream), scaled, then cast to float32. No libm call is
involved, so the tensors are bit-identical on any x86 CPU.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

#: bumped when the generator changes (old fixtures then fail loudly instead of comparing garbage)
GENERATOR_VERSION = 1
SQRT3 = math.sqrt(3.0)


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), zlib.crc32(name.encode("utf-8"))])))


def uniform(seed: int, name: str, shape: Iterable[int], low: float, high: float) -> np.ndarray:
    """float32 array of ``shape``, uniform on ``[low, high)``, a function of ``(seed, name, shape)`` only."""
    shape = tuple(int(s) for s in shape)
    u = _rng(seed, name).random(shape) if shape else _rng(seed, name).random()
    return np.asarray(low + (high - low) * u, dtype=np.float32)


def weight_range(name: str, shape: tuple[int, ...], gain: float = 1.0) -> tuple[float, float]:
    """The uniform range of a parameter, by its role (so that random networks stay well-conditioned).

    * BatchNorm running variance: [0.5, 1.5]; running mean: [-0.2, 0.2];
    * any other vector called ``weight`` (LayerNorm/BatchNorm/GroupNorm scale, PReLU slope): [0.8, 1.2];
    * biases and other vectors: [-0.1, 0.1];
    * scalars (``logit_scale``): [2, 3];
    * matrices and kernels: unit-variance uniform scaled by ``1/sqrt(fan_in)``, ``fan_in`` the product
      of all but the first dimension (LeCun-style, so activations keep their scale layer after layer),
      times ``gain`` (a fixture may lower it so that a deep stack's output stays in a useful range).
    """
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "running_var":
        return 0.5, 1.5
    if leaf == "running_mean":
        return -0.2, 0.2
    if len(shape) == 0:
        return 2.0, 3.0
    if len(shape) == 1:
        return (0.8, 1.2) if leaf == "weight" else (-0.1, 0.1)
    fan_in = max(1, int(np.prod(shape[1:])))
    bound = gain * SQRT3 / math.sqrt(fan_in)
    return -bound, bound


def weight(seed: int, name: str, shape: Iterable[int], gain: float = 1.0) -> torch.Tensor:
    """The seeded float32 tensor of parameter ``name`` (see :func:`weight_range`)."""
    shape = tuple(int(s) for s in shape)
    low, high = weight_range(name, shape, gain)
    return torch.from_numpy(uniform(seed, name, shape, low, high).copy())


def state_dict(seed: int, keys: Iterable[tuple[str, Iterable[int], str]], int_buffers: Mapping[str, np.ndarray],
               aliases: Mapping[str, str] | None = None, gain: float = 1.0) -> dict[str, torch.Tensor]:
    """The full authors'-layout state dict: seeded floats, and the stored integer buffers.

    ``aliases`` maps a key to the key whose tensor it shares in the authors' model (one module
    registered under two names, e.g. RAFT's ``norm3`` / ``downsample.1``): both get the same values.
    """
    aliases = dict(aliases or {})
    out: dict[str, torch.Tensor] = {}
    for name, shape, dtype in keys:
        source = aliases.get(name, name)
        if dtype.startswith("torch.float"):
            out[name] = weight(seed, source, shape, gain)
        else:
            if source not in int_buffers:
                raise KeyError(f"integer tensor {name!r} ({dtype}) has no stored value in the fixture")
            value = torch.from_numpy(np.asarray(int_buffers[source]).copy()).to(getattr(torch, dtype.removeprefix("torch.")))
            if tuple(value.shape) != tuple(shape):
                raise ValueError(f"{name}: stored integer buffer has shape {tuple(value.shape)}, expected {tuple(shape)}")
            out[name] = value
    return out


def describe(state: Mapping[str, torch.Tensor]) -> tuple[list[list[Any]], dict[str, np.ndarray], dict[str, str]]:
    """``(keys, int_buffers, aliases)`` of a state dict: ``[name, shape, dtype]`` rows in order, the
    integer values, and the keys that share the storage of an earlier key (see :func:`state_dict`)."""
    keys: list[list[Any]] = []
    ints: dict[str, np.ndarray] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, tuple[int, ...], tuple[int, ...]], str] = {}
    for name, value in state.items():
        keys.append([name, list(value.shape), str(value.dtype)])
        ident = (value.data_ptr(), tuple(value.shape), tuple(value.stride()))
        if value.numel() and ident in seen:
            aliases[name] = seen[ident]
            continue
        seen[ident] = name
        if not value.is_floating_point():
            ints[name] = value.detach().cpu().numpy()
    return keys, ints, aliases


def checksum(array: np.ndarray | torch.Tensor) -> list[float]:
    """``[sum, sum of squares]`` in float64: lets a test prove it regenerated the very same input."""
    a = np.asarray(array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else array, dtype=np.float64)
    return [float(a.sum()), float((a * a).sum())]


# ------------------------------------------------------------------------------------- fixture files
def save_fixture(directory: Path | str, name: str, meta: dict[str, Any], int_buffers: Mapping[str, np.ndarray],
                 outputs: Mapping[str, np.ndarray]) -> tuple[Path, Path]:
    """Write ``name.json`` (meta, key list) and ``name.npz`` (float32 outputs, deduplicated integer buffers)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    refs: dict[str, str] = {}
    by_digest: dict[str, str] = {}
    for key, value in int_buffers.items():
        value = np.array(value, order="C", copy=True)  # (ascontiguousarray would make a 0-d array 1-d)
        small = value.astype(np.int32) if value.size and value.min() >= -2**31 and value.max() < 2**31 else value
        digest = hashlib.sha1(small.tobytes() + str(small.shape).encode()).hexdigest()[:12]
        if digest not in by_digest:
            by_digest[digest] = f"int/{len(by_digest)}"
            arrays[by_digest[digest]] = small
        refs[key] = by_digest[digest]
    for key, value in outputs.items():
        arrays[f"out/{key}"] = np.asarray(value, dtype=np.float32)
    meta = dict(meta, generator_version=GENERATOR_VERSION, int_buffers=refs, outputs=sorted(outputs))
    json_path, npz_path = directory / f"{name}.json", directory / f"{name}.npz"
    json_path.write_text(json.dumps(meta, indent=1) + "\n")
    np.savez_compressed(npz_path, **arrays)
    return json_path, npz_path


def load_fixture(directory: Path | str, name: str) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(meta, int_buffers, outputs)`` of a fixture written by :func:`save_fixture`."""
    directory = Path(directory)
    meta = json.loads((directory / f"{name}.json").read_text())
    if meta.get("generator_version") != GENERATOR_VERSION:
        raise ValueError(f"{name}: fixture made with generator version {meta.get('generator_version')}, "
                         f"this code has {GENERATOR_VERSION}; regenerate it (tools/equivalence/README.md)")
    with np.load(directory / f"{name}.npz") as data:
        arrays = {k: data[k] for k in data.files}
    ints = {key: arrays[ref] for key, ref in meta["int_buffers"].items()}
    outputs = {key: arrays[f"out/{key}"] for key in meta["outputs"]}
    return meta, ints, outputs
