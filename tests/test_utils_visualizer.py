"""reid.utils.visualizer: rank lists of named queries (hand-ranked below, the query's identity
under its own camera left out), query naming and its errors, `reid visualize` end to end."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from reid.cli import main
from reid.data.datasets import SyntheticMarket1501
from reid.errors import ReidError
from reid.utils.visualizer import Visualizer, average_precision, named_query_indices
from toys import randomised_state, save_fastreid_style, write_config

QUERY = [("q/0001_c1.jpg", 1, 0), ("q/0002_c2.jpg", 2, 1)]
GALLERY = [("g/0001_c1.jpg", 1, 0),   # query 0's identity, same camera: left out for it
           ("g/0002_c2.jpg", 2, 1),
           ("g/0001_c3.jpg", 1, 2),
           ("g/0003_c2.jpg", 3, 1)]


def test_rank_list_of_a_named_query():
    visualizer = Visualizer(QUERY, GALLERY)
    visualizer.get_model_output(np.array([[0.1, 0.3, 0.5, 0.2]]), [0])
    order, matches = visualizer.get_matched_result(0)
    assert order.tolist() == [3, 1, 2] and matches.tolist() == [False, False, True]
    row = visualizer.rank_list(0, max_rank=2)
    assert row["path"] == "q/0001_c1.jpg" and row["pid"] == 1 and row["camid"] == 0
    assert row["ap"] == pytest.approx(1 / 3)  # the one match at rank 3
    assert [(g["path"], g["rank"], g["match"]) for g in row["gallery"]] == [
        ("g/0003_c2.jpg", 1, False), ("g/0002_c2.jpg", 2, False)]
    assert row["gallery"][0]["distance"] == pytest.approx(0.2)
    assert (row["first_match"]["path"], row["first_match"]["rank"]) == ("g/0001_c3.jpg", 3)


def test_the_second_query_keeps_other_cameras_of_its_identity():
    visualizer = Visualizer(QUERY, GALLERY)
    visualizer.get_model_output(np.array([[0.4, 0.9, 0.1, 0.2]]), [1])
    order, matches = visualizer.get_matched_result(0)
    # query 1 is identity 2 under camera 1: gallery item 1 (2, camera 1) is left out
    assert order.tolist() == [2, 3, 0] and not matches.any()
    assert visualizer.rank_list(0)["first_match"] is None


def test_average_precision_by_hand():
    assert average_precision(np.array([True, False, True])) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(np.array([False, False])) == 0.0


def test_distances_must_fit_the_queries_and_gallery():
    with pytest.raises(ReidError, match=r"distances of shape \(1, 3\) do not match 1 queries "
                                        "and a gallery of 4"):
        Visualizer(QUERY, GALLERY).get_model_output(np.zeros((1, 3)), [0])


def test_queries_are_named_by_index_file_name_or_path():
    assert named_query_indices(QUERY, ["1", "0001_c1.jpg", "q/0002_c2.jpg"], "Set") == [1, 0, 1]
    with pytest.raises(ReidError, match=r"query index 2 is outside 0..1 \(Set has 2 queries\)"):
        named_query_indices(QUERY, ["2"], "Set")
    with pytest.raises(ReidError, match=r"no query image named 'x.jpg' in Set \(give an index "
                                        r"0..1 or a query file name such as 0001_c1.jpg\)"):
        named_query_indices(QUERY, ["x.jpg"], "Set")


def test_reid_visualize_draws_the_named_queries(tmp_path, tiny_root, capsys):
    torch.set_num_threads(1)
    config = write_config(tmp_path / "tiny.yml", {"TEST.IMS_PER_BATCH": 16})
    weights = save_fastreid_style(tmp_path / "w.pth", randomised_state())
    query = SyntheticMarket1501(tiny_root).query
    name = query[3][0].rsplit("/", 1)[-1]
    output = tmp_path / "figures" / "ranks.png"
    assert main(["visualize", "--config", str(config), "--weights", str(weights),
                 "--query", "0", "--query", name, "--max-rank", "4", "--output", str(output),
                 "DATASETS.ROOT", str(tiny_root), "DATASETS.TESTS",
                 "('SyntheticMarket1501',)"]) == 0
    assert capsys.readouterr().out.strip() == (f"wrote the rank lists of queries 0, 3 to "
                                               f"{output}")
    with Image.open(output) as figure:
        width, height = figure.size
    assert width > height > 100  # two rows of 1 + 4 (+ a late match) cells
    assert main(["visualize", "--config", str(config), "--weights", str(weights),
                 "--query", "nope.jpg", "DATASETS.ROOT", str(tiny_root), "DATASETS.TESTS",
                 "('SyntheticMarket1501',)"]) == 2
    assert "no query image named 'nope.jpg' in SyntheticMarket1501" in capsys.readouterr().err


def test_ranking_by_ap_and_pair_distances(tmp_path, monkeypatch):
    visualizer = Visualizer(QUERY, GALLERY)
    # query 0: its one match at rank 3 (AP 1/3); query 1: no match (AP 0)
    visualizer.get_model_output(np.array([[0.1, 0.3, 0.5, 0.2], [0.4, 0.9, 0.1, 0.2]]), [0, 1])
    drawn = []
    monkeypatch.setattr("reid.visualize.plot_rank_list",
                        lambda rows, output, title, top_k: drawn.append(rows) or output)
    visualizer.vis_ranking_list(tmp_path / "worst.png", num_vis=1)
    visualizer.vis_ranking_list(tmp_path / "best.png", num_vis=2, rank_sort="descending")
    assert [[row["path"] for row in rows] for rows in drawn] == [
        ["q/0002_c2.jpg"], ["q/0001_c1.jpg", "q/0002_c2.jpg"]]
    genuine, impostor = visualizer.pair_distances()
    assert genuine.tolist() == [0.5]  # query 0 with g/0001_c3
    assert sorted(impostor.tolist()) == sorted([0.2, 0.3, 0.1, 0.2, 0.4])
    assert visualizer.plot_distribution(tmp_path / "pairs.png", "cosine").is_file()
    with pytest.raises(ReidError, match="rank_sort must be ascending or descending"):
        visualizer.vis_ranking_list(tmp_path / "x.png", rank_sort="random")
