"""Text lists of ``<image> <id>`` lines, as MSMT17 and VehicleID ship their splits."""
from __future__ import annotations

from pathlib import Path

from reid.errors import ReidError


def read_pairs(path: Path, line_format: str) -> list[tuple[str, int]]:
    """``(name, id)`` of every non-empty line of ``path``; ``line_format`` shows a valid line
    in the error raised for a missing file or a malformed line."""
    if not path.is_file():
        raise ReidError(f"missing list file {path} (expected lines '{line_format}')")
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise ReidError(f"cannot parse line {number} of {path}: {line.strip()!r} "
                            f"(expected '{line_format}')")
        pairs.append((fields[0], int(fields[1])))
    if not pairs:
        raise ReidError(f"list file {path} is empty (expected lines '{line_format}')")
    return pairs


def first_existing(root: Path, candidates: tuple[str, ...]) -> Path | None:
    """The first ``root / candidate`` that is a folder, or None."""
    for candidate in candidates:
        if (root / candidate).is_dir():
            return root / candidate
    return None
