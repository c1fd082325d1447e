"""Vision backbones of the protocol metrics: a weights registry, loaders, and a per-process provider.

Importing this package is cheap: timm and open_clip are imported only when a backbone is built
(``narrastream.metrics.backbones.dino`` / ``.clip``), torchvision only when RAFT is (``.raft``).
"""

from narrastream.metrics.backbones.execution import PRECISIONS, Execution, ExecutionStats
from narrastream.metrics.backbones.provider import BACKBONES, BackboneProvider, BackboneSpec, ImageEmbedder
from narrastream.metrics.backbones.raft import FlowEstimator
from narrastream.metrics.backbones.weights import (
    WEIGHTS,
    ChecksumError,
    FolderSpec,
    WeightSpec,
    WeightsNotFoundError,
    file_identity,
    resolve_folder,
    resolve_weights,
    resolved_weights,
    sha256_file,
)

__all__ = [
    "BACKBONES",
    "WEIGHTS",
    "BackboneProvider",
    "BackboneSpec",
    "ChecksumError",
    "Execution",
    "ExecutionStats",
    "FlowEstimator",
    "FolderSpec",
    "ImageEmbedder",
    "PRECISIONS",
    "WeightSpec",
    "WeightsNotFoundError",
    "file_identity",
    "resolve_folder",
    "resolve_weights",
    "resolved_weights",
    "sha256_file",
]
