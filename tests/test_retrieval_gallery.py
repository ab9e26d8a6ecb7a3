"""reid.retrieval.Gallery: faiss indexes against a brute-force numpy reference (oracles.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from reid.errors import ReidError
from reid.retrieval import Gallery, faiss_index
from reid.retrieval.model_card import ModelCard
from reid.retrieval.store import INDEX, MANIFEST, METADATA

from oracles import reid_distances


def clustered(n: int, dim: int = 32, ids: int = 60, seed: int = 0) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """Features grouped by identity (a centre per id plus noise), and their ids."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, dim))
    pids = rng.integers(0, ids, n)
    return (centres[pids] + 0.35 * rng.normal(size=(n, dim))).astype(np.float32), pids


@pytest.fixture(scope="module")
def data():
    g, g_pids = clustered(3000)
    q, _ = clustered(40, seed=1)
    return q, g, g_pids


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_flat_returns_the_exact_neighbours_and_reid_distances(data, metric):
    q, g, g_pids = data
    gallery = Gallery.build(g, "Flat", metric, pids=g_pids, paths=[f"{i}.jpg" for i in
                                                                    range(len(g))])
    result = gallery.search(q, k=7)
    reference = reid_distances(q, g, metric)
    expected = np.argsort(reference, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(result.ids, expected)
    np.testing.assert_allclose(result.distances, np.take_along_axis(reference, expected, 1),
                               rtol=1e-5, atol=2e-5)
    np.testing.assert_array_equal(result.pids, g_pids[expected])
    assert result.paths[0, 0] == f"{expected[0, 0]}.jpg"


@pytest.mark.parametrize("index_type", ["IVF16,Flat", "IVF16,PQ8", "HNSW16", "SQfp16", "SQ8"])
def test_approximate_types_find_the_exact_neighbours_of_clustered_features(data, index_type):
    q, g, _ = data
    result = Gallery.build(g, index_type, "cosine").search(q, k=10)
    expected = np.argsort(reid_distances(q, g, "cosine"), axis=1, kind="stable")[:, :10]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(result.ids, expected)])
    assert recall >= 0.9, recall
    assert np.all(np.diff(result.distances, axis=1) >= 0)


def test_an_hnsw_quantizer_probes_every_list_nprobe_asks_for(data):
    """With every list probed an IVF index is exact; faiss's HNSW quantizer would search only
    its own efSearch (16) lists unless told otherwise."""
    q, g, _ = data
    expected = np.argsort(reid_distances(q, g, "cosine"), axis=1, kind="stable")[:, :10]
    every_list = Gallery.build(g, "IVF48_HNSW8,Flat", "cosine", search_params="nprobe=48")
    np.testing.assert_array_equal(every_list.search(q, k=10).ids, expected)
    # a quantizer_efSearch the user sets is kept: 8 lists of 48 searched, no longer exact
    narrow = Gallery.build(g, "IVF48_HNSW8,Flat", "cosine",
                           search_params="nprobe=48,quantizer_efSearch=8")
    assert not np.array_equal(narrow.search(q, k=10).ids, expected)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_the_coarse_search_probes_the_lists_faiss_would(data, metric, monkeypatch):
    """reid's coarse search (torch) against faiss's own quantizer: the same lists and scores
    in float32; in bfloat16 (cosine, where native) nearly the same lists."""
    q, g, _ = data
    gallery = Gallery.build(g, "IVF32,Flat", metric, search_params="nprobe=6")
    ivf = faiss_index.faiss.downcast_index(gallery.index)
    queries = faiss_index.prepare(q, metric)
    faiss_scores, faiss_lists = ivf.quantizer.search(queries, 6)
    monkeypatch.setattr(faiss_index, "native_bf16", lambda device: False)
    scores, lists = faiss_index.CoarseSearch.of(gallery.index).probe(queries, 6)
    assert all(set(a) == set(b) for a, b in zip(lists, faiss_lists))
    np.testing.assert_allclose(np.sort(scores, 1), np.sort(faiss_scores, 1), rtol=1e-4,
                               atol=1e-4)
    monkeypatch.setattr(faiss_index, "native_bf16", lambda device: True)
    lists = faiss_index.CoarseSearch.of(gallery.index).probe(queries, 6)[1]
    same = np.mean([len(set(a) & set(b)) / 6 for a, b in zip(lists, faiss_lists)])
    assert same >= 0.95, same
    # every list probed: exact, through the coarse search and faiss's scan of the lists
    every_list = Gallery.build(g, "IVF32,Flat", metric, search_params="nprobe=32")
    assert every_list._coarse is not None
    expected = np.argsort(reid_distances(q, g, metric), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(every_list.search(q, k=10).ids, expected)


def test_remove_and_add_by_id(data):
    q, g, _ = data
    gallery = Gallery.build(g[:2000], "IVF8,Flat", "euclidean", search_params="nprobe=8")
    first = gallery.search(q[:5], k=3).ids
    assert gallery.remove(first[:, 0]) == len(set(first[:, 0]))
    after = gallery.search(q[:5], k=3).ids
    assert not np.isin(after, first[:, 0]).any()
    new_ids = gallery.add(q[:2], paths=["a.jpg", "b.jpg"], pids=[7, 8], camids=[1, 2])
    np.testing.assert_array_equal(new_ids, [2000, 2001])
    hit = gallery.search(q[:2], k=1)
    np.testing.assert_array_equal(hit.ids[:, 0], new_ids)
    assert hit.paths[:, 0].tolist() == ["a.jpg", "b.jpg"] and hit.pids[:, 0].tolist() == [7, 8]
    assert len(gallery) == 2002 - len(set(first[:, 0]))


def test_save_load_answers_identically_from_npy_and_npz_sources(data, tmp_path):
    q, g, g_pids = data
    np.save(tmp_path / "g.npy", g)
    built = Gallery.build(str(tmp_path / "g.npy"), "IVF16,PQ8", "cosine", pids=g_pids)
    built.remove([5])
    built.save(tmp_path / "index")
    loaded = Gallery.load(tmp_path / "index")
    # the rows' norms come from the folder, not from a pass over the vectors
    np.testing.assert_allclose(loaded.rows._norms[0], np.linalg.norm(g, axis=1), rtol=1e-6)
    a, b = built.search(q, 10), loaded.search(q, 10)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.distances, b.distances)
    assert isinstance(loaded.rows._blocks[0], np.memmap) and len(loaded) == len(g) - 1
    # `reid extract --dataset` writes queries first: the gallery is the rest
    np.savez(tmp_path / "set.npz", features=np.vstack([q, g]), pids=np.r_[np.zeros(40), g_pids]
             .astype(int), camids=np.zeros(40 + len(g), dtype=int), num_query=40)
    from_npz = Gallery.build(str(tmp_path / "set.npz"), "Flat", "cosine")
    assert len(from_npz) == len(g)
    np.testing.assert_array_equal(from_npz.rows.pids, g_pids)


