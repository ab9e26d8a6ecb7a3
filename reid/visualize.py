"""Figures for people: rank lists, ROC, pair-distance histograms, training and run curves.

Pure plotting from numpy arrays, dicts and image paths to PNG files (matplotlib's object API,
no pyplot: importing this module never changes the caller's matplotlib backend). No tracking
here: ``tasks/`` logs the files. :func:`write_evaluation_report` turns what the evaluate stage
leaves in ``OUTPUT_DIR`` (``examples/<set>.json`` from :mod:`reid.evaluation.examples`,
``roc/<set>.csv``) into PNGs.

A series is ``(steps, values)``: two equally long sequences.
"""
from __future__ import annotations

import csv
import json
import logging
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image

from reid.evaluation.examples import sampled_roc

logger = logging.getLogger(__name__)

Series = tuple[Sequence[float], Sequence[float]]

MATCH_COLOR = "#00a000"      # frame of a gallery item with the query's id
MISMATCH_COLOR = "#dc0000"   # frame of a gallery item with another id
QUERY_COLOR = "#202020"
UNKNOWN_COLOR = "#808080"  # frame of a gallery item when the query's id is unknown
FRAME_WIDTH = 3.5            # points
DPI = 110
CELL_WIDTH, IMAGE_HEIGHT, TEXT_HEIGHT = 1.05, 2.0, 0.75  # inches, per rank-list cell


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


