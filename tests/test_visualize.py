"""Visual reports: the retrieval examples kept during evaluation (against brute force) and the
figures of reid.visualize (valid PNGs; rank-list frames checked pixel by pixel)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from reid.evaluation.evaluator import Evaluator
from reid.evaluation.examples import ExampleCollector, sampled_roc
from reid.evaluation.features import evaluate_features
from reid.visualize import (MATCH_COLOR, MISMATCH_COLOR, Curves, plot_distance_histograms,
                            plot_rank_list, plot_roc, plot_run_comparison, plot_training_curves,
                            write_evaluation_report)

torch.set_num_threads(1)

GREEN = tuple(int(MATCH_COLOR[i:i + 2], 16) for i in (1, 3, 5))
RED = tuple(int(MISMATCH_COLOR[i:i + 2], 16) for i in (1, 3, 5))


# --------------------------------------------------------------------------- references
def brute_force(dist, q_pids, g_pids, q_cams, g_cams, k):
    """Per query: top-k non-junk gallery indices by (distance, index), AP (None when the query
    has no true match in another camera), the nearest true match and its rank."""
    out = []
    for i in range(len(q_pids)):
        junk = (g_pids == q_pids[i]) & (g_cams == q_cams[i])
        order = sorted(np.flatnonzero(~junk), key=lambda j: (dist[i, j], j))
        matches = [rank for rank, j in enumerate(order, 1) if g_pids[j] == q_pids[i]]
        ap = (np.mean([(n + 1) / rank for n, rank in enumerate(matches)]) if matches else None)
        first = (order[matches[0] - 1], matches[0]) if matches else (None, 0)
        out.append({"top": order[:k], "ap": ap, "first": first})
    return out


def problem(seed=0, num_query=9, num_gallery=30, ids=5, cams=3, dim=3):
    """Integer features and squared-L2 distances: exact, with many ties."""
    rng = np.random.default_rng(seed)
    q = rng.integers(-2, 3, size=(num_query, dim)).astype(np.float32)
    g = rng.integers(-2, 3, size=(num_gallery, dim)).astype(np.float32)
    labels = [rng.integers(0, ids, n) for n in (num_query, num_gallery)]
    cameras = [rng.integers(0, cams, n) for n in (num_query, num_gallery)]
    dist = ((q[:, None, :].astype(np.float64) - g[None, :, :]) ** 2).sum(-1)
    return q, g, labels[0], labels[1], cameras[0], cameras[1], dist


# --------------------------------------------------------------------------- examples
@pytest.mark.parametrize("block_size", [1, 4, 100])
def test_collector_keeps_top_k_first_match_and_best_worst_like_brute_force(block_size):
    q, g, qp, gp, qc, gc, dist = problem()
    collector = ExampleCollector(qp, gp, qc, gc, top_k=4, max_pairs=10_000)
    metrics = evaluate_features(q, g, qp, gp, qc, gc, metric="euclidean",
                                block_size=block_size, observe=collector.observe)
    reference = brute_force(dist, qp, gp, qc, gc, k=4)
    for i, ref in enumerate(reference):
        kept = collector.top_index[i]
        assert kept[kept >= 0].tolist() == ref["top"]
        assert collector.top_dist[i][kept >= 0].tolist() == [dist[i, j] for j in ref["top"]]
        assert (collector.first_match[i], collector.first_match_rank[i]) == (
            ref["first"][0] if ref["first"][0] is not None else -1, ref["first"][1])
    valid = [i for i, ref in enumerate(reference) if ref["ap"] is not None]
    assert metrics.all_ap == pytest.approx([reference[i]["ap"] for i in valid])

    report = collector.report(metrics.all_ap, num_queries=2)
    by_ap = sorted(valid, key=lambda i: (-reference[i]["ap"], i))
    assert [r["index"] for r in report["best"]] == by_ap[:2]
    assert [r["index"] for r in report["worst"]] == sorted(
        valid, key=lambda i: (reference[i]["ap"], i))[:2]
    record = report["best"][0]
    i = record["index"]
    assert record["ap"] == pytest.approx(reference[i]["ap"])
    assert [item["index"] for item in record["gallery"]] == reference[i]["top"]
    assert [item["match"] for item in record["gallery"]] == [
        bool(gp[j] == qp[i]) for j in reference[i]["top"]]
    assert record["first_match"]["rank"] == reference[i]["first"][1]


def test_collector_samples_every_genuine_pair_and_only_impostors():
    q, g, qp, gp, qc, gc, dist = problem(seed=3)
    collector = ExampleCollector(qp, gp, qc, gc, max_pairs=25)
    for start in range(0, len(q), 4):
        collector.observe(start, dist[start:start + 4].astype(np.float32))
    genuine = (qp[:, None] == gp[None, :]) & (qc[:, None] != gc[None, :])
    impostor_values = set(dist[qp[:, None] != gp[None, :]].tolist())
    pairs = collector.report(np.zeros(int(genuine.any(axis=1).sum())))["distances"]
    assert pairs["genuine_pairs"] == genuine.sum()
    if genuine.sum() <= 25:
        assert sorted(pairs["genuine"]) == sorted(dist[genuine].tolist())
    assert len(pairs["impostor"]) == 25
    assert set(pairs["impostor"]) <= impostor_values


def test_impostor_sample_is_uniform_over_pairs():
    # 50 queries x 200 gallery items, all impostors, distance = column / 200: a uniform sample
    # has mean close to 0.4975 and covers the whole range.
    rows = np.tile(np.arange(200, dtype=np.float32) / 200, (50, 1))
    collector = ExampleCollector(np.zeros(50), np.ones(200), np.zeros(50), np.ones(200),
                                 max_pairs=1000)
    for start in range(0, 50, 7):
        collector.observe(start, rows[start:start + 7])
    sample = collector.impostor.sample()
    assert len(sample) == 1000
    assert sample.mean() == pytest.approx(0.4975, abs=0.04)
    assert sample.min() < 0.05 and sample.max() > 0.95


def test_sampled_roc_matches_hand_computed_points():
    far, tar = sampled_roc([0.1, 0.3], [0.2, 0.4])  # thresholds 0.1 0.2 0.3 0.4 inf
    assert far.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert tar.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]


def test_collector_rejects_ap_of_another_query_count():
    q, g, qp, gp, qc, gc, dist = problem()
    collector = ExampleCollector(qp, gp, qc, gc)
    collector.observe(0, dist.astype(np.float32))
    with pytest.raises(ValueError, match=r"got 1 AP values for \d+ valid queries"):
        collector.report(np.zeros(1))


class RecordsLoader(list):
    """A list of batches with a ``dataset.records`` like the data layer's test loaders."""

    def __init__(self, batches, records):
        super().__init__(batches)
        self.dataset = type("Records", (), {"records": records})()


