"""``reid compare``: the tracked runs of an experiment, ranked, in one table and one figure.

Compared runs are the finished runs that hold a trained model's final results
(``<test set>.<metric>`` metrics) and are not stage runs: the pipeline flow's top-level runs
and the distill flow's teacher / student runs. The table shows, best first by a rank metric:
run name and id, recipe, Rank-1 / mAP / mINP per test set, training time (the run's train /
distill stage runs), data version (``dvc:<md5>`` or ``content:<md5>``, tasks/data_version.py),
git commit, the teacher a student learned from (registered model and version or run, and the
sha256 of its weights: tasks/lineage.py), and only the params that differ between the runs.
The figure shows their training loss and mAP curves. Both are logged as artifacts of a new
run tagged ``reid.comparison`` (which later comparisons skip).
"""
from __future__ import annotations

import logging
import math
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from reid.errors import ReidError
from tasks.reports import stage_runs, training_curves
from tasks.tracking import DATA_VERSION_TAG, EXPERIMENT, PARENT_TAG, RECIPE_TAG, Tracker

logger = logging.getLogger(__name__)

COMPARISON_TAG = "reid.comparison"
SHOWN_METRICS = ("Rank-1", "mAP", "mINP")
RESULT_NAMES = ("Rank-1", "Rank-5", "Rank-10", "mAP", "mINP")
RESULT_COLUMN = re.compile(r"^metrics\.(?P<set>.+)\.(?P<metric>Rank-\d+|mAP|mINP|TAR_at_FAR_.+)$")
MAX_FIGURE_RUNS = 10   # one colour each in the figure
MISSING = "\u2014"     # an em dash for absent values
# Long identifiers shortened for people (the CSV keeps them whole).
SHORTENED = {"run id": 8, "git commit": 8, "data version": 16,  # "content:" + 8 hex digits
             "teacher sha256": 12}
TEACHER = "reid.teacher"  # the lineage tags' prefix (tasks/lineage.py)


@dataclass
class Comparison:
    table: pd.DataFrame                 # one row per run, best first
    markdown: str                       # the table for people
    figure: Path | None                 # where --output put the figure (None without it)
    run_id: str | None                  # the comparison run (None when not tracked)
    artifact_uri: str | None            # where that run's table and figure are
    files: list[Path] = field(default_factory=list)  # what --output wrote


# --------------------------------------------------------------------------- runs
def find_runs(experiment_id: str, filter_string: str | None, max_runs: int) -> pd.DataFrame:
    """The newest ``max_runs`` runs with final results (search_runs' frame, newest first)."""
    query = ["attributes.status = 'FINISHED'", "tags.`reid.stage` IS NULL",
             f"tags.`{COMPARISON_TAG}` IS NULL"] + ([filter_string] if filter_string else [])
    try:
        # Flow runs without results (a distill flow's parent) are dropped below: ask for more.
        runs = mlflow.search_runs(experiment_ids=[experiment_id], filter_string=" and ".join(query),
                                  order_by=["attributes.start_time DESC"],
                                  max_results=max(4 * max_runs, 100))
    except MlflowException as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReidError(f"--filter {filter_string!r} is not a valid MLflow search filter "
                        f"(e.g. \"params.`SOLVER.BASE_LR` = '0.00035'\"): {first}") from exc
    with_results = [c for c in runs.columns if RESULT_COLUMN.match(c)]
    if with_results:
        runs = runs[runs[with_results].notna().any(axis=1)]
    else:
        runs = runs.iloc[0:0]
    return runs.head(max_runs).reset_index(drop=True)


def results_of(run: pd.Series) -> dict[str, dict[str, float]]:
    """``{test set: {metric: value}}`` of one row of the runs frame."""
    out: dict[str, dict[str, float]] = {}
    for column, value in run.items():
        found = RESULT_COLUMN.match(str(column))
        if found and pd.notna(value):
            out.setdefault(found["set"], {})[found["metric"]] = float(value)
    return out


def test_sets(runs: pd.DataFrame) -> list[str]:
    return sorted({m["set"] for c in runs.columns if (m := RESULT_COLUMN.match(c))})


