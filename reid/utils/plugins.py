"""Components from a user's own package, registered without editing ``reid/``.

A plugin is a module that decorates its classes with a registry (``DATASET_REGISTRY``,
``BACKBONE_REGISTRY``, ...): importing it registers them. Two ways to have it imported:

- the ``PLUGINS`` config key (a list of module names), imported whenever a config is
  loaded, so every process that reads the config (DDP ranks, Prefect tasks, DVC stages)
  registers the same components: ``reid train PLUGINS "['my_reid.datasets']"``;
- an installed package declaring an entry point in the ``reid.plugins`` group, loaded the
  first time a registry is asked for a name it does not hold::

      [project.entry-points."reid.plugins"]
      my_datasets = "my_reid.datasets"

The current directory is searched after the installed packages, so a ``my_plugin.py``
beside the recipe works with the ``reid`` command too.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
from importlib.metadata import entry_points
from typing import Iterable

from reid.errors import ReidError

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "reid.plugins"
_loaded_entry_points: set[str] = set()


def import_plugins(modules: Iterable[str]) -> None:
    """Import each module named (again importing one already imported does nothing)."""
    for module in modules:
        if module in sys.modules:
            continue
        if os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ReidError(f"cannot import plugin module {module!r} (PLUGINS, --plugin): {exc} "
                            "(expected an importable module: installed, or a .py file in the "
                            "current directory)") from exc
        logger.info("loaded plugin module %s", module)


def load_entry_points(group: str = ENTRY_POINT_GROUP) -> bool:
    """Load the ``group`` entry points not loaded yet; True when any was."""
    new = [ep for ep in entry_points(group=group) if ep.name not in _loaded_entry_points]
    for ep in new:
        _loaded_entry_points.add(ep.name)
        try:
            ep.load()
        except ImportError as exc:
            raise ReidError(f"cannot load the {group} entry point {ep.name} = {ep.value}: "
                            f"{exc}") from exc
        logger.info("loaded plugin %s (%s)", ep.name, ep.value)
    return bool(new)
