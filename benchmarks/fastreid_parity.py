"""FastReID 1.4 parity harness: our models against FastReID's own, name for name and number
for number.

Two interpreters, two modes:

    /work/fastreid-venv/bin/python benchmarks/fastreid_parity.py --export /work/fastreid-ref
    .venv/bin/python benchmarks/fastreid_parity.py --compare /work/fastreid-ref

``--export`` (FastReID 1.4 installed, ``reid`` not needed): for each recipe of ``RECIPES`` it
builds FastReID's model from the FastReID config in ``benchmarks/fastreid_recipes/``
(``MODEL.HEADS.NUM_CLASSES 100``, ``MODEL.BACKBONE.PRETRAIN False``), gives every parameter that
was initialised to a constant (norm-layer affines, the zero-initialised norm closing each
non-local block, GeM's ``p``) a random value, sets the BatchNorm running statistics from one
random batch and perturbs them (so that no layer is an identity and a model that skipped one
would be caught), and writes to OUTDIR

* ``<name>.pth``: ``{"model": state_dict}``, written by FastReID's own ``Checkpointer``;
* ``<name>.features.pt``: FastReID's eval-mode features of the parity batch;
* ``<name>.json``: the manifest (below);
* ``batch.pt``: the parity batch, 4 seeded images 3 x 256 x 128, float 0..255;

and the manifest alone (no weights) to ``tests/data/fastreid/<name>.json``, which
``tests/test_fastreid_parity.py`` checks our models against without FastReID. A manifest holds
the recipe name, the FastReID and params/ configs, the total parameter count, the feature
dimension and every state_dict key with its shape.

``--compare`` (this project's venv): for each recipe it builds OUR model from the params/
recipe named in the manifest, loads the FastReID checkpoint, and reports the keys the model
lacks, the keys the checkpoint has that the model does not, the tensors whose shapes differ,
the parameter counts, and the smallest cosine similarity between our features and FastReID's
over the batch. It exits 1 when any recipe fails (cosine < 0.9999, any key difference, or
different counts).

The FastReID venv (outside the repository; FastReID 1.4.0 pins torch==1.13.1, hence
``--no-deps``, and of its dependencies only these three are imported by what runs here)::

    python3.11 -m venv /work/fastreid-venv
    /work/fastreid-venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/fastreid-venv/bin/pip install --no-deps fastreid==1.4.0
    /work/fastreid-venv/bin/pip install yacs "tabulate>=0.9,<0.10" "termcolor>=2.2,<3"

FastReID 1.4.0 on torch 2.14 / numpy 2.x needs no shim for what this script imports
(``fastreid.config``, ``fastreid.modeling``, ``fastreid.utils.checkpoint``). Two modules are
broken there and must stay unimported: ``fastreid.data`` (``from torch._six import
string_classes``; torch._six was removed in torch 2.0) and ``fastreid.evaluation``
(``np.bool``, removed in numpy 1.24). ``MODEL.DEVICE cpu`` is set because FastReID's
``build_model`` moves the model to that device (default ``cuda``).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

logger = logging.getLogger("fastreid_parity")

REPO = Path(__file__).resolve().parents[1]
FASTREID_RECIPES = REPO / "benchmarks" / "fastreid_recipes"
MANIFEST_DIR = REPO / "tests" / "data" / "fastreid"

NUM_CLASSES = 100
BATCH_SHAPE = (4, 3, 256, 128)
BATCH_SEED = 2024
MODEL_SEED = 7
MIN_COSINE = 0.9999
BATCH_FILE = "batch.pt"
CALIBRATION_IMAGES = 16


@dataclass(frozen=True)
class Recipe:
    name: str
    fastreid_config: str  # relative to benchmarks/fastreid_recipes/
    params_config: str    # relative to the repository root


RECIPES = (
    Recipe("BoT-R50", "Market1501/bagtricks_R50.yml", "params/Market1501/bagtricks_R50.yml"),
    Recipe("BoT-R50-ibn", "Market1501/bagtricks_R50-ibn.yml",
           "params/Market1501/bagtricks_R50-ibn.yml"),
    Recipe("AGW-R50", "Market1501/AGW_R50.yml", "params/Market1501/AGW_R50.yml"),
    Recipe("SBS-R50-ibn", "Market1501/sbs_R50-ibn.yml", "params/Market1501/sbs_R50-ibn.yml"),
    Recipe("MGN-R50-ibn", "Market1501/mgn_R50-ibn.yml", "params/Market1501/mgn_R50-ibn.yml"),
    Recipe("BoT-S50", "Market1501/bagtricks_S50.yml", "params/Market1501/bagtricks_S50.yml"),
)

# The same overrides on both sides: FastReID's config keys and ours are spelt alike here.
PARITY_OVERRIDES = ("MODEL.HEADS.NUM_CLASSES", str(NUM_CLASSES),
                    "MODEL.BACKBONE.PRETRAIN", "False")


# --------------------------------------------------------------------------- shared helpers
# (torch and the standard library only: both interpreters run them)

def random_images(count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` images 3 x 256 x 128, float 0..255, that differ from each other in layout,
    colour and contrast. Plain i.i.d. noise images would all look alike once pooled, so the
    BatchNorms after a global pooling (BNNeck, ResNeSt's attention) would get near-zero
    variances and blow up any other image's features."""
    _, channels, height, width = BATCH_SHAPE
    layout = torch.rand((count, channels, 8, 4), generator=generator)
    layout = torch.nn.functional.interpolate(layout, size=(height, width), mode="bilinear",
                                             align_corners=False)
    texture = torch.rand((count, channels, height, width), generator=generator)
    contrast = torch.empty((count, 1, 1, 1)).uniform_(0.3, 1.0, generator=generator)
    tint = torch.rand((count, channels, 1, 1), generator=generator)
    return 255.0 * (contrast * (0.6 * layout + 0.4 * texture) + (1 - contrast) * tint)