def ranking(runs: pd.DataFrame, metric: str) -> tuple[str, pd.Series]:
    """(column title, score per run) to rank by: ``metric`` of one test set (``Market1501.mAP``
    or ``Market1501 mAP``), or the mean over the test sets of a metric name (``mAP``)."""
    named = metric.replace(" ", ".")
    if f"metrics.{named}" in runs.columns:
        found = RESULT_COLUMN.match(f"metrics.{named}")
        return f"{found['set']} {found['metric']}", runs[f"metrics.{named}"]
    columns = [c for c in runs.columns if (m := RESULT_COLUMN.match(c)) and m["metric"] == metric]
    if not columns:
        available = sorted({m["metric"] for c in runs.columns if (m := RESULT_COLUMN.match(c))})
        raise ReidError(f"--metric {metric!r} is not logged by the compared runs; they have "
                        f"{', '.join(available)} (or <test set>.<metric>)")
    if len(columns) == 1:
        return ranking(runs, columns[0][len("metrics."):])
    return f"mean {metric}", runs[columns].mean(axis=1, skipna=True)


def differing_params(runs: pd.DataFrame) -> list[str]:
    """Param keys whose values are not the same in every run (absent counts as a value)."""
    params = [c for c in runs.columns if c.startswith("params.")]
    return sorted(c[len("params."):] for c in params if runs[c].nunique(dropna=False) > 1)


@dataclass
class Training:
    """What a compared run's train / distill stage runs (its children) tell."""

    run_ids: list[str] = field(default_factory=list)  # oldest first
    seconds: float | None = None                      # summed: a resumed training has two
    data_version: str | None = None                   # the version of the data they read
    lineage: dict[str, str] = field(default_factory=dict)  # reid.teacher.* tags they carry


def training_of(client: MlflowClient, experiment_id: str, run_ids: list[str]
                ) -> dict[str, Training]:
    """The training of each of ``run_ids`` (empty for a run that trained nothing)."""
    out = {run_id: Training() for run_id in run_ids}
    for child in stage_runs(client, experiment_id):
        found = out.get(child.data.tags.get(PARENT_TAG))
        if found is None:
            continue
        found.run_ids.append(child.info.run_id)
        if child.info.end_time:
            elapsed = (child.info.end_time - child.info.start_time) / 1000.0
            found.seconds = (found.seconds or 0.0) + elapsed
        found.data_version = child.data.tags.get(DATA_VERSION_TAG, found.data_version)
        found.lineage.update({k: v for k, v in child.data.tags.items()
                              if k.startswith(TEACHER + ".")})
    return out


def teacher_of(run: pd.Series, training: Training) -> tuple[str | None, str | None]:
    """(teacher, its weights' sha256) of a compared run: ``NAME vVERSION`` per teacher (its
    URI for a ``runs:/`` teacher), from the run's lineage tags or its training run's."""
    tags = {k[len("tags."):]: v for k, v in run.items()
            if str(k).startswith(f"tags.{TEACHER}.") and isinstance(v, str) and v}
    tags = tags or training.lineage
    if not tags:
        return None, None
    models = tags.get(f"{TEACHER}.model", "").split(",")
    versions = tags.get(f"{TEACHER}.version", "").split(",")
    uris = tags.get(f"{TEACHER}.uri", "").split(",")
    names = [f"{m} v{v}" if m else uri for m, v, uri in zip(models, versions, uris)]
    return ", ".join(names), tags.get(f"{TEACHER}.sha256")


def recipe_of(client: MlflowClient, run: pd.Series) -> str | None:
    """The ``reid.recipe`` tag, else the file logged under ``recipe/`` (runs from before the
    tag existed)."""
    tag = run.get(f"tags.{RECIPE_TAG}")
    if isinstance(tag, str) and tag:
        return tag
    logged = client.list_artifacts(run["run_id"], "recipe")
    return Path(logged[0].path).name if logged else None


# --------------------------------------------------------------------------- table
def _column(runs: pd.DataFrame, name: str) -> pd.Series:
    return runs[name] if name in runs.columns else pd.Series([None] * len(runs), index=runs.index)