def test_evaluator_writes_examples_with_image_paths(tmp_path):
    from reid.config import load_config
    from test_evaluation_extract import FirstRowModel, make_loader

    q, g, qp, gp, qc, gc, dist = problem(seed=1, num_query=5, num_gallery=12)
    rows, pids, cams = np.vstack([q, g]), np.concatenate([qp, gp]), np.concatenate([qc, gc])
    records = [(f"/images/{i}.png", int(p), int(c)) for i, (p, c) in enumerate(zip(pids, cams))]
    loader = RecordsLoader(make_loader(rows, pids, cams, batch_size=4), records)
    cfg = load_config(None, ["DATASETS.TESTS", '["SetA"]', "TEST.METRIC", "euclidean"])
    Evaluator(cfg, output_dir=tmp_path, build_loader=lambda c, n: (loader, 5)).evaluate(
        FirstRowModel(), "cpu")
    examples = json.loads((tmp_path / "examples" / "SetA.json").read_text())
    reference = brute_force(dist, qp, gp, qc, gc, k=examples["top_k"])
    best = examples["best"][0]
    assert examples["metric"] == "euclidean" and examples["num_gallery"] == 12
    assert best["path"] == f"/images/{best['index']}.png"
    assert [item["path"] for item in best["gallery"]] == [
        f"/images/{5 + j}.png" for j in reference[best["index"]]["top"]]


# --------------------------------------------------------------------------- figures
def solid_image(path, color, size=(16, 32)):
    Image.new("RGB", size, color).save(path)
    return str(path)


def colour_runs(png, colour, tolerance=30, min_pixels=4):
    """Left-to-right x ranges of the columns holding at least ``min_pixels`` pixels of
    ``colour`` (a frame's left/right sides and its top/bottom edges make every column of a
    framed cell qualify; gaps between cells do not)."""
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    close = (np.abs(pixels - np.array(colour)) <= tolerance).all(axis=-1)
    flagged = close.sum(axis=0) >= min_pixels
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flagged.astype(int), [0]])))
    return list(zip(edges[::2], edges[1::2]))


def frame_sequence(png):
    runs = [(start, "green") for start, _ in colour_runs(png, GREEN)]
    runs += [(start, "red") for start, _ in colour_runs(png, RED)]
    return [colour for _, colour in sorted(runs)]


