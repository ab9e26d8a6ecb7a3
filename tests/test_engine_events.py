import itertools
import json
import logging
import statistics
import types

import pytest
import torch

from reid.engine.events import MetricsFile, MetricsPrinter, PeriodicWriter, fan_out, read_metrics
from reid.engine.hooks import HookBase, MetricsLogger
from reid.errors import ReidError
from reid.utils import comm
from reid.utils import events as utils_events
from reid.utils.events import (EventStorage, HistoryBuffer, JSONWriter, TensorboardXWriter,
                               get_event_storage)
from toys import make_loader, make_trainer


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


class StepRecorder(HookBase):
    """Every step's metrics as the trainer computed them (the reference the reports are
    checked against)."""

    def __init__(self):
        self.steps = []

    def after_step(self):
        self.steps.append(dict(self.trainer.metrics))


def test_metrics_file_records_every_report_with_its_iteration(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"iteration": 1, "total_loss": 9.0}\n')  # a previous, unrelated run
    metrics_file = MetricsFile(path)
    received = []
    loader = make_loader(count=32, batch_size=8)  # 4 iterations per epoch
    make_trainer(max_epoch=2, loader=loader, hooks=[PeriodicWriter(
        [metrics_file, None, lambda m, s: received.append((s, m))], 3)]).train()

    records = lines(path)
    # Fresh training (from iteration 0) replaces the old records: 3, 4 | 6, 8 as sent.
    assert [r["iteration"] for r in records] == [3, 4, 6, 8] == [s for s, _ in received]
    for record, (_, metrics) in zip(records, received):
        assert record == {"iteration": record["iteration"], **metrics}
    assert metrics_file.file is None  # closed after training


def test_a_resumed_run_keeps_the_records_up_to_its_start_and_drops_the_rest(tmp_path):
    path = tmp_path / "metrics.json"
    old = [{"iteration": i, "total_loss": float(10 - i)} for i in (2, 4, 6, 7)]
    path.write_text("".join(json.dumps(r) + "\n" for r in old) + '{"iteration": 8, "tot')
    metrics_file = MetricsFile(path)
    trainer = make_trainer(max_epoch=4, hooks=[MetricsLogger([metrics_file], 2)])
    trainer.train(start_epoch=2)  # 2 iterations per epoch: starts at iteration 4

    records = lines(path)
    assert records[:2] == old[:2]
    assert [r["iteration"] for r in records] == [2, 4, 6, 8]
    assert records[2] != old[2]  # iteration 6 as trained again, not as first recorded
    assert records[2].keys() == {"iteration", "loss_cls", "loss_reg", "total_loss", "lr",
                                 "images_per_sec", "epoch"}
    assert [r["epoch"] for r in records[2:]] == [3.0, 4.0]


def test_non_finite_values_are_written_as_null(tmp_path):
    metrics_file = JSONWriter(tmp_path / "metrics.json")
    metrics_file.start(0)
    metrics_file({"loss": float("nan"), "lr": float("inf"), "count": 3}, 5)
    metrics_file.close()
    assert lines(tmp_path / "metrics.json") == [
        {"iteration": 5, "loss": None, "lr": None, "count": 3}]