def comparison_table(runs: pd.DataFrame, metric: str, training: dict[str, Training],
                     recipes: list[str | None]) -> pd.DataFrame:
    """One row per run (``recipes`` in the same order), ranked by ``metric`` (best first;
    runs without it last)."""
    title, score = ranking(runs, metric)
    extra = metric in RESULT_NAMES and metric not in SHOWN_METRICS  # e.g. ranked by Rank-5
    shown = list(SHOWN_METRICS) + ([metric] if extra else [])
    table = pd.DataFrame({"run": _column(runs, "tags.mlflow.runName"), "run id": runs["run_id"],
                          "recipe": pd.Series(recipes, index=runs.index, dtype=object)})
    for test_set in test_sets(runs):
        for name in shown:
            if f"metrics.{test_set}.{name}" in runs.columns:
                table[f"{test_set} {name}"] = runs[f"metrics.{test_set}.{name}"]
    if title not in table.columns:
        table[title] = score
    table["train time (s)"] = runs["run_id"].map(lambda r: training[r].seconds).astype(float)
    # A distill flow's teacher / student runs have no dataset tag: their training runs do.
    table["data version"] = _column(runs, f"tags.{DATA_VERSION_TAG}").fillna(
        runs["run_id"].map(lambda r: training[r].data_version))
    table["git commit"] = _column(runs, "tags.mlflow.source.git.commit")
    teachers = [teacher_of(run, training[run["run_id"]]) for _, run in runs.iterrows()]
    if any(name for name, _ in teachers):  # students only: no empty columns otherwise
        table["teacher"] = pd.Series([name for name, _ in teachers], index=runs.index,
                                     dtype=object)
        table["teacher sha256"] = pd.Series([sha for _, sha in teachers], index=runs.index,
                                            dtype=object)
    params = differing_params(runs)
    for key in params:
        table[key] = runs[f"params.{key}"]
    order = score.sort_values(ascending=False, na_position="last", kind="stable").index
    table = table.loc[order].reset_index(drop=True)
    table.insert(0, "#", range(1, len(table) + 1))
    table.attrs["ranked by"] = title
    table.attrs["params"] = params
    return table


def for_people(table: pd.DataFrame) -> pd.DataFrame:
    """Strings: metrics with 2 decimals, seconds whole, long ids shortened, absent values as
    an em dash, empty strings as ``""``."""
    out = table.copy()
    for column, width in SHORTENED.items():
        if column in out.columns:
            out[column] = out[column].map(lambda v, w=width: v[:w] if isinstance(v, str) else v)
    for column in out.columns:
        decimals = 0 if column == "train time (s)" else 2
        out[column] = out[column].map(lambda v, d=decimals: _cell(v, d))
    return out


def _cell(value, decimals: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, float):
        return f"{value:.{decimals}f}"
    return str(value) if value != "" else '""'


def to_markdown(table: pd.DataFrame) -> str:
    people = for_people(table)
    rows = [list(people.columns)] + people.values.tolist()
    lines = ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("---" for _ in people.columns) + "|")
    return "\n".join(lines) + "\n"


def _write_markdown(table: pd.DataFrame, path: Path) -> None:
    ranked = table.attrs.get("ranked by", "")
    path.write_text(f"# Run comparison (ranked by {ranked})\n\n{to_markdown(table)}")


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    table.to_csv(path, index=False)


def _write_html(table: pd.DataFrame, path: Path) -> None:
    body = for_people(table).to_html(index=False, escape=True, border=0)
    style = ("body{font-family:sans-serif} table{border-collapse:collapse;font-size:13px}"
             "th,td{padding:4px 8px;border-bottom:1px solid #ddd;text-align:left}"
             "th{background:#f3f3f3}")
    path.write_text(f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Run comparison"
                    f"</title><style>{style}</style></head><body>\n<h1>Run comparison (ranked by "
                    f"{table.attrs.get('ranked by', '')})</h1>\n{body}\n</body></html>\n")


TABLE_WRITERS: dict[str, Callable[[pd.DataFrame, Path], None]] = {
    ".md": _write_markdown, ".csv": _write_csv, ".html": _write_html}


def check_output(output: str | Path | None) -> Path | None:
    if output is None:
        return None
    output = Path(output)
    if output.suffix.lower() not in TABLE_WRITERS:
        raise ReidError(f"--output must end with {', '.join(TABLE_WRITERS)}, got {output}")
    return output


# --------------------------------------------------------------------------- figure
def comparison_figure(client: MlflowClient, table: pd.DataFrame, runs: pd.DataFrame,
                      training: dict[str, Training], metric: str, path: Path) -> Path:
    """Loss and ``metric`` curves of the best ``MAX_FIGURE_RUNS`` runs of the table."""
    from reid.visualize import plot_run_comparison

    shown = table.head(MAX_FIGURE_RUNS)
    by_id = runs.set_index("run_id")
    curve_metric = metric.replace(" ", ".").rpartition(".")[2]
    curves = {}
    for _, row in shown.iterrows():
        run_id = row["run id"]
        found = training_curves(client, training[run_id].run_ids, results_of(by_id.loc[run_id]),
                                curve_metric, terms=False)
        note = "" if found.series else ", no training run"
        curves[f"#{row['#']} {row['run']} ({run_id[:8]}{note}){_legend_params(row, table)}"] = found
    title = f"{len(shown)} runs, best first by {table.attrs.get('ranked by', metric)}"
    if len(table) > len(shown):
        title += f" (the best {len(shown)} of {len(table)})"
    return plot_run_comparison(curves, path, metric=curve_metric, title=title)


