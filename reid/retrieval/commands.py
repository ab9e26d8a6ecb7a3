"""``reid index build`` and ``reid search``: the command-line face of :class:`Gallery`.

    reid index build --config C --weights W (--input DIR | --dataset NAME | --features F)
                     --index-type "IVF1024,PQ64" --output DIR
    reid search --index DIR --query IMAGE_OR_DIR -k 10 [--output hits.csv|.json]
                [--visualize ranks.png]

The build embeds the gallery (an image folder, a test set's gallery, or features already
extracted), builds and saves the index with the model card, and measures the index's recall
against exact search on a sample of its own vectors. Tracking is the composition root's
(``reid/cli.py`` passes ``log_index``, which logs an MLflow ``index`` run): nothing here
imports MLflow.
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from reid.errors import ReidError

# The commands' own modules (faiss, torch) are imported when a command runs: building the
# parser for `reid --help` stays light.

logger = logging.getLogger("reid")



@dataclass(frozen=True)
class Hooks:
    """What the composition root (``reid/cli.py``) lends these commands: the shared command
    helpers of ``reid/commands.py`` and the tracking adapters of ``tasks/`` (this package is
    library code and imports neither)."""

    load: Callable[[argparse.Namespace], Any]        # args -> config (recipe, overrides, log)
    recipe: Callable[[str | None], str]              # --config, or the default recipe
    default_weights: Callable[..., str]              # (cfg, *names) -> a file in OUTPUT_DIR
    setup_logging: Callable[[], None]
    log_index: Callable[[argparse.Namespace, Any, dict], str | None]  # the MLflow index run
    registered_weights: Callable[[str, Path], tuple[str, str]]  # models:/ -> config, weights


def add_retrieval_commands(sub, hooks: Hooks) -> None:
    """``reid index build`` and ``reid search`` on the ``reid`` parser's subcommands."""
    index = sub.add_parser("index", help="build a gallery index for `reid search` (faiss)")
    actions = index.add_subparsers(dest="index_command", required=True)
    build = actions.add_parser("build", help="embed a gallery and save its faiss index")
    build.add_argument("--config", help="YAML recipe of the model (default: params/synthetic.yml)")
    build.add_argument("--weights", help="checkpoint, or models:/NAME@ALIAS from the MLflow "
                       "registry (default: from OUTPUT_DIR; optional with --features)")
    build.add_argument("--input", help="a folder of gallery images (searched recursively)")
    build.add_argument("--dataset", help="a test set whose gallery is indexed (e.g. Market1501)")
    build.add_argument("--features", help="features already extracted: .npz from `reid "
                       "extract` or an N x D float32 .npy (memory-mapped)")
    build.add_argument("--index-type", default="Flat", help="faiss factory string: Flat "
                       "(exact, default), IVF1024,Flat, IVF1024,PQ64, HNSW32, SQfp16, SQ8, ...")
    build.add_argument("--metric", help="cosine or euclidean (default: TEST.METRIC)")
    build.add_argument("--search-params", help="faiss search parameters saved with the index, "
                       "e.g. nprobe=64 or efSearch=256 (default: chosen by index type)")
    build.add_argument("--rescore", type=int, help="candidates fetched per result and "
                       "re-scored exactly, saved with the index (default: 10 for compressed "
                       "codes such as PQ and SQ8, 1 otherwise)")
    build.add_argument("--device", default="cpu", help="faiss device: cpu (default), cuda "
                       "(GPU build of faiss; several GPUs hold shards) or auto")
    build.add_argument("--output", help="the index folder to write (required)")
    build.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    build.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                       help="config overrides, e.g. MODEL.DEVICE cpu")
    build.set_defaults(fn=lambda args: cmd_index_build(args, hooks), command_parser=build)

    search = sub.add_parser("search", help="find the nearest gallery images of query images "
                            "in an index built by `reid index build`")
    search.add_argument("--index", help="the index folder (required)")
    search.add_argument("--query", help="a query image, or a folder of them (required)")
    search.add_argument("-k", type=int, default=10, help="results per query (default 10)")
    search.add_argument("--output", help="write the results to FILE.csv or FILE.json")
    search.add_argument("--visualize", help="draw the rank lists to FILE.png")
    search.add_argument("--search-params", help="override the index's search parameters, "
                        "e.g. nprobe=128")
    search.add_argument("--config", help="the model's recipe (default: the one saved with the "
                        "index; refused when it embeds differently)")
    search.add_argument("--weights", help="the model's checkpoint (default: the index's)")
    search.set_defaults(fn=lambda args: cmd_search(args, hooks), command_parser=search, opts=[])


