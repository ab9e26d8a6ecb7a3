import pytest
import torch
from torch import nn

from reid.engine.precise_bn import update_bn_stats
from toys import ToyReidNet, make_loader


def make_batches(count=5, size=6):
    generator = torch.Generator().manual_seed(0)
    # Different location and scale per batch, so averaging the wrong batches would show.
    return [torch.randn(size, 3, generator=generator) * (1 + i) + i for i in range(count)]


def two_bn_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(3, momentum=0.1), nn.Linear(3, 2),
                          nn.BatchNorm1d(2, momentum=0.3), nn.Dropout(0.5))
    with torch.no_grad():
        model[0].weight.uniform_(0.5, 2.0)
        model[0].bias.uniform_(-1.0, 1.0)
    model[0].running_mean.fill_(5.0)
    model[0].num_batches_tracked.fill_(17)
    return model


def expected_stats(model, batches):
    """Running stats by hand: the mean over batches of each BN input's batch mean and
    unbiased batch variance; the first BN normalises with the batch's (biased) statistics."""
    bn1, linear = model[0], model[1]
    means1, vars1, means2, vars2 = [], [], [], []
    for x in batches:
        mean, var = x.mean(0), x.var(0, unbiased=False)
        normalized = (x - mean) / torch.sqrt(var + bn1.eps) * bn1.weight + bn1.bias
        h = normalized @ linear.weight.T + linear.bias
        means1.append(mean)
        vars1.append(x.var(0, unbiased=True))
        means2.append(h.mean(0))
        vars2.append(h.var(0, unbiased=True))
    average = lambda values: torch.stack(values).mean(0)  # noqa: E731
    return average(means1), average(vars1), average(means2), average(vars2)


def test_running_stats_become_the_exact_average_over_the_batches():
    model = two_bn_model()
    batches = make_batches()
    # 7 iterations over 5 batches: the loader is restarted, batches 0 and 1 count twice.
    used = batches + batches[:2]
    with torch.no_grad():
        mean1, var1, mean2, var2 = expected_stats(model, used)
    update_bn_stats(model, batches, num_iters=7)
    assert torch.allclose(model[0].running_mean, mean1, atol=1e-5)
    assert torch.allclose(model[0].running_var, var1, atol=1e-4)
    assert torch.allclose(model[2].running_mean, mean2, atol=1e-5)
    assert torch.allclose(model[2].running_var, var2, atol=1e-4)


def test_everything_else_is_left_as_it_was():
    model = two_bn_model()
    model[3].eval()  # a submodule in another mode than its parent
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    update_bn_stats(model, make_batches(), num_iters=3)
    for name, p in model.named_parameters():
        assert torch.equal(p, params[name]), name
        assert p.grad is None
    assert [m.training for m in model] == [True, True, True, False]
    assert (model[0].momentum, model[2].momentum) == (0.1, 0.3)
    assert int(model[0].num_batches_tracked) == 17


def test_model_runs_its_inference_path_on_images():
    # A reid model in training mode wants a batch dict; precise-BN feeds it images only.
    model = ToyReidNet()
    images = [batch["images"] for batch in make_loader()]
    update_bn_stats(model, images, num_iters=2)
    bn = model.backbone[2]
    features = [model.backbone[1](x.flatten(1)) for x in images]
    expected = torch.stack([f.mean(0) for f in features]).mean(0)
    assert torch.allclose(bn.running_mean, expected.detach(), atol=1e-5)
    assert model.training


def test_zero_iterations_change_nothing():
    model = two_bn_model()
    update_bn_stats(model, make_batches(), num_iters=0)
    assert torch.equal(model[0].running_mean, torch.full((3,), 5.0))


def test_an_empty_loader_is_an_error():
    from reid.errors import ReidError
    with pytest.raises(ReidError, match="yielded no batch"):
        update_bn_stats(two_bn_model(), [], num_iters=2)