def _legend_params(row: pd.Series, table: pd.DataFrame, most: int = 3, width: int = 22) -> str:
    """A few differing params for the legend (runs often share a name), long values cut to
    their end (a path's file name); OUTPUT_DIR is left out: it differs whenever anything does."""
    keys = [k for k in table.attrs.get("params", []) if k != "OUTPUT_DIR"][:most]
    values = [_cell(row[k], 2) for k in keys]
    values = [v if len(v) <= width else "\u2026" + v[1 - width:] for v in values]
    shown = ", ".join(f"{k}={v}" for k, v in zip(keys, values))
    return f": {shown}" if shown else ""


# --------------------------------------------------------------------------- entry point
def experiment_id_of(client: MlflowClient, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise ReidError(f"no MLflow experiment named {name!r} in {client.tracking_uri} "
                        f"(experiments there: {names})")
    return found.experiment_id


def compare(experiment: str | None = None, filter_string: str | None = None,
            metric: str = "mAP", output: str | Path | None = None, max_runs: int = 20,
            track: bool = True) -> Comparison:
    """Rank the runs of ``experiment`` (default: the pipeline's) in the tracking store that
    ``MLFLOW_TRACKING_URI`` names, and log the comparison.

    ``output``: also write the table there (``.md``, ``.csv`` or ``.html``) and the figure
    beside it as ``.png``. ``track``: log table and figure as artifacts of a new run.
    """
    output = check_output(output)
    client = MlflowClient(mlflow.get_tracking_uri())
    experiment = experiment or EXPERIMENT
    experiment_id = experiment_id_of(client, experiment)
    runs = find_runs(experiment_id, filter_string, max_runs)
    if runs.empty:
        where = f" matching {filter_string!r}" if filter_string else ""
        raise ReidError(f"no finished run with final results in experiment {experiment!r}{where}"
                        " (run `reid run` first)")
    training = training_of(client, experiment_id, list(runs["run_id"]))
    recipes = [recipe_of(client, run) for _, run in runs.iterrows()]
    table = comparison_table(runs, metric, training, recipes)
    with tempfile.TemporaryDirectory(prefix="reid-compare-") as tmp:
        files = {suffix: Path(tmp) / f"comparison{suffix}" for suffix in TABLE_WRITERS}
        for suffix, path in files.items():
            TABLE_WRITERS[suffix](table, path)
        figure = comparison_figure(client, table, runs, training, metric,
                                   Path(tmp) / "comparison.png")
        run_id = _log_comparison(experiment, table, [*files.values(), figure], metric,
                                 filter_string) if track else None
        written = _copy_outputs(output, files, figure)
    artifact_uri = client.get_run(run_id).info.artifact_uri if run_id else None
    return Comparison(table=table, markdown=to_markdown(table),
                      figure=written[1] if written else None, run_id=run_id,
                      artifact_uri=artifact_uri, files=written)


def _log_comparison(experiment: str, table: pd.DataFrame, files: list[Path], metric: str,
                    filter_string: str | None) -> str:
    tracker = Tracker(experiment=experiment)
    tags = {COMPARISON_TAG: "true", "reid.compared_runs": ",".join(table["run id"])[:4000]}
    with tracker.run("comparison", tags=tags) as run_id:
        tracker.client.log_param(run_id, "metric", metric)
        tracker.client.log_param(run_id, "filter", filter_string or "")
        tracker.client.log_param(run_id, "runs", len(table))
        for path in files:
            tracker.log_artifact(run_id, path)
    logger.info("comparison logged as MLflow run %s", run_id)
    return run_id


def _copy_outputs(output: Path | None, files: dict[str, Path], figure: Path) -> list[Path]:
    """[table, figure] written where --output asked (nothing without it)."""
    if output is None:
        return []
    output.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(files[output.suffix.lower()], output)
    figure_path = output.with_suffix(".png")
    shutil.copyfile(figure, figure_path)
    return [output, figure_path]
