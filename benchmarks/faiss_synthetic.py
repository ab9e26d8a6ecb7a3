"""Re-id-like synthetic features for the faiss benchmarks (benchmarks/faiss_retrieval.py).

Uniform noise would make every index look bad (no neighbour is near) or every recall figure
meaningless, so the features are built like a trained re-id model's:

    feature = MEAN + centre[identity] + bias[camera] + noise

* ``MEAN``: one direction shared by every feature (CNN features after ReLU / BN-neck are not
  centred: unrelated people still have a positive cosine);
* ``centre``: one vector per identity (norm ~1) in a ``ID_RANK``-dimensional subspace:
  images of one person cluster, and people differ along fewer directions than the feature
  has, so some look alike (a meaningful order of near neighbours beyond one's own id);
* ``bias``: one vector per camera (norm ~0.35): the same camera pulls features together,
  which is what makes the junk / cross-camera protocol matter;
* ``noise``: per image, in a ``NOISE_RANK``-dimensional subspace (pose, light, occlusion
  vary along few directions), norm ``NOISE``, tuned so that Market-sized exact evaluation
  lands where good models do (see RESULTS.md for the exact figures).

Noise spread over all dimensions would be the worst case of every approximate index (nearly
equidistant points: no neighbourhood to find) and nothing like a network's features.

Distractors are people too (their own identities, a few images each, same recipe), so they are
hard negatives, not far-away noise. Everything is written chunk by chunk into .npy files, so a
2048-d, 4.2 GB gallery is made with bounded memory.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

ID_SCALE, CAM_SCALE, NOISE = 1.0, 0.35, 0.7
ID_RANK, NOISE_RANK = 32, 16
CHUNK = 65536


class FeatureModel:
    """The random directions of one synthetic 'model' (seeded)."""

    def __init__(self, dim: int, num_cameras: int = 6, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.dim, self.seed = dim, seed
        mean = rng.standard_normal(dim)
        self.mean = (mean / np.linalg.norm(mean)).astype(np.float32)
        self.cam_bias = (rng.standard_normal((num_cameras, dim)) * CAM_SCALE /
                         np.sqrt(dim)).astype(np.float32)
        self.id_basis = _orthonormal(rng, dim, min(ID_RANK, dim))
        self.noise_basis = _orthonormal(rng, dim, min(NOISE_RANK, dim))

    def centres(self, ids: np.ndarray) -> np.ndarray:
        """The centre of each identity: a function of (seed, id) only, chunk-independent."""
        rank = self.id_basis.shape[1]
        weights = np.empty((len(ids), rank), dtype=np.float32)
        for row, pid in enumerate(ids):
            weights[row] = np.random.default_rng([self.seed, 1, int(pid)]).standard_normal(rank)
        return (weights * (ID_SCALE / np.sqrt(rank))) @ self.id_basis.T

    def images(self, pids: np.ndarray, cams: np.ndarray, rng: np.random.Generator
               ) -> np.ndarray:
        unique, inverse = np.unique(pids, return_inverse=True)
        centres = self.centres(unique)[inverse]
        rank = self.noise_basis.shape[1]
        noise = rng.standard_normal((len(pids), rank), dtype=np.float32) @ self.noise_basis.T
        return (self.mean + centres + self.cam_bias[cams] +
                noise * (NOISE / np.sqrt(rank))).astype(np.float32)


def _orthonormal(rng: np.random.Generator, dim: int, rank: int) -> np.ndarray:
    """``dim x rank`` orthonormal columns spanning a random subspace."""
    return np.linalg.qr(rng.standard_normal((dim, rank)))[0].astype(np.float32)


def write_features(path: Path, model: FeatureModel, pids: np.ndarray, cams: np.ndarray,
                   seed: int) -> Path:
    """The features of (pid, camera) rows into an .npy file, chunk by chunk."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                    shape=(len(pids), model.dim))
    rng = np.random.default_rng([seed, 2])
    for start in range(0, len(pids), CHUNK):
        stop = start + CHUNK
        out[start:stop] = model.images(pids[start:stop], cams[start:stop], rng)
    out.flush()
    del out
    return path


def market_layout(num_distractors: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Market-1501's test split sizes: 3,368 queries of 751 ids, a gallery of 15,913 (13,115
    of those ids + 2,798 distractors) plus ``num_distractors`` more (pid 0), 6 cameras.
    Distractor people get ids above 10,000 for their features and pid 0 in the labels."""
    rng = np.random.default_rng([seed, 3])
    ids = np.arange(1, 752)
    q_pids = np.sort(np.r_[ids, rng.choice(ids, 3368 - 751)])
    q_cams = rng.integers(0, 6, len(q_pids))
    g_pids = np.sort(np.r_[ids, ids, rng.choice(ids, 13115 - 2 * 751)])
    g_cams = rng.integers(0, 6, len(g_pids))
    # every id seen by another camera than each of its queries' (as Market guarantees)
    first = np.searchsorted(g_pids, ids)
    g_cams[first] = (q_cams[np.searchsorted(q_pids, ids)] + 1) % 6
    people = 2798 + num_distractors
    feature_ids = np.r_[g_pids, 10_000 + rng.integers(0, max(1, people // 4), people)]
    return {"q_pids": q_pids, "q_cams": q_cams, "q_feature_ids": q_pids,
            "g_pids": np.r_[g_pids, np.zeros(people, dtype=np.int64)],
            "g_cams": np.r_[g_cams, rng.integers(0, 6, people)],
            "g_feature_ids": feature_ids}


def write_market(directory: Path, dim: int, num_distractors: int, seed: int = 0) -> dict:
    """Market(+distractors) query and gallery features as .npy files, and the labels."""
    directory.mkdir(parents=True, exist_ok=True)
    layout = market_layout(num_distractors, seed)
    model = FeatureModel(dim, seed=seed)
    write_features(directory / "query.npy", model, layout["q_feature_ids"], layout["q_cams"],
                   seed + 1)
    write_features(directory / "gallery.npy", model, layout["g_feature_ids"],
                   layout["g_cams"], seed + 2)
    np.savez(directory / "labels.npz", **layout)
    return layout


def write_million(directory: Path, dim: int, gallery: int, queries: int, per_id: int = 10,
                  seed: int = 0) -> None:
    """A ``gallery``-vector set of ``gallery // per_id`` identities and ``queries`` new
    images of random gallery identities (each query has ~``per_id`` true neighbours)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 4])
    model = FeatureModel(dim, seed=seed)
    g_ids = np.repeat(np.arange(gallery // per_id + 1), per_id)[:gallery]
    write_features(directory / "gallery.npy", model, g_ids, rng.integers(0, 6, gallery),
                   seed + 1)
    q_ids = rng.choice(g_ids, queries)
    write_features(directory / "query.npy", model, q_ids, rng.integers(0, 6, queries), seed + 2)
