"""FastReID 1.4 augmentations: INPUT.CROP (random resized crop / test center crop), INPUT.AFFINE,
INPUT.AUTOAUG, INPUT.AUGMIX; outputs stay float32 CHW in 0..255."""
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from oracles import bicubic_chw
from reid.config import load_config
from reid.data.transforms import build_transforms
from reid.errors import ReidError
from toys import picture

H, W = 32, 16
BASE = ["INPUT.SIZE_TRAIN", f"[{H}, {W}]", "INPUT.SIZE_TEST", f"[{H}, {W}]",
        "INPUT.FLIP.ENABLED", "False", "INPUT.PADDING.ENABLED", "False"]


def cfg_with(*overrides):
    return load_config(None, BASE + list(overrides))


def resized(img: Image.Image) -> torch.Tensor:
    """The resize to SIZE_TRAIN alone."""
    return bicubic_chw(img, H, W)


def check_image(out, shape):
    assert type(out) is torch.Tensor and out.dtype == torch.float32 and out.shape == shape
    assert 0 <= out.min() and out.max() <= 255 and out.max() > 100  # 0..255, not 0..1


@pytest.mark.parametrize("size, shape", [("[24]", (3, 24, 24)), ("[20, 12]", (3, 20, 12))])
def test_crop_output_size_train_and_test(size, shape):
    cfg = cfg_with("INPUT.CROP.ENABLED", "True", "INPUT.CROP.SIZE", size)
    torch.manual_seed(0)
    for _ in range(3):
        check_image(build_transforms(cfg, is_train=True)(picture(1)), shape)
    check_image(build_transforms(cfg, is_train=False)(picture(1)), shape)


def test_random_resized_crop_takes_a_region_of_the_scale_and_ratio():
    # SIZE_TRAIN 32 x 16 (area 512); scale 1/4 and ratio w/h = 1/2 give a 16 x 8 region:
    # w = sqrt(128 * 0.5) = 8, h = sqrt(128 / 0.5) = 16. Output size = region size, so the
    # output must be exactly one 16 x 8 window of the resized image, and the window moves.
    img = picture(2)
    full = resized(img)
    windows = {(y, x): full[:, y:y + 16, x:x + 8]
               for y in range(H - 16 + 1) for x in range(W - 8 + 1)}
    cfg = cfg_with("INPUT.CROP.ENABLED", "True", "INPUT.CROP.SIZE", "[16, 8]",
                   "INPUT.CROP.SCALE", "[0.25, 0.25]", "INPUT.CROP.RATIO", "[0.5, 0.5]")
    pipeline = build_transforms(cfg, is_train=True)
    torch.manual_seed(0)
    found = set()
    for _ in range(6):
        out = pipeline(img)
        matches = [yx for yx, win in windows.items() if torch.equal(out, win)]
        assert len(matches) == 1
        found.add(matches[0])
    assert len(found) > 1


def test_test_time_crop_is_the_center_window():
    cfg = cfg_with("INPUT.CROP.ENABLED", "True", "INPUT.CROP.SIZE", "[16, 8]")
    out = build_transforms(cfg, is_train=False)(picture(3))
    assert torch.equal(out, resized(picture(3))[:, 8:24, 4:12])


def test_crop_then_padding_keeps_the_crop_size():
    cfg = cfg_with("INPUT.CROP.ENABLED", "True", "INPUT.CROP.SIZE", "[20, 10]",
                   "INPUT.PADDING.ENABLED", "True", "INPUT.PADDING.SIZE", "4")
    check_image(build_transforms(cfg, is_train=True)(picture(4)), (3, 20, 10))


@pytest.mark.parametrize("key, text, message", [
    ("INPUT.CROP.SIZE", "[1, 2, 3]", r"INPUT.CROP.SIZE must be \[size\] or \[height, width\] "
                                     r"in pixels; got \[1, 2, 3\]"),
    ("INPUT.CROP.SCALE", "[1.0, 0.5]", r"INPUT.CROP.SCALE must be \[low, high\] with "
                                       r"0 < low <= high; got \[1.0, 0.5\]"),
    ("INPUT.CROP.RATIO", "[0.5]", r"INPUT.CROP.RATIO must be \[low, high\]"),
])
def test_bad_crop_settings(key, text, message):
    with pytest.raises(ReidError, match=message):
        build_transforms(cfg_with("INPUT.CROP.ENABLED", "True", key, text), is_train=True)


def test_crop_settings_are_ignored_when_crop_is_off():
    cfg = cfg_with("INPUT.CROP.SIZE", "[1, 2, 3]")
    check_image(build_transforms(cfg, is_train=True)(picture(5)), (3, H, W))


def test_affine_uses_fastreids_ranges_and_keeps_size_and_range():
    pipeline = build_transforms(cfg_with("INPUT.AFFINE.ENABLED", "True"), is_train=True)
    affine = [t for t in pipeline.transforms if isinstance(t, v2.RandomAffine)]
    assert len(affine) == 1
    assert list(affine[0].degrees) == [-10.0, 10.0]
    assert tuple(affine[0].scale) == (0.9, 1.1)
    assert list(affine[0].shear) == pytest.approx([-0.1, 0.1])
    assert affine[0].translate is None
    torch.manual_seed(0)
    outs = [pipeline(picture(6)) for _ in range(4)]
    for out in outs:
        check_image(out, (3, H, W))
    assert any(not torch.equal(out, resized(picture(6))) for out in outs)


@pytest.mark.parametrize("name", ["AUTOAUG", "AUGMIX"])
def test_autoaug_and_augmix_follow_their_probability(name):
    img = picture(7)
    off = build_transforms(cfg_with(f"INPUT.{name}.ENABLED", "True", f"INPUT.{name}.PROB", "0.0"),
                           is_train=True)
    assert torch.equal(off(img), resized(img))
    on = build_transforms(cfg_with(f"INPUT.{name}.ENABLED", "True", f"INPUT.{name}.PROB", "1.0"),
                          is_train=True)
    torch.manual_seed(0)
    outs = [on(img) for _ in range(4)]
    for out in outs:
        check_image(out, (3, H, W))
    assert any(not torch.equal(out, resized(img)) for out in outs)
