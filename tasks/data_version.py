"""The version of the data a run reads (DESIGN.md, Lineage): the ``.dvc`` hash when
``DATASETS.ROOT`` is tracked by DVC and that hash is current, otherwise a content hash of the
image records the configured datasets read. Never the hash of other data.

Pure functions over files: no MLflow, no Prefect, and no DVC import (``dvc_data`` takes
seconds to import and its internals move). DVC 3's directory hash is reproduced here instead:
``tests/test_data_version.py`` checks it against what ``dvc add`` writes.

Every file is hashed once per process: digests are kept by (path, size, mtime_ns), so the
stage runs of one pipeline (five calls) read each image once, and a file that changes is
hashed again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import yaml

from reid.config import CfgNode

logger = logging.getLogger(__name__)

KINDS = ("dvc", "content")
# What DVC leaves out of a directory hash by default (dvc/ignore.py, DvcIgnoreFilter).
DVC_SKIPPED_DIRS = frozenset({".git", ".hg", ".dvc"})
DVC_SKIPPED_FILES = frozenset({".git"})
SPLITS = ("train", "query", "gallery")
# Reading is latency-bound when the files are not in the page cache: 8 threads hash a
# Market-sized set in 2.8 s instead of 6.6 s on 2 cores (reads and md5 release the GIL).
HASH_THREADS = 8
CHUNK = 1 << 20  # bytes read at a time
BATCH = 256      # files per hashing task


@dataclass(frozen=True)
class DataVersion:
    """``kind`` "dvc": ``digest`` is the md5 the ``.dvc`` file records (checked current);
    ``kind`` "content": ``digest`` is the md5 of the records read (module doc)."""
    kind: str
    digest: str
    root: str                       # the datasets root, resolved
    files: int                      # how many files the digest covers
    dvc_file: Optional[str] = None  # the .dvc file that tracks the root, current or not
    note: str = ""                  # why that .dvc file's hash was not used

    @property
    def tag(self) -> str:
        """``dvc:<md5>.dir`` or ``content:<md5>``: comparable across kinds."""
        return f"{self.kind}:{self.digest}"


# --------------------------------------------------------------------------- file digests
_FILE_MD5: dict[tuple[str, int, int], str] = {}


def _stat_key(path: str) -> tuple[str, int, int]:
    stat = os.stat(path)
    return path, stat.st_size, stat.st_mtime_ns


def _md5s_of_files(paths: list[str]) -> list[str]:
    out = []
    for path in paths:
        digest = hashlib.md5()
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        out.append(digest.hexdigest())
    return out


def file_md5s(paths: Iterable[str]) -> list[str]:
    """The md5 of each file's bytes (absolute paths), memoised by (path, size, mtime_ns) like
    DVC's own state cache. Files not seen yet are hashed by a few threads (reads and md5
    release the GIL), in batches: a future per file would cost more than a small jpg's md5."""
    keys = [_stat_key(path) for path in paths]
    missing = list(dict.fromkeys(key for key in keys if key not in _FILE_MD5))
    batches = [[key[0] for key in missing[i:i + BATCH]] for i in range(0, len(missing), BATCH)]
    with ThreadPoolExecutor(HASH_THREADS) as pool:
        md5s = [md5 for batch in pool.map(_md5s_of_files, batches) for md5 in batch]
    _FILE_MD5.update(zip(missing, md5s))
    return [_FILE_MD5[key] for key in keys]


def _md5_of_json(value) -> str:
    # json.dumps' defaults (", " / ": ", ASCII escapes) are what DVC's Tree.as_bytes uses.
    return hashlib.md5(json.dumps(value, sort_keys=True).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- DVC
def read_dvc_out(dvc_file: str | Path) -> Optional[dict]:
    """The first ``outs`` entry of a ``.dvc`` file (None when there is no such file)."""
    path = Path(dvc_file)
    if not path.is_file():
        return None
    outs = (yaml.safe_load(path.read_text()) or {}).get("outs") or [{}]
    return outs[0]


def tracking_dvc_file(root: Path) -> Optional[Path]:
    """``<parent>/<name>.dvc`` when its output is ``root`` itself (DVC's convention for
    ``dvc add <root>``); an ancestor tracked as a whole is not looked for."""
    dvc_file = root.parent / f"{root.name}.dvc"
    out = read_dvc_out(dvc_file)
    if out is None or "path" not in out:
        return None
    return dvc_file if (dvc_file.parent / out["path"]).resolve() == root else None


def _dvc_files(root: Path) -> list[str]:
    """Relative posix paths of the files DVC hashes under ``root``."""
    found = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in DVC_SKIPPED_DIRS]
        relative = Path(directory).relative_to(root)
        found += [(relative / name).as_posix() for name in files if name not in DVC_SKIPPED_FILES]
    return found


