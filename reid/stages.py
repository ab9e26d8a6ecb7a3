"""One function per pipeline stage: ``(cfg, inputs) -> outputs + metrics``, each declared
once in the stage table (``reid/stage_table.py``).

Prefect tasks (``tasks/``), DVC stages (through ``reid/cli.py``) and notebooks all call these
functions, so the three never diverge. Nothing here knows about Prefect or MLflow: training
metrics leave through a plain ``sink(metrics, step)`` callable. A stage's result may hold
``metrics`` (flat numbers) and ``files`` (what it wrote): its tracked adapter logs them.
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import torch

from reid.config import CfgNode, save_config
from reid.data.build import build_test_loader, build_train_loader
from reid.data.datasets import DATASET_REGISTRY
from reid.data.image_check import check_images
from reid.data.synthetic import generate_synthetic_market, generated_with, generator_arguments
from reid.engine.checkpoint import Checkpointer
from reid.engine.defaults import build_hooks
from reid.engine.events import METRICS_FILE
from reid.engine.hooks import HookBase, MetricsSink, PeriodicCheckpointer, check_best_metric
from reid.engine.launch import init_distributed, resolve_device, seed_everything, wrap_ddp
from reid.engine.precise_bn import update_bn_stats
from reid.engine.trainer import Trainer, autocast_dtype, build_gradient_clipper
from reid.errors import USER_FIXABLE, ReidError, describe_os_error
from reid.evaluation.evaluator import Evaluator
from reid.evaluation.extract import extract_features
from reid.inference import build_inference_model, folder_features, list_images
from reid.modeling import build_model, wants_sync_bn
from reid.solver import build_lr_scheduler, build_optimizer
from reid.stage_table import BEST_CHECKPOINT, FINAL_CHECKPOINT, PRECISE_BN_CHECKPOINT
from reid.utils import comm
from reid.utils.io import atomic_write, atomic_write_json
from reid.utils.memory import retry_if_cuda_oom
from reid.utils.logs import log_file
from reid.utils.run_lock import hold_output_dir

logger = logging.getLogger(__name__)

SYNTHETIC = "SyntheticMarket1501"
RESULTS_FILE = "results.json"
DATASETS_FILE = "datasets.json"


def logged(stage: Callable) -> Callable:
    """Decorates a stage function ``(cfg, ...)``: it holds OUTPUT_DIR (one run at a time, see
    ``reid.utils.run_lock``) and its log also goes to OUTPUT_DIR/log.txt, whoever calls it
    (CLI, Prefect task, notebook)."""
    @functools.wraps(stage)
    def run(cfg: CfgNode, *args, **kwargs):
        try:
            with hold_output_dir(cfg.OUTPUT_DIR), log_file(cfg.OUTPUT_DIR):
                return stage(cfg, *args, **kwargs)
        except OSError as exc:
            if exc.errno in USER_FIXABLE:  # a full disk, no permission: retrying cannot help
                raise ReidError(describe_os_error(exc)) from exc
            raise
    return run


def output_dir(cfg: CfgNode) -> Path:
    path = Path(cfg.OUTPUT_DIR)
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------- prepare
def ensure_synthetic(cfg: CfgNode) -> Path:
    """Generate the synthetic set under DATASETS.ROOT unless the one there matches the config."""
    syn = cfg.DATASETS.SYNTHETIC
    arguments = dict(seed=syn.SEED, num_train_ids=syn.NUM_TRAIN_IDS,
                     num_test_ids=syn.NUM_TEST_IDS, num_cameras=syn.NUM_CAMERAS,
                     images_per_id=syn.IMAGES_PER_ID, num_distractors=syn.NUM_DISTRACTORS,
                     num_junk=syn.NUM_JUNK, size=tuple(syn.SIZE), difficulty=syn.DIFFICULTY)
    target = Path(cfg.DATASETS.ROOT) / SYNTHETIC
    recorded = generated_with(target)
    if recorded == generator_arguments(**arguments):
        return target
    if recorded is not None:
        logger.warning("the synthetic set in %s was generated with other DATASETS.SYNTHETIC "
                       "values; regenerating it (run `dvc add %s` to version the new bytes)",
                       target, cfg.DATASETS.ROOT)
    if not Path(cfg.DATASETS.ROOT).exists():  # a typo in the path would go unnoticed
        logger.warning("DATASETS.ROOT %s does not exist: creating it for the synthetic set",
                       cfg.DATASETS.ROOT)
    logger.info("generating the synthetic dataset under %s", target)
    return generate_synthetic_market(cfg.DATASETS.ROOT, **arguments)


def describe_split(items: list) -> dict:
    return {"images": len(items), "ids": len({pid for _, pid, _ in items}),
            "cameras": len({cam for _, _, cam in items})}


@logged
def prepare(cfg: CfgNode) -> dict:
    """Make sure every dataset of the config is readable (its layout, and its image files as
    DATASETS.CHECK_IMAGES says); generate the synthetic one if absent.

    Writes ``OUTPUT_DIR/datasets.json`` (the per-split counts) and returns it.
    """
    names = list(cfg.DATASETS.NAMES) + list(cfg.DATASETS.TESTS)
    if cfg.TEST.PRECISE_BN.ENABLED:  # a missing one fails here, not after the training
        names.append(precise_bn_dataset(cfg))
    names = list(dict.fromkeys(names))
    if SYNTHETIC in names:
        ensure_synthetic(cfg)
    splits = ("train", "query", "gallery")
    datasets = [DATASET_REGISTRY.get(name)(cfg.DATASETS.ROOT) for name in names]
    summary = {name: {split: describe_split(getattr(dataset, split)) for split in splits}
               for name, dataset in zip(names, datasets)}
    # Unreadable images stop the run here, not when the loader first reaches them.
    paths = (path for dataset in datasets for split in splits
             for path, _, _ in getattr(dataset, split))
    check_images(dict.fromkeys(paths), cfg.DATASETS.CHECK_IMAGES)
    written = atomic_write_json(output_dir(cfg) / DATASETS_FILE, summary)
    counts = {f"{name}.{split}.{what}": n for name, splits in summary.items()
              for split, numbers in splits.items() for what, n in numbers.items()}
    return {"datasets": summary, "metrics": counts, "files": [str(written)]}


# --------------------------------------------------------------------------- train
def with_num_classes(cfg: CfgNode, num_classes: int) -> CfgNode:
    """The config with MODEL.HEADS.NUM_CLASSES taken from the training set when it is 0."""
    if cfg.MODEL.HEADS.NUM_CLASSES not in (0, num_classes):
        raise ReidError(f"MODEL.HEADS.NUM_CLASSES is {cfg.MODEL.HEADS.NUM_CLASSES} but the training "
                        f"set has {num_classes} identities; set it to 0 to take it from the data")
    cfg = cfg.clone()
    cfg.MODEL.HEADS.NUM_CLASSES = num_classes
    return cfg.freeze()


@logged
def train(cfg: CfgNode, sink: Optional[MetricsSink] = None, resume: bool = False,
          hooks: Iterable[HookBase] = ()) -> dict:
    """Train the model of ``cfg`` (Baseline, Distiller, ...) and write checkpoints to OUTPUT_DIR.

    Under ``torchrun`` it trains with DDP (NCCL on GPUs, gloo on CPU); only rank 0 writes. With
    ``resume`` (or in a worker group torchrun restarted, when a checkpoint exists) it goes on
    from the newest checkpoint at its exact iteration; nothing is written before that
    checkpoint has been read and checked. ``hooks`` are added to the training's (as are the
    config's HOOKS; see ``reid.engine.defaults.build_hooks``).
    """
    check_best_metric(cfg.TEST.BEST_METRIC, cfg.DATASETS.TESTS)
    init_distributed()
    seed_everything(cfg.SEED, comm.get_rank())
    device = resolve_device(cfg.MODEL.DEVICE)
    out = output_dir(cfg)
    loader, num_classes = build_train_loader(cfg)
    cfg = with_num_classes(cfg, num_classes)
    model = build_model(cfg)
    if comm.get_world_size() > 1 and wants_sync_bn(cfg):
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    if cfg.SOLVER.CHANNELS_LAST:  # the activations follow the 4-D weights' memory format
        model = model.to(memory_format=torch.channels_last)
    iters_per_epoch = len(loader)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer, iters_per_epoch)
    checkpointer = Checkpointer(model, out, optimizer=optimizer, scheduler=scheduler,
                                **training_extras(model))
    torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK
    evaluator = Evaluator(cfg, out)  # TEST.* options; test loaders built on first use
    # Metrics go to OUTPUT_DIR/metrics.json and log.txt (and TensorBoard event files with
    # TENSORBOARD.ENABLED) as well as to ``sink`` (MLflow).
    hooks = build_hooks(cfg, model, checkpointer, lambda: evaluator.evaluate(model, device),
                        lambda: precise_bn_images(cfg, device), sink=sink, extra_hooks=hooks)
    checkpoints = next(hook for hook in hooks if isinstance(hook, PeriodicCheckpointer))
    # Frozen layers produce no gradients for a while: DDP must be told to expect that.
    freezing = cfg.SOLVER.FREEZE_ITERS > 0 or cfg.SOLVER.FREEZE_FC_ITERS > 0
    ddp_model = wrap_ddp(model, device, find_unused_parameters=freezing)
    amp_dtype = autocast_dtype(cfg.SOLVER.FP16_ENABLED, cfg.SOLVER.BF16_ENABLED)
    trainer = Trainer(ddp_model, loader, optimizer, scheduler,
                      max_epoch=cfg.SOLVER.MAX_EPOCH, device=device, amp=amp_dtype is not None,
                      amp_dtype=amp_dtype or torch.float16, hooks=hooks,
                      grad_clipper=build_gradient_clipper(cfg.SOLVER.CLIP_GRADIENTS))
    state = checkpointer.resume_state(cfg.MODEL.WEIGHTS, resume or restarted_with_checkpoint(
        checkpointer))
    start_iter = (trainer.load_state_dict(state["trainer"]) if "trainer" in state
                  else int(state.get("epoch", 0)) * iters_per_epoch)
    if comm.is_main_process():
        save_config(cfg, out / "config.yaml")
    trainer.train(start_iter=start_iter)
    comm.synchronize()
    # "checkpoints": the files this training wrote (OUTPUT_DIR may hold older ones).
    return {"checkpoint": str(out / FINAL_CHECKPOINT), "num_classes": num_classes,
            "config": str(out / "config.yaml"), "checkpoints": checkpoints.saved,
            "best": str(out / BEST_CHECKPOINT) if (out / BEST_CHECKPOINT).is_file() else None,
            "files": [str(out / "config.yaml"), str(out / METRICS_FILE)]}


def training_extras(model: torch.nn.Module) -> dict:
    """What a training checkpoint holds besides the model, optimizer and scheduler: the
    KD.EMA teacher, which is not part of the student's state_dict."""
    teacher = getattr(model, "ema_teacher", None)
    return {"ema_teacher": teacher} if teacher is not None else {}


