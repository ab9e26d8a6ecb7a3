"""A small attribute-access config tree (yacs-like) that can be frozen."""
from __future__ import annotations

import copy
from typing import Any, Iterator

import yaml


class CfgNode(dict):
    """A dict whose keys are also attributes. ``freeze()`` makes the whole tree read-only."""

    _FROZEN = "__frozen__"

    def __init__(self, init: dict | None = None) -> None:
        super().__init__()
        object.__setattr__(self, CfgNode._FROZEN, False)
        for key, value in (init or {}).items():
            self[key] = CfgNode(value) if isinstance(value, dict) else value

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __setitem__(self, key: str, value: Any) -> None:
        self._check_mutable(f"cannot set {key!r} = {value!r}")
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self._check_mutable(f"cannot delete {key!r}")
        super().__delitem__(key)

    def _check_mutable(self, what: str) -> None:
        if self.is_frozen():
            raise AttributeError(f"config is frozen; {what} (use cfg.clone() and change the copy)")

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def pop(self, key: str, *default: Any) -> Any:
        self._check_mutable(f"cannot pop {key!r}")
        return super().pop(key, *default)

    def popitem(self) -> tuple:
        self._check_mutable("cannot popitem")
        return super().popitem()

    def clear(self) -> None:
        self._check_mutable("cannot clear")
        super().clear()

    def __deepcopy__(self, memo: dict) -> "CfgNode":
        return CfgNode({k: copy.deepcopy(v, memo) for k, v in self.items()})

    def __reduce__(self):
        # Pickle as (plain items, frozen flag): DataLoader workers and mp.spawn need it.
        return _restore, (dict(self.items()), self.is_frozen())

    def is_frozen(self) -> bool:
        return object.__getattribute__(self, CfgNode._FROZEN)

    def _set_frozen(self, frozen: bool) -> "CfgNode":
        object.__setattr__(self, CfgNode._FROZEN, frozen)
        for value in self.values():
            if isinstance(value, CfgNode):
                value._set_frozen(frozen)
        return self

    def freeze(self) -> "CfgNode":
        return self._set_frozen(True)

    def defrost(self) -> "CfgNode":
        return self._set_frozen(False)

    def clone(self) -> "CfgNode":
        """A mutable deep copy."""
        return copy.deepcopy(self)

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, CfgNode) else _plain(v) for k, v in self.items()}

    def flatten(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        """Yield ``(dotted.key, value)`` for every leaf."""
        for key, value in self.items():
            name = f"{prefix}{key}"
            if isinstance(value, CfgNode):
                yield from value.flatten(name + ".")
            else:
                yield name, value

    def dump(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=True, default_flow_style=None)


def _restore(items: dict, frozen: bool) -> CfgNode:
    node = CfgNode()
    for key, value in items.items():
        dict.__setitem__(node, key, value)
    object.__setattr__(node, CfgNode._FROZEN, frozen)
    return node


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
