"""reid.utils.logger: setup_logger (console on rank 0, log.txt / log.txt.rankN, colours on a
terminal only), log_first_n / log_every_n / log_every_n_seconds, and the image reader logging
a mode conversion once instead of once per image."""
from __future__ import annotations

import io
import logging

import pytest
from PIL import Image

from reid.data.build import read_image
from reid.utils import logger as logger_module
from reid.utils.logger import (ColorfulFormatter, log_every_n, log_every_n_seconds,
                               log_file_path, log_first_n, setup_logger, wants_colour)


def messages(caplog, name: str = __name__) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == name]


def test_log_first_n_by_caller(caplog):
    caplog.set_level(logging.INFO)
    for i in range(5):
        log_first_n(logging.INFO, f"batch {i}", n=2)  # one line of code: its first 2 calls
    assert messages(caplog) == ["batch 0", "batch 1"]


def test_log_first_n_by_message_and_by_both(caplog):
    caplog.set_level(logging.INFO)
    log_first_n(logging.WARNING, "same text", key="message")
    log_first_n(logging.WARNING, "same text", key="message")  # another line, same text
    for text in ("a", "b", "a"):
        log_first_n(logging.WARNING, text, key=("caller", "message"))
    assert messages(caplog) == ["same text", "a", "b"]
    with pytest.raises(ValueError, match="'caller', 'message' or both"):
        log_first_n(logging.INFO, "x", key="line")


def test_log_every_n(caplog):
    caplog.set_level(logging.INFO)
    for i in range(1, 8):
        log_every_n(logging.INFO, f"call {i}", n=3)
    assert messages(caplog) == ["call 1", "call 4", "call 7"]


def test_log_every_n_seconds(caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    clock = iter([100.0, 100.5, 101.0, 101.2, 102.1])
    monkeypatch.setattr(logger_module.time, "monotonic", lambda: next(clock))
    for t in ("0", "0.5", "1.0", "1.2", "2.1"):
        log_every_n_seconds(logging.INFO, f"at {t}", n=1)
    assert messages(caplog) == ["at 0", "at 1.0", "at 2.1"]


def test_named_logger(caplog):
    caplog.set_level(logging.INFO)
    log_first_n(logging.INFO, "to a named logger", name="reid.test.named")
    assert messages(caplog, "reid.test.named") == ["to a named logger"]


def test_log_file_path():
    assert log_file_path("out").as_posix() == "out/log.txt"
    assert log_file_path("out", 3).as_posix() == "out/log.txt.rank3"
    assert log_file_path("out/train.log").as_posix() == "out/train.log"
    assert log_file_path("out/train.log", 1).as_posix() == "out/train.log.rank1"


def test_setup_logger_rank_zero_console_and_log_txt(tmp_path, capsys):
    log = setup_logger(str(tmp_path), 0, name="reid_test_setup_rank0")
    assert setup_logger(str(tmp_path), 0, name="reid_test_setup_rank0") is log
    assert len(log.handlers) == 2  # the second call added nothing
    log.debug("details")
    log.info("started")
    for handler in log.handlers:
        handler.flush()
    text = (tmp_path / "log.txt").read_text()
    assert "reid_test_setup_rank0 DEBUG: details" in text
    assert "reid_test_setup_rank0 INFO: started" in text
    out = capsys.readouterr().out
    assert "started" in out and "details" not in out  # console at INFO, no colour off a tty
    assert "\033[" not in out
    close(log)


def close(log: logging.Logger) -> None:
    for handler in log.handlers:
        handler.close()


def test_setup_logger_other_ranks_write_their_own_file_only(tmp_path, capsys):
    log = setup_logger(str(tmp_path), 2, name="reid_test_setup_rank2")
    log.warning("from rank 2")
    for handler in log.handlers:
        handler.flush()
    assert not (tmp_path / "log.txt").exists()
    assert "from rank 2" in (tmp_path / "log.txt.rank2").read_text()
    assert capsys.readouterr().out == ""
    close(log)


def test_colours_only_on_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert wants_colour(Terminal()) and not wants_colour(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not wants_colour(Terminal())
    record = logging.LogRecord("reid.engine.trainer", logging.WARNING, __file__, 1,
                               "loss is %s", ("high",), None)
    text = ColorfulFormatter("%(name)s %(levelname)s: %(message)s", root_name="reid",
                             abbrev_name="").format(record)
    assert text == "\033[32mengine.trainer\033[0m \033[33mWARNING\033[0m: loss is high"
    assert record.name == "reid.engine.trainer" and record.levelname == "WARNING"


def test_reading_grey_images_logs_the_conversion_once(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="reid.data.build")
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"grey{i}.png")
        Image.new("L", (4, 8), 100 + i).save(paths[-1])
    images = [read_image(str(p)) for p in paths]
    assert all(img.mode == "RGB" for img in images)
    assert messages(caplog, "reid.data.build") == ["converting L images to RGB"]
