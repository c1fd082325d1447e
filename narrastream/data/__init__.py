"""Benchmark scripts: loading, validation, taxonomy, export."""

from narrastream.data.loader import (
    Benchmark,
    DataSourceError,
    ScriptFileError,
    ScriptLimits,
    load_benchmark,
    parse_script_file,
    select_scripts,
    sha256_file,
)
from narrastream.data.script import Script
from narrastream.data.taxonomy import Taxonomy, load_taxonomy

__all__ = [
    "Benchmark", "DataSourceError", "Script", "ScriptFileError", "ScriptLimits", "Taxonomy", "load_benchmark",
    "load_taxonomy", "parse_script_file", "select_scripts", "sha256_file",
]
