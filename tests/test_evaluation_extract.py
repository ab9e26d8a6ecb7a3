"""extract_features (flip test, modes, multi-rank gather) and evaluate_model end to end."""
import numpy as np
import pytest
import torch
from torch import nn

from reid.errors import ReidError
from reid.evaluation import EvalOptions, evaluate_model, extract
from reid.evaluation.extract import extract_features


class FirstRowModel(nn.Module):
    """Features = the first pixel row of channel 0, so a horizontal flip reverses them."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.seen = []  # (training, inference_mode) at each call

    def forward(self, images):
        self.seen.append((self.training, torch.is_inference_mode_enabled()))
        return images[:, 0, 0, :] * self.scale


def make_loader(rows, pids, camids, batch_size):
    """An in-memory loader: dict batches with images B x 3 x H x W whose first row is `rows`."""
    rows = torch.as_tensor(rows, dtype=torch.float32)
    images = torch.rand(len(rows), 3, 4, rows.shape[1]) * 255
    images[:, 0, 0, :] = rows
    batches = []
    for start in range(0, len(rows), batch_size):
        part = slice(start, start + batch_size)
        batches.append({
            "images": images[part],
            "targets": torch.as_tensor(pids[part], dtype=torch.int64),
            "camids": torch.as_tensor(camids[part], dtype=torch.int64),
            "img_paths": [f"img_{i}.jpg" for i in range(len(rows))[part]],
        })
    return batches


@pytest.mark.parametrize("flip", [False, True])
def test_features_pids_camids_in_loader_order(flip):
    rows = [[1.0, 2.0, 3.0, 10.0], [0.0, 5.0, 5.0, 1.0], [4.0, 4.0, 0.0, 0.0],
            [7.0, 0.0, 0.0, 0.0], [2.0, 2.0, 2.0, 6.0]]
    pids, camids = np.array([3, 1, 4, 1, 5]), np.array([0, 1, 0, 2, 1])
    model = FirstRowModel()
    feats, out_pids, out_camids = extract_features(model, make_loader(rows, pids, camids, 2),
                                                   "cpu", flip=flip)
    expected = np.array(rows)
    if flip:
        # Mean of the features of the image and of its mirror (the row read backwards).
        expected = (expected + expected[:, ::-1]) / 2
    assert feats.dtype == torch.float32 and feats.shape == (5, 4)
    np.testing.assert_allclose(feats.numpy(), expected, atol=1e-6)
    np.testing.assert_array_equal(out_pids, pids)
    np.testing.assert_array_equal(out_camids, camids)
    # 3 batches, twice as many calls with flip, all in eval + inference mode.
    assert model.seen == [(False, True)] * (6 if flip else 3)


@pytest.mark.parametrize("training", [True, False])
def test_model_mode_is_restored(training):
    model = FirstRowModel().train(training)
    extract_features(model, make_loader([[1.0, 2.0]], np.array([0]), np.array([0]), 1), "cpu")
    assert model.training is training
    assert model.seen[0][0] is False


def test_mode_is_restored_when_the_model_fails():
    class Broken(nn.Module):
        def forward(self, images):
            raise RuntimeError("boom")

    model = Broken().train()
    with pytest.raises(RuntimeError, match="boom"):
        extract_features(model, make_loader([[1.0]], np.array([0]), np.array([0]), 1), "cpu")
    assert model.training


def test_gathers_every_rank_in_rank_order(monkeypatch):
    # This process plays rank 1 of 3; ranks 0 and 2 hold the shards before and after it.
    other = {
        0: (torch.tensor([[10.0, 11.0]]), np.array([100]), np.array([0])),
        2: (torch.tensor([[20.0, 21.0], [22.0, 23.0]]), np.array([200, 201]), np.array([2, 2])),
    }
    monkeypatch.setattr(extract.comm, "get_world_size", lambda: 3)
    monkeypatch.setattr(extract.comm, "get_rank", lambda: 1)
    monkeypatch.setattr(extract.comm, "all_gather", lambda local: [other[0], local, other[2]])
    loader = make_loader([[1.0, 2.0], [3.0, 4.0]], np.array([7, 8]), np.array([1, 1]), 1)
    feats, pids, camids = extract_features(FirstRowModel(), loader, "cpu")
    np.testing.assert_allclose(feats.numpy(), [[10, 11], [1, 2], [3, 4], [20, 21], [22, 23]])
    np.testing.assert_array_equal(pids, [100, 7, 8, 200, 201])
    np.testing.assert_array_equal(camids, [0, 1, 1, 2, 2])


# A toy test set: 2 queries, then 5 gallery items; features are 2-D.
QUERY_ROWS = [[1.0, 0.0], [0.0, 1.0]]
GALLERY_ROWS = [[1.0, 0.1], [1.0, 0.2], [0.1, 1.0], [1.0, 0.0], [0.0, 1.0]]
PIDS = np.array([0, 1, 0, 1, 1, 0, 0])
CAMIDS = np.array([0, 0, 1, 1, 2, 0, 2])


def test_evaluate_model_end_to_end():
    loader = make_loader(QUERY_ROWS + GALLERY_ROWS, PIDS, CAMIDS, batch_size=3)
    results = evaluate_model(FirstRowModel(), loader, num_query=2, device="cpu",
                             options=EvalOptions(metric="cosine")).metrics
    # Query 0 (pid 0, cam 0), cosine similarity order g3 g0 g1 g2 g4; g3 is junk (pid 0, cam 0).
    #   Kept: g0(+) g1(-) g2(-) g4(+): AP = (1/1 + 2/4) / 2 = 3/4, INP = 2/4, first hit rank 1.
    # Query 1 (pid 1, cam 0), order g4 g2 g1 g0 g3; no junk.
    #   Kept: g4(-) g2(+) g1(+) g0(-) g3(-): AP = (1/2 + 2/3) / 2 = 7/12, INP = 2/3, rank 2.
    assert results == pytest.approx({
        "Rank-1": 50.0, "Rank-5": 100.0, "Rank-10": 100.0,
        "mAP": 100 * (3 / 4 + 7 / 12) / 2, "mINP": 100 * (2 / 4 + 2 / 3) / 2,
    }, abs=1e-4)


def test_evaluate_model_euclidean_differs_from_cosine():
    # Scaling a gallery row changes the euclidean distance but not the cosine one:
    # g0 becomes [9, 0.9], far from query 0 in euclidean terms.
    rows = QUERY_ROWS + [[9.0, 0.9]] + GALLERY_ROWS[1:]
    loader = make_loader(rows, PIDS, CAMIDS, batch_size=4)
    cosine = evaluate_model(FirstRowModel(), loader, 2, "cpu", EvalOptions(metric="cosine")).metrics
    euclid = evaluate_model(FirstRowModel(), loader, 2, "cpu",
                            EvalOptions(metric="euclidean")).metrics
    assert cosine["Rank-1"] == pytest.approx(50.0)
    # Query 0 by squared euclidean: g3 0 (junk), g1 .04, g2 1.81, g4 2, g0 64.81.
    #   Kept g1(-) g2(-) g4(+) g0(+): first hit at rank 3, AP = (1/3 + 2/4) / 2.
    # Query 1: g4 0 (-), g2 .01 (+), g1 1.64 (+), g3 2, g0 81.01: AP = 7/12 as with cosine.
    assert euclid["Rank-1"] == pytest.approx(0.0)
    assert euclid["mAP"] == pytest.approx(100 * ((1 / 3 + 2 / 4) / 2 + 7 / 12) / 2, abs=1e-4)


@pytest.mark.parametrize("num_query", [0, 7])
def test_evaluate_model_rejects_a_bad_query_split(num_query):
    loader = make_loader(QUERY_ROWS + GALLERY_ROWS, PIDS, CAMIDS, batch_size=7)
    with pytest.raises(ReidError, match=f"7 extracted items .* got num_query={num_query}"):
        evaluate_model(FirstRowModel(), loader, num_query, "cpu")


class ShardLoader(list):
    """Batches of one process's shard, with the full test set as ``dataset`` (as a DataLoader)."""

    def __init__(self, batches, dataset_size):
        super().__init__(batches)
        self.dataset = range(dataset_size)


