"""The generic registry: clashes, hints, lazy targets, third-party entry points."""

from __future__ import annotations

import sys
import textwrap
from importlib.metadata import EntryPoint

import pytest

from narrastream import registry as registry_module
from narrastream.adapters import GENERATORS, Generator, build_generator
from narrastream.registry import Registry, RegistryError


class Base:
    pass


def test_register_get_alias_and_clash():
    reg: Registry[Base] = Registry("thing", Base)

    @reg.register("alpha", "a")
    class Alpha(Base):
        pass

    assert reg.get("alpha") is Alpha and reg.get("a") is Alpha
    with pytest.raises(RegistryError, match="already registered"):
        @reg.register("alpha")
        class Other(Base):
            pass


def test_base_class_check_and_did_you_mean():
    reg: Registry[Base] = Registry("thing", Base)
    with pytest.raises(RegistryError, match="not a subclass"):
        reg.add(int, "number")
    reg.add(type("Synthetic", (Base,), {}), "synthetic")
    with pytest.raises(RegistryError, match="Did you mean 'synthetic'"):
        reg.get("synthetik")


def test_builtin_generators_are_lazy():
    assert {"precomputed", "command", "synthetic"} <= set(GENERATORS.names())
    with pytest.raises(RegistryError, match="Did you mean 'precomputed'"):
        GENERATORS.get("precompute")


def test_third_party_generator_through_entry_point(tmp_path, monkeypatch):
    package = tmp_path / "thirdparty_gen"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent("""
        from narrastream.adapters import Generator

        class ThirdParty(Generator):
            def __init__(self, quality=1):
                self.quality = quality

            def generate(self, request):
                raise NotImplementedError
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = EntryPoint(name="thirdparty", value="thirdparty_gen:ThirdParty", group="narrastream.generators")

    def fake_entry_points(group=None):
        return [ep] if group == "narrastream.generators" else []

    monkeypatch.setattr(registry_module, "entry_points", fake_entry_points)
    reg: Registry[Generator] = Registry("generator", Generator, entry_point_group="narrastream.generators")
    reg.add("narrastream.adapters.synthetic:SyntheticGenerator", "synthetic")
    assert "thirdparty" in reg.names()
    assert "thirdparty_gen" not in sys.modules  # lazy until asked for
    cls = reg.get("thirdparty")
    assert cls.__name__ == "ThirdParty" and cls(quality=3).quality == 3


def test_build_generator_passes_config_kwargs(tmp_path):
    gen = build_generator("precomputed", folder=str(tmp_path), layout="official")
    assert gen.layout == "official"