def test_read_metrics_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"iteration": 1}\n{"iteration": 2}\n{"iter')
    assert read_metrics(path) == [{"iteration": 1}, {"iteration": 2}]


def test_metrics_file_writes_nothing_on_other_ranks(tmp_path, monkeypatch):
    monkeypatch.setattr(comm, "get_rank", lambda: 1)
    received = []
    make_trainer(hooks=[PeriodicWriter([MetricsFile(tmp_path / "metrics.json"),
                                        lambda m, s: received.append(s)], 1)]).train()
    assert not (tmp_path / "metrics.json").exists() and received == []


def test_printer_logs_losses_lr_speed_time_and_eta(monkeypatch, caplog):
    ticks = itertools.count(step=10)  # 10 s between calls to perf_counter
    monkeypatch.setattr(utils_events, "time",
                        types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    printer = MetricsPrinter()
    printer.start(4, 24, 6)  # t = 0, from iteration 4
    with caplog.at_level(logging.INFO, logger="reid.utils.events"):
        printer({"loss_cls": 2.5, "total_loss": 3.25, "lr": 0.00035, "images_per_sec": 180.24,
                 "epoch": 2.5}, 10)  # t = 10 s for 6 iterations: 14 left take 23 s
        printer({"eval.Market1501.mAP": 50.0}, 12)  # evaluations have their own line
        printer({"total_loss": 3.0, "lr": 0.1, "images_per_sec": 1.0, "epoch": 3.0,
                 "time": 0.1234}, 12)
    assert caplog.messages == [
        "iter 10/24, epoch 2.50/6: loss_cls 2.5000, total_loss 3.2500, lr 0.00035, "
        "180.2 images/s, eta 0:00:23",
        "iter 12/24, epoch 3.00/6: total_loss 3.0000, lr 0.1, 1.0 images/s, 0.123 s/it, "
        "eta 0:00:30"]


# ------------------------------------------------------------------ storage and smoothing
def test_history_buffer_median_and_averages_over_a_window():
    values = [5.0, 1.0, 4.0, 2.0, 8.0, 3.0, 7.0]
    history = HistoryBuffer()
    for iteration, value in enumerate(values):
        history.update(value, iteration)
    assert history.latest() == 7.0
    assert history.median(3) == statistics.median(values[-3:]) == 7.0
    assert history.median(4) == statistics.median(values[-4:]) == 5.0  # even: (3 + 7) / 2
    assert history.median(100) == statistics.median(values)
    assert history.avg(2) == pytest.approx(5.0)
    assert history.global_avg() == pytest.approx(sum(values) / len(values))
    restored = HistoryBuffer()
    restored.load_state_dict(history.state_dict(keep=4))
    assert restored.values() == history.values()[-4:]
    assert restored.median(4) == 5.0 and restored.global_avg() == history.global_avg()


def test_event_storage_outside_training_and_inconsistent_hints_are_refused():
    with pytest.raises(ReidError, match=r"inside a training"):
        get_event_storage()
    with EventStorage(7) as storage:
        assert get_event_storage() is storage
        storage.put_scalar("lr", 0.1, smoothing_hint=False)
        with pytest.raises(ReidError, match="smoothing_hint False before"):
            storage.put_scalar("lr", 0.2)
        with pytest.raises(ReidError, match="no scalar named 'loss'.*lr"):
            storage.history("loss")
    assert storage.history("lr").values() == [(0.1, 7)]


class ReportsAStatistic(torch.nn.Module):
    """Wraps the toy model; deep inside its forward it puts the batch's mean pixel in the
    storage, as a user's model would."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch):
        get_event_storage().put_scalar("mean_pixel", float(batch["images"].mean()))
        return self.model(batch)


def test_reports_are_window_medians_of_every_scalar_model_ones_included():
    from toys import ToyReidNet
    torch.manual_seed(0)
    recorder, received, pixels = StepRecorder(), [], []
    loader = make_loader(count=48, batch_size=8)  # 6 iterations per epoch
    for batch in loader:
        pixels.append(float(batch["images"].mean()))
    writer = PeriodicWriter(lambda m, s: received.append((s, m)), period=2, window=3)
    make_trainer(max_epoch=2, loader=loader, model=ReportsAStatistic(ToyReidNet()),
                 hooks=[recorder, writer]).train()

    assert [s for s, _ in received] == [2, 4, 6, 8, 10, 12]
    totals = [m["total_loss"] for m in recorder.steps]
    for step, metrics in received:
        assert metrics["total_loss"] == pytest.approx(statistics.median(totals[:step][-3:]))
        assert metrics["lr"] == recorder.steps[step - 1]["lr"]  # latest, not smoothed
    # The first epoch draws the batches in the order iterated above (the sampler's epoch 0).
    assert received[1][1]["mean_pixel"] == pytest.approx(statistics.median(pixels[1:4]))
    assert list(received[0][1]) == ["mean_pixel", "loss_cls", "loss_reg", "total_loss", "lr",
                                    "images_per_sec", "epoch"]


class PutsPictures(HookBase):
    def after_step(self):
        storage = get_event_storage()
        storage.put_image("sample", torch.full((3, 4, 5), 0.5))
        storage.put_histogram("weights", torch.arange(10.0), bins=5)


def test_tensorboard_writer_event_files_read_back_with_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    received = []
    writer = PeriodicWriter([TensorboardXWriter(tmp_path), lambda m, s: received.append((s, m))],
                            period=2)
    make_trainer(max_epoch=2, hooks=[PutsPictures(), writer]).train()  # 2 iterations/epoch

    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    assert {"total_loss", "loss_cls", "lr", "epoch"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("total_loss")] == [2, 4]
    assert [e.value for e in events.Scalars("total_loss")] == pytest.approx(
        [m["total_loss"] for _, m in received], rel=1e-6)
    images = events.Images("sample")
    assert [i.step for i in images] == [0, 1, 2, 3] and images[0].width == 5
    assert images[0].height == 4
    histograms = events.Histograms("weights")
    assert len(histograms) == 4
    value = histograms[-1].histogram_value
    assert (value.min, value.max, value.num, value.sum) == (0.0, 9.0, 10, 45.0)
    assert list(value.bucket) == [2.0] * 5  # 0-1.8, ..., 7.2-9: two values in each


def test_tensorboard_writer_without_the_package_says_what_to_install(tmp_path, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "torch.utils.tensorboard":
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ReidError, match=r"pip install 'reid\[tensorboard\]'"):
        TensorboardXWriter(tmp_path).start(0)


def test_fan_out_skips_missing_sinks():
    got = []
    fan_out(None, lambda m, s: got.append((m, s)))({"a": 1.0}, 3)
    assert got == [({"a": 1.0}, 3)]


def test_history_keeps_its_last_max_length_values_and_averages_them_all():
    history = HistoryBuffer(max_length=3)
    for iteration in range(10):
        history.update(float(iteration), iteration)
    assert history.values() == [(7.0, 7), (8.0, 8), (9.0, 9)]
    assert history.global_avg() == pytest.approx(4.5)  # of all ten


def test_each_thread_finds_its_own_training_storage():
    """Trainings run concurrently in threads (the distill flow's branches): a model deep in
    one of them must get its own training's storage, and each exit pops only its own."""
    import threading
    entered, release, seen = threading.Barrier(2), threading.Event(), {}

    def train(name: str, start: int) -> None:
        with EventStorage(start) as storage:
            entered.wait()
            release.wait()
            seen[name] = get_event_storage() is storage

    threads = [threading.Thread(target=train, args=(name, i)) for i, name in enumerate("ab")]
    for thread in threads:
        thread.start()
    release.set()
    for thread in threads:
        thread.join()
    assert seen == {"a": True, "b": True}
    with pytest.raises(ReidError, match="inside a training"):
        get_event_storage()  # nothing left behind in this thread either
