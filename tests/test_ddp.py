"""Two CPU ranks (gloo) train through the Trainer and wrap_ddp, each on different data."""
import os

import pytest
import torch

from reid.engine.hooks import LayerFreezer
from reid.engine.launch import destroy, init_distributed, seed_everything, wrap_ddp
from reid.engine.trainer import Trainer, TrainingDiverged
from reid.solver import build_lr_scheduler, build_optimizer
from reid.utils import comm
from toys import ToyReidNet, make_loader, run_ranks, solver_cfg

WORLD_SIZE = 2
DEADLINE_S = 90


def train_toy(rank: int, nan_at_call=None, freeze_iters=0) -> Trainer:
    model = ToyReidNet(nan_at_call=nan_at_call)
    loader = make_loader(count=16, batch_size=4, seed=rank + 1)  # each rank its own data
    cfg = solver_cfg(OPT="SGD", BASE_LR=0.1, MOMENTUM=0.9, WARMUP_ITERS=2, STEPS=[1])
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer, len(loader))
    hooks = [LayerFreezer(model, ["backbone"], freeze_iters)] if freeze_iters else []
    ddp = wrap_ddp(model, torch.device("cpu"), find_unused_parameters=bool(freeze_iters))
    return Trainer(ddp, loader, optimizer, scheduler, max_epoch=2, device="cpu", hooks=hooks)


def parameters(trainer: Trainer) -> dict:
    return {n: p.detach().clone() for n, p in trainer.model.module.named_parameters()}


def worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(WORLD_SIZE=str(WORLD_SIZE), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        assert init_distributed(backend="gloo", timeout_s=60)
        assert comm.get_rank() == rank and comm.get_world_size() == WORLD_SIZE
        seed_everything(0, rank)  # different initial weights: DDP must broadcast rank 0's
        before_wrap = {k: v.clone() for k, v in ToyReidNet().state_dict().items()}
        seed_everything(0, rank)
        trainer = train_toy(rank)
        initial = parameters(trainer)
        trainer.train()
        final = parameters(trainer)
        last_losses = dict(trainer.metrics)

        # Layers frozen for the first iterations get no gradient: DDP must not wait for them.
        freezing = train_toy(rank, freeze_iters=3)
        freezing.train()
        frozen_final = parameters(freezing)

        # Only rank 1's loss becomes NaN (its 3rd step): both ranks must stop, none may hang.
        diverging = train_toy(rank, nan_at_call=3 if rank == 1 else None)
        try:
            diverging.train()
            message = None
        except TrainingDiverged as exc:
            message = str(exc)
        torch.save({"before_wrap": before_wrap, "initial": initial, "final": final,
                    "losses": last_losses, "message": message,
                    "frozen_final": frozen_final},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        destroy()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    return run_ranks(worker, out_dir, WORLD_SIZE, DEADLINE_S)


def test_ranks_end_with_identical_weights_that_moved(ranks):
    rank0, rank1 = ranks
    heads = [r["before_wrap"]["heads.weight"] for r in ranks]
    assert not torch.equal(heads[0], heads[1])
    assert rank0["losses"]["total_loss"] != rank1["losses"]["total_loss"]  # different data
    for name, weight in rank0["final"].items():
        assert torch.equal(rank0["initial"][name], rank1["initial"][name]), name  # broadcast
        assert torch.equal(weight, rank1["final"][name]), name
        if name != "backbone.1.bias":  # feeds a BatchNorm, which cancels it: no gradient
            assert not torch.equal(weight, rank0["initial"][name]), name


def test_layers_frozen_for_some_iterations_train_in_step_on_every_rank(ranks):
    rank0, rank1 = ranks
    for name, weight in rank0["frozen_final"].items():
        assert torch.equal(weight, rank1["frozen_final"][name]), name


def test_a_nan_on_one_rank_stops_every_rank_with_the_same_message(ranks):
    messages = [r["message"] for r in ranks]
    assert messages[0] is not None and messages[0] == messages[1]
    assert messages[0].startswith("loss became nan on rank 1 at epoch 1, iteration 3 "
                                  "(loss_cls=nan, loss_reg=")