# --------------------------------------------------------------------------- rank lists
def _read_image(path: str | None) -> np.ndarray | None:
    if not path or not Path(path).is_file():
        return None
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _show_image(ax, path: str | None, frame: str, frame_width: float) -> None:
    image = _read_image(path)
    if image is None:
        ax.set_facecolor("#d9d9d9")
        ax.text(0.5, 0.5, "image\nmissing", ha="center", va="center", fontsize=8,
                transform=ax.transAxes)
    else:
        ax.imshow(image, aspect="auto", interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(frame)
        spine.set_linewidth(frame_width)


def _gallery_cell(ax, item: dict, heading: str) -> None:
    # match None: unknown (a search result, whose query has no identity): a neutral frame
    match = None if item["match"] is None else bool(item["match"])
    frame = {True: MATCH_COLOR, False: MISMATCH_COLOR, None: UNKNOWN_COLOR}[match]
    _show_image(ax, item.get("path"), frame, FRAME_WIDTH)
    mark = {True: "\u2713", False: "\u2717", None: ""}[match]  # check / cross: not colour alone
    ax.set_title(heading, fontsize=8, pad=4)
    ax.set_xlabel(f"{mark} d {item['distance']:.3f}\ncam {item['camid']} \u00b7 id {item['pid']}",
                  fontsize=8, labelpad=4)


def plot_rank_list(queries: Sequence[dict], path: str | Path, title: str = "rank list",
                   top_k: int | None = None) -> Path:
    """One row per query: the query image, then its ``top_k`` nearest gallery images framed
    green (same id) or red (other id) with distance, camera and id under each; when the
    nearest true match is ranked below ``top_k``, it is shown last with its rank.

    ``queries`` are the records of ``ExampleCollector.report`` (``best`` / ``worst``):
    ``{"path", "pid", "camid", "ap", "gallery": [{"path", "pid", "camid", "distance",
    "match"}, ...], "first_match": {..., "rank"}}``.
    """
    if not queries:
        raise ValueError("plot_rank_list needs at least one query")
    k = top_k or max(len(q["gallery"]) for q in queries)
    late_match = any(q.get("first_match") and q["first_match"]["rank"] > k for q in queries)
    ratios = [1.0] * (1 + k) + ([0.2, 1.0] if late_match else [])  # a gap before a late match
    cols = len(ratios)
    row_height = IMAGE_HEIGHT + TEXT_HEIGHT + 0.35
    fig = Figure(figsize=(sum(ratios) * CELL_WIDTH + 0.3, len(queries) * row_height + 0.6),
                 layout="constrained")
    grid = fig.add_gridspec(len(queries), cols, width_ratios=ratios)
    for row, query in enumerate(queries):
        ax = fig.add_subplot(grid[row, 0])
        _show_image(ax, query.get("path"), QUERY_COLOR, 1.5)
        ax.set_title("query", fontsize=8, fontweight="bold", pad=4)
        score = f"AP {100 * query['ap']:.1f}%" if "ap" in query else Path(query["path"]).name
        ax.set_xlabel(f"{score}\ncam {query['camid']} \u00b7 id {query['pid']}",
                      fontsize=8, labelpad=4)
        for rank, item in enumerate(query["gallery"][:k], start=1):
            _gallery_cell(fig.add_subplot(grid[row, rank]), item, f"#{rank}")
        match = query.get("first_match")
        if late_match and match and match["rank"] > k:
            _gallery_cell(fig.add_subplot(grid[row, cols - 1]), match,
                          f"1st match: #{match['rank']}")
    fig.suptitle(f"{title}\nframe: green = same id as the query, red = another id",
                 fontsize=10)
    return _save(fig, path)


# --------------------------------------------------------------------------- verification
def plot_roc(far: Sequence[float], tar: Sequence[float], path: str | Path, title: str = "ROC",
             tar_at_far: Mapping[float, float] | None = None, note: str | None = None) -> Path:
    """TAR against FAR (log axis; FAR = 0 cannot be shown), with TAR@FAR points annotated."""
    far, tar = np.asarray(far, dtype=float), np.asarray(tar, dtype=float)
    shown = far > 0
    fig = Figure(figsize=(5.6, 4.4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(far[shown], tar[shown], lw=1.6, color="#1f77b4", label="ROC")
    for index, (at, value) in enumerate(sorted((tar_at_far or {}).items())):
        ax.scatter([at], [value], s=18, zorder=3, color="#d62728",
                   label="TAR at FAR" if index == 0 else None)
        # Above low points, below high ones: the label stays inside the axes.
        ax.annotate(f"{value * 100:.1f}% @ {at:.0e}", (at, value), textcoords="offset points",
                    xytext=(5, 6) if value < 0.5 else (5, -12), fontsize=8,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))
    ax.set(xscale="log", xlabel="FAR (share of impostor pairs accepted)",
           ylabel="TAR (share of genuine pairs accepted)", ylim=(0, 1.02))
    ax.set_title(title if note is None else f"{title}\n{textwrap.fill(note, 70)}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if shown.any():
        ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_distance_histograms(genuine: Sequence[float], impostor: Sequence[float],
                             path: str | Path, title: str = "pair distances",
                             metric: str | None = None, bins: int = 60) -> Path:
    """Overlaid density histograms of genuine and impostor pair distances (shared bins)."""
    genuine = np.asarray(genuine, dtype=float)
    impostor = np.asarray(impostor, dtype=float)
    genuine, impostor = genuine[np.isfinite(genuine)], impostor[np.isfinite(impostor)]
    values = np.concatenate([genuine, impostor])
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    if values.size:
        edges = np.histogram_bin_edges(values, bins=bins)
        for data, color, label in ((genuine, MATCH_COLOR, "genuine: same id, other camera"),
                                   (impostor, MISMATCH_COLOR, "impostor: other id")):
            if data.size:
                ax.hist(data, bins=edges, density=True, alpha=0.35, color=color)
                ax.hist(data, bins=edges, density=True, histtype="step", lw=1.5, color=color,
                        label=f"{label} (n={data.size:,}, mean {data.mean():.3f})")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, frameon=False)
    ax.set(xlabel=f"distance ({metric})" if metric else "distance", ylabel="density")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


# --------------------------------------------------------------------------- curves
@dataclass
class Curves:
    """A run's curves: named series against iterations, and final values (name -> (step,
    value)) drawn as stars, e.g. the evaluate stage's mAP after the last iteration."""

    series: dict[str, Series] = field(default_factory=dict)
    final: dict[str, tuple[float, float]] = field(default_factory=dict)


def _series(series: Series) -> tuple[np.ndarray, np.ndarray]:
    steps, values = np.asarray(series[0], dtype=float), np.asarray(series[1], dtype=float)
    order = np.argsort(steps, kind="stable")
    return steps[order], values[order]


def _is_loss(name: str) -> bool:
    return name == "total_loss" or name.startswith("loss")


def plot_training_curves(curves: Curves, path: str | Path, title: str = "training") -> Path:
    """Up to three panels against iterations: the losses (``total_loss`` bold, ``loss_*``),
    the learning rate (``lr``), and every other series, e.g. mAP per evaluation (percent),
    with the final values as stars."""
    names = list(curves.series)
    panels = {"loss": [n for n in names if _is_loss(n)],
              "learning rate": [n for n in names if n == "lr"],
              "evaluation (%)": [n for n in names if not _is_loss(n) and n != "lr"]}
    panels = {panel: members for panel, members in panels.items()
              if members or (panel == "evaluation (%)" and curves.final)}
    if not panels:
        raise ValueError("plot_training_curves: no series and no final values to plot")
    fig = Figure(figsize=(4.6 * len(panels), 4.0), layout="constrained")
    axes = dict(zip(panels, fig.subplots(1, len(panels), squeeze=False)[0]))
    # A final value takes the colour of the series of the same name.
    evaluated = sorted(set(panels.get("evaluation (%)", [])) | set(curves.final))
    for panel, members in panels.items():
        ax = axes[panel]
        for index, name in enumerate(sorted(members, key=lambda n: (n != "total_loss", n))):
            steps, values = _series(curves.series[name])
            color = f"C{(evaluated.index(name) if name in evaluated else index) % 10}"
            ax.plot(steps, values, label=name, color=color,
                    lw=2.0 if name == "total_loss" else 1.1,
                    marker="o" if panel == "evaluation (%)" else None, markersize=3)
        ax.set(xlabel="iteration", title=panel)
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.04)
    for name, (step, value) in sorted(curves.final.items()):
        axes["evaluation (%)"].plot([step], [value], marker="*", markersize=13,
                                    linestyle="none", color=f"C{evaluated.index(name) % 10}",
                                    label=f"{name} (final: {value:.1f})")
    if "learning rate" in axes:
        axes["learning rate"].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    for ax in axes.values():
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def plot_run_comparison(runs: Mapping[str, Curves], path: str | Path,
                        loss_key: str = "total_loss", metric: str = "mAP",
                        title: str = "runs") -> Path:
    """Left: the training loss ``loss_key`` of every run. Right: the other series (e.g. mAP
    per evaluation during training), lines per test set, and the final values as stars.
    One colour per run, named in a shared legend below. ``runs`` maps a label to its curves."""
    if not runs:
        raise ValueError("plot_run_comparison needs at least one run")
    fig = Figure(figsize=(11.5, 4.4 + 0.25 * len(runs)), layout="constrained")  # legend rows
    loss_ax, metric_ax = fig.subplots(1, 2, sharex=True)  # the same iterations side by side
    names = sorted({n for c in runs.values() for n in [*c.series, *c.final] if n != loss_key})
    styles = ["-", "--", ":", "-."]
    # Final values of runs trained equally long share an x: dodge them a little sideways.
    span = max([step for c in runs.values() for step, _ in c.final.values()] or [1.0]) or 1.0
    dodge = min(0.025, 0.08 / max(len(runs) - 1, 1)) * span  # at most 8 % of the axis in all
    handles = []
    for index, (label, curves) in enumerate(runs.items()):
        color = f"C{index % 10}"
        handles.append(Line2D([], [], color=color, lw=2, label=label))
        if loss_key in curves.series:
            loss_ax.plot(*_series(curves.series[loss_key]), color=color, lw=1.3)
        for name, series in curves.series.items():
            if name != loss_key:
                metric_ax.plot(*_series(series), color=color, lw=1.2, marker="o", markersize=3,
                               linestyle=styles[names.index(name) % len(styles)])
        for name, (step, value) in curves.final.items():
            offset = (index - (len(runs) - 1) / 2) * dodge
            metric_ax.plot([step + offset], [value], color=color, marker="*", markersize=14,
                           markeredgecolor="white", linestyle="none")  # overlaps stay visible
    loss_ax.set(xlabel="iteration", ylabel=loss_key, title=f"training loss ({loss_key})")
    metric_ax.set(xlabel="iteration", ylabel=f"{metric} (%)",
                  title=f"{metric}: \u25cf evaluations during training, \u2605 final evaluation")
    for ax in (loss_ax, metric_ax):
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.04, y=0.08)
    if len(names) > 1:  # several test sets: say which line style is which
        metric_ax.legend(handles=[Line2D([], [], color="#555555", label=name,
                                         linestyle=styles[i % len(styles)])
                                  for i, name in enumerate(names)], fontsize=7, loc="lower right")
    wide = max(len(h.get_label()) for h in handles) > 70  # one column when labels are long
    fig.legend(handles=handles, loc="outside lower center", ncols=1 if wide else min(2, len(runs)),
               fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


# --------------------------------------------------------------------------- evaluate stage
def _read_roc_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return (np.array([float(r["far"]) for r in rows]), np.array([float(r["tar"]) for r in rows]))


def write_evaluation_report(output_dir: str | Path, report_dir: str | Path,
                            training: Curves | None = None,
                            test_sets: Sequence[str] | None = None) -> list[Path]:
    """PNGs from what the evaluate stage left in ``output_dir`` for each of ``test_sets``
    (default: every ``examples/<set>.json``): best and worst rank lists, pair-distance
    histograms, the ROC (the exact one when ``roc/<set>.csv`` exists, else one from the
    sampled pairs); and, given ``training`` curves, ``training_curves.png``."""
    output_dir, report_dir = Path(output_dir), Path(report_dir)
    if test_sets is None:
        test_sets = sorted(p.stem for p in (output_dir / "examples").glob("*.json"))
    written = []
    for name in test_sets:
        examples_file = output_dir / "examples" / f"{name}.json"
        if not examples_file.is_file():
            logger.info("no retrieval examples for %s (%s): TEST.VISUALIZE off?", name,
                        examples_file)
            continue
        examples = json.loads(examples_file.read_text())
        for kind in ("best", "worst"):
            if examples.get(kind):
                written.append(plot_rank_list(
                    examples[kind], report_dir / f"{name}_ranks_{kind}.png",
                    title=f"{name}: the {len(examples[kind])} {kind} queries by AP"))
        pairs = examples["distances"]
        written.append(plot_distance_histograms(
            pairs["genuine"], pairs["impostor"], report_dir / f"{name}_distances.png",
            title=f"{name}: pair distances (uniform sample)", metric=examples.get("metric")))
        written.append(_roc_figure(output_dir / "roc" / f"{name}.csv", pairs,
                                   report_dir / f"{name}_roc.png", name))
    if training is not None and (training.series or training.final):
        written.append(plot_training_curves(training, report_dir / "training_curves.png"))
    return written


def _roc_figure(roc_csv: Path, pairs: dict, path: Path, name: str) -> Path:
    if roc_csv.is_file():
        far, tar = _read_roc_csv(roc_csv)
        return plot_roc(far, tar, path, title=f"{name}: ROC", note="all query x gallery pairs")
    far, tar = sampled_roc(pairs["genuine"], pairs["impostor"])
    note = (f"estimated from {len(pairs['genuine']):,} genuine and {len(pairs['impostor']):,} "
            "impostor sampled pairs (TEST.ROC_ENABLED gives the exact curve)")
    return plot_roc(far, tar, path, title=f"{name}: ROC", note=note)