def restarted_with_checkpoint(checkpointer: Checkpointer) -> bool:
    """Whether torchrun restarted this worker group (TORCHELASTIC_RESTART_COUNT > 0) and a
    checkpoint exists: the group then resumes by itself (no checkpoint yet: from scratch)."""
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if restarts == 0 or checkpointer.last_checkpoint() is None:
        return False
    logger.info("worker group restart %d: resuming from the newest checkpoint", restarts)
    return True


@logged
def distill(cfg: CfgNode, sink: Optional[MetricsSink] = None, resume: bool = False,
            hooks: Iterable[HookBase] = ()) -> dict:
    """Train a student with knowledge distillation from the teachers named by KD.* (or from
    an exponential moving average of itself with KD.EMA.ENABLED)."""
    if cfg.MODEL.META_ARCHITECTURE != "Distiller":
        raise ReidError("distillation needs MODEL.META_ARCHITECTURE Distiller "
                        f"(got {cfg.MODEL.META_ARCHITECTURE}); see params/kd-synthetic.yml")
    if not cfg.KD.EMA.ENABLED:
        for key in ("MODEL_CONFIG", "MODEL_WEIGHTS"):
            if not cfg.KD[key]:
                raise ReidError(f"distillation needs KD.{key} (the teachers' configs and "
                                "weights) or KD.EMA.ENABLED True (self-distillation)")
    return train(cfg, sink=sink, resume=resume, hooks=hooks)


