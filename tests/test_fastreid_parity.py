"""FastReID 1.4 parity without FastReID: our models against the manifests that
``benchmarks/fastreid_parity.py --export`` wrote from FastReID's own models (every state_dict
key with its shape, the parameter count, the feature dimension), and every params/ recipe
against the loader.

The weights-and-features check (cosine >= 0.9999 on the same checkpoint) needs FastReID
installed: ``benchmarks/fastreid_parity.py --compare``.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import recipe_files
from reid.config import load_config
from reid.modeling import POOLING_REGISTRY, build_model

REPO = Path(__file__).resolve().parent.parent
PARAMS = REPO / "params"
MANIFESTS = sorted((REPO / "tests" / "data" / "fastreid").glob("*.json"))
ALL_RECIPES = recipe_files()


def load_harness():
    spec = importlib.util.spec_from_file_location(
        "fastreid_parity", REPO / "benchmarks" / "fastreid_parity.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


harness = load_harness()
pytestmark = pytest.mark.usefixtures("one_thread")


@functools.lru_cache(maxsize=None)
def manifest(path: Path) -> dict:
    return json.loads(path.read_text())


@functools.lru_cache(maxsize=1)  # one model alive at a time: MGN alone is 69 M parameters
def our_model(path: Path) -> torch.nn.Module:
    spec = manifest(path)
    cfg = load_config(REPO / spec["params_config"], spec["overrides"])
    return build_model(cfg).eval()


# --------------------------------------------------------------------------- manifests

def test_manifests_cover_every_harness_recipe():
    names = {manifest(path)["recipe"] for path in MANIFESTS}
    assert names == {recipe.name for recipe in harness.RECIPES}
    for path in MANIFESTS:
        spec = manifest(path)
        assert spec["overrides"] == ["MODEL.HEADS.NUM_CLASSES", "100",
                                     "MODEL.BACKBONE.PRETRAIN", "False"]
        assert (REPO / spec["params_config"]).is_file(), spec["params_config"]


# The published FastReID figure for BoT-R50 with 100 identities: guards the manifests themselves.
def test_bot_r50_manifest_holds_fastreids_count():
    spec = manifest(REPO / "tests" / "data" / "fastreid" / "BoT-R50.json")
    assert spec["num_parameters"] == 23_716_928
    assert spec["state_dict"]["heads.weight"] == [100, 2048]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_state_dict_keys_and_shapes_equal_fastreids(path):
    reference = manifest(path)["state_dict"]
    ours = harness.state_shapes(our_model(path).state_dict())
    report = harness.key_differences(reference, ours)
    assert report.ok, f"{path.stem}: {report.summary(limit=10)}"
    assert ours == reference


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_parameter_count_equals_fastreids(path):
    ours = harness.count_parameters(our_model(path))
    assert ours == manifest(path)["num_parameters"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_eval_feature_dimension_equals_fastreids(path):
    # 96 x 48: the smallest input that still gives MGN 6 rows to cut into 2 and 3 stripes
    images = torch.rand(2, 3, 96, 48) * 255
    with torch.no_grad():
        features = our_model(path)(images)
    assert tuple(features.shape) == (2, manifest(path)["feature_dim"])


# --------------------------------------------------------------------------- the harness's own checks

def test_key_differences_names_each_kind_of_difference():
    reference = {"a.weight": [4, 2], "b.bias": [4], "c.running_mean": [8]}
    ours = {"a.weight": [4, 2], "b.bias": [5], "d.extra": [1]}
    report = harness.key_differences(reference, ours)
    assert report.missing == ["c.running_mean"]
    assert report.unexpected == ["d.extra"]
    assert report.mismatched == ["b.bias [4] vs [5]"]
    assert not report.ok
    assert report.summary() == ("missing: c.running_mean; unexpected: d.extra; "
                                "shape: b.bias [4] vs [5]")
    assert harness.key_differences(reference, dict(reference)).ok


def test_min_cosine_is_the_worst_image():
    reference = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    ours = torch.tensor([[3.0, 0.0], [1.0, 1.0]])   # image 2 at 45 degrees
    assert harness.min_cosine(ours, reference) == pytest.approx(2 ** -0.5)
    assert harness.min_cosine(ours[:, :1], reference) == -1.0  # shapes differ


def test_strip_prefix_removes_only_the_ddp_wrapper():
    state = {"module.heads.weight": 1, "backbone.module.x": 2}
    assert harness.strip_prefix(state) == {"heads.weight": 1, "backbone.module.x": 2}


def test_parity_batch_is_seeded_and_in_pixel_range():
    first, second = harness.parity_batch(), harness.parity_batch()
    assert torch.equal(first, second)
    assert first.shape == (4, 3, 256, 128)
    assert 0.0 <= float(first.min()) and float(first.max()) <= 255.0
    # images differ in colour, not only in noise (see random_images)
    channel_means = first.mean(dim=(2, 3))
    assert float(channel_means.std(dim=0).min()) > 5.0


# --------------------------------------------------------------------------- params/ recipes

# What FastReID ships per data set (configs/<set>/), hand-listed.
PERSON_SETS = ("Market1501", "DukeMTMC", "MSMT17")
PERSON_RECIPES = [f"{family}_{variant}" for family in ("bagtricks", "AGW", "sbs")
                  for variant in ("R50", "R50-ibn", "S50", "R101-ibn")] + ["mgn_R50-ibn"]
SHIPPED = ([f"{s}/{r}.yml" for s in PERSON_SETS for r in PERSON_RECIPES]
           + ["VeRi/sbs_R50-ibn.yml", "VehicleID/bagtricks_R50-ibn.yml",
              "Base-bagtricks.yml", "Base-AGW.yml", "Base-SBS.yml", "Base-MGN.yml"])


def test_every_fastreid_recipe_has_a_params_file():
    missing = [name for name in SHIPPED if not (PARAMS / name).is_file()]
    assert not missing


@pytest.mark.parametrize("path", ALL_RECIPES, ids=lambda p: str(p.relative_to(PARAMS)))
def test_every_params_recipe_loads(path):
    cfg = load_config(path)
    assert cfg.OUTPUT_DIR.startswith("logs/")
    if path.parent != PARAMS:  # per-data-set recipes train on the set they are filed under
        assert cfg.DATASETS.NAMES == (path.parent.name,)


def same_pooling(name: str, expected: str) -> bool:
    return POOLING_REGISTRY.get(name) is POOLING_REGISTRY.get(expected)


# Values worked out by hand from FastReID's _BASE_ chains (file <- Base-X <- Base-bagtricks).
EXPECTED = {
    "Market1501/bagtricks_R50.yml": {
        "MODEL.BACKBONE.DEPTH": "50x", "MODEL.BACKBONE.WITH_IBN": False,
        "MODEL.BACKBONE.WITH_NL": False, "MODEL.HEADS.NECK_FEAT": "before",
        "MODEL.LOSSES.TRI.MARGIN": 0.3, "INPUT.SIZE_TRAIN": [256, 128],
        "OUTPUT_DIR": "logs/market1501/bagtricks_R50"},
    "DukeMTMC/AGW_R101-ibn.yml": {
        "MODEL.BACKBONE.DEPTH": "101x", "MODEL.BACKBONE.WITH_IBN": True,
        "MODEL.BACKBONE.WITH_NL": True, "MODEL.LOSSES.TRI.MARGIN": 0.0,
        "MODEL.LOSSES.TRI.HARD_MINING": False, "SOLVER.MAX_EPOCH": 120,
        "OUTPUT_DIR": "logs/dukemtmc/agw_R101-ibn"},
    "MSMT17/sbs_S50.yml": {
        "MODEL.BACKBONE.NAME": "build_resnest_backbone", "MODEL.BACKBONE.WITH_NL": True,
        "MODEL.HEADS.NECK_FEAT": "after", "MODEL.HEADS.SCALE": 64, "MODEL.HEADS.MARGIN": 0.35,
        "MODEL.FREEZE_LAYERS": ["backbone"], "INPUT.SIZE_TEST": [384, 128],
        "DATALOADER.NUM_INSTANCE": 16, "SOLVER.SCHED": "CosineAnnealingLR",
        "SOLVER.DELAY_EPOCHS": 30, "SOLVER.MAX_EPOCH": 60, "SOLVER.FREEZE_ITERS": 1000},
    "Market1501/mgn_R50-ibn.yml": {
        "MODEL.META_ARCHITECTURE": "MGN", "MODEL.BACKBONE.WITH_IBN": True,
        "MODEL.BACKBONE.WITH_NL": False, "MODEL.HEADS.EMBEDDING_DIM": 256,
        "MODEL.FREEZE_LAYERS": ["backbone", "b1", "b2", "b3"], "INPUT.SIZE_TRAIN": [384, 128]},
    "VeRi/sbs_R50-ibn.yml": {
        "INPUT.SIZE_TRAIN": [256, 256], "SOLVER.OPT": "SGD", "SOLVER.BASE_LR": 0.01,
        "SOLVER.ETA_MIN_LR": 7.7e-5, "MODEL.HEADS.NECK_FEAT": "after"},
    "VehicleID/bagtricks_R50-ibn.yml": {
        "DATASETS.TESTS": ["SmallVehicleID", "MediumVehicleID", "LargeVehicleID"],
        "SOLVER.IMS_PER_BATCH": 512, "SOLVER.STEPS": [30, 50], "SOLVER.BIAS_LR_FACTOR": 1.0,
        "MODEL.LOSSES.TRI.HARD_MINING": False, "INPUT.SIZE_TEST": [256, 256]},
}
EXPECTED_POOLING = {
    "Market1501/bagtricks_R50.yml": "GlobalAvgPool",
    "DukeMTMC/AGW_R101-ibn.yml": "GeneralizedMeanPooling",
    "MSMT17/sbs_S50.yml": "GeneralizedMeanPoolingP",
    "Market1501/mgn_R50-ibn.yml": "GeneralizedMeanPoolingP",
    "VeRi/sbs_R50-ibn.yml": "GeneralizedMeanPoolingP",
    "VehicleID/bagtricks_R50-ibn.yml": "GeneralizedMeanPooling",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_inherits_like_fastreid(name):
    flat = dict(load_config(PARAMS / name).flatten())
    for key, value in EXPECTED[name].items():
        actual = list(flat[key]) if isinstance(flat[key], (list, tuple)) else flat[key]
        assert actual == value, f"{name}: {key}"
    assert same_pooling(flat["MODEL.HEADS.POOL_LAYER"], EXPECTED_POOLING[name])


# --------------------------------------------------------------------------- recipes = FastReID's

FASTREID_RECIPES = REPO / "benchmarks" / "fastreid_recipes"
# Keys where a params/ recipe may read differently from FastReID's file, and why.
SPELLING_ONLY = {
    # "" = the seed's PK_SAMPLER True / NAIVE_WAY True choice, which is NaiveIdentitySampler
    "DATALOADER.SAMPLER_TRAIN": ("", "NaiveIdentitySampler"),
    "MODEL.HEADS.POOL_LAYER": ("avgpool", "GlobalAvgPool"),
    "MODEL.HEADS.CLS_LAYER": ("linear", "Linear"),
}
# FastReID 1.4's default WEIGHT_DECAY_BIAS is WEIGHT_DECAY (0.0005); the default here is the
# seed's 0.0, so params/Base-bagtricks.yml spells FastReID 1.4's value out.
DOCUMENTED_ADDITIONS = {"SOLVER.WEIGHT_DECAY_BIAS": (0.0005, 0.0)}


def recipe_differences(ours_path: Path, fastreid_path: Path, allowed: dict) -> dict:
    ours = dict(load_config(ours_path).flatten())
    theirs = dict(load_config(fastreid_path).flatten())
    return {key: (ours[key], theirs[key]) for key in ours
            if key != "OUTPUT_DIR" and ours[key] != theirs[key]
            and tuple(allowed.get(key, ())) != (ours[key], theirs[key])}


def test_base_bagtricks_is_fastreids():
    # BIAS_LR_FACTOR 2.0 (FastReID's older recipes) and a missing AMP switch were here before
    # issue 11; FastReID 1.4's Base-bagtricks.yml has neither.
    differences = recipe_differences(PARAMS / "Base-bagtricks.yml",
                                     FASTREID_RECIPES / "Base-bagtricks.yml",
                                     {**SPELLING_ONLY, **DOCUMENTED_ADDITIONS})
    assert differences == {}
    cfg = load_config(PARAMS / "Base-bagtricks.yml")
    assert cfg.SOLVER.BIAS_LR_FACTOR == 1.0 and cfg.SOLVER.FP16_ENABLED is True


def test_the_shared_r18_recipe_reads_the_same_in_both_formats():
    # benchmarks/fastreid_recipes/bagtricks_R18-128x64.yml spells WEIGHT_DECAY_BIAS out, so
    # fed unchanged here it trains like FastReID 1.4 and like the params/ file.
    differences = recipe_differences(PARAMS / "bagtricks_R18-128x64.yml",
                                     FASTREID_RECIPES / "bagtricks_R18-128x64.yml", SPELLING_ONLY)
    assert differences == {}
