"""Sweep grids: a YAML file of config keys -> lists of values, and/or explicit override sets,
expanded into the points of a sweep (``reid sweep``, ``flows/sweep.py``).

```yaml
grid:                        # every combination (the cartesian product), in file order
  SOLVER.BASE_LR: [0.00035, 0.0007]
  SOLVER.MAX_EPOCH: [6, 12]
points:                      # and/or these override sets, each one point
  - {MODEL.BACKBONE.DEPTH: 34x}
```

Each point is a list of ``KEY VALUE`` overrides applied over the recipe (and the command
line's), checked like the command line's, with its own OUTPUT_DIR
(``<recipe OUTPUT_DIR>/sweep/<point name>``) unless the point sets one: points never share
outputs, and running the same sweep again finds every point's outputs where it left them.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from reid.config import CfgNode, load_config
from reid.errors import ReidError

SECTIONS = ("grid", "points")


@dataclass(frozen=True)
class Point:
    name: str                    # e.g. "SOLVER.BASE_LR=0.0007,SOLVER.MAX_EPOCH=6"
    values: dict                 # {key: value} of this point
    overrides: tuple[str, ...]   # KEY VALUE ... as the command line takes them


def _text(value) -> str:
    """A value as an override's text: YAML for lists, plain for scalars."""
    if isinstance(value, (list, tuple)):
        return yaml.safe_dump(list(value), default_flow_style=True).strip()
    return str(value)


def point_name(values: dict) -> str:
    return ",".join(f"{key}={_text(value)}" for key, value in values.items())


def _safe(name: str) -> str:
    """A point name as a folder name."""
    return re.sub(r"[^A-Za-z0-9._=,-]+", "_", name)[:200] or "default"


def read_grid(path: str | Path) -> list[dict]:
    """The points of grid file ``path`` as ``{key: value}`` dicts, product first."""
    path = Path(path)
    if not path.is_file():
        raise ReidError(f"--grid {path} does not exist (expected a YAML file with 'grid:' "
                        "and/or 'points:'; see params/sweeps/)")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ReidError(f"--grid {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(spec, dict) or not spec or set(spec) - set(SECTIONS):
        raise ReidError(f"--grid {path} must be a mapping with 'grid:' (keys -> lists) and/or "
                        f"'points:' (a list of override sets); found {_keys(spec)}")
    return _product(spec.get("grid") or {}, path) + _explicit(spec.get("points") or [], path)


def _keys(spec) -> str:
    return ", ".join(map(str, spec)) if isinstance(spec, dict) else type(spec).__name__


def _product(grid, path: Path) -> list[dict]:
    if not isinstance(grid, dict):
        raise ReidError(f"--grid {path}: 'grid' must map config keys to lists of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ReidError(f"--grid {path}: grid key {key} must list at least one value "
                            f"(got {values!r})")
    if not grid:
        return []
    return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]


def _explicit(points, path: Path) -> list[dict]:
    if not isinstance(points, list) or not all(isinstance(p, dict) and p for p in points):
        raise ReidError(f"--grid {path}: 'points' must be a list of non-empty mappings "
                        "(config key -> value)")
    return [dict(p) for p in points]


def expand(recipe: str | Path, grid: str | Path, overrides: list[str] = ()) -> list[Point]:
    """The sweep's points over ``recipe`` (+ ``overrides``), each checked by loading its
    config: a bad key or value is refused before anything runs, naming its point."""
    points = read_grid(grid)
    if not points:
        raise ReidError(f"--grid {grid} names no point (empty 'grid' and 'points')")
    base = load_config(recipe, list(overrides))
    out, seen = [], set()
    for values in points:
        name = point_name(values)
        if name in seen:
            raise ReidError(f"--grid {grid}: point {name} is listed twice")
        seen.add(name)
        point_overrides = [item for key, value in values.items() for item in (key, _text(value))]
        if "OUTPUT_DIR" not in values:
            folder = Path(base.OUTPUT_DIR) / "sweep" / _safe(name)
            point_overrides += ["OUTPUT_DIR", str(folder)]
        _check(recipe, [*overrides, *point_overrides], name)
        out.append(Point(name, values, tuple(point_overrides)))
    return out


def _check(recipe, overrides: list[str], name: str) -> CfgNode:
    try:
        return load_config(recipe, overrides)
    except ReidError as exc:
        raise ReidError(f"sweep point {name}: {exc}") from None
