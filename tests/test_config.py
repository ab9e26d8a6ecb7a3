"""The config system: FastReID defaults, _BASE_ inheritance, overrides, aliases, checks, freezing."""
import ast
import pickle
from pathlib import Path

import pytest
from conftest import flat, write_file

from reid.config import get_cfg, load_config, save_config
from reid.errors import ReidError

# FastReID's config reference, copied from the seed documentation so a fresh clone checks it.
DOC = Path(__file__).resolve().parent / "data" / "fastreid_config_reference.txt"
SEED_DOC = Path(__file__).resolve().parents[1] / ".." / "shared" / "seed" / "fastreid-docs.txt"


# --------------------------------------------------------------------------- defaults

def _evaluate(node):
    """Evaluate the literal expressions of the doc's config lines (numbers, strings, lists,
    tuples and arithmetic such as ``0.485*255``) without eval()."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_evaluate(e) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand)
    if isinstance(node, ast.BinOp):
        ops = {ast.Mult: lambda a, b: a * b, ast.Add: lambda a, b: a + b,
               ast.Sub: lambda a, b: a - b, ast.Div: lambda a, b: a / b}
        return ops[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    raise ValueError(f"unsupported expression {ast.dump(node)}")


def _dotted(target):
    parts = []
    while isinstance(target, ast.Attribute):
        parts.append(target.attr)
        target = target.value
    assert isinstance(target, ast.Name) and target.id == "_C"
    return ".".join(reversed(parts))


def doc_defaults(text):
    """``{dotted key: default}`` from the doc's ``_C.X.Y = value`` lines (``CN()`` groups skipped)."""
    keys = {}
    for line in text.splitlines():
        if not line.startswith("_C."):
            continue  # commented-out keys ("# _C.SOLVER.SWA...") are not part of the reference
        statement = ast.parse(line).body[0]
        if isinstance(statement.value, ast.Call):
            continue
        keys[_dotted(statement.targets[0])] = _evaluate(statement.value)
    return keys


def assert_same_default(key, actual, expected):
    assert type(actual) is type(expected), f"{key}: {actual!r} vs doc {expected!r}"
    if isinstance(expected, (list, tuple)):
        assert actual == pytest.approx(expected) if all(
            isinstance(e, float) for e in expected) else actual == expected, key
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=1e-12), key
    else:
        assert actual == expected, key


def test_the_reference_copy_holds_the_seed_documentations_config_lines():
    if not SEED_DOC.is_file():  # the seed lives beside the checkout, not in a clone
        pytest.skip(f"no seed documentation at {SEED_DOC} to compare the copy with")
    lines = [line for line in SEED_DOC.read_text().splitlines() if line.startswith("_C")]
    assert [line for line in DOC.read_text().splitlines() if line.startswith("_C")] == lines


def test_every_key_of_the_fastreid_reference_exists_with_its_default():
    reference = doc_defaults(DOC.read_text())
    # Guard the parser itself: the reference holds 116 keys with values.
    assert len(reference) >= 110
    assert reference["SOLVER.BASE_LR"] == 3e-4
    defaults = flat(get_cfg())
    missing = sorted(set(reference) - set(defaults))
    assert not missing, f"keys of the FastReID reference missing from defaults: {missing}"
    for key, expected in reference.items():
        assert_same_default(key, defaults[key], expected)


@pytest.mark.parametrize("key,expected", [
    ("MODEL.META_ARCHITECTURE", "Baseline"),
    ("MODEL.BACKBONE.DEPTH", "50x"),
    ("MODEL.LOSSES.NAME", ("CrossEntropyLoss",)),
    ("MODEL.LOSSES.FL.GAMMA", 2),
    ("MODEL.PIXEL_MEAN", [123.675, 116.28, 103.53]),
    ("INPUT.SIZE_TRAIN", [256, 128]),
    ("INPUT.PADDING", 10),
    ("DATASETS.NAMES", ("Market1501",)),
    ("SOLVER.BASE_LR", 3e-4),
    ("SOLVER.STEPS", [30, 55]),
    ("SOLVER.FP16_ENABLED", False),
    ("TEST.METRIC", "cosine"),
    ("TEST.FLIP_ENABLED", False),
    ("OUTPUT_DIR", "logs/"),
    ("DATASETS.ROOT", "data"),  # (reid) addition, a contract of the design doc
])
def test_known_defaults(key, expected):
    # Written out so the defaults are checked even where the reference doc is absent.
    assert_same_default(key, flat(load_config())[key], expected)