def test_saving_over_another_folder_is_refused_and_keeps_it(data, tmp_path):
    _, g, _ = data
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ReidError, match="is not a gallery index"):
        Gallery.build(g[:100], "Flat").save(tmp_path / "notes")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_corrupt_files_are_named(data, tmp_path):
    _, g, _ = data
    Gallery.build(g[:500], "Flat").save(tmp_path / "index")
    index_file = tmp_path / "index" / INDEX
    index_file.write_bytes(index_file.read_bytes()[:100])
    with pytest.raises(ReidError, match=r"corrupt: index.faiss has 100 bytes"):
        Gallery.load(tmp_path / "index")
    (tmp_path / "index" / MANIFEST).write_text("{not json")
    with pytest.raises(ReidError, match="corrupt \\(not JSON"):
        Gallery.load(tmp_path / "index")
    with pytest.raises(ReidError, match="does not exist"):
        Gallery.load(tmp_path / "nowhere")


def test_user_errors_are_one_line(data):
    q, g, _ = data
    with pytest.raises(ReidError, match="not a faiss factory string"):
        Gallery.build(g, "IVFxyz")
    gallery = Gallery.build(g[:50], "Flat")
    with pytest.raises(ReidError, match="between 1 and the gallery size 50, got 51"):
        gallery.search(q, k=51)
    with pytest.raises(ReidError, match="dimension 8"):
        gallery.search(q[:, :8], k=1)
    with pytest.raises(ReidError, match="too few"):
        Gallery.build(g[:50], "IVF256,Flat")
    with pytest.raises(ReidError, match="needs the gallery's model"):
        gallery.search("a.jpg", k=1)


def test_model_card_mismatch_names_the_keys(tmp_path):
    from reid.config import get_cfg
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights")
    cfg = get_cfg()
    card = ModelCard.from_config(cfg, weights)
    other = cfg.clone()
    other.INPUT.SIZE_TEST = [128, 64]
    with pytest.raises(ReidError, match="another model config \\(differs in INPUT.SIZE_TEST"):
        card.check_matches(ModelCard.from_config(other, weights), "index X")
    same = cfg.clone()
    same.MODEL.DEVICE = "cuda"  # where it runs does not change the features
    card.check_matches(ModelCard.from_config(same, weights), "index X")
    (tmp_path / "w2.pth").write_bytes(b"other")
    with pytest.raises(ReidError, match="other weights"):
        card.check_matches(ModelCard.from_config(cfg, tmp_path / "w2.pth"), "index X")
    assert json.loads(json.dumps(card.to_dict())) == card.to_dict()


def test_rows_added_in_blocks_score_like_one_block(data):
    """Cosine re-scoring uses each row's stored norm: blocks added later (and a -1 id,
    asked for more rows than a query has) keep the exact distances."""
    q, g, _ = data
    gallery = Gallery.build(g[:1000], "Flat", "cosine")
    gallery.add(g[1000:1500])
    gallery.add(g[1500:2000] * 3.0)  # other norms
    whole = np.concatenate([g[:1500], g[1500:2000] * 3.0])
    result = gallery.search(q, k=12)
    reference = reid_distances(q, whole, "cosine")
    expected = np.argsort(reference, axis=1, kind="stable")[:, :12]
    np.testing.assert_array_equal(result.ids, expected)
    np.testing.assert_allclose(result.distances, np.take_along_axis(reference, expected, 1),
                               rtol=1e-5, atol=2e-5)


def test_a_folder_saved_without_norms_still_loads(data, tmp_path):
    """Folders saved before the norms were kept: the norms are measured on first use."""
    q, g, _ = data
    Gallery.build(g[:500], "Flat").save(tmp_path / "index")
    meta_path, manifest_path = tmp_path / "index" / METADATA, tmp_path / "index" / MANIFEST
    with np.load(meta_path) as meta:
        older = {key: meta[key] for key in meta.files if key != "norms"}
    np.savez(meta_path, **older)
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][METADATA] = meta_path.stat().st_size
    manifest_path.write_text(json.dumps(manifest))
    loaded = Gallery.load(tmp_path / "index")
    assert loaded.rows._norms[0] is None
    reference = reid_distances(q, g[:500], "cosine")
    expected = np.argsort(reference, axis=1, kind="stable")[:, :5]
    result = loaded.search(q, 5)
    np.testing.assert_array_equal(result.ids, expected)
    np.testing.assert_allclose(result.distances, np.take_along_axis(reference, expected, 1),
                               rtol=1e-5, atol=2e-5)
