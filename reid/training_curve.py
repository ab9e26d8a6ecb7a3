"""The training curve as a CSV table (iteration, total_loss, lr): what ``dvc plots`` draws.

``metrics.json`` keeps FastReID's (detectron2's) format, one JSON object per line, which DVC's
plots cannot parse (they read one JSON document, YAML, CSV or TSV). The table holds the
training records only (evaluation records have no loss), in iteration order.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from reid.engine.events import read_metrics
from reid.utils.io import atomic_write_text

CURVE_FILE = "training_curve.csv"
COLUMNS = ("iteration", "total_loss", "lr")


def write_training_curve(metrics_file: str | Path, path: str | Path) -> Path:
    """Write the training records of ``metrics_file`` to ``path`` as CSV, atomically."""
    rows = sorted((r for r in read_metrics(metrics_file) if all(k in r for k in COLUMNS)),
                  key=lambda record: record["iteration"])
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows([record[column] for column in COLUMNS] for record in rows)
    return atomic_write_text(path, text.getvalue())
