"""FastReID 1.4 config spellings: aliases in files, overrides and _BASE_ chains; tuple strings;
string-or-list keys; one-line errors naming the key and the expected type."""
import pytest
import yaml
from conftest import flat, nested, write_file

from reid.config import load_config, read_yaml, save_config
from reid.config.defaults import KEY_ALIASES
from reid.errors import ReidError

# FastReID 1.4 key -> (key of the seed's reference, a non-default value, its override text).
# Written out here (not read from KEY_ALIASES) so that a wrong alias table fails.
ALIASES = {
    "SOLVER.AMP.ENABLED": ("SOLVER.FP16_ENABLED", True, "True"),
    "SOLVER.AMP_ENABLED": ("SOLVER.FP16_ENABLED", True, "True"),
    "INPUT.FLIP.ENABLED": ("INPUT.DO_FLIP", False, "False"),
    "INPUT.FLIP.PROB": ("INPUT.FLIP_PROB", 0.25, "0.25"),
    "INPUT.PADDING.ENABLED": ("INPUT.DO_PAD", False, "false"),
    "INPUT.PADDING.MODE": ("INPUT.PADDING_MODE", "edge", "edge"),
    "INPUT.PADDING.SIZE": ("INPUT.PADDING", 7, "7"),
    "INPUT.AFFINE.ENABLED": ("INPUT.DO_AFFINE", True, "true"),
    "INPUT.AUTOAUG.ENABLED": ("INPUT.DO_AUTOAUG", True, "True"),
    "INPUT.AUTOAUG.PROB": ("INPUT.AUTOAUG_PROB", 0.1, "0.1"),
    "INPUT.AUGMIX.ENABLED": ("INPUT.DO_AUGMIX", True, "True"),
    "INPUT.AUGMIX.PROB": ("INPUT.AUGMIX_PROB", 0.3, "0.3"),
    "TEST.FLIP.ENABLED": ("TEST.FLIP_ENABLED", True, "True"),
    "TEST.ROC.ENABLED": ("TEST.ROC_ENABLED", True, "True"),
}

# FastReID 1.4 keys that exist under their own name (no alias): key -> (value, override text)
NATIVE_14_KEYS = {
    "DATALOADER.SAMPLER_TRAIN": ("BalancedIdentitySampler", "BalancedIdentitySampler"),
    "DATALOADER.SET_WEIGHT": ([2, 1], "[2, 1]"),
    "SOLVER.WEIGHT_DECAY_NORM": (0.0001, "0.0001"),
    "SOLVER.CLIP_GRADIENTS.ENABLED": (True, "True"),
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": ("value", "value"),
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": (1.5, "1.5"),
    "SOLVER.CLIP_GRADIENTS.NORM_TYPE": (1.0, "1.0"),
    "KD.EMA.ENABLED": (True, "True"),
    "KD.EMA.MOMENTUM": (0.99, "0.99"),
    "INPUT.CROP.ENABLED": (True, "True"),
    "INPUT.CROP.SIZE": ([192, 96], "[192, 96]"),
    "INPUT.CROP.SCALE": ([0.5, 1.0], "[0.5, 1.0]"),
    "INPUT.CROP.RATIO": ([0.5, 2.0], "[0.5, 2.0]"),
    "MODEL.BACKBONE.DROP_RATIO": (0.1, "0.1"),
    "MODEL.BACKBONE.DROP_PATH_RATIO": (0.2, "0.2"),
    "MODEL.BACKBONE.ATT_DROP_RATE": (0.05, "0.05"),
    "MODEL.BACKBONE.STRIDE_SIZE": ([12, 12], "[12, 12]"),
    "MODEL.BACKBONE.SIE_COE": (2.5, "2.5"),
}


def yaml_file(path, dotted: dict, base=None):
    data = nested(dotted)
    if base:
        data = {"_BASE_": base, **data}
    return write_file(path, yaml.safe_dump(data))