def gallery_item(path, match, distance, camid=1, pid=7):
    return {"path": path, "match": match, "distance": distance, "camid": camid, "pid": pid}


def test_rank_list_frames_are_green_for_same_id_and_red_otherwise(tmp_path):
    grey = solid_image(tmp_path / "grey.png", (128, 128, 128))
    blue = solid_image(tmp_path / "blue.png", (60, 80, 200))
    query = {"path": grey, "pid": 7, "camid": 0, "ap": 0.5,
             "gallery": [gallery_item(blue, True, 0.1), gallery_item(grey, False, 0.2, pid=3),
                         gallery_item(blue, False, 0.3, pid=4), gallery_item(grey, True, 0.4)],
             "first_match": {**gallery_item(blue, True, 0.1), "rank": 1}}
    png = plot_rank_list([query], tmp_path / "ranks.png", title="one query")
    assert frame_sequence(png) == ["green", "red", "red", "green"]


def test_rank_list_shows_a_late_first_match_last(tmp_path):
    blue = solid_image(tmp_path / "blue.png", (60, 80, 200))
    query = {"path": blue, "pid": 7, "camid": 0, "ap": 0.05,
             "gallery": [gallery_item(blue, False, 0.1 * i, pid=i) for i in range(1, 4)],
             "first_match": {**gallery_item(None, True, 0.9), "rank": 12}}  # image missing
    png = plot_rank_list([query, {**query, "first_match": None}], tmp_path / "late.png")
    # Two rows share columns: three red cells, then the late match's green one.
    assert frame_sequence(png) == ["red", "red", "red", "green"]
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > image.height / 2


def assert_png(path, min_bytes=8_000):
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    assert path.stat().st_size > min_bytes


def test_distance_histograms_draw_both_kinds(tmp_path):
    rng = np.random.default_rng(0)
    png = plot_distance_histograms(rng.normal(0.4, 0.1, 300), rng.normal(0.9, 0.1, 3000),
                                   tmp_path / "hist.png", metric="cosine")
    assert_png(png)
    assert colour_runs(png, GREEN) and colour_runs(png, RED)


def test_roc_training_and_comparison_figures_are_pngs(tmp_path):
    far, tar = sampled_roc(np.linspace(0, 0.5, 50), np.linspace(0.3, 1.0, 500))
    assert_png(plot_roc(far, tar, tmp_path / "roc.png", tar_at_far={1e-2: 0.4}, note="sampled"))
    steps = np.arange(10, 110, 10)
    curves = Curves(series={"total_loss": (steps, 5 / steps), "loss_cls": (steps, 3 / steps),
                            "lr": (steps, np.full(10, 3.5e-4)),
                            "Market1501 mAP": ([50, 100], [40.0, 55.0])},
                    final={"Market1501 mAP": (100, 60.0)})
    assert_png(plot_training_curves(curves, tmp_path / "train.png"))
    other = Curves(series={"total_loss": (steps, 4 / steps)}, final={"Market1501 mAP": (100, 70)})
    assert_png(plot_run_comparison({"#1 a": other, "#2 b": curves, "#3 c": Curves()},
                                   tmp_path / "runs.png"))
    with pytest.raises(ValueError, match="no series and no final values"):
        plot_training_curves(Curves(), tmp_path / "empty.png")


def test_evaluation_report_from_the_evaluate_stage_outputs(tmp_path):
    q, g, qp, gp, qc, gc, dist = problem(seed=2)
    image = solid_image(tmp_path / "person.png", (90, 90, 90))
    collector = ExampleCollector(qp, gp, qc, gc, top_k=3)
    metrics = evaluate_features(q, g, qp, gp, qc, gc, metric="euclidean",
                                observe=collector.observe)
    report = collector.report(metrics.all_ap, q_paths=[image] * len(q), g_paths=[image] * len(g))
    (tmp_path / "out" / "examples").mkdir(parents=True)
    (tmp_path / "out" / "examples" / "SetA.json").write_text(json.dumps(report))
    training = Curves(series={"total_loss": ([1, 2, 3], [3.0, 2.0, 1.5])})
    written = write_evaluation_report(tmp_path / "out", tmp_path / "visual", training,
                                      test_sets=["SetA", "SetB"])  # SetB has no examples
    assert [p.name for p in written] == ["SetA_ranks_best.png", "SetA_ranks_worst.png",
                                         "SetA_distances.png", "SetA_roc.png",
                                         "training_curves.png"]
    for path in written:
        assert_png(path)