def parity_batch() -> torch.Tensor:
    """The seeded input batch (4 images), the same for every recipe."""
    return random_images(BATCH_SHAPE[0], torch.Generator().manual_seed(BATCH_SEED))


def state_shapes(state: Mapping[str, torch.Tensor]) -> dict[str, list[int]]:
    return {key: list(value.shape) for key, value in state.items()}


def count_parameters(model: nn.Module) -> int:
    # frozen parameters count too (the BNNeck bias is frozen in FastReID)
    return sum(p.numel() for p in model.parameters())


@dataclass
class KeyReport:
    """How a model's state_dict differs from a reference's, by name and shape."""
    missing: list[str] = field(default_factory=list)      # in the reference, not in ours
    unexpected: list[str] = field(default_factory=list)   # in ours, not in the reference
    mismatched: list[str] = field(default_factory=list)   # in both, shapes differ

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 6) -> str:
        parts = []
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                            ("shape", self.mismatched)):
            if keys:
                more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
                parts.append(f"{label}: {', '.join(keys[:limit])}{more}")
        return "; ".join(parts) or "keys and shapes match"


def key_differences(reference: Mapping[str, list[int]], ours: Mapping[str, list[int]]) -> KeyReport:
    """Compare two ``key -> shape`` maps (reference = FastReID's)."""
    return KeyReport(
        missing=[key for key in reference if key not in ours],
        unexpected=[key for key in ours if key not in reference],
        mismatched=[f"{key} {reference[key]} vs {ours[key]}" for key in reference
                    if key in ours and list(reference[key]) != list(ours[key])])