def test_the_alias_table_is_the_one_tested_here():
    assert KEY_ALIASES == {alias: key for alias, (key, _, _) in ALIASES.items()}


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_alias_in_yaml_nesting(tmp_path, alias):
    key, value, _ = ALIASES[alias]
    cfg = load_config(yaml_file(tmp_path / "c.yml", {alias: value}))
    assert flat(cfg)[key] == value and type(flat(cfg)[key]) is type(value)
    assert alias not in flat(cfg)  # mapped, not added


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_alias_as_override(alias):
    key, value, text = ALIASES[alias]
    assert flat(load_config(None, [alias, text]))[key] == value


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_alias_through_base_both_ways(tmp_path, alias):
    key, value, _ = ALIASES[alias]
    # The base sets the FastReID 1.4 spelling; the child sets an unrelated key.
    yaml_file(tmp_path / "base14.yml", {alias: value})
    child = yaml_file(tmp_path / "child.yml", {"OUTPUT_DIR": "x"}, base="base14.yml")
    assert flat(load_config(child))[key] == value
    # The base sets the seed's spelling; a child in the 1.4 spelling overrides it, and back.
    yaml_file(tmp_path / "base_seed.yml", {key: value})
    default = flat(load_config())[key]
    child = yaml_file(tmp_path / "child2.yml", {alias: default}, base="base_seed.yml")
    assert flat(load_config(child))[key] == default
    child = yaml_file(tmp_path / "child3.yml", {key: value}, base="base14.yml")
    assert flat(load_config(child))[key] == value


@pytest.mark.parametrize("key", sorted(NATIVE_14_KEYS))
def test_fastreid_14_keys_in_a_file_and_as_overrides(tmp_path, key):
    value, text = NATIVE_14_KEYS[key]
    assert flat(load_config(yaml_file(tmp_path / "c.yml", {key: value})))[key] == value
    assert flat(load_config(None, [key, text]))[key] == value


def test_padding_group_and_padding_number_mix_across_base_files(tmp_path):
    # 1.4 base disables padding; a seed-style child changes only the size.
    write_file(tmp_path / "b.yml",
               "INPUT:\n  PADDING:\n    ENABLED: False\n    SIZE: 4\n    MODE: edge\n")
    child = write_file(tmp_path / "c.yml", "_BASE_: b.yml\nINPUT:\n  PADDING: 6\n")
    cfg = load_config(child)
    assert (cfg.INPUT.DO_PAD, cfg.INPUT.PADDING, cfg.INPUT.PADDING_MODE) == (False, 6, "edge")
    # seed-style base; a 1.4 child turns padding on and keeps the base's size
    write_file(tmp_path / "b2.yml", "INPUT:\n  PADDING: 6\n  DO_PAD: False\n")
    child = write_file(tmp_path / "c2.yml",
                       "_BASE_: b2.yml\nINPUT:\n  PADDING:\n    ENABLED: True\n")
    cfg = load_config(child)
    assert (cfg.INPUT.DO_PAD, cfg.INPUT.PADDING) == (True, 6)
    # override in either spelling on top
    cfg = load_config(child, ["INPUT.PADDING.SIZE", "3", "INPUT.DO_PAD", "False"])
    assert (cfg.INPUT.DO_PAD, cfg.INPUT.PADDING) == (False, 3)


FASTREID_14_STYLE = """\
MODEL:
  LOSSES:
    NAME: ("CrossEntropyLoss", "TripletLoss",)
  BACKBONE:
    STRIDE_SIZE: (16, 16)
INPUT:
  FLIP:
    ENABLED: True
    PROB: 0.4
  PADDING:
    ENABLED: True
    MODE: reflect
    SIZE: 8
  AUTOAUG:
    ENABLED: True
    PROB: 0.1
  AFFINE:
    ENABLED: True
DATALOADER:
  SAMPLER_TRAIN: NaiveIdentitySampler
SOLVER:
  AMP:
    ENABLED: True
TEST:
  FLIP:
    ENABLED: True
  ROC:
    ENABLED: True
"""

SEED_STYLE = """\
MODEL:
  LOSSES:
    NAME: [CrossEntropyLoss, TripletLoss]
  BACKBONE:
    STRIDE_SIZE: [16, 16]
INPUT:
  DO_FLIP: True
  FLIP_PROB: 0.4
  DO_PAD: True
  PADDING_MODE: reflect
  PADDING: 8
  DO_AUTOAUG: True
  AUTOAUG_PROB: 0.1
  DO_AFFINE: True
DATALOADER:
  SAMPLER_TRAIN: NaiveIdentitySampler
SOLVER:
  FP16_ENABLED: True
TEST:
  FLIP_ENABLED: True
  ROC_ENABLED: True
"""


