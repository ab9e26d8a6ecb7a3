"""Transforms: float32 CHW in 0..255, each INPUT.* switch does what it says."""
import pytest
import torch
from PIL import Image

from oracles import bicubic_chw
from reid.config import get_cfg
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
