"""FastReID 1.4's own training loop on the CPU: one training + evaluation, results as JSON.

Run in FastReID's environment (see ``benchmarks/fastreid_parity.py`` for how it is installed;
with FastReID's declared dependencies scikit-learn, faiss-cpu, tensorboard and
opencv-python-headless added there), by ``benchmarks/fastreid_accuracy.py``
and ``benchmarks/train_throughput.py``, or by hand::

    /work/fastreid-venv/bin/python benchmarks/fastreid_train.py \
        --config benchmarks/fastreid_recipes/bagtricks_R18-128x64.yml \
        --data /tmp/parity/standard/SyntheticMarket1501 --output /tmp/fr-run --seed 1

What runs is FastReID's ``DefaultTrainer`` (its data pipeline, sampler, model, optimizer,
schedule, hooks and ``ReidEvaluator``) with these run-time changes, none of which touches its
science, and none of which edits FastReID's installed files:

* the shims of ``fastreid_lockstep.fastreid_shims`` (``torch._six`` and ``collections.Mapping``,
  removed in torch 2 / Python 3.10);
* ``DataLoaderX`` (a background thread that copies batches on a CUDA stream) is replaced by the
  ``torch.utils.data.DataLoader`` it derives from, with the same arguments;
* the optimizer is built with ``contiguous=False``: FastReID's contiguous parameter buffers leave
  the parameters unchanged after ``optimizer.step()`` on torch 2.x (measured by
  ``benchmarks/fastreid_lockstep.py``); the plain parameter list is FastReID's own option and the
  same arithmetic;
* ``MODEL.DEVICE cpu`` and ``SOLVER.AMP.ENABLED False`` (FastReID's ``AMPTrainer`` asserts CUDA;
  this project ignores FP16 on the CPU the same way);
* the random seed: ``seed_all_rng(--seed)`` where ``default_setup`` would draw a random one
  (FastReID 1.4 has no SEED key), so that a seed names a run.

The dataset root is ``--data`` (FastReID reads ``FASTREID_DATASETS``); its ``Market1501``
expects ``<data>/Market-1501-v15.09.15``, which is what our synthetic generator writes under
``<root>/SyntheticMarket1501``. Prints one JSON line: ``{"metrics": {"Rank-1", "mAP", "mINP",
...}, "wall_s", "train_s", "iterations"}`` (metrics in percent) and writes it to
``<output>/fastreid_result.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="a FastReID 1.4 YAML file")
    parser.add_argument("--data", required=True, help="FASTREID_DATASETS: holds the Market folder")
    parser.add_argument("--output", required=True, help="OUTPUT_DIR of the run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true",
                        help="go on from OUTPUT_DIR's last checkpoint (FastReID's resume: model, "
                             "optimizer, scheduler and iteration; not the random state)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    start = time.perf_counter()
    args = parse_args(argv)
    os.environ["FASTREID_DATASETS"] = str(Path(args.data).resolve())  # read at import below
    from fastreid_lockstep import fastreid_shims
    fastreid_shims()

    import torch.utils.data
    import fastreid.data.build as fastreid_build
    from fastreid.config import get_cfg
    from fastreid.engine import DefaultTrainer
    from fastreid.solver import build_optimizer
    from fastreid.utils.env import seed_all_rng
    from fastreid.utils.logger import setup_logger

    class PlainLoader(torch.utils.data.DataLoader):
        """DataLoaderX's signature, without its CUDA-stream prefetch thread."""

        def __init__(self, local_rank, **kwargs):
            super().__init__(**kwargs)

    fastreid_build.DataLoaderX = PlainLoader

    class CpuTrainer(DefaultTrainer):
        @classmethod
        def build_optimizer(cls, cfg, model):
            return build_optimizer(cfg, model, contiguous=False)

    cfg = get_cfg()
    cfg.merge_from_file(args.config)
    cfg.merge_from_list(list(args.opts) + ["MODEL.DEVICE", "cpu", "SOLVER.AMP.ENABLED", "False",
                                           "OUTPUT_DIR", str(args.output)])
    cfg.freeze()
    Path(args.output).mkdir(parents=True, exist_ok=True)
    setup_logger(args.output, distributed_rank=0, name="fastreid")
    seed_all_rng(args.seed)

    trainer = CpuTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    train_start = time.perf_counter()
    if trainer.start_epoch >= cfg.SOLVER.MAX_EPOCH:
        # resumed from the last epoch's checkpoint (stopped during the final evaluation):
        # FastReID's hooks cannot run a training of no epoch, so evaluate the weights alone
        metrics = CpuTrainer.test(cfg, trainer.model)
        train_s = 0.0
    else:
        trainer.train()
        train_s = time.perf_counter() - train_start
        # the final evaluation (EvalHook); DefaultTrainer.test unwraps a single test set's dict
        metrics = trainer._last_eval_results
    result = dict(metrics={k: float(v) for k, v in metrics.items()},
                  test_set=cfg.DATASETS.TESTS[0],
                  wall_s=time.perf_counter() - start, train_s=train_s,
                  iterations=trainer.max_iter, seed=args.seed)
    Path(args.output, "fastreid_result.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
