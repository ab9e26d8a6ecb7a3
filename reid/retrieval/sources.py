"""Gallery features from wherever they are: a numpy array, a torch tensor, an ``.npz`` written
by ``reid extract``, or an ``.npy`` file (memory-mapped, so a gallery larger than RAM is read
in chunks, never whole).

:func:`read_features` returns :class:`FeatureSource`: the ``N x D`` float32 vectors (an array
or a read-only memory map) and the metadata of every row (image path, pid, camid).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from reid.errors import ReidError

UNKNOWN_PID = -1  # metadata of a vector added without identity (an image folder)
UNKNOWN_CAMID = -1
CHUNK_ROWS = 65536  # rows read, normalised and added at a time (256 MiB at 1,024-d)


@dataclass
class FeatureSource:
    """``N x D`` float32 vectors (array or memory map) with a path, pid and camid per row."""

    vectors: np.ndarray
    paths: np.ndarray   # str, one per row ("" when unknown)
    pids: np.ndarray    # int64 (UNKNOWN_PID when unknown)
    camids: np.ndarray  # int64 (UNKNOWN_CAMID when unknown)

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or self.vectors.shape[1] < 1:
            raise ReidError(f"gallery features must be an N x D matrix, got shape "
                            f"{self.vectors.shape}")
        count = len(self.vectors)
        for name in ("paths", "pids", "camids"):
            if len(getattr(self, name)) != count:
                raise ReidError(f"{count} gallery features but {len(getattr(self, name))} "
                                f"{name}: give one per feature")

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def chunks(self, rows: int = CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, float32 in-memory rows)`` for consecutive chunks of the vectors."""
        return chunks_of(self.vectors, rows)


def chunks_of(vectors: np.ndarray, rows: int = CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, float32 in-memory rows)`` for consecutive chunks of ``vectors`` (an array
    or a memory map, read one chunk at a time)."""
    for start in range(0, len(vectors), rows):
        yield start, np.ascontiguousarray(vectors[start:start + rows], dtype=np.float32)


def as_matrix(features, what: str = "features") -> np.ndarray:
    """A 2-D float32 numpy array; float32 arrays and CPU tensors are used without a copy."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    array = np.asarray(features)
    if array.ndim != 2:
        raise ReidError(f"{what} must be an N x D matrix, got shape {array.shape}")
    if array.dtype.kind not in "fiu":
        raise ReidError(f"{what} must be numbers, got dtype {array.dtype}")
    return array if array.dtype == np.float32 else array.astype(np.float32)


def from_arrays(features, paths: Sequence[str] | None = None, pids=None, camids=None
                ) -> FeatureSource:
    """Features (numpy or torch, or an array-like) with optional metadata."""
    vectors = features if isinstance(features, np.memmap) else as_matrix(features,
                                                                          "gallery features")
    count = len(vectors)
    return FeatureSource(
        vectors=vectors,
        # no paths: one fill, not a list of empty strings (Market+500k: 5 ms against 48)
        paths=np.asarray(paths, dtype=str) if paths is not None else np.full(count, "", str),
        pids=_ints(pids, count, UNKNOWN_PID), camids=_ints(camids, count, UNKNOWN_CAMID))


def read_features(source, paths=None, pids=None, camids=None) -> FeatureSource:
    """Features from an array / tensor, or from a file: ``.npz`` (``reid extract``: keys
    ``features`` and ``paths`` or ``pids`` / ``camids``) or ``.npy`` (memory-mapped)."""
    if isinstance(source, FeatureSource):
        return source
    if not isinstance(source, (str, Path)):
        return from_arrays(source, paths, pids, camids)
    path = Path(source)
    if not path.is_file():
        raise ReidError(f"features file {path} does not exist (expected an .npz from "
                        "`reid extract` or an N x D .npy)")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise ReidError(f"features file {path}: expected .npz (from `reid extract`) or .npy, "
                        f"got {path.suffix or 'no extension'}")
    return reader(path, paths, pids, camids)


def _read_npy(path: Path, paths, pids, camids) -> FeatureSource:
    try:
        vectors = np.load(path, mmap_mode="r")
    except ValueError as exc:
        raise ReidError(f"features file {path} is not a readable .npy array ({exc})") from None
    if vectors.dtype != np.float32:
        raise ReidError(f"features file {path} holds {vectors.dtype}; a memory-mapped gallery "
                        "must be float32 (convert it with numpy first)")
    return from_arrays(vectors, paths, pids, camids)


def _read_npz(path: Path, paths, pids, camids) -> FeatureSource:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (ValueError, OSError) as exc:
        raise ReidError(f"features file {path} is not a readable .npz ({exc})") from None
    if "features" not in arrays:
        raise ReidError(f"features file {path} has no 'features' array (keys: "
                        f"{', '.join(arrays) or 'none'}; expected the .npz of `reid extract`)")
    # A test set's file (`reid extract --dataset`) holds the queries first: the gallery is
    # the rest.
    start = int(arrays["num_query"]) if "num_query" in arrays else 0
    arrays = {key: value[start:] if value.ndim else value for key, value in arrays.items()}
    return from_arrays(arrays["features"],
                       paths if paths is not None else arrays.get("paths"),
                       pids if pids is not None else arrays.get("pids"),
                       camids if camids is not None else arrays.get("camids"))


READERS = {".npy": _read_npy, ".npz": _read_npz}


def _ints(values, count: int, unknown: int) -> np.ndarray:
    if values is None:
        return np.full(count, unknown, dtype=np.int64)
    if isinstance(values, torch.Tensor):
        values = values.cpu().numpy()
    array = np.asarray(values).ravel()
    if array.dtype.kind not in "iu":
        raise ReidError(f"pids and camids must be integers, got dtype {array.dtype}")
    return array.astype(np.int64)


# candidate rows gathered for exact re-scoring at once: a block that stays in the cache
# (Market+500k's 3,368 x 150 rows in the bf16 scan: 0.12 s in 16 MiB blocks, 0.20 s in 64 MiB;
# a million-row IVF-PQ gallery's 10,000 x 200: 3.78-3.85 s a search against 3.81-3.94 s)
GATHER_BYTES = 16 << 20


def queries_per_gather(candidates: int, dim: int) -> int:
    """Queries whose ``candidates`` rows of ``dim`` float32 fit in :data:`GATHER_BYTES`
    (at least one)."""
    return max(1, GATHER_BYTES // (candidates * dim * 4))


def gather_rows(vectors: np.ndarray, ids: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``vectors[ids]`` as float32 into ``out`` (``len(ids) x D``, reused by the caller: a
    fresh array per gather costs page faults; Market+500k's 505,200 candidate rows took
    0.5 s into fresh arrays, 0.13 s into one buffer)."""
    if vectors.dtype != np.float32 or not vectors.flags.c_contiguous:
        out[:] = vectors[ids]
        return out
    torch.index_select(read_only_tensor(vectors), 0, torch.from_numpy(ids),
                       out=torch.from_numpy(out))
    return out


def read_only_tensor(array: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy(array)`` without torch's warning for a read-only array (a memory-
    mapped .npy): the caller only reads it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)
