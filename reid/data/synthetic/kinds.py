"""The names of the generator's kinds: camera backgrounds, occluders and views.

Cameras and shots draw a kind by its name; the scene module maps each name to its drawing
function. Keeping the names here lets camera, shot and scene import them without importing
one another.
"""
from __future__ import annotations

BACKGROUND_KINDS = ("stripes", "wall_floor", "tiles", "street")  # scene.BACKGROUNDS' keys
OCCLUDER_KINDS = ("box", "pole", "passer")  # scene.OCCLUDERS' keys
VIEWS = ("front", "back", "side")  # the order of Camera.view_probs
