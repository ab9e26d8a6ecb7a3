"""Numbers that must hold across ranks, on two CPU ranks (gloo): precise-BN statistics equal on
both ranks and to one process's over all their batches; the logged losses the mean over the
ranks; a stop signal received by one rank stops both at the same iteration."""
import os
import signal
import statistics

import pytest
import torch

from reid.engine.checkpoint import Checkpointer
from reid.engine.hooks import HookBase, MetricsLogger, PeriodicCheckpointer
from reid.engine.launch import destroy, init_distributed, wrap_ddp
from reid.engine.precise_bn import update_bn_stats
from reid.engine.preemption import StopOnSignal, request_stop
from reid.errors import Preempted
from test_engine_precise_bn import expected_stats, make_batches, two_bn_model
from toys import ToyReidNet, make_loader, make_trainer, run_ranks

WORLD_SIZE = 2
DEADLINE_S = 120


class StepLosses(HookBase):
    def __init__(self) -> None:
        self.losses = []

    def after_step(self):
        self.losses.append(self.trainer.metrics["total_loss"])


class StopRequestAt(HookBase):
    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def before_step(self):
        if self.trainer.iter + 1 == self.iteration:
            request_stop(signal.SIGTERM)


def worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(WORLD_SIZE=str(WORLD_SIZE), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        init_distributed(backend="gloo", timeout_s=60)
        # precise-BN: rank r passes batches 3r .. 3r+2 of the six
        model = two_bn_model()
        update_bn_stats(model, make_batches(count=6)[3 * rank:3 * rank + 3], 3)
        stats = [model[0].running_mean, model[0].running_var, model[2].running_mean,
                 model[2].running_var]

        # metrics: each rank its own data; the sink (rank 0) gets the mean over the ranks
        received, steps = [], StepLosses()
        torch.manual_seed(0)
        ddp = wrap_ddp(ToyReidNet(), torch.device("cpu"))
        trainer = make_trainer(max_epoch=2, model=ddp, loader=make_loader(seed=rank + 1),
                               hooks=[steps, MetricsLogger(lambda m, s: received.append(m), 1)])
        trainer.train()

        # only rank 1 is asked to stop, during its step 3: both ranks stop after step 3
        out = os.path.join(out_dir, "stop")

        def stopping(model, optimizer, scheduler):
            checkpoints = PeriodicCheckpointer(Checkpointer(model, out, optimizer, scheduler),
                                               0, 4)
            asked = [StopRequestAt(3)] if rank == 1 else []
            return asked + [checkpoints, StopOnSignal(checkpoints)]
        stopped_at = None
        try:
            make_trainer(max_epoch=4, model=wrap_ddp(ToyReidNet(), torch.device("cpu")),
                         loader=make_loader(seed=rank + 1), hooks=stopping).train()
        except Preempted as stop:
            stopped_at = stop.iteration
        torch.save({"stats": stats, "received": received, "losses": steps.losses,
                    "stopped_at": stopped_at}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        destroy()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp-numbers")
    return run_ranks(worker, out_dir, WORLD_SIZE, DEADLINE_S)


def test_precise_bn_statistics_are_one_process_over_all_batches_on_every_rank(ranks):
    expected = expected_stats(two_bn_model(), make_batches(count=6))
    for rank in ranks:
        for got, want in zip(rank["stats"], expected):
            assert torch.allclose(got, want, atol=1e-5), (got, want)
    for a, b in zip(ranks[0]["stats"], ranks[1]["stats"]):
        assert torch.equal(a, b)


def test_logged_losses_are_the_mean_over_the_ranks(ranks):
    # Each rank's median over the window (20, more than the 4 steps), averaged over the ranks.
    rank0, rank1 = ranks
    assert rank0["losses"] != rank1["losses"]  # different data on each rank
    assert len(rank0["received"]) == len(rank0["losses"]) and rank1["received"] == []
    for step, record in enumerate(rank0["received"], start=1):
        mine, theirs = (statistics.median(rank["losses"][:step]) for rank in ranks)
        assert record["total_loss"] == pytest.approx((mine + theirs) / 2, abs=1e-6)


def test_a_stop_signal_on_one_rank_stops_every_rank_at_the_same_iteration(ranks):
    assert [rank["stopped_at"] for rank in ranks] == [3, 3]