def dvc_dir_md5(root: str | Path) -> tuple[str, int]:
    """(DVC 3's ``<md5>.dir`` hash of directory ``root``, number of files): the md5 of the
    JSON list of ``{"md5": <file md5>, "relpath": <posix path>}`` sorted by relpath
    (dvc_data/hashfile/tree.py, ``Tree.as_bytes``)."""
    root = Path(root)
    relpaths = sorted(_dvc_files(root))
    md5s = file_md5s(str(root / relpath) for relpath in relpaths)
    listing = [{"md5": md5, "relpath": relpath} for relpath, md5 in zip(relpaths, md5s)]
    return _md5_of_json(listing) + ".dir", len(listing)


def _dvc_repo_root(start: Path) -> Optional[Path]:
    return next((d for d in (start, *start.parents) if (d / ".dvc").is_dir()), None)


def _unsupported_dvcignore(dvc_file: Path, root: Path) -> Optional[Path]:
    """A ``.dvcignore`` above ``root`` in its DVC repository that holds patterns: they are not
    interpreted here, so such a root is versioned by content. (``dvc add`` refuses a
    ``.dvcignore`` inside the directory it adds.)"""
    top = _dvc_repo_root(dvc_file.parent) or dvc_file.parent
    for directory in (root.parent, *root.parent.parents):
        path = directory / ".dvcignore"
        if path.is_file() and any(line.strip() and not line.lstrip().startswith("#")
                                  for line in path.read_text().splitlines()):
            return path
        if directory == top:
            return None
    return None


def dvc_version(dvc_file: Path, root: Path) -> tuple[Optional[DataVersion], str]:
    """(the version ``dvc_file`` records for ``root`` when it is current, else None;
    why it was not used)."""
    out = read_dvc_out(dvc_file)
    recorded = out.get("md5", "")
    if not root.exists():  # not pulled or generated yet: nothing read, the workspace's version
        return DataVersion("dvc", recorded, str(root), int(out.get("nfiles", 0)), str(dvc_file),
                           f"{root} is absent: {dvc_file.name} not checked"), ""
    if out.get("hash") != "md5":
        return None, (f"{dvc_file} was written by DVC 2 (md5-dos2unix hashes), not checked: "
                      f"run `dvc add {root}` with DVC 3")
    ignore = _unsupported_dvcignore(dvc_file, root)
    if ignore is not None:
        return None, f"{ignore} has patterns, so {dvc_file} is not checked"
    current, nfiles = dvc_dir_md5(root)
    if current != recorded:
        return None, (f"{dvc_file} records {recorded} but {root} now hashes to {current}: "
                      f"run `dvc add {root}`")
    return DataVersion("dvc", recorded, str(root), nfiles, str(dvc_file)), ""


# --------------------------------------------------------------------------- content
def dataset_names(cfg: CfgNode) -> list[str]:
    """The training and test sets of ``cfg``, each once, in order."""
    return list(dict.fromkeys([*cfg.DATASETS.NAMES, *cfg.DATASETS.TESTS]))


def content_digest(cfg: CfgNode) -> tuple[str, int]:
    """(md5 of the records the configured datasets read, number of files): per record its
    dataset, split, path relative to the root, pid, camid and the md5 of its bytes. Relative
    paths and file contents only, so two copies of the same data get the same digest."""
    # Imported here: reid.data loads torch (3 s), which `reid compare` (through tasks.tracking)
    # never needs.
    from reid.data.datasets import DATASET_REGISTRY

    root = os.path.abspath(cfg.DATASETS.ROOT)
    rows = []
    for name in dataset_names(cfg):
        dataset = DATASET_REGISTRY.get(name)(cfg.DATASETS.ROOT)
        rows += [(name, split, _relative(path, root), pid, camid)
                 for split in SPLITS for path, pid, camid in getattr(dataset, split)]
    md5s = file_md5s(os.path.join(root, row[2]) for row in rows)
    listing = [[*row, md5] for row, md5 in zip(rows, md5s)]
    return _md5_of_json(listing), len({row[2] for row in rows})


def _relative(path: str, root: str) -> str:
    """``path`` relative to ``root``, with ``/``. The string prefix first: records are built
    under the root, and os.path.relpath on every record of a Market-sized set costs 0.5 s."""
    path = os.path.abspath(path) if not os.path.isabs(path) else path
    prefix = root.rstrip(os.sep) + os.sep
    relative = path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, root)
    return relative.replace(os.sep, "/")


# --------------------------------------------------------------------------- the rule
_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """One warning per process (a pipeline asks for the version once per stage)."""
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)


def data_version(cfg: CfgNode) -> DataVersion:
    """The version of the data ``cfg`` reads (module doc): the ``.dvc`` md5 when a current
    ``.dvc`` file tracks the root, else the content digest (with one warning when a ``.dvc``
    file is stale). Raises ``ReidError`` when an untracked root holds no readable dataset."""
    root = Path(cfg.DATASETS.ROOT).resolve()
    dvc_file = tracking_dvc_file(root)
    why_not = ""
    if dvc_file is not None:
        tracked, why_not = dvc_version(dvc_file, root)
        if tracked is not None:
            return tracked
        _warn_once(why_not)
    digest, files = content_digest(cfg)
    return DataVersion("content", digest, str(root), files,
                       None if dvc_file is None else str(dvc_file), why_not)
