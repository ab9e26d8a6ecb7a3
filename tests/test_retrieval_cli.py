"""`reid index build` + `reid search` on the tiny synthetic set: Flat top-1 = the exact
engine's, answers survive a reload, the MLflow index run, one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from reid.cli import main
from reid.data.datasets import DATASET_REGISTRY
from reid.evaluation.distance import compute_distance
from reid.retrieval.store import INDEX, MANIFEST
from toys import randomised_state, save_fastreid_style, write_config

DATASET = "SyntheticMarket1501"


@pytest.fixture(scope="module")
def built(tiny_root, tmp_path_factory):
    """A Flat index of the tiny set's gallery, and the model files it was built with."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("index")
    config = write_config(tmp / "tiny.yml", {"TEST.IMS_PER_BATCH": 16})
    weights = save_fastreid_style(tmp / "w.pth", randomised_state())
    assert main(["index", "build", "--config", str(config), "--weights", str(weights),
                 "--dataset", DATASET, "--index-type", "Flat", "--output", str(tmp / "idx"),
                 "--no-track", "DATASETS.ROOT", str(tiny_root)]) == 0
    return tmp, config, weights


def test_flat_top1_of_every_query_is_the_exact_engines(built, tiny_root, capsys):
    tmp, config, weights = built
    dataset = DATASET_REGISTRY.get(DATASET)(tiny_root)
    query_dir = Path(dataset.query[0][0]).parent
    out = tmp / "hits.json"
    assert main(["search", "--index", str(tmp / "idx"), "--query", str(query_dir), "-k", "5",
                 "--output", str(out), "--visualize", str(tmp / "ranks.png")]) == 0
    hits = json.loads(out.read_text())
    # the exact engine on the same model's features, written out here
    assert main(["extract", "--config", str(config), "--weights", str(weights), "--dataset",
                 DATASET, "--output", str(tmp / "set.npz"), "DATASETS.ROOT",
                 str(tiny_root)]) == 0
    data = np.load(tmp / "set.npz")
    num_query = int(data["num_query"])
    dist = compute_distance(data["features"][:num_query], data["features"][num_query:])
    gallery_paths = [str(Path(r[0]).resolve()) for r in dataset.gallery]
    for row, (path, _, _) in enumerate(dataset.query):
        expected = gallery_paths[int(np.argmin(dist[row]))]
        assert hits[path][0]["path"] == expected
        assert hits[path][0]["distance"] == pytest.approx(float(dist[row].min()), abs=1e-5)
        assert [h["rank"] for h in hits[path]] == [1, 2, 3, 4, 5]
    assert (tmp / "ranks.png").stat().st_size > 0
    # the same index searched again (a fresh load) answers identically, as CSV this time
    assert main(["search", "--index", str(tmp / "idx"), "--query", str(query_dir), "-k", "5",
                 "--output", str(tmp / "hits.csv")]) == 0
    lines = (tmp / "hits.csv").read_text().splitlines()
    assert lines[0] == "query,rank,id,distance,path,pid,camid"
    first = lines[1].split(",")
    assert first[4] == hits[first[0]][0]["path"] and int(first[5]) == hits[first[0]][0]["pid"]


def error_line(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if line.startswith("reid: error: ")] == err[-1:]
    return err[-1]


def test_errors_are_one_line(built, tiny_root, tmp_path, capsys):
    tmp, config, weights = built
    image = next(Path(DATASET_REGISTRY.get(DATASET)(tiny_root).query[0][0]).parent.glob("*.jpg"))
    fake = tmp_path / "fake.jpg"
    fake.write_text("not an image")
    search = ["search", "--index", str(tmp / "idx"), "--query"]
    assert "is not an image" in error_line(capsys, search + [str(fake)])
    assert "larger than the gallery" in error_line(capsys, search + [str(image), "-k", "100000"])
    other = write_config(tmp_path / "other.yml", {"INPUT.SIZE_TEST": [64, 32]})
    assert "another model config (differs in INPUT.SIZE_TEST" in error_line(
        capsys, search + [str(image), "--config", str(other)])
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in (tmp / "idx").iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    (broken / INDEX).write_bytes(b"\0" * (broken / INDEX).stat().st_size)  # same size, garbage
    assert "faiss cannot read it" in error_line(capsys, ["search", "--index", str(broken),
                                                         "--query", str(image)])
    assert "one of --input DIR, --dataset NAME or --features" in error_line(
        capsys, ["index", "build", "--config", str(config), "--output", str(tmp_path / "x")])


def test_a_tracked_build_logs_the_index_run(built, tiny_root, tmp_path, mlflow_uri, capsys):
    from mlflow.tracking import MlflowClient
    tmp, config, weights = built
    np.save(tmp_path / "g.npy", np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32))
    assert main(["index", "build", "--config", str(config), "--features",
                 str(tmp_path / "g.npy"), "--index-type", "HNSW8", "--output",
                 str(tmp_path / "idx"), "OUTPUT_DIR", str(tmp_path / "out")]) == 0
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("reid").experiment_id])
    run = next(r for r in runs if r.info.run_name == "index")
    assert run.data.metrics["recall_at_10"] > 0.9 and run.data.tags["reid.index.type"] == "HNSW8"
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "index")}
    assert {"index/manifest.json", "index/index.faiss", "index/vectors.npy"} <= logged


def test_an_image_folder_index_finds_each_image_itself(built, tiny_root, tmp_path):
    tmp, config, weights = built
    folder = Path(DATASET_REGISTRY.get(DATASET)(tiny_root).query[0][0]).parent
    assert main(["index", "build", "--config", str(config), "--weights", str(weights),
                 "--input", str(folder), "--index-type", "HNSW8", "--output",
                 str(tmp_path / "idx"), "--no-track"]) == 0
    assert main(["search", "--index", str(tmp_path / "idx"), "--query", str(folder), "-k", "1",
                 "--output", str(tmp_path / "hits.json")]) == 0
    hits = json.loads((tmp_path / "hits.json").read_text())
    assert {query: found[0]["path"] for query, found in hits.items()} == \
        {str(p.resolve()): str(p.resolve()) for p in folder.glob("*.jpg")}
    assert all(found[0]["distance"] < 1e-5 and found[0]["pid"] == -1 for found in hits.values())


def test_rescore_is_saved_with_the_index_and_checked(built, tmp_path, capsys):
    tmp, config, _ = built
    np.save(tmp_path / "g.npy", np.random.default_rng(1).normal(size=(400, 8)).astype(np.float32))
    build = ["index", "build", "--config", str(config), "--features", str(tmp_path / "g.npy"),
             "--index-type", "IVF4,PQ4", "--no-track"]
    opts = ["OUTPUT_DIR", str(tmp_path / "out")]
    assert main(build + ["--output", str(tmp_path / "idx"), "--rescore", "3"] + opts) == 0
    assert json.loads((tmp_path / "idx" / MANIFEST).read_text())["rescore"] == 3
    assert "rescore must be >= 1 candidate per result, got 0" in error_line(
        capsys, build + ["--output", str(tmp_path / "bad"), "--rescore", "0"] + opts)
    assert not (tmp_path / "bad").exists()