def test_load_config_returns_frozen_defaults():
    cfg = load_config()
    assert cfg.is_frozen() and cfg.SOLVER.is_frozen()
    assert flat(cfg) == flat(get_cfg())


# --------------------------------------------------------------------------- _BASE_

def test_base_inheritance_is_relative_to_the_including_file(tmp_path, monkeypatch):
    configs = tmp_path / "configs"
    write_file(configs / "common" / "root.yml",
               "SOLVER:\n  MAX_EPOCH: 10\n  GAMMA: 0.5\nOUTPUT_DIR: from_root\n")
    # mid.yml names root.yml relative to ITS directory (configs/mid), not to the child's.
    write_file(configs / "mid" / "mid.yml",
               "_BASE_: ../common/root.yml\nSOLVER:\n  GAMMA: 0.25\nTEST:\n  METRIC: euclidean\n")
    child = write_file(configs / "market" / "deep" / "child.yml",
                       "_BASE_: ../../mid/mid.yml\nOUTPUT_DIR: from_child\n")
    # A working directory unrelated to the files: relative paths must not resolve from here.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    cfg = load_config(child)
    assert cfg.SOLVER.MAX_EPOCH == 10          # from root, two levels up
    assert cfg.SOLVER.GAMMA == 0.25            # mid overrides root
    assert cfg.TEST.METRIC == "euclidean"      # from mid
    assert cfg.OUTPUT_DIR == "from_child"      # child overrides root
    assert cfg.SOLVER.BASE_LR == 3e-4          # untouched default


def test_base_list_applies_in_order(tmp_path):
    write_file(tmp_path / "a.yml", "SOLVER:\n  MAX_EPOCH: 1\n  GAMMA: 0.5\n")
    write_file(tmp_path / "b.yml", "SOLVER:\n  MAX_EPOCH: 2\n")
    child = write_file(tmp_path / "c.yml", "_BASE_: [a.yml, b.yml]\n")
    cfg = load_config(child)
    assert (cfg.SOLVER.MAX_EPOCH, cfg.SOLVER.GAMMA) == (2, 0.5)


def test_missing_base_file_is_an_error(tmp_path):
    child = write_file(tmp_path / "c.yml", "_BASE_: nowhere.yml\n")
    with pytest.raises(ReidError, match=r"config file not found: .*nowhere\.yml"):
        load_config(child)


# --------------------------------------------------------------------------- overrides

def test_overrides_are_yaml_literals_and_win_over_the_file(tmp_path):
    path = write_file(tmp_path / "c.yml", "SOLVER:\n  STEPS: [1, 2]\n  MAX_EPOCH: 5\n")
    cfg = load_config(path, ["SOLVER.STEPS", "[10, 20]", "SOLVER.MAX_EPOCH", "7",
                             "SOLVER.GAMMA", "0.5", "TEST.FLIP_ENABLED", "True",
                             "MODEL.BACKBONE.DEPTH", "101x"])
    assert cfg.SOLVER.STEPS == [10, 20]
    assert cfg.SOLVER.MAX_EPOCH == 7 and type(cfg.SOLVER.MAX_EPOCH) is int
    assert cfg.SOLVER.GAMMA == 0.5
    assert cfg.TEST.FLIP_ENABLED is True
    assert cfg.MODEL.BACKBONE.DEPTH == "101x"


@pytest.mark.parametrize("key,text", [("OUTPUT_DIR", "123"), ("OUTPUT_DIR", "true"),
                                      ("OUTPUT_DIR", "off"), ("MODEL.WEIGHTS", "")])
def test_string_key_keeps_the_override_text(key, text):
    assert flat(load_config(None, [key, text]))[key] == text


def test_int_literal_for_a_float_key_becomes_a_float():
    cfg = load_config(None, ["SOLVER.GAMMA", "1"])
    assert cfg.SOLVER.GAMMA == 1.0 and type(cfg.SOLVER.GAMMA) is float


