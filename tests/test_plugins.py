"""A user's dataset registered from their own module, without editing reid/: named in the
PLUGINS config key (installed or beside the current directory) or declared as a
``reid.plugins`` entry point of an installed package."""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from reid.config import load_config
from reid.data.build import load_datasets
from reid.data.datasets import DATASET_REGISTRY
from reid.errors import ReidError

PLUGIN_SOURCE = textwrap.dedent('''
    from reid.data.datasets import DATASET_REGISTRY, ImageDataset

    @DATASET_REGISTRY.register()
    class {name}(ImageDataset):
        def __init__(self, root="data"):
            super().__init__(train=[(f"{{root}}/a.jpg", 4, 0), (f"{{root}}/b.jpg", 4, 1)],
                             query=[(f"{{root}}/q.jpg", 9, 0)],
                             gallery=[(f"{{root}}/g.jpg", 9, 1)])
''')


@pytest.fixture(autouse=True)
def restore_sys_path(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))


def write_plugin(folder: Path, module: str, dataset: str) -> None:
    (folder / f"{module}.py").write_text(PLUGIN_SOURCE.format(name=dataset))


def test_plugins_key_registers_a_dataset_the_config_then_names(tmp_path, monkeypatch):
    write_plugin(tmp_path, "reid_test_plugin_key", "PluginKeySet")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "PluginKeySet" not in DATASET_REGISTRY
    cfg = load_config(None, ["PLUGINS", "['reid_test_plugin_key']",
                             "DATASETS.NAMES", "('PluginKeySet',)", "DATASETS.ROOT", "root"])
    dataset, = load_datasets(cfg, cfg.DATASETS.NAMES)
    assert dataset.train == [("root/a.jpg", 4, 0), ("root/b.jpg", 4, 1)]
    assert dataset.query == [("root/q.jpg", 9, 0)]
    # loading a config again imports nothing twice (a second registration would raise)
    load_config(None, ["PLUGINS", "['reid_test_plugin_key']"])


def test_a_module_in_the_current_directory_is_found(tmp_path, monkeypatch):
    write_plugin(tmp_path, "reid_test_plugin_cwd", "PluginCwdSet")
    monkeypatch.chdir(tmp_path)
    sys.path[:] = [p for p in sys.path if p not in ("", str(tmp_path))]
    load_config(None, ["PLUGINS", "['reid_test_plugin_cwd']"])
    assert DATASET_REGISTRY.get("PluginCwdSet")("r").gallery == [("r/g.jpg", 9, 1)]


def test_an_entry_point_is_loaded_when_its_name_is_asked_for(tmp_path, monkeypatch):
    write_plugin(tmp_path, "reid_test_plugin_ep", "PluginEntryPointSet")
    dist = tmp_path / "reid_test_plugin_ep-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: reid-test-plugin-ep\n"
                                   "Version: 1.0\n")
    (dist / "entry_points.txt").write_text("[reid.plugins]\nep_set = reid_test_plugin_ep\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "reid_test_plugin_ep" not in sys.modules
    dataset = DATASET_REGISTRY.get("PluginEntryPointSet")("r")
    assert dataset.train[0] == ("r/a.jpg", 4, 0)
    assert "reid_test_plugin_ep" in sys.modules


def test_a_missing_plugin_is_a_one_line_error():
    with pytest.raises(ReidError, match=r"cannot import plugin module 'no_such_reid_plugin' "
                                        r"\(PLUGINS, --plugin\): No module named"):
        load_config(None, ["PLUGINS", "['no_such_reid_plugin']"])


def test_an_unknown_name_still_lists_the_registered_ones():
    with pytest.raises(ReidError, match=r"unknown dataset 'NoSuchSet'.*registered: .*Market1501"):
        DATASET_REGISTRY.get("NoSuchSet")


HEAD_PLUGIN = textwrap.dedent('''
    from reid.modeling.heads import HEAD_REGISTRY, EmbeddingHead

    @HEAD_REGISTRY.register()
    class {name}(EmbeddingHead):
        pass
''')


def test_the_plugin_option_adds_to_the_configs_plugins(tmp_path, monkeypatch, capsys):
    from reid.cli import main
    from toys import write_config
    (tmp_path / "reid_test_plugin_head.py").write_text(HEAD_PLUGIN.format(name="PluginHead"))
    write_plugin(tmp_path, "reid_test_plugin_recipe", "PluginRecipeSet")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = write_config(tmp_path / "tiny.yml", {"PLUGINS": ["reid_test_plugin_recipe"],
                                                  "OUTPUT_DIR": str(tmp_path / "out")})
    # the head exists only through --plugin, given after the override naming it
    assert main(["info", "--config", str(config), "MODEL.HEADS.NAME", "PluginHead",
                 "--plugin", "reid_test_plugin_head"]) == 0
    assert "PluginHead" in capsys.readouterr().out
    assert "reid_test_plugin_recipe" in sys.modules  # the recipe's own still imported
    assert main(["info", "--config", str(config), "--plugin", "no_such_reid_plugin"]) == 2
    assert "cannot import plugin module 'no_such_reid_plugin'" in capsys.readouterr().err
