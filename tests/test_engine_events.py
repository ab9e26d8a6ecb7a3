import itertools
import json
import logging
import types

import pytest

from reid.engine import events
from reid.engine.events import MetricsFile, MetricsPrinter, fan_out, read_metrics
from reid.engine.hooks import MetricsLogger
from reid.utils import comm
from toys import make_loader, make_trainer


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_metrics_file_records_every_report_with_its_iteration(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"iteration": 1, "total_loss": 9.0}\n')  # a previous, unrelated run
    metrics_file = MetricsFile(path)
    received = []
    loader = make_loader(count=32, batch_size=8)  # 4 iterations per epoch
    make_trainer(max_epoch=2, loader=loader, hooks=[metrics_file, MetricsLogger(
        fan_out(metrics_file, None, lambda m, s: received.append((s, m))), 3)]).train()

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
    trainer = make_trainer(max_epoch=4, hooks=[metrics_file, MetricsLogger(metrics_file, 2)])
    trainer.train(start_epoch=2)  # 2 iterations per epoch: starts at iteration 4

    records = lines(path)
    assert records[:2] == old[:2]
    assert [r["iteration"] for r in records] == [2, 4, 6, 8]
    assert records[2] != old[2]  # iteration 6 as trained again, not as first recorded
    assert records[2].keys() == {"iteration", "loss_cls", "loss_reg", "total_loss", "lr",
                                 "images_per_sec", "epoch"}
    assert [r["epoch"] for r in records[2:]] == [3.0, 4.0]


def test_non_finite_values_are_written_as_null(tmp_path):
    metrics_file = MetricsFile(tmp_path / "metrics.json")
    metrics_file.trainer = types.SimpleNamespace(iter=0)
    metrics_file.before_train()
    metrics_file({"loss": float("nan"), "lr": float("inf"), "count": 3}, 5)
    metrics_file.after_train()
    assert lines(tmp_path / "metrics.json") == [
        {"iteration": 5, "loss": None, "lr": None, "count": 3}]


def test_read_metrics_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"iteration": 1}\n{"iteration": 2}\n{"iter')
    assert read_metrics(path) == [{"iteration": 1}, {"iteration": 2}]


def test_metrics_file_writes_nothing_on_other_ranks(tmp_path, monkeypatch):
    monkeypatch.setattr(comm, "get_rank", lambda: 1)
    metrics_file = MetricsFile(tmp_path / "metrics.json")
    make_trainer(hooks=[metrics_file, MetricsLogger(metrics_file, 1)]).train()
    assert not (tmp_path / "metrics.json").exists()


def test_printer_logs_losses_lr_speed_and_eta(monkeypatch, caplog):
    ticks = itertools.count(step=10)  # 10 s between calls to perf_counter
    monkeypatch.setattr(events, "time",
                        types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    printer = MetricsPrinter()
    printer.trainer = types.SimpleNamespace(iter=4, max_iter=24, max_epoch=6, iters_per_epoch=4)
    printer.before_train()  # t = 0, from iteration 4
    with caplog.at_level(logging.INFO, logger="reid.engine.events"):
        printer({"loss_cls": 2.5, "total_loss": 3.25, "lr": 0.00035, "images_per_sec": 180.24,
                 "epoch": 2.5}, 10)  # t = 10 s for 6 iterations: 14 left take 23 s
    assert caplog.messages == [
        "iter 10/24, epoch 2.50/6: loss_cls 2.5000, total_loss 3.2500, lr 0.00035, "
        "180.2 images/s, eta 0:00:23"]