# --------------------------------------------------------------------------- checkpoints
def load_model(cfg: CfgNode, weights: str | Path, device: torch.device) -> torch.nn.Module:
    """The (plain, non-distilling) model of ``cfg`` with ``weights`` loaded strictly, in eval
    mode on ``device`` (see ``reid.inference``)."""
    return build_inference_model(cfg, weights).to(device)


# --------------------------------------------------------------------------- precise-BN
def precise_bn_dataset(cfg: CfgNode) -> str:
    """TEST.PRECISE_BN.DATASET, or the first training set when it is empty: a recipe that
    leaves it empty works on whatever DATASETS.NAMES the user gives."""
    return cfg.TEST.PRECISE_BN.DATASET or cfg.DATASETS.NAMES[0]


@logged
def precise_bn(cfg: CfgNode, weights: str | Path) -> dict:
    """Recompute BatchNorm statistics over TEST.PRECISE_BN.NUM_ITER training batches.

    Uses test-time transforms (no flips, crops or erasing). Always writes
    OUTPUT_DIR/model_precise_bn.pth so the pipeline's next stage has one input; when
    TEST.PRECISE_BN.ENABLED is false that file is a copy of ``weights``.
    """
    target = output_dir(cfg) / PRECISE_BN_CHECKPOINT
    if not cfg.TEST.PRECISE_BN.ENABLED:
        logger.info("precise-BN disabled (TEST.PRECISE_BN.ENABLED false): copying %s", weights)
        shutil.copyfile(weights, target)
        return {"checkpoint": str(target)}
    device = resolve_device(cfg.MODEL.DEVICE)
    model = load_model(cfg, weights, device)
    update_bn_stats(model, precise_bn_images(cfg, device), cfg.TEST.PRECISE_BN.NUM_ITER)
    Checkpointer(model, target.parent).save(target.stem)
    return {"checkpoint": str(target)}


