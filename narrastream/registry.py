"""A small generic registry, shared by generators and metrics.

Modelled on lm-evaluation-harness: names and aliases, an error on a clash, a base-class check,
a "did you mean" hint, lazy ``"module:Class"`` targets (so heavy backends import only when chosen),
and third-party plugins discovered through a Python entry-point group.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from importlib.metadata import entry_points
from typing import Callable, Generic, Iterator, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class RegistryError(KeyError):
    """Unknown name or conflicting registration; the message is meant for the user."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Maps public names to classes, importing lazy targets and entry points on first use."""

    def __init__(self, kind: str, base: type, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.base = base
        self.entry_point_group = entry_point_group
        self._targets: dict[str, type | str] = {}
        self._entry_points_loaded = False

    def register(self, *names: str) -> Callable[[type], type]:
        """Class decorator: ``@GENERATORS.register("synthetic")``."""

        def wrap(cls: type) -> type:
            self.add(cls, *names)
            return cls

        return wrap

    def add(self, target: type | str, *names: str) -> None:
        """Register a class, or a lazy ``"package.module:Class"`` string, under one or more names."""
        if not names:
            raise ValueError(f"{self.kind}: register() needs at least one name")
        if isinstance(target, type):
            self._check_base(target, names[0])
        for name in names:
            existing = self._targets.get(name)
            if existing is not None and existing is not target and not _same_target(existing, target):
                raise RegistryError(
                    f"{self.kind} name {name!r} is already registered to {_describe(existing)}; "
                    f"cannot register {_describe(target)}"
                )
            self._targets[name] = target

    def get(self, name: str) -> type:
        """The class registered as ``name``; imports lazy targets; suggests close names when unknown."""
        self._load_entry_points()
        if name not in self._targets:
            close = difflib.get_close_matches(name, self._targets, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise RegistryError(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._targets))}"
            )
        target = self._targets[name]
        if isinstance(target, str):
            module_name, _, attr = target.partition(":")
            cls = getattr(importlib.import_module(module_name), attr)
            self._check_base(cls, name)
            # Every alias that pointed at the same string now points at the class.
            for key, value in list(self._targets.items()):
                if value == target:
                    self._targets[key] = cls
            target = cls
        return target

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._targets)

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return name in self._targets

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _check_base(self, cls: type, name: str) -> None:
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise RegistryError(
                f"{self.kind} {name!r}: {_describe(cls)} is not a subclass of {self.base.__name__}"
            )

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded or not self.entry_point_group:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            if ep.name in self._targets:
                log.warning("%s entry point %r ignored: the name is built in", self.kind, ep.name)
                continue
            # Keep it lazy: the plugin module is imported only when its name is asked for.
            self._targets[ep.name] = ep.value


def _same_target(a: type | str, b: type | str) -> bool:
    return _describe(a) == _describe(b)


def _describe(target: type | str) -> str:
    if isinstance(target, str):
        return target
    return f"{target.__module__}:{target.__qualname__}"
