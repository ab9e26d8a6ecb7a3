"""Transforms: float32 CHW in 0..255, each INPUT.* switch does what it says, FastReID 1.4's
augmentations included (INPUT.CROP: random resized crop / test center crop, INPUT.AFFINE,
INPUT.AUTOAUG, INPUT.AUGMIX)."""
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from oracles import bicubic_chw
from reid.config import get_cfg, load_config
from reid.data.transforms import RandomPatch, build_transforms
from reid.errors import ReidError
from toys import picture, with_changes

H, W = 32, 16


def make_cfg(**changes):
    cfg = get_cfg()
    cfg.INPUT.SIZE_TRAIN = [H, W]
    cfg.INPUT.SIZE_TEST = [H, W]
    return with_changes(cfg, changes)


def reference(img: Image.Image) -> torch.Tensor:
    """The test-time pipeline's expected output: the bicubic resize to H x W only."""
    return bicubic_chw(img, H, W)


def plain_train(**changes):
    base = dict(INPUT__DO_FLIP=False, INPUT__DO_PAD=False)
    return build_transforms(make_cfg(**{**base, **changes}), is_train=True)


def test_test_pipeline_is_a_bicubic_resize_in_0_255():
    img = picture()
    out = build_transforms(make_cfg(), is_train=False)(img)
    assert type(out) is torch.Tensor and out.dtype == torch.float32 and out.shape == (3, H, W)
    assert torch.equal(out, reference(img))
    assert out.max() > 200  # not divided by 255


def test_default_train_pipeline_shape_and_range():
    out = build_transforms(make_cfg(), is_train=True)(picture())
    assert type(out) is torch.Tensor and out.dtype == torch.float32 and out.shape == (3, H, W)
    assert 0 <= out.min() and out.max() <= 255 and out.max() > 200


def test_flip_with_probability_one_mirrors():
    img = picture(1)
    out = plain_train(INPUT__DO_FLIP=True, INPUT__FLIP_PROB=1.0)(img)
    assert torch.equal(out, reference(img).flip(-1))
    assert torch.equal(plain_train()(img), reference(img))  # everything off: resize only


def test_pad_then_crop_is_a_shifted_window_of_the_padded_image():
    img = picture(2)
    padded = torch.nn.functional.pad(reference(img), (10, 10, 10, 10))  # constant 0
    windows = {(y, x): padded[:, y:y + H, x:x + W] for y in range(21) for x in range(21)}
    torch.manual_seed(0)
    offsets = set()
    for _ in range(5):
        out = plain_train(INPUT__DO_PAD=True, INPUT__PADDING=10)(img)
        found = [yx for yx, win in windows.items() if torch.equal(out, win)]
        assert len(found) == 1
        offsets.add(found[0])
    assert len(offsets) > 1  # the crop moves


def test_random_erasing_uses_the_0_255_value():
    img = picture(3)
    out = plain_train(INPUT__REA__ENABLED=True, INPUT__REA__PROB=1.0,
                      INPUT__REA__VALUE=[7.0, 8.0, 9.0])(img)
    erased = (out[0] == 7) & (out[1] == 8) & (out[2] == 9)
    assert erased.sum() >= 0.02 * H * W * 0.5
    ref = reference(img)
    assert torch.equal(out[:, ~erased], ref[:, ~erased])


@pytest.mark.parametrize("switch", [
    dict(INPUT__CJ__ENABLED=True, INPUT__CJ__PROB=1.0),
    dict(INPUT__DO_AFFINE=True),
    dict(INPUT__DO_AUTOAUG=True, INPUT__AUTOAUG_PROB=1.0),
    dict(INPUT__DO_AUGMIX=True, INPUT__AUGMIX_PROB=1.0),
])
def test_photometric_and_geometric_switches_change_the_image(switch):
    img = picture(4)
    torch.manual_seed(0)
    outs = [plain_train(**switch)(img) for _ in range(4)]
    assert all(o.dtype == torch.float32 and o.shape == (3, H, W) for o in outs)
    assert all(0 <= o.min() and o.max() <= 255 for o in outs)
    assert any(not torch.equal(o, reference(img)) for o in outs)


def test_probability_zero_switches_do_nothing():
    img = picture(5)
    off = plain_train(INPUT__CJ__ENABLED=True, INPUT__CJ__PROB=0.0, INPUT__DO_AUTOAUG=True,
                      INPUT__AUTOAUG_PROB=0.0, INPUT__REA__ENABLED=True, INPUT__REA__PROB=0.0)
    assert torch.equal(off(img), reference(img))


def test_random_patch_pastes_content_of_earlier_images():
    torch.manual_seed(0)
    rpt = RandomPatch(p=1.0, min_pool=3)
    colours = [float(10 * (i + 1)) for i in range(6)]
    outs = [rpt(torch.full((3, H, W), c)) for c in colours]
    assert all(torch.all(o == c) for o, c in zip(outs[:3], colours[:3]))  # pool filling
    for out, own in zip(outs[3:], colours[3:]):
        values = set(out.unique().tolist())
        assert own in values and len(values - {own}) == 1
        assert (values - {own}).pop() in colours[:colours.index(own)]


def test_random_patch_from_config_and_bad_padding_mode():
    out = plain_train(INPUT__RPT__ENABLED=True, INPUT__RPT__PROB=1.0)(picture(6))
    assert out.shape == (3, H, W) and out.dtype == torch.float32
    with pytest.raises(ReidError, match="INPUT.PADDING_MODE must be one of constant, edge, "
                                        "reflect, symmetric; got 'mirror'"):
        build_transforms(make_cfg(INPUT__PADDING_MODE="mirror"), is_train=True)


# --------------------------------- FastReID 1.4 augmentations: INPUT.CROP, AFFINE, AUTOAUG, AUGMIX

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
