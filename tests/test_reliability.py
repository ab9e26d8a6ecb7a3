"""Issue 10's failures, each through the real entry points (``reid run``, ``reid train``,
``reid eval``, ``reid prepare`` as subprocesses; signals and kill -9 included): one case of
``benchmarks/reliability.py`` per test, its verdict asserted. The cases hold the checks (one
``reid: error:`` line, exit codes, files intact, MLflow run statuses, no orphan process)."""
from __future__ import annotations

import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import reliability  # noqa: E402


@pytest.fixture(scope="module")
def bench(prefect_server, tmp_path_factory) -> reliability.Bench:
    """The cases' `reid run`s use the session's Prefect server, except those left running to
    be signalled (they check that their temporary server ends with them)."""
    from prefect.settings import PREFECT_API_URL
    return reliability.Bench(tmp_path_factory.mktemp("reliability"), PREFECT_API_URL.value())


# fresh-store-created-twice-at-once races `reid prepare` processes: the benchmark runs it;
# the suite races two processes on a fresh store in test_run_safety.py (seconds, not tens).
IN_SUITE = [name for name in reliability.CASES if name != "fresh-store-created-twice-at-once"]


@pytest.mark.parametrize("name", IN_SUITE)
def test_reliability_case(bench, name):
    outcome = reliability.CASES[name](bench)
    if outcome.skipped:
        pytest.skip(outcome.skipped)
    assert not outcome.failures, f"{name}: {outcome.verdict}"


def test_a_failing_expectation_fails_the_case():
    """The verdicts can fail: a command that prints two error lines and a traceback."""
    outcome = reliability.Outcome("probe")
    proc = reliability.Proc(0, "", "reid: error: a\nTraceback (most recent call last):\n"
                            "reid: error: b\n", 1.0)
    outcome.one_clean_error(proc, 2, "missing phrase")
    assert outcome.verdict.startswith("FAIL")
    assert len(outcome.failures) == 4  # exit code, two lines, traceback, phrase
