"""Import torchvision on CPU-only torch builds.

PyPI's Linux torchvision wheels are CUDA builds whose native extension (``torchvision/_C.so``) links
against ``libtorch_cuda``. Paired with a CPU-only torch, the extension cannot load and torchvision
0.2x then fails at import, because it registers fake kernels for ops (``torchvision::nms`` ...) that
were never defined. narrastream uses no torchvision native op (RAFT, transforms and models are pure
PyTorch), so when -- and only when -- the extension cannot load, those registrations are skipped.
Everything else in torchvision works; calling a native op raises torch's usual "op does not exist".
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def _native_extension_loads() -> bool:
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return True  # not installed: let the real import raise its own error
    candidates = sorted(Path(spec.origin).parent.glob("_C*.so")) + sorted(Path(spec.origin).parent.glob("_C*.pyd"))
    if not candidates:
        return True
    try:
        torch.ops.load_library(str(candidates[0]))
    except OSError:
        return False
    return True


def ensure_torchvision() -> None:
    """Import torchvision, tolerating a native extension built for another torch flavour."""
    if "torchvision" in sys.modules:
        return
    import torch

    if _native_extension_loads():
        import torchvision  # noqa: F401

        return
    log.debug("torchvision native ops unavailable (CUDA wheel on CPU torch); skipping their registrations")
    library = torch.library
    original_fake, original_autograd = library.register_fake, library.register_autograd

    def register_fake(op, *args, **kwargs):
        if isinstance(op, str) and op.startswith("torchvision::"):
            return (lambda fn: fn) if not args else None
        return original_fake(op, *args, **kwargs)

    def register_autograd(op, *args, **kwargs):
        if isinstance(op, str) and op.startswith("torchvision::"):
            return None
        return original_autograd(op, *args, **kwargs)

    library.register_fake, library.register_autograd = register_fake, register_autograd
    try:
        importlib.import_module("torchvision")
    finally:
        library.register_fake, library.register_autograd = original_fake, original_autograd
