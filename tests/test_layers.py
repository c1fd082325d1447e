"""The package's layering (docs: architecture): a lower layer never imports a higher one.

Generators (adapters/, streaming/, iamflow/) never import the evaluator's harness; results/, video/
and data/ never import adapters/. Read from the source with ``ast``, so an import inside a function
counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "narrastream"

RULES = [
    (("adapters", "streaming", "iamflow"), "narrastream.harness"),
    (("results", "video", "data"), "narrastream.adapters"),
]


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("packages, forbidden", RULES, ids=["generators-not-harness", "lower-not-adapters"])
def test_no_lower_layer_imports_a_higher_one(packages, forbidden):
    offences = [f"{path.relative_to(PACKAGE.parent)}:{line}: imports {name}"
                for package in packages for path in sorted((PACKAGE / package).rglob("*.py"))
                for line, name in _imports(path) if name == forbidden or name.startswith(forbidden + ".")]
    assert not offences, "\n".join(offences)


def test_the_rule_sees_an_offence(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from narrastream.adapters.base import Generator\n")
    assert _imports(bad) == [(2, "narrastream.adapters.base")]
