import logging

import pytest

from reid.utils.logs import LOG_FILE, log_file


@pytest.fixture
def bare_logging():
    """Logging as a notebook has it: no root handlers, root at WARNING, 'reid' level unset."""
    root, library = logging.getLogger(), logging.getLogger("reid")
    saved = root.handlers[:], root.level, library.level
    root.handlers[:] = []
    root.setLevel(logging.WARNING)
    library.setLevel(logging.NOTSET)
    yield
    root.handlers[:], _, _ = saved
    root.setLevel(saved[1])
    library.setLevel(saved[2])


def test_the_library_logs_at_info_into_the_file_while_the_block_runs(tmp_path, bare_logging):
    log = logging.getLogger("reid.some.module")
    handlers = logging.getLogger().handlers[:]  # pytest's capture handlers
    log.info("before")
    with log_file(tmp_path):
        log.info("training started")
        logging.getLogger("other.library").info("not ours, below WARNING")
        log.warning("a warning")
    log.info("after")
    lines = (tmp_path / LOG_FILE).read_text().splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == [
        "INFO reid.some.module: training started", "WARNING reid.some.module: a warning"]
    assert logging.getLogger().handlers == handlers  # detached
    assert logging.getLogger("reid").level == logging.NOTSET  # restored


def test_nested_blocks_on_one_directory_write_each_record_once(tmp_path, bare_logging):
    with log_file(tmp_path):
        with log_file(tmp_path / "."):  # the same file, spelled differently
            logging.getLogger("reid").info("once")
    assert (tmp_path / LOG_FILE).read_text().count("once") == 1


def test_the_file_is_appended_to_across_runs(tmp_path, bare_logging):
    for message in ("first run", "second run"):
        with log_file(tmp_path):
            logging.getLogger("reid").info(message)
    text = (tmp_path / LOG_FILE).read_text()
    assert text.index("first run") < text.index("second run")


def test_ranks_other_than_zero_write_their_own_file(tmp_path, bare_logging, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with log_file(tmp_path):
        logging.getLogger("reid").warning("rank 1")
    assert not (tmp_path / LOG_FILE).exists()  # rank 0's
    assert (tmp_path / f"{LOG_FILE}.rank1").read_text().endswith("WARNING reid: rank 1\n")
