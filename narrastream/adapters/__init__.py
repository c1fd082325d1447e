"""Generator adapters: the interface, the registry and the built-ins.

Third-party packages register generators through the ``narrastream.generators`` entry-point group::

    [project.entry-points."narrastream.generators"]
    mygen = "my_package.adapter:MyGenerator"
"""

from narrastream.adapters.base import (
    AdapterConfigError,
    Capabilities,
    GeneratedVideo,
    GenerationError,
    GenerationRequest,
    Generator,
    PromptSwitching,
    SidecarError,
    read_sidecar,
    sidecar_path,
)
from narrastream.registry import Registry

GENERATORS: Registry[Generator] = Registry("generator", Generator, entry_point_group="narrastream.generators")
# Built-ins are lazy, so choosing one never imports the others' dependencies.
GENERATORS.add("narrastream.adapters.precomputed:PrecomputedGenerator", "precomputed")
GENERATORS.add("narrastream.adapters.command:CommandGenerator", "command")
GENERATORS.add("narrastream.adapters.synthetic:SyntheticGenerator", "synthetic")
GENERATORS.add("narrastream.adapters.streaming_wan:StreamingWanGenerator", "streaming_wan")


def register_generator(*names: str):
    """Decorator for generators defined in user code: ``@register_generator("mygen")``."""
    return GENERATORS.register(*names)


def build_generator(name: str, **kwargs) -> Generator:
    return GENERATORS.get(name)(**kwargs)


__all__ = [
    "AdapterConfigError", "Capabilities", "GENERATORS", "GeneratedVideo", "GenerationError", "GenerationRequest", "Generator",
    "PromptSwitching", "SidecarError", "build_generator", "read_sidecar", "register_generator", "sidecar_path",
]
