"""narrastream: benchmark suite for narrative streaming video generation.

The package is split by stage (see docs/architecture.md): ``data`` loads the scripts, ``adapters``
generate videos, ``video`` decodes and segments them, ``metrics`` score them, ``results`` stores
records and ``report`` builds leaderboards. Importing the package itself stays cheap (no torch).
"""

__version__ = "0.1.0"
PROTOCOL_FAMILY = "narrastream"