def test_overrides_must_come_in_pairs():
    with pytest.raises(ReidError, match="KEY VALUE pairs; 'SOLVER.GAMMA' has no value"):
        load_config(None, ["SOLVER.MAX_EPOCH", "3", "SOLVER.GAMMA"])


def test_fastreid_tuple_strings(tmp_path):
    path = write_file(tmp_path / "c.yml",
                      'DATASETS:\n  NAMES: ("Market1501",)\n  TESTS: ("DukeMTMC", "MSMT17")\n')
    cfg = load_config(path)
    assert cfg.DATASETS.NAMES == ("Market1501",)
    assert cfg.DATASETS.TESTS == ("DukeMTMC", "MSMT17")
    cfg = load_config(None, ["DATASETS.TESTS", '("VeRi",)', "DATASETS.NAMES", "CUHK03"])
    assert cfg.DATASETS.TESTS == ("VeRi",)
    assert cfg.DATASETS.NAMES == ("CUHK03",)  # a bare name becomes a one-item tuple


# --------------------------------------------------------------------------- aliases

def test_fastreid_14_key_aliases_in_a_file(tmp_path):
    path = write_file(tmp_path / "c.yml",
                      "SOLVER:\n  AMP:\n    ENABLED: true\n"
                      "INPUT:\n  PADDING:\n    ENABLED: false\n    SIZE: 6\n    MODE: edge\n")
    cfg = load_config(path)
    assert cfg.SOLVER.FP16_ENABLED is True
    assert cfg.INPUT.PADDING == 6
    assert cfg.INPUT.DO_PAD is False
    assert cfg.INPUT.PADDING_MODE == "edge"
    assert "AMP" not in cfg.SOLVER


def test_fastreid_14_key_aliases_on_the_command_line():
    cfg = load_config(None, ["SOLVER.AMP.ENABLED", "True", "INPUT.PADDING.SIZE", "3"])
    assert cfg.SOLVER.FP16_ENABLED is True
    assert cfg.INPUT.PADDING == 3


# --------------------------------------------------------------------------- errors

def test_unknown_key_names_the_closest_key():
    with pytest.raises(ReidError, match=r"unknown config key SOLVER\.BASE_LRR \(command line\); "
                                        r"did you mean SOLVER\.BASE_LR\?"):
        load_config(None, ["SOLVER.BASE_LRR", "0.1"])


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    path = write_file(tmp_path / "c.yml", "MODEL:\n  BACKBONE:\n    DEPHT: 50x\n")
    with pytest.raises(ReidError, match=r"unknown config key MODEL\.BACKBONE\.DEPHT "
                                        r"\(.*c\.yml\); did you mean MODEL\.BACKBONE\.DEPTH\?"):
        load_config(path)


@pytest.mark.parametrize("key,value,expected", [
    ("SOLVER.MAX_EPOCH", "abc", "an integer"),
    ("SOLVER.MAX_EPOCH", "1.5", "an integer"),
    ("SOLVER.BASE_LR", "fast", "a number"),
    ("TEST.FLIP_ENABLED", "maybe", "true or false"),
    ("INPUT.SIZE_TRAIN", "[256, tall]", "a list of numbers"),
])
def test_wrong_type_is_an_error(key, value, expected):
    with pytest.raises(ReidError, match=rf"config key {key} expects {expected}, got .*command line"):
        load_config(None, [key, value])


def test_wrong_type_in_a_file_names_the_file(tmp_path):
    path = write_file(tmp_path / "bad.yml", "MODEL:\n  BACKBONE:\n    DEPTH: 50\n")
    with pytest.raises(ReidError, match=r"MODEL\.BACKBONE\.DEPTH expects a string, got 50 .*bad\.yml"):
        load_config(path)


def test_value_outside_the_allowed_choices_is_an_error():
    with pytest.raises(ReidError, match="TEST.METRIC must be one of cosine, euclidean; got 'l1'"):
        load_config(None, ["TEST.METRIC", "l1"])


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = write_file(tmp_path / "broken.yml", "SOLVER:\n  MAX_EPOCH: [1, 2\n")
    with pytest.raises(ReidError, match=r"invalid YAML in .*broken\.yml at line \d"):
        load_config(path)