# --------------------------------------------------------------------------- build
def cmd_index_build(args: argparse.Namespace, hooks: Hooks) -> None:
    from reid.retrieval.gallery import Gallery
    from reid.retrieval.model_card import ModelCard
    from reid.retrieval.recall import recall_against_exact
    from reid.stage_table import BEST_WEIGHTS

    sources = [name for name in ("input", "dataset", "features") if getattr(args, name)]
    if len(sources) != 1:
        raise ReidError("reid index build takes one of --input DIR, --dataset NAME or "
                        f"--features FILE (got {len(sources) or 'none'})")
    if not args.output:
        raise ReidError("reid index build needs --output DIR (the index folder to write)")
    weights = args.weights
    if weights and weights.startswith("models:/"):
        args.config, weights = hooks.registered_weights(weights, Path(args.output))
    cfg = hooks.load(args)
    if not weights and not args.features:
        weights = hooks.default_weights(cfg, *BEST_WEIGHTS)
    started = time.perf_counter()
    source = gallery_source(args, cfg, weights)
    card = ModelCard.from_config(cfg, weights) if weights else None
    gallery = Gallery.build(source, args.index_type, args.metric or cfg.TEST.METRIC,
                            model=card, search_params=args.search_params, device=args.device,
                            rescore=args.rescore)
    build_s = time.perf_counter() - started
    recall = recall_against_exact(gallery, source)
    gallery.save(args.output)
    result = {"index": str(args.output), "count": len(gallery), "dim": gallery.dim,
              "index_type": gallery.index_type, "metric": gallery.metric,
              "metrics": {"build_seconds": build_s, "index_mb": index_megabytes(args.output),
                          **recall}}
    print(f"wrote {args.output}: {len(gallery)} vectors of {gallery.dim}-d, "
          f"{gallery.index_type} ({gallery.metric}) in {build_s:.1f} s; "
          + ", ".join(f"{k} {v:.4f}" for k, v in recall.items()) + " against exact search")
    run_id = None if args.no_track else hooks.log_index(args, cfg, result)
    if run_id:
        print(f"MLflow run {run_id} (index run: the folder as an artifact, recall as metrics)")


def gallery_source(args: argparse.Namespace, cfg, weights: str | None):
    """The vectors to index with their metadata (a ``FeatureSource``), from the one source
    the command names."""
    from reid.retrieval.model_card import ImageEmbedder
    from reid.retrieval.sources import from_arrays, read_features
    if args.features:
        return read_features(args.features)
    if args.input:
        from reid.inference import list_images
        folder = Path(args.input).resolve()
        paths = [str(folder / p) for p in list_images(folder)]
        pids = camids = None
    else:
        from reid.data.datasets import DATASET_REGISTRY
        records = DATASET_REGISTRY.get(args.dataset)(cfg.DATASETS.ROOT).gallery
        paths = [str(Path(r[0]).resolve()) for r in records]
        pids, camids = [r[1] for r in records], [r[2] for r in records]
    device = "cuda" if cfg.MODEL.DEVICE == "cuda" else "cpu"
    features = ImageEmbedder.load(cfg, weights, device)(paths)
    return from_arrays(features, paths, pids, camids)


def index_megabytes(directory: str | Path) -> float:
    from reid.retrieval.store import INDEX
    return (Path(directory) / INDEX).stat().st_size / 2**20


# --------------------------------------------------------------------------- search
def cmd_search(args: argparse.Namespace, hooks: Hooks) -> None:
    from reid.retrieval.gallery import Gallery
    from reid.retrieval.results import write_hits, write_rank_figure
    hooks.setup_logging()
    if not args.index or not args.query:
        raise ReidError("reid search needs --index DIR and --query IMAGE_OR_DIR")
    if args.output and Path(args.output).suffix.lower() not in (".csv", ".json"):
        raise ReidError(f"--output {args.output}: expected a .csv or .json file")
    queries = query_paths(args.query)
    gallery = Gallery.load(args.index, search_params=args.search_params)
    if args.k > len(gallery):  # before a model is loaded for nothing
        raise ReidError(f"-k {args.k} is larger than the gallery of {args.index} "
                        f"({len(gallery)} vectors)")
    gallery.use_model(_query_model(args, gallery, hooks.recipe))
    result = gallery.search(queries, k=args.k)
    for row, query in enumerate(queries):
        hits = ", ".join(f"{Path(p).name} ({d:.4f})"
                         for p, d in zip(result.paths[row][:3], result.distances[row][:3]))
        print(f"{query}: {hits}{' ...' if args.k > 3 else ''}")
    if args.output:
        print(f"wrote {write_hits(args.output, queries, result)}")
    if args.visualize:
        print(f"wrote {write_rank_figure(args.visualize, queries, result)}")


def query_paths(query: str) -> list[str]:
    """The query image, or every image under a query folder (sorted)."""
    from reid.retrieval.model_card import check_image
    path = Path(query)
    if path.is_dir():
        from reid.inference import list_images
        return [str(path / p) for p in list_images(path)]
    check_image(path)
    return [str(path)]


def _query_model(args: argparse.Namespace, gallery, recipe: Callable[[str | None], str]):
    """The model that embeds the queries: the index's own, or the one named on the command
    line (``use_model`` refuses it unless it embeds like the index's)."""
    from reid.config import load_config
    from reid.retrieval.model_card import ImageEmbedder
    from reid.retrieval.store import model_embedder
    if not (args.config or args.weights):
        return model_embedder(gallery.model, Path(args.index))
    if gallery.model is None:
        raise ReidError(f"gallery index {args.index} was built from features without a model: "
                        "search it with features (Python API), not images")
    weights = args.weights or gallery.model.weights
    return ImageEmbedder.load(load_config(recipe(args.config)), weights)