def test_gathered_shards_must_cover_the_test_set_once(monkeypatch):
    # Two ranks with 4 items each for a 7-item test set: a padded (DistributedSampler-style)
    # split that would duplicate one item.
    monkeypatch.setattr(extract.comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(extract.comm, "all_gather", lambda local: [local, local])
    shard = make_loader([[1.0, 2.0]] * 4, np.arange(4), np.zeros(4), batch_size=2)
    with pytest.raises(ReidError, match=r"gathered 8 items from 2 process\(es\) but the test set "
                                        r"has 7: .*\(use InferenceSampler\)"):
        extract_features(FirstRowModel(), ShardLoader(shard, 7), "cpu")
    # InferenceSampler's split of 8 items: 4 + 4, every item once.
    assert len(extract_features(FirstRowModel(), ShardLoader(shard, 8), "cpu")[1]) == 8


def test_a_real_loader_over_its_dataset_passes_the_check():
    from torch.utils.data import DataLoader

    from reid.data.samplers import InferenceSampler

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return {"images": torch.full((3, 2, 2), float(i)), "targets": i, "camids": 0}

    loader = DataLoader(Items(), batch_size=2, sampler=InferenceSampler(5))
    feats, pids, _ = extract_features(FirstRowModel(), loader, "cpu")
    np.testing.assert_array_equal(pids, np.arange(5))
    np.testing.assert_allclose(feats.numpy()[:, 0], np.arange(5))


def small_convnet() -> nn.Module:
    """Convolutions with BatchNorm (eval statistics set), pooled to a 16-d feature."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
    for norm in (model[1], model[4]):
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
    return model


def test_cpu_extraction_is_channels_last_and_restores_the_layout():
    model = small_convnet()
    loader = make_loader(np.random.default_rng(0).random((6, 12)), np.arange(6), np.zeros(6), 4)
    seen = []
    model.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    feats, _, _ = extract_features(model, loader, "cpu")
    assert seen == [True, True]  # both batches went in channels-last
    assert all(p.is_contiguous() for p in model.parameters())
    with torch.no_grad():  # the reference: the plain float32 forward of contiguous images
        expected = model.eval()(torch.cat([b["images"] for b in loader]).contiguous())
    torch.testing.assert_close(feats, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not extract.cpu_has_bf16(), reason="this CPU has no native bfloat16")
def test_bf16_features_stay_within_cosine_0_9999_of_float32():
    model = small_convnet()
    loader = make_loader(np.random.default_rng(1).random((8, 16)), np.arange(8), np.zeros(8), 8)
    plain, _, _ = extract_features(model, loader, "cpu")
    bf16, _, _ = extract_features(model, loader, "cpu", bf16=True)
    assert bf16.dtype == torch.float32
    assert not torch.equal(bf16, plain)  # autocast did run in bfloat16
    assert torch.nn.functional.cosine_similarity(bf16, plain).min() > 0.9999


def test_bf16_on_a_cpu_without_it_extracts_in_float32_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(extract, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(extract, "_WARNED_NO_BF16", set())
    model = small_convnet()
    loader = make_loader(np.random.default_rng(1).random((8, 16)), np.arange(8), np.zeros(8), 8)
    plain, _, _ = extract_features(model, loader, "cpu")
    with caplog.at_level("WARNING", logger="reid.evaluation.extract"):
        asked, _, _ = extract_features(model, loader, "cpu", bf16=True)
        again, _, _ = extract_features(model, loader, "cpu", bf16=True)  # a second evaluation
    assert torch.equal(again, plain)
    assert caplog.messages == [
        "TEST.BF16 is ignored on this CPU: it has no native bfloat16 (a CPU needs AVX-512 BF16 "
        "or AMX, a GPU Ampere or newer), and emulated bfloat16 is slower than float32; "
        "running in float32"]
    assert torch.equal(asked, plain)


class WithBackbone(nn.Module):
    """A Baseline-like model: ``backbone`` (conv -> BN pairs) then a head outside it."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(16, 4)

    def forward(self, images):
        return self.head(self.backbone(images))


class Branching(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.net = small_convnet()

    def forward(self, images):
        return self.net(images) if images.sum() > 0 else -self.net(images)


@pytest.mark.parametrize("backbone", [small_convnet, Branching])
def test_cpu_extraction_folds_batch_norms_on_a_copy_with_the_same_features(backbone):
    model = WithBackbone(backbone())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    loader = make_loader(np.random.default_rng(2).random((5, 12)), np.arange(5), np.zeros(5), 5)
    with extract.cpu_inference(model.eval(), torch.device("cpu")) as runner:
        folded = sum(isinstance(m, nn.BatchNorm2d) for m in runner.modules())
    feats, _, _ = extract_features(model, loader, "cpu")
    assert folded == (0 if backbone is small_convnet else 2)  # traced: every BN folded
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 2  # model untouched
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]) and value.is_contiguous(), key
    with torch.no_grad():
        expected = model(torch.cat([b["images"] for b in loader]))
    torch.testing.assert_close(feats, expected, rtol=1e-5, atol=1e-5)