def test_both_styles_give_one_internal_config(tmp_path):
    new = load_config(write_file(tmp_path / "new.yml", FASTREID_14_STYLE))
    old = load_config(write_file(tmp_path / "old.yml", SEED_STYLE))
    assert flat(new) == flat(old)
    assert {k: type(v) for k, v in flat(new).items()} == {k: type(v) for k, v in flat(old).items()}
    assert new.MODEL.LOSSES.NAME == ("CrossEntropyLoss", "TripletLoss")
    assert new.MODEL.BACKBONE.STRIDE_SIZE == [16, 16]
    # read_yaml shows the merged file under the internal keys
    assert read_yaml(tmp_path / "new.yml")["INPUT"]["PADDING"] == 8
    assert read_yaml(tmp_path / "new.yml")["SOLVER"] == {"FP16_ENABLED": True}


# --------------------------------------------------------------------------- tuple strings

@pytest.mark.parametrize("text, expected", [
    ('("CrossEntropyLoss", "TripletLoss",)', ("CrossEntropyLoss", "TripletLoss")),
    ("('CrossEntropyLoss',)", ("CrossEntropyLoss",)),
    ('("CrossEntropyLoss")', ("CrossEntropyLoss",)),        # parenthesised item: one item
    ("[CrossEntropyLoss, TripletLoss]", ("CrossEntropyLoss", "TripletLoss")),
    ("CrossEntropyLoss", ("CrossEntropyLoss",)),
])
def test_loss_names_from_tuple_strings(tmp_path, text, expected):
    path = write_file(tmp_path / "c.yml", f"MODEL:\n  LOSSES:\n    NAME: {text}\n")
    assert load_config(path).MODEL.LOSSES.NAME == expected
    assert load_config(None, ["MODEL.LOSSES.NAME", text]).MODEL.LOSSES.NAME == expected


def test_tuple_strings_stay_text_for_string_keys():
    assert load_config(None, ["OUTPUT_DIR", "(logs)"]).OUTPUT_DIR == "(logs)"
    assert load_config(None, ["MODEL.WEIGHTS", "('a', 'b')"]).MODEL.WEIGHTS == "('a', 'b')"


@pytest.mark.parametrize("key, text, expected", [
    ("MODEL.LOSSES.NAME", '(__import__("os").getcwd(),)', "a list of strings"),  # no code runs
    ("MODEL.LOSSES.NAME", '("CrossEntropyLoss", ', "a list of strings"),        # unclosed
    ("MODEL.LOSSES.NAME", "(1, 2)", "a list of strings"),
    ("MODEL.LOSSES.NAME", '(("A", "B"),)', "a list of strings"),                # nested
    ("MODEL.BACKBONE.STRIDE_SIZE", "(16, 'x')", "a list of numbers"),
    ("DATALOADER.SET_WEIGHT", "[1, heavy]", "a list of numbers"),
    ("DATALOADER.SET_WEIGHT", "[true]", "a list of numbers"),
    ("INPUT.CROP.SIZE", "big", "a list of numbers"),
])
def test_bad_list_values_name_key_and_type(key, text, expected):
    with pytest.raises(ReidError) as info:
        load_config(None, [key, text])
    message = str(info.value)
    assert message.startswith(f"config key {key} expects {expected}, got ")
    assert message.endswith("(command line)") and "\n" not in message


def test_bare_number_for_a_number_list_is_a_one_item_list():
    assert load_config(None, ["INPUT.CROP.SIZE", "224"]).INPUT.CROP.SIZE == [224]
    assert load_config(None, ["DATALOADER.SET_WEIGHT", "1e-3"]).DATALOADER.SET_WEIGHT == [0.001]