def min_cosine(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """Smallest per-image cosine similarity; -1 when the feature shapes differ."""
    if ours.shape != reference.shape:
        return -1.0
    cosine = torch.nn.functional.cosine_similarity(ours.double(), reference.double(), dim=1)
    return float(cosine.min())


# --------------------------------------------------------------------------- export (FastReID)

def fastreid_model(recipe: Recipe) -> nn.Module:
    """FastReID's own model for ``recipe``, from FastReID's own config loader, on the CPU."""
    from fastreid.config import get_cfg
    from fastreid.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(str(FASTREID_RECIPES / recipe.fastreid_config))
    cfg.merge_from_list([*PARITY_OVERRIDES, "MODEL.DEVICE", "cpu"])
    cfg.freeze()
    return build_model(cfg)


def randomise_constant_parameters(model: nn.Module, generator: torch.Generator) -> int:
    """Give a random value to every parameter initialised to one constant (norm weights = 1,
    biases = 0, a non-local block's closing norm = 0, GeM's p = 3): left as they are, a layer
    that our model skipped or mis-wired would still produce the same features. Returns how
    many tensors changed."""
    changed = 0
    with torch.no_grad():
        for param in model.parameters():
            flat = param.flatten()
            if flat.numel() == 0 or not bool((flat == flat[0]).all()):
                continue
            value = float(flat[0])
            if value == 0.0:
                noise = torch.randn(param.shape, generator=generator) * 0.1
                param.copy_(noise)
            else:
                scale = torch.empty(param.shape).uniform_(0.75, 1.25, generator=generator)
                param.copy_(value * scale)
            changed += 1
    return changed


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def calibrate_running_statistics(model: nn.Module, images: torch.Tensor,
                                 generator: torch.Generator) -> None:
    """BatchNorm running statistics measured on ``images``, each one perturbed.

    Measured, so that activations keep a sane scale through 50+ layers; perturbed, so that
    mean 0 / variance 1 never hides a missing normalisation. Each BatchNorm takes its
    statistics from the input it receives in eval mode, in forward order, so a layer sees the
    already calibrated (and perturbed) output of the layers before it; a training-mode pass
    would not (ResNeSt's attention then blows activations up by 1e5).
    """
    def measure(norm, args):
        x = args[0]
        dims = [d for d in range(x.dim()) if d != 1]
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
        shift = torch.randn(mean.shape, generator=generator) * 0.1 * var.sqrt()
        scale = torch.empty(var.shape).uniform_(0.8, 1.25, generator=generator)
        norm.running_mean.copy_(mean + shift)
        norm.running_var.copy_(var * scale)

    model.eval()
    handles = [norm.register_forward_pre_hook(measure) for norm in batch_norms(model)]
    try:
        with torch.no_grad():
            model(images.clone())  # FastReID normalises its input in place
    finally:
        for handle in handles:
            handle.remove()


def manifest_of(recipe: Recipe, model: nn.Module, features: torch.Tensor) -> dict:
    from importlib.metadata import version
    return {
        "recipe": recipe.name,
        "fastreid_version": version("fastreid"),
        "torch_version": torch.__version__.split("+")[0],
        "fastreid_config": f"benchmarks/fastreid_recipes/{recipe.fastreid_config}",
        "params_config": recipe.params_config,
        "overrides": list(PARITY_OVERRIDES),
        "num_parameters": count_parameters(model),
        "feature_dim": int(features.shape[1]),
        "state_dict": state_shapes(model.state_dict()),
    }


def export_recipe(recipe: Recipe, index: int, images: torch.Tensor, outdir: Path,
                  manifest_dir: Path) -> dict:
    from fastreid.utils.checkpoint import Checkpointer

    torch.manual_seed(MODEL_SEED + index)
    model = fastreid_model(recipe)
    generator = torch.Generator().manual_seed(MODEL_SEED + index)
    randomise_constant_parameters(model, generator)
    calibration = random_images(CALIBRATION_IMAGES, generator)
    calibrate_running_statistics(model, calibration, generator)
    model.eval()
    with torch.no_grad():
        features = model(images.clone())
    Checkpointer(model, str(outdir)).save(recipe.name)
    torch.save({"features": features}, outdir / f"{recipe.name}.features.pt")
    manifest = manifest_of(recipe, model, features)
    for folder in (outdir, manifest_dir):
        (folder / f"{recipe.name}.json").write_text(manifest_json(manifest))
    return manifest


def manifest_json(manifest: dict) -> str:
    """JSON with one state_dict entry per line: small, and readable in a diff."""
    head = {key: value for key, value in manifest.items() if key != "state_dict"}
    lines = [f" {json.dumps(key)}: {json.dumps(value)}," for key, value in head.items()]
    entries = [f"  {json.dumps(key)}: {json.dumps(shape)}"
               for key, shape in manifest["state_dict"].items()]
    return "\n".join(["{", *lines, ' "state_dict": {', ",\n".join(entries), " }", "}", ""])


def export(outdir: Path, recipes: Iterable[Recipe], manifest_dir: Path) -> int:
    outdir.mkdir(parents=True, exist_ok=True)
    manifest_dir.mkdir(parents=True, exist_ok=True)
    images = parity_batch()
    torch.save({"images": images}, outdir / BATCH_FILE)
    print(f"{'recipe':<14} {'FastReID params':>16} {'keys':>6} {'feat dim':>9}")
    for recipe in recipes:
        manifest = export_recipe(recipe, RECIPES.index(recipe), images, outdir, manifest_dir)
        print(f"{recipe.name:<14} {manifest['num_parameters']:>16,} "
              f"{len(manifest['state_dict']):>6} {manifest['feature_dim']:>9}")
    return 0


# --------------------------------------------------------------------------- compare (ours)

def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict:
    """A DistributedDataParallel checkpoint's keys without the wrapper's ``module.``."""
    return {key[len(prefix):] if key.startswith(prefix) else key: value
            for key, value in state.items()}


def load_our_model(config_path: Path, checkpoint_path: Path) -> nn.Module:
    """Our model for a params/ recipe with a FastReID checkpoint's weights, in eval mode,
    through the public ``reid.load_model`` (strict: any missing, unexpected or mis-shaped key
    fails the recipe)."""
    import reid

    return reid.load_model(config_path, checkpoint_path, PARITY_OVERRIDES)


@dataclass
class Row:
    recipe: str
    keys: KeyReport | None = None
    ours: int | None = None
    theirs: int | None = None
    cosine: float | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and not self.problems()

    def problems(self) -> list[str]:
        found = [] if self.keys is None or self.keys.ok else [self.keys.summary()]
        if self.ours != self.theirs:
            found.append(f"parameters: ours {self.ours}, FastReID {self.theirs}")
        if self.cosine is None or not self.cosine >= MIN_COSINE:  # nan fails too
            found.append(f"min cosine {self.cosine} < {MIN_COSINE}")
        return found

    def failure(self) -> str:
        return self.error or "; ".join(self.problems())


def compare_recipe(name: str, outdir: Path, images: torch.Tensor,
                   loader: Callable[[Path, Path], nn.Module] = load_our_model) -> Row:
    from reid.errors import one_line

    manifest = json.loads((outdir / f"{name}.json").read_text())
    row = Row(name, theirs=manifest["num_parameters"])
    checkpoint = outdir / f"{name}.pth"
    try:
        model = loader(REPO / manifest["params_config"], checkpoint)
    except Exception as exc:  # a missing backbone or key is a result to report, not a crash
        row.error = one_line(exc)[:160]
        return row
    row.ours = count_parameters(model)
    reference = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    row.keys = key_differences(state_shapes(strip_prefix(reference)),
                               state_shapes(model.state_dict()))
    theirs = torch.load(outdir / f"{name}.features.pt", weights_only=True)["features"]
    try:
        with torch.no_grad():
            row.cosine = min_cosine(model(images.clone()), theirs)
    except Exception as exc:
        row.error = f"forward failed: {one_line(exc)[:140]}"
    return row


def print_table(rows: list[Row]) -> None:
    def number(value):
        return "-" if value is None else f"{value:,}"

    print(f"{'recipe':<14} {'missing':>7} {'unexp.':>6} {'shape':>5} {'ours params':>12} "
          f"{'FastReID':>12} {'min cos':>9}  result")
    for row in rows:
        keys = row.keys or KeyReport()
        cosine = "-" if row.cosine is None else f"{row.cosine:.6f}"
        print(f"{row.recipe:<14} {len(keys.missing):>7} {len(keys.unexpected):>6} "
              f"{len(keys.mismatched):>5} {number(row.ours):>12} {number(row.theirs):>12} "
              f"{cosine:>9}  {'ok' if row.ok else 'FAIL'}")
    for row in rows:
        if not row.ok:
            print(f"  {row.recipe}: {row.failure()}")


def compare(outdir: Path, recipes: Iterable[Recipe]) -> int:
    images = torch.load(outdir / BATCH_FILE, weights_only=True)["images"]
    if not torch.equal(images, parity_batch()):
        logger.warning("%s differs from the seeded batch: comparing on the saved one",
                       outdir / BATCH_FILE)
    rows = [compare_recipe(recipe.name, outdir, images) for recipe in recipes]
    print_table(rows)
    return 0 if all(row.ok for row in rows) else 1


# --------------------------------------------------------------------------- command line

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--export", type=Path, metavar="OUTDIR",
                      help="build FastReID's models and write the reference (FastReID venv)")
    mode.add_argument("--compare", type=Path, metavar="OUTDIR",
                      help="check our models against the reference in OUTDIR (project venv)")
    parser.add_argument("--only", nargs="+", choices=[r.name for r in RECIPES],
                        help="recipes to run (default: all)")
    parser.add_argument("--manifest-dir", type=Path, default=MANIFEST_DIR,
                        help="where --export also writes the weight-free manifests")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    recipes = [r for r in RECIPES if not args.only or r.name in args.only]
    if args.export is not None:
        return export(args.export, recipes, args.manifest_dir)
    return compare(args.compare, recipes)


if __name__ == "__main__":
    sys.exit(main())
