"""Name -> object registries (datasets, backbones, heads, losses, meta-architectures, samplers).

A user adds a component by decorating it::

    @BACKBONE_REGISTRY.register()
    def build_my_backbone(cfg): ...
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Iterable

from reid.errors import ReidError
from reid.utils.plugins import load_entry_points


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``name`` (case-insensitive), or None when nothing is close."""
    candidates = list(candidates)
    lowered = {c.lower(): c for c in candidates}
    match = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.5)
    return lowered[match[0]] if match else None


class Registry:
    def __init__(self, name: str) -> None:
        self.name = name
        self._objects: dict[str, Any] = {}
        self._aliases: dict[str, str] = {}

    def register(self, obj: Any = None, *, name: str | None = None,
                 aliases: Iterable[str] = ()) -> Any:
        """Register ``obj`` under ``name`` (default ``obj.__name__``); usable as a decorator."""
        def add(o: Any) -> Any:
            key = name or o.__name__
            if key in self._objects:
                raise KeyError(f"{key!r} is already registered in the {self.name} registry")
            self._objects[key] = o
            for alias in aliases:
                self._aliases[alias] = key
            return o

        if obj is None:
            return add
        return add(obj)

    def get(self, name: str) -> Any:
        key = self._aliases.get(name, name)
        if key in self._objects:
            return self._objects[key]
        if load_entry_points():  # an installed plugin may register it
            return self.get(name)
        hint = closest(name, list(self._objects) + list(self._aliases))
        did_you_mean = f"; did you mean {hint!r}?" if hint else ""
        raise ReidError(f"unknown {self.name} {name!r}{did_you_mean} "
                        f"(registered: {', '.join(sorted(self._objects))})")

    def __contains__(self, name: str) -> bool:
        if self._aliases.get(name, name) not in self._objects:
            load_entry_points()
        return self._aliases.get(name, name) in self._objects

    def names(self, aliases: bool = False) -> list[str]:
        """The registered names, sorted; with ``aliases``, their aliases too."""
        return sorted([*self._objects, *(self._aliases if aliases else ())])

    def canonical(self, name: str) -> str:
        """The registered name ``name`` stands for (itself unless it is an alias)."""
        return self._aliases.get(name, name)

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        builder: Callable[..., Any] = self.get(name)
        return builder(*args, **kwargs)
