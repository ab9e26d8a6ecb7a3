"""reid.utils.comm on two gloo ranks (torch.multiprocessing spawn): FastReID's distributed
helpers as they behave in a real process group, each rank's result checked here against
what the two ranks put in."""
import os
import time

import pytest
import torch

from toys import run_ranks

WORLD_SIZE = 2
DEADLINE_S = 120


def worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(WORLD_SIZE=str(WORLD_SIZE), RANK=str(rank), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(WORLD_SIZE), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from reid.engine.launch import destroy, init_distributed
    from reid.utils import comm
    try:
        init_distributed(backend="gloo", timeout_s=60)
        torch.manual_seed(100 + rank)  # each rank its own generator state
        marker = os.path.join(out_dir, "rank1-was-here")
        if rank == 1:
            time.sleep(0.5)  # rank 0 reaches the barrier first and must wait for this file
            open(marker, "w").close()
        comm.synchronize()
        result = {
            "rank": comm.get_rank(), "world": comm.get_world_size(),
            "local_rank": comm.get_local_rank(), "local_size": comm.get_local_size(),
            "seen_after_barrier": os.path.exists(marker),
            "gathered": comm.gather({"rank": rank, "items": list(range(rank + 2))}, dst=0),
            "gathered_to_1": comm.gather(rank * 10, dst=1),
            "all_gathered": comm.all_gather(f"r{rank}"),
            "mean": comm.reduce_dict({"loss": 1.0 + rank, "acc": 10.0 * rank}),
            "sum": comm.reduce_dict({"loss": 1.0 + rank, "acc": 10.0 * rank}, average=False),
            "seed": comm.shared_random_seed(),
            "own_draw": int(torch.randint(2**31, (1,)).item()),
            "main": comm.is_main_process(),
        }
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        destroy()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("comm-gloo")
    return run_ranks(worker, out_dir, WORLD_SIZE, DEADLINE_S)


def test_ranks_and_local_ranks(ranks):
    assert [(r["rank"], r["world"], r["local_rank"], r["local_size"], r["main"])
            for r in ranks] == [(0, 2, 0, 2, True), (1, 2, 1, 2, False)]


def test_synchronize_waits_for_every_rank(ranks):
    assert all(r["seen_after_barrier"] for r in ranks)


def test_gather_gives_every_rank_object_to_the_destination_only(ranks):
    assert ranks[0]["gathered"] == [{"rank": 0, "items": [0, 1]},
                                    {"rank": 1, "items": [0, 1, 2]}]
    assert ranks[1]["gathered"] == []
    assert ranks[0]["gathered_to_1"] == [] and ranks[1]["gathered_to_1"] == [0, 10]
    assert [r["all_gathered"] for r in ranks] == [["r0", "r1"]] * 2


def test_reduce_dict_averages_or_sums_over_the_ranks(ranks):
    for r in ranks:
        assert r["mean"] == {"loss": pytest.approx(1.5), "acc": pytest.approx(5.0)}
        assert r["sum"] == {"loss": pytest.approx(3.0), "acc": pytest.approx(10.0)}


def test_shared_random_seed_is_rank_0s_draw_on_every_rank(ranks):
    assert ranks[0]["seed"] == ranks[1]["seed"]
    # Rank 0's draw from its own generator (seeded 100), not a constant.
    torch.manual_seed(100)
    assert ranks[0]["seed"] == int(torch.randint(2**31, (1,)).item())
    assert ranks[0]["own_draw"] != ranks[1]["own_draw"]
