"""Load a config: defaults <- YAML file (with ``_BASE_`` inheritance) <- ``KEY VALUE`` overrides.

Every key is checked against the defaults (an unknown key names the closest valid one) and
every value against the default's type (``reid.config.values``). The result is frozen.

FastReID 1.4 spellings (``KEY_ALIASES``, e.g. ``INPUT.PADDING.SIZE`` for ``INPUT.PADDING``)
are accepted in files and overrides. Files are merged key by key after the spellings are
resolved, so a base written in one style and a child in the other combine as expected.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

import yaml

from reid.config.defaults import KEY_ALIASES, _C
from reid.config.node import CfgNode
from reid.config.values import coerce
from reid.errors import ReidError
from reid.utils.registry import closest

logger = logging.getLogger(__name__)

BASE_KEY = "_BASE_"


class Entry(NamedTuple):
    """One key set by a config file: its value, the file and the key as spelled there."""
    value: Any
    source: str
    spelled: str


def get_cfg() -> CfgNode:
    """A mutable copy of the defaults."""
    return _C.clone()


def canonical_key(key: str) -> str:
    """The key of the defaults that ``key`` names (a FastReID 1.4 alias resolved)."""
    return KEY_ALIASES.get(key, key)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> CfgNode:
    """Defaults, then the YAML file at ``path``, then ``overrides`` = [KEY, VALUE, KEY, VALUE ...]."""
    cfg = get_cfg()
    if path is not None:
        merge_yaml_file(cfg, path)
    merge_overrides(cfg, overrides)
    validate(cfg)
    return cfg.freeze()


def read_yaml(path: str | Path) -> dict:
    """The merged mapping of a YAML config and its ``_BASE_`` chain, nested by canonical key
    (aliases resolved; keys not checked against the defaults)."""
    return _unflatten(read_entries(path))


def read_entries(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Entry]:
    """``{canonical dotted key: Entry}`` of a YAML config: its ``_BASE_`` files (relative to
    itself, in order) first, then its own keys, each later one replacing an earlier one."""
    path = Path(path)
    data = _read_mapping(path)
    resolved = path.resolve()
    if resolved in _chain:
        loop = " -> ".join(str(p) for p in _chain + (resolved,))
        raise ReidError(f"config _BASE_ chain loops: {loop} (a file cannot include itself)")
    bases = data.pop(BASE_KEY, None) or []
    entries: dict[str, Entry] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        entries.update(read_entries(path.parent / base, _chain + (resolved,)))
    own: dict[str, Entry] = {}
    for spelled, value in _flatten(data):
        key = canonical_key(spelled)
        if key in own:
            logger.warning("%s sets %s twice (as %s and %s); the later one (%r) wins", path,
                           key, own[key].spelled, spelled, value)
        own[key] = Entry(value, str(path), spelled)
    entries.update(own)
    return entries


def _read_mapping(path: Path) -> dict:
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
    return data


def merge_yaml_file(cfg: CfgNode, path: str | Path) -> CfgNode:
    # Each key is checked with the file that set it (a base file's typo names the base file).
    for entry in read_entries(path).values():
        set_value(cfg, entry.spelled, entry.value, source=entry.source)
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
    """Set dotted ``key`` (or its FastReID 1.4 alias) after checking that it exists and that
    ``value`` has its type."""
    canonical = canonical_key(key)
    valid = dict(cfg.flatten())
    if canonical not in valid:
        hint = closest(key, list(valid) + list(KEY_ALIASES))
        did_you_mean = f"; did you mean {hint}?" if hint else ""
        raise ReidError(f"unknown config key {key} ({source}){did_you_mean}")
    label = key if key == canonical else f"{key} (= {canonical})"
    *parents, leaf = canonical.split(".")
    node = cfg
    for name in parents:
        node = node[name]
    node[leaf] = coerce(canonical, valid[canonical], value, label, source)


def validate(cfg: CfgNode) -> None:
    """Checks across keys that a type check alone cannot make."""
    choices = {
        "TEST.METRIC": ("cosine", "euclidean"),
        "MODEL.HEADS.NECK_FEAT": ("before", "after"),
        "SOLVER.OPT": ("Adam", "SGD", "AdamW"),
        "SOLVER.SCHED": ("MultiStepLR", "CosineAnnealingLR"),
        "SOLVER.WARMUP_METHOD": ("linear", "constant"),
        "KD.LOSS": ("kl", "js"),
        "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": ("value", "norm"),
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


def _flatten(data: dict, prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, name + ".")
        else:
            yield name, value


def _unflatten(entries: dict[str, Entry]) -> dict:
    nested: dict = {}
    for key, entry in entries.items():
        *parents, leaf = key.split(".")
        node = nested
        for depth, name in enumerate(parents):
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                where = ".".join(parents[:depth + 1])
                raise ReidError(f"config key {entry.spelled} ({entry.source}) cannot be set: "
                                f"{where} holds a value, not a group of keys")
        if isinstance(node.get(leaf), dict):
            raise ReidError(f"config key {entry.spelled} ({entry.source}) cannot be set: "
                            f"{key} is a group of keys")
        node[leaf] = entry.value
    return nested