def test_wrong_alias_value_names_both_spellings(tmp_path):
    with pytest.raises(ReidError, match=r"^config key INPUT\.PADDING\.SIZE \(= INPUT\.PADDING\) "
                                        r"expects an integer, got 'wide' \(str\) "
                                        r"\(command line\)$"):
        load_config(None, ["INPUT.PADDING.SIZE", "wide"])
    path = write_file(tmp_path / "bad.yml", "SOLVER:\n  AMP:\n    ENABLED: maybe\n")
    with pytest.raises(ReidError, match=r"SOLVER\.AMP\.ENABLED \(= SOLVER\.FP16_ENABLED\) "
                                        r"expects true or false, got 'maybe' .*bad\.yml"):
        load_config(path)


def test_misspelt_alias_suggests_the_alias():
    with pytest.raises(ReidError, match=r"unknown config key INPUT\.PADDING\.SIZ \(command line\);"
                                        r" did you mean INPUT\.PADDING\.SIZE\?"):
        load_config(None, ["INPUT.PADDING.SIZ", "3"])


def test_clip_type_must_be_value_or_norm():
    with pytest.raises(ReidError, match="SOLVER.CLIP_GRADIENTS.CLIP_TYPE must be one of value, "
                                        "norm; got 'l2'"):
        load_config(None, ["SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "l2"])


# --------------------------------------------------------------------------- KD teachers

@pytest.mark.parametrize("yaml_value, expected", [
    ("teacher.yml", "teacher.yml"),
    ("[a.yml, b.yml]", ["a.yml", "b.yml"]),
    ('("a.yml", "b.yml",)', ["a.yml", "b.yml"]),
    ('("a.yml",)', ["a.yml"]),
    ("[]", []),
])
def test_kd_model_config_is_a_string_or_a_list_of_strings(tmp_path, yaml_value, expected):
    path = write_file(tmp_path / "c.yml", f"KD:\n  MODEL_CONFIG: {yaml_value}\n"
                                          f"  MODEL_WEIGHTS: {yaml_value}\n")
    cfg = load_config(path)
    assert cfg.KD.MODEL_CONFIG == expected and type(cfg.KD.MODEL_CONFIG) is type(expected)
    assert cfg.KD.MODEL_WEIGHTS == expected and type(cfg.KD.MODEL_WEIGHTS) is type(expected)
    cfg = load_config(None, ["KD.MODEL_CONFIG", yaml_value])
    assert cfg.KD.MODEL_CONFIG == expected and type(cfg.KD.MODEL_CONFIG) is type(expected)


def test_kd_lists_survive_save_and_load(tmp_path):
    cfg = load_config(None, ["KD.MODEL_CONFIG", "[t1.yml, t2.yml]", "KD.MODEL_WEIGHTS", "w.pth"])
    restored = load_config(save_config(cfg, tmp_path / "config.yaml"))
    assert restored.KD.MODEL_CONFIG == ["t1.yml", "t2.yml"]
    assert restored.KD.MODEL_WEIGHTS == "w.pth"


@pytest.mark.parametrize("yaml_value", ["7", "true", "[a.yml, 3]", "(1,)"])
def test_kd_model_config_rejects_other_types(tmp_path, yaml_value):
    path = write_file(tmp_path / "kd.yml", f"KD:\n  MODEL_CONFIG: {yaml_value}\n")
    with pytest.raises(ReidError, match=r"^config key KD\.MODEL_CONFIG expects a string or a list "
                                        r"of strings, got .*kd\.yml\)$"):
        load_config(path)


# --------------------------------------------------------------------------- _BASE_ details

def test_a_bad_key_in_a_base_file_names_the_base_file(tmp_path):
    write_file(tmp_path / "base.yml", "SOLVER:\n  BASE_LRR: 0.1\n")
    child = write_file(tmp_path / "child.yml", "_BASE_: base.yml\nOUTPUT_DIR: x\n")
    with pytest.raises(ReidError, match=r"unknown config key SOLVER\.BASE_LRR \(.*base\.yml\)"):
        load_config(child)


def test_a_base_chain_that_loops_is_an_error(tmp_path):
    write_file(tmp_path / "a.yml", "_BASE_: b.yml\n")
    write_file(tmp_path / "b.yml", "_BASE_: a.yml\n")
    with pytest.raises(ReidError, match=r"config _BASE_ chain loops: .*a\.yml -> .*b\.yml -> "
                                        r".*a\.yml"):
        load_config(tmp_path / "a.yml")