# --------------------------------------------------------------------------- freezing

def test_frozen_config_refuses_writes():
    cfg = load_config()
    with pytest.raises(AttributeError, match="config is frozen"):
        cfg.SOLVER.BASE_LR = 1.0
    with pytest.raises(AttributeError, match="config is frozen"):
        cfg["OUTPUT_DIR"] = "elsewhere"
    with pytest.raises(AttributeError, match="config is frozen"):
        cfg.MODEL.BACKBONE.NEW_KEY = 1
    assert cfg.SOLVER.BASE_LR == 3e-4 and cfg.OUTPUT_DIR == "logs/"


def test_clone_is_a_mutable_deep_copy():
    cfg = load_config()
    copy = cfg.clone()
    copy.SOLVER.BASE_LR = 1.0
    copy.SOLVER.STEPS.append(99)
    assert not copy.is_frozen()
    assert cfg.SOLVER.BASE_LR == 3e-4 and cfg.SOLVER.STEPS == [30, 55]


@pytest.mark.parametrize("mutate", [
    lambda node: node.update({"BASE_LR": 9.0}),
    lambda node: node.setdefault("NEW_KEY", 1),
    lambda node: node.pop("GAMMA"),
    lambda node: node.__delitem__("GAMMA"),
], ids=["update", "setdefault", "pop", "del"])
def test_frozen_config_refuses_dict_methods(mutate):
    cfg = load_config()
    before = flat(cfg)
    with pytest.raises(AttributeError, match="config is frozen"):
        mutate(cfg.SOLVER)
    assert flat(cfg) == before


def test_config_survives_pickle():
    cfg = load_config(None, ["SOLVER.MAX_EPOCH", "3"])
    restored = pickle.loads(pickle.dumps(cfg))
    assert flat(restored) == flat(cfg)
    assert restored.is_frozen()


# --------------------------------------------------------------------------- exponent floats

@pytest.mark.parametrize("where", ["file", "command line"])
def test_exponent_floats_without_a_dot(tmp_path, where):
    if where == "file":
        cfg = load_config(write_file(tmp_path / "c.yml", "SOLVER:\n  BASE_LR: 1e-3\n"))
    else:
        cfg = load_config(None, ["SOLVER.BASE_LR", "1e-3"])
    assert cfg.SOLVER.BASE_LR == pytest.approx(1e-3)


def test_exponent_floats_with_a_dot():
    cfg = load_config(None, ["SOLVER.BASE_LR", "3.5e-4", "SOLVER.ETA_MIN_LR", "7.7e-7"])
    assert cfg.SOLVER.BASE_LR == pytest.approx(3.5e-4)
    assert cfg.SOLVER.ETA_MIN_LR == pytest.approx(7.7e-7)


# --------------------------------------------------------------------------- save

def test_save_config_round_trips_through_load_config(tmp_path):
    cfg = load_config(None, [
        "DATASETS.NAMES", '("Market1501", "DukeMTMC")', "SOLVER.STEPS", "[5, 9, 12]",
        "SOLVER.BASE_LR", "0.00035", "SOLVER.ETA_MIN_LR", "1.0e-07", "TEST.FLIP_ENABLED", "True",
        "MODEL.FREEZE_LAYERS", "[backbone]", "MODEL.WEIGHTS", "w.pth",
    ]).clone()
    # Strings that YAML would read as other types must be quoted by the dump.
    cfg.OUTPUT_DIR, cfg.MODEL.BACKBONE.DEPTH = "true", "50"
    path = save_config(cfg, tmp_path / "out" / "config.yaml")
    assert path.is_file()
    restored = load_config(path)
    before, after = flat(cfg), flat(restored)
    assert after == before
    # Same types too: tuples stay tuples, floats floats, a string "true" a string.
    assert {k: type(v) for k, v in after.items()} == {k: type(v) for k, v in before.items()}
    assert restored.DATASETS.NAMES == ("Market1501", "DukeMTMC")
    assert restored.OUTPUT_DIR == "true"
