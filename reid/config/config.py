"""Load a config: defaults <- YAML file (with ``_BASE_`` inheritance) <- ``KEY VALUE`` overrides.

Every key is checked against the defaults (an unknown key names the closest valid one) and
every value against the default's type (``reid.config.values``). The result is frozen.

FastReID 1.4 spellings (``KEY_ALIASES``, e.g. ``INPUT.PADDING.SIZE`` for ``INPUT.PADDING``)
are accepted in files and overrides. Files are merged key by key after the spellings are
resolved, so a base written in one style and a child in the other combine as expected.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

import yaml

from reid.config.defaults import KEY_ALIASES, _C
from reid.config.node import CfgNode
from reid.config.values import coerce
from reid.errors import ReidError
from reid.utils.plugins import import_plugins
from reid.utils.registry import Registry, closest

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
    entries = merge_yaml_file(cfg, path) if path is not None else {}
    merge_overrides(cfg, overrides)
    import_plugins(cfg.PLUGINS)  # before validation: names may refer to what they register
    sources = {key: entry.source for key, entry in entries.items()}
    sources.update((canonical_key(key), "command line") for key in list(overrides)[0::2])
    validate(cfg, sources)
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


def merge_yaml_file(cfg: CfgNode, path: str | Path) -> dict[str, Entry]:
    """Merge the YAML config at ``path`` into ``cfg``; returns what it set, and where."""
    entries = read_entries(path)
    # Each key is checked with the file that set it (a base file's typo names the base file).
    for entry in entries.values():
        set_value(cfg, entry.spelled, entry.value, source=entry.source)
    return entries


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


class Bound(NamedTuple):
    """The finite numbers a key accepts: above ``low`` (included unless ``open_low``) up to
    ``high`` included."""
    low: float
    high: float = math.inf
    open_low: bool = False

    def admits(self, value: float) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        return math.isfinite(value) and above and value <= self.high

    def __str__(self) -> str:
        if self.high == math.inf:
            return f"{'>' if self.open_low else '>='} {self.low:g}"
        return f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}]"


AT_LEAST_ONE = Bound(1)
NON_NEGATIVE = Bound(0)
POSITIVE = Bound(0, open_low=True)
UNIT = Bound(0, 1)

# key -> (accepted numbers, what the value means); every item of a list value is checked.
# A type check passes -1 epochs or a probability of 3; these are values that cannot be right.
RANGES: dict[str, tuple[Bound, str]] = {
    "SOLVER.MAX_EPOCH": (AT_LEAST_ONE, "epochs to train"),
    "SOLVER.IMS_PER_BATCH": (AT_LEAST_ONE, "images per training batch"),
    "TEST.IMS_PER_BATCH": (AT_LEAST_ONE, "images per test batch"),
    "DATALOADER.NUM_INSTANCE": (AT_LEAST_ONE, "images of each identity in a training batch"),
    "DATALOADER.NUM_WORKERS": (NON_NEGATIVE, "loader processes; 0 loads in the main process"),
    "SOLVER.BASE_LR": (POSITIVE, "the learning rate"),
    "SOLVER.BIAS_LR_FACTOR": (POSITIVE, "the biases' multiple of BASE_LR"),
    "SOLVER.HEADS_LR_FACTOR": (POSITIVE, "the heads' multiple of BASE_LR"),
    "SOLVER.MOMENTUM": (UNIT, "SGD momentum"),
    "SOLVER.WEIGHT_DECAY": (NON_NEGATIVE, "weight decay"),
    "SOLVER.WEIGHT_DECAY_BIAS": (NON_NEGATIVE, "weight decay of biases"),
    "SOLVER.WEIGHT_DECAY_NORM": (NON_NEGATIVE, "weight decay of normalisation layers"),
    "SOLVER.GAMMA": (POSITIVE, "the LR multiplier at each of SOLVER.STEPS"),
    # Steps past MAX_EPOCH are allowed (never reached): shortening a recipe keeps its STEPS.
    "SOLVER.STEPS": (POSITIVE, "epochs after which the LR is multiplied by SOLVER.GAMMA"),
    "SOLVER.ETA_MIN_LR": (NON_NEGATIVE, "the LR the cosine schedule ends at"),
    "SOLVER.DELAY_EPOCHS": (NON_NEGATIVE, "epochs at BASE_LR before the cosine decay"),
    "SOLVER.WARMUP_FACTOR": (Bound(0, 1, open_low=True), "the share of the LR warmup starts at"),
    "SOLVER.WARMUP_ITERS": (NON_NEGATIVE, "warmup iterations; 0 = no warmup"),
    "SOLVER.FREEZE_ITERS": (NON_NEGATIVE, "iterations with MODEL.FREEZE_LAYERS frozen"),
    "SOLVER.FREEZE_FC_ITERS": (NON_NEGATIVE, "iterations with the classifier frozen"),
    "SOLVER.CHECKPOINT_PERIOD": (NON_NEGATIVE, "epochs between checkpoints; 0 = final only"),
    "SOLVER.CHECKPOINT_PERIOD_ITERS": (NON_NEGATIVE, "iterations between checkpoints; 0 = off"),
    "SOLVER.CHECKPOINT_PERIOD_MINUTES": (NON_NEGATIVE, "minutes between checkpoints; 0 = off"),
    "SOLVER.CHECKPOINT_KEEP": (NON_NEGATIVE, "periodic checkpoints kept; 0 = all"),
    "SOLVER.LOG_PERIOD": (AT_LEAST_ONE, "iterations between log lines"),
    "TEST.EVAL_PERIOD": (NON_NEGATIVE, "epochs between evaluations in training; 0 = none"),
    "TEST.PRECISE_BN.NUM_ITER": (AT_LEAST_ONE, "batches of precise-BN statistics"),
    "TEST.INDEX.CANDIDATES": (AT_LEAST_ONE, "candidates per query of an approximate evaluation"),
    "INPUT.PADDING": (NON_NEGATIVE, "pixels of padding before the random crop"),
    "MODEL.BACKBONE.FEAT_DIM": (AT_LEAST_ONE, "channels of the backbone's output"),
    "MODEL.HEADS.EMBEDDING_DIM": (NON_NEGATIVE, "embedding size; 0 = no embedding layer"),
    "MODEL.HEADS.NUM_CLASSES": (NON_NEGATIVE, "identities; 0 = those of the training set"),
    "KD.TEMPERATURE": (POSITIVE, "the distillation temperature"),
    "KD.SCALE": (NON_NEGATIVE, "the distillation loss weight"),
    "KD.OVERHAUL_SCALE": (NON_NEGATIVE, "the feature distillation loss weight; 0 = off"),
}

CHOICES = {
    "MODEL.HEADS.NECK_FEAT": ("before", "after"),
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": ("value", "norm"),
    "SOLVER.LOG_CHECKPOINTS": ("final", "all", "none"),
    "DATASETS.CHECK_IMAGES": ("header", "decode", "none"),
    # reid.data.synthetic.difficulty.DIFFICULTIES (a test keeps the two equal)
    "DATASETS.SYNTHETIC.DIFFICULTY": ("standard", "hard"),
}


def registered_choices() -> dict[str, Registry]:
    """Keys naming a registered component: the registry is the one list of valid names, so
    a component a user registers (``reid.utils.plugins``) is accepted like a built-in one."""
    from reid.evaluation.distance import DISTANCE_METRICS
    from reid.modeling.losses.distillation import KD_LOSS_REGISTRY
    from reid.solver.lr_scheduler import SCHEDULE_REGISTRY, WARMUP_REGISTRY
    from reid.solver.optimizer import OPTIMIZER_REGISTRY
    return {"SOLVER.OPT": OPTIMIZER_REGISTRY, "SOLVER.SCHED": SCHEDULE_REGISTRY,
            "SOLVER.WARMUP_METHOD": WARMUP_REGISTRY, "TEST.METRIC": DISTANCE_METRICS,
            "KD.LOSS": KD_LOSS_REGISTRY}


def training_only(dataset: str) -> bool:
    """True for a registered dataset without query and gallery (FastReID's extra sets)."""
    from reid.data.datasets import DATASET_REGISTRY
    return dataset in DATASET_REGISTRY and getattr(DATASET_REGISTRY.get(dataset), "train_only",
                                                   False)


def ranges(keys: Iterable[str]) -> dict[str, tuple[Bound, str]]:
    """RANGES plus the families found by name among ``keys``: every INPUT.*PROB (augmentation
    probabilities, present and future) and every MODEL.LOSSES.*.SCALE (loss weights)."""
    found = dict(RANGES)
    for key in keys:
        if key.startswith("INPUT.") and key.endswith("PROB"):
            found[key] = (UNIT, "a probability")
        elif key.startswith("MODEL.LOSSES.") and key.endswith(".SCALE"):
            found[key] = (NON_NEGATIVE, "a loss weight")
    return found


def validate(cfg: CfgNode, sources: dict[str, str] | None = None) -> None:
    """Checks that a type check alone cannot make: allowed names, ranges, keys that depend on
    each other. ``sources`` (key -> file or "command line") says where a bad value came from."""
    flat = dict(cfg.flatten())

    def wrong(key: str, expected: str) -> ReidError:
        source = (sources or {}).get(key)
        where = f" ({source})" if source else ""
        return ReidError(f"config key {key} must be {expected}; got {flat[key]!r}{where}")

    for key, allowed in CHOICES.items():
        if flat[key] not in allowed:
            raise wrong(key, f"one of {', '.join(allowed)}")
    for key, registry in registered_choices().items():
        if flat[key] not in registry:
            raise wrong(key, f"one of {', '.join(registry.names())}")
    for name in cfg.DATASETS.TESTS:  # caught here, not after the training
        if training_only(name):
            raise wrong("DATASETS.TESTS", f"sets with a query / gallery split; {name} is a "
                        "training-only set (name it in DATASETS.NAMES)")
    for key, (bound, meaning) in ranges(flat).items():
        value = flat[key]
        items = value if isinstance(value, (list, tuple)) else [value]
        if not all(bound.admits(item) for item in items):
            finite = "" if all(map(math.isfinite, items)) else "finite and "
            expected = f"a list of numbers {bound}" if items is value else f"{finite}{bound}"
            raise wrong(key, f"{expected} ({meaning})")
    for key in ("INPUT.SIZE_TRAIN", "INPUT.SIZE_TEST"):
        size = flat[key]
        if len(size) != 2 or min(size) < 1:
            raise wrong(key, "[height, width] in pixels")
    if cfg.TEST.INDEX.TYPE != "exact":
        ranked_whole = [key for key in ("TEST.ROC_ENABLED", "TEST.RERANK.ENABLED") if flat[key]]
        if ranked_whole or cfg.TEST.PROTOCOL not in ("", "market"):
            need = ", ".join(ranked_whole) or f"TEST.PROTOCOL {cfg.TEST.PROTOCOL}"
            raise ReidError(f"config key TEST.INDEX.TYPE {cfg.TEST.INDEX.TYPE!r} (approximate "
                            f"evaluation: each query's top candidates only) cannot serve {need}, "
                            "which rank the whole gallery; set TEST.INDEX.TYPE exact")
    batch, k = cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_INSTANCE
    if batch % k:
        raise ReidError(f"SOLVER.IMS_PER_BATCH ({batch}) must be a multiple of "
                        f"DATALOADER.NUM_INSTANCE ({k}): a batch holds whole identities")


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
