"""Load a config: defaults <- YAML file (with ``_BASE_`` inheritance) <- ``KEY VALUE`` overrides.

Every key is checked against the defaults (an unknown key names the closest valid one) and
every value against the default's type. The result is frozen.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from reid.config.defaults import KEY_ALIASES, _C
from reid.config.node import CfgNode
from reid.errors import ReidError
from reid.utils.registry import closest

BASE_KEY = "_BASE_"


def get_cfg() -> CfgNode:
    """A mutable copy of the defaults."""
    return _C.clone()


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> CfgNode:
    """Defaults, then the YAML file at ``path``, then ``overrides`` = [KEY, VALUE, KEY, VALUE ...]."""
    cfg = get_cfg()
    if path is not None:
        merge_yaml_file(cfg, path)
    merge_overrides(cfg, overrides)
    validate(cfg)
    return cfg.freeze()


def read_yaml(path: str | Path) -> dict:
    """Read a YAML config and the chain of ``_BASE_`` files it names (relative to itself)."""
    path = Path(path)
    if not path.is_file():
        raise ReidError(f"config file not found: {path} (expected a YAML file)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ReidError(f"invalid YAML in {path}{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ReidError(f"config file {path} must hold a mapping of keys, got {type(data).__name__}")
    bases = data.pop(BASE_KEY, None) or []
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        _deep_update(merged, read_yaml(path.parent / base))
    _deep_update(merged, data)
    return merged


def merge_yaml_file(cfg: CfgNode, path: str | Path) -> CfgNode:
    for key, value in _flatten(read_yaml(path)):
        set_value(cfg, key, value, source=str(path))
    return cfg


def merge_overrides(cfg: CfgNode, overrides: Sequence[str]) -> CfgNode:
    overrides = list(overrides)
    if len(overrides) % 2:
        raise ReidError(f"overrides must be KEY VALUE pairs; {overrides[-1]!r} has no value")
    for key, text in zip(overrides[0::2], overrides[1::2]):
        # Raw text: _coerce parses it only when the key does not hold a string.
        set_value(cfg, key, text, source="command line")
    return cfg


def set_value(cfg: CfgNode, key: str, value: Any, source: str) -> None:
    """Set dotted ``key`` after checking that it exists and that ``value`` has its type."""
    key = KEY_ALIASES.get(key, key)
    valid = dict(cfg.flatten())
    if key not in valid:
        hint = closest(key, valid)
        did_you_mean = f"; did you mean {hint}?" if hint else ""
        raise ReidError(f"unknown config key {key} ({source}){did_you_mean}")
    *parents, leaf = key.split(".")
    node = cfg
    for name in parents:
        node = node[name]
    node[leaf] = _coerce(key, valid[key], value, source)


def validate(cfg: CfgNode) -> None:
    """Checks across keys that a type check alone cannot make."""
    choices = {
        "TEST.METRIC": ("cosine", "euclidean"),
        "MODEL.HEADS.NECK_FEAT": ("before", "after"),
        "SOLVER.OPT": ("Adam", "SGD", "AdamW"),
        "SOLVER.SCHED": ("MultiStepLR", "CosineAnnealingLR"),
        "SOLVER.WARMUP_METHOD": ("linear", "constant"),
        "KD.LOSS": ("kl", "js"),
    }
    flat = dict(cfg.flatten())
    for key, allowed in choices.items():
        if flat[key] not in allowed:
            raise ReidError(f"config key {key} must be one of {', '.join(allowed)}; "
                            f"got {flat[key]!r}")
    batch, k = cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_INSTANCE
    if k < 1 or batch < k or batch % k:
        raise ReidError(f"SOLVER.IMS_PER_BATCH ({batch}) must be a positive multiple of "
                        f"DATALOADER.NUM_INSTANCE ({k})")
    for key in ("INPUT.SIZE_TRAIN", "INPUT.SIZE_TEST"):
        size = flat[key]
        if len(size) != 2 or min(size) < 1:
            raise ReidError(f"config key {key} must be [height, width] in pixels; got {size}")


def save_config(cfg: CfgNode, path: str | Path) -> Path:
    from reid.utils.io import atomic_write_text
    return atomic_write_text(path, cfg.dump())


def _coerce(key: str, default: Any, value: Any, source: str) -> Any:
    def wrong(expected: str) -> ReidError:
        return ReidError(f"config key {key} expects {expected}, got {value!r} "
                         f"({type(value).__name__}) ({source})")

    if isinstance(default, (list, tuple)):
        if isinstance(value, str):
            parsed = _parse_literal(value)
            value = parsed if isinstance(parsed, (list, tuple)) else [value]
        if not isinstance(value, (list, tuple)):
            raise wrong("a list")
        if default and all(_is_number(d) for d in default) and not all(_is_number(v) for v in value):
            raise wrong("a list of numbers")
        return type(default)(value)
    if isinstance(value, str) and not isinstance(default, str):
        value = _parse_literal(value)
        if isinstance(default, float) and isinstance(value, str):
            value = _parse_float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if isinstance(default, int):
        if not isinstance(value, int) or isinstance(value, bool):
            raise wrong("an integer")
        return value
    if isinstance(default, float):
        if not _is_number(value):
            raise wrong("a number")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise wrong("a string")
        return value
    return value


def _parse_float(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_literal(text: Any) -> Any:
    """Parse a YAML literal (``"[10, 20]"`` -> [10, 20]); FastReID's ``("A",)`` tuples too."""
    if not isinstance(text, str):
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    if isinstance(value, str) and value.startswith("("):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
    return value


def _flatten(data: dict, prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, name + ".")
        else:
            yield name, value


def _deep_update(target: dict, source: dict) -> dict:
    for key, value in source.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value
    return target