def precise_bn_images(cfg: CfgNode, device: torch.device):
    """The image batches of TEST.PRECISE_BN.DATASET on ``device``, with test-time transforms
    (re-iterable)."""
    loader, _ = build_train_loader(cfg, dataset_names=(precise_bn_dataset(cfg),),
                                   train_transforms=False)

    class Images:
        def __len__(self) -> int:
            return len(loader)

        def __iter__(self):
            for batch in loader:
                yield batch["images"].to(device, non_blocking=True)
    return Images()


# --------------------------------------------------------------------------- evaluate
@logged
def evaluate(cfg: CfgNode, weights: str | Path) -> dict:
    """Rank-1/5/10, mAP and mINP (percent) on every DATASETS.TESTS set; writes results.json."""
    device = resolve_device(cfg.MODEL.DEVICE)
    run = Evaluator(cfg, output_dir(cfg)).run(load_model(cfg, weights, device), device)
    results = run.metrics
    files = [str(path) for result in run.sets.values() for path in result.roc_files]
    if comm.is_main_process():
        files.append(str(atomic_write_json(output_dir(cfg) / RESULTS_FILE, results)))
    return {"results": results, "weights": str(weights), "files": files}


def export(cfg: CfgNode, weights: str | Path, output: str | Path, format: str = "onnx",
           exporter: str = "dynamo") -> dict:
    """An ONNX file of the model (``reid.export``), checked against PyTorch."""
    from reid.export import export_model  # onnx: an optional extra, imported when used
    return export_model(cfg, weights, output, format, exporter=exporter)


@logged
def extract(cfg: CfgNode, weights: str | Path, dataset: str, output: str | Path) -> dict:
    """Write the features of a test set (query then gallery) to an .npz file."""
    device = resolve_device(cfg.MODEL.DEVICE)
    model = load_model(cfg, weights, device)
    loader, num_query = build_test_loader(cfg, dataset)
    feats, pids, camids = retry_if_cuda_oom(extract_features, cpu_fallback=False)(
        model, loader, device, flip=cfg.TEST.FLIP_ENABLED, bf16=cfg.TEST.BF16)
    write_npz(output, features=feats.numpy(), pids=pids, camids=camids, num_query=num_query)
    return {"features": str(output), "count": int(len(pids)), "dim": int(feats.shape[1])}


@logged
def extract_folder(cfg: CfgNode, weights: str | Path, folder: str | Path,
                   output: str | Path) -> dict:
    """Write the features of every image under ``folder`` to an .npz file: ``features``
    (float32 N x D) and ``paths`` (relative to ``folder``, sorted)."""
    paths = list_images(folder)  # before loading the model: a wrong folder fails fast
    device = resolve_device(cfg.MODEL.DEVICE)
    feats, paths = folder_features(load_model(cfg, weights, device), cfg, folder, device, paths)
    write_npz(output, features=feats, paths=np.array(paths, dtype=str))
    return {"features": str(output), "count": len(paths), "dim": int(feats.shape[1])}


def write_npz(path: str | Path, **arrays) -> Path:
    """An .npz file written atomically (a crash never leaves half a file)."""
    return atomic_write(path, lambda f: np.savez(f, **arrays))
