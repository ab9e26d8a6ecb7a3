"""`reid extract --input DIR` (folder mode, next to the test-set mode) and `reid info`."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from reid.cli import main
from reid.config import load_config
from reid.inference import load_model
from reid.modeling import build_model
from toys import TINY_SIZE as SIZE, randomised_state, save_fastreid_style, write_config

# relative path -> seed of its random pixels; nested folders and every extension's case
IMAGES = {"b.png": 1, "a/z.png": 2, "a/c.PNG": 3, "d/e/f.png": 4, "0.png": 5}


@pytest.fixture
def model_files(tmp_path):
    torch.set_num_threads(1)
    return write_config(tmp_path / "tiny.yml", {"TEST.IMS_PER_BATCH": 2}), \
        save_fastreid_style(tmp_path / "w.pth", randomised_state())


def pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*SIZE, 3), dtype=np.uint8)


def write_images(folder) -> None:
    for name, seed in IMAGES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        # already at INPUT.SIZE_TEST: the test transform's resize leaves the pixels as they are
        Image.fromarray(pixels(seed)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")


def reference_features(config, weights, names, flip: bool) -> np.ndarray:
    model = load_model(config, weights)
    images = torch.stack([torch.from_numpy(pixels(IMAGES[n])).permute(2, 0, 1).float()
                          for n in names])
    with torch.no_grad():
        feats = model(images)
        if flip:
            feats = (feats + model(images.flip(3))) / 2
    return feats.numpy()


@pytest.mark.parametrize("flip", [False, True])
def test_extract_folder_writes_sorted_paths_and_their_features(model_files, tmp_path, flip):
    config, weights = model_files
    write_images(tmp_path / "images")
    out = tmp_path / "out" / "feats.npz"
    assert main(["extract", "--config", str(config), "--weights", str(weights),
                 "--input", str(tmp_path / "images"), "--output", str(out),
                 "TEST.FLIP_ENABLED", str(flip)]) == 0
    data = np.load(out)  # no pickle needed: paths are a unicode array
    assert set(data.files) == {"features", "paths"}
    expected = ["0.png", "a/c.PNG", "a/z.png", "b.png", "d/e/f.png"]
    assert data["paths"].tolist() == expected
    assert data["features"].dtype == np.float32 and data["features"].shape == (5, 8)
    np.testing.assert_allclose(data["features"],
                               reference_features(config, weights, expected, flip),
                               rtol=1e-4, atol=1e-4)
    if flip:  # the mirror really was averaged in
        assert not np.allclose(data["features"],
                               reference_features(config, weights, expected, False), atol=1e-4)
    assert [p.name for p in out.parent.iterdir()] == ["feats.npz"]  # no temp file left


def run_failing(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("reid: error:")]
    assert len(errors) == 1
    return errors[0]


def test_extract_folder_errors_name_the_path(model_files, tmp_path, capsys):
    config, weights = model_files
    base = ["extract", "--config", str(config), "--weights", str(weights),
            "--output", str(tmp_path / "f.npz")]
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    err = run_failing(base + ["--input", str(tmp_path / "empty")], capsys)
    assert err == (f"reid: error: no images under {tmp_path / 'empty'} (expected .jpg, .jpeg, "
                   ".png, .bmp files, searched recursively)")
    err = run_failing(base + ["--input", str(tmp_path / "nowhere")], capsys)
    assert f"input folder {tmp_path / 'nowhere'} does not exist" in err
    write_images(tmp_path / "images")
    (tmp_path / "images" / "broken.jpg").write_bytes(b"not a jpeg")
    err = run_failing(base + ["--input", str(tmp_path / "images")], capsys)
    assert f"cannot read image {tmp_path / 'images' / 'broken.jpg'}" in err
    err = run_failing(base + ["--input", str(tmp_path / "images"), "--dataset", "Market1501"],
                      capsys)
    assert "--input DIR (an image folder) or --dataset NAME" in err
    assert not (tmp_path / "f.npz").exists()


def test_extract_test_set_mode_still_works(model_files, tiny_root, tmp_path):
    config, weights = model_files
    out = tmp_path / "set.npz"
    assert main(["extract", "--config", str(config), "--weights", str(weights),
                 "--output", str(out), "DATASETS.ROOT", str(tiny_root),
                 "DATASETS.TESTS", '("SyntheticMarket1501",)']) == 0
    data = np.load(out)
    assert data["features"].shape == (len(data["pids"]), 8)
    assert 0 < int(data["num_query"]) < len(data["pids"])


# --------------------------------------------------------------------------- info
def info_rows(capsys) -> dict[str, str]:
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        name, value = re.split(r"\s{2,}", line.strip(), maxsplit=1)
        rows[name] = value
    return rows


def test_info_resnet18_parameters(tmp_path, capsys):
    config = tmp_path / "r18.yml"
    config.write_text("MODEL:\n  BACKBONE:\n    DEPTH: 18x\n    FEAT_DIM: 512\n"
                      "    PRETRAIN: True\n"  # info must not need (or download) ImageNet weights
                      "INPUT:\n  SIZE_TEST: [64, 32]\n")
    assert main(["info", "--config", str(config), "MODEL.HEADS.NUM_CLASSES", "10"]) == 0
    rows = info_rows(capsys)
    cfg = load_config(config, ["MODEL.HEADS.NUM_CLASSES", "10", "MODEL.BACKBONE.PRETRAIN", "False"])
    model = build_model(cfg)
    total = sum(p.numel() for p in model.parameters())
    # torchvision's resnet18 has 11,689,512 parameters, 513,000 of them in its fc layer; the
    # BNNeck adds 2 x 512 and the classifier 10 x 512. The BNNeck's bias is frozen.
    assert total == 11_689_512 - 513_000 + 2 * 512 + 10 * 512
    assert rows["parameters"] == f"{total:,} (trainable {total - 512:,})"
    assert rows["meta-architecture"] == "Baseline"
    assert rows["backbone"] == "build_resnet_backbone" and rows["head"] == "EmbeddingHead"
    assert rows["feature size"] == "512"


def test_info_flops_match_a_hand_count(tmp_path, capsys):
    # tiny backbone: 3x3 conv 3->8, stride 2, on 32x16 -> 16x8 map; head: 1x1 conv 8->4 on the
    # pooled 1x1 map. BN, ReLU and pooling are not counted; a multiply-add is 2 FLOPs.
    config = write_config(tmp_path / "tiny.yml", {"MODEL.HEADS.EMBEDDING_DIM": 4})
    assert main(["info", "--config", str(config)]) == 0
    rows = info_rows(capsys)
    flops = 2 * (8 * 16 * 8) * (3 * 3 * 3) + 2 * 4 * 8
    assert rows["FLOPs"].startswith(f"{flops:,} at 32x16 (multiply-add = 2 FLOPs")
    assert float(rows["GFLOPs"]) == pytest.approx(flops / 1e9, abs=5e-4)
    assert rows["feature size"] == "4"
    # parameters by hand: conv 8*3*3*3, BN 2*8, embedding conv 4*8, BNNeck 2*4, classifier 1*4
    total = 8 * 27 + 16 + 32 + 8 + 4
    assert rows["parameters"] == f"{total:,} (trainable {total - 4:,})"


def test_info_counts_the_center_crop_size(tmp_path, capsys):
    config = write_config(tmp_path / "tiny.yml", {"INPUT.CROP.ENABLED": True,
                                                  "INPUT.CROP.SIZE": [16, 8]})
    assert main(["info", "--config", str(config)]) == 0
    assert info_rows(capsys)["FLOPs"].startswith(f"{2 * (8 * 8 * 4) * 27:,} at 16x8 ")
