"""``reid gc``: old runs' checkpoints leave the artifact store by the user's rule; the newest
runs, runs behind a registered model version and runs still going keep theirs."""
from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from reid.cli import main
from tasks.gc import PRUNED_TAG, Rule, gc
from tasks.tracking import PARENT_TAG, Tracker

DAY_MS = 24 * 3600 * 1000
NOW_MS = 1_800_000_000_000
CHECKPOINT_BYTES = 500_000


def pipeline_group(tracker: Tracker, tmp_path: Path, name: str, days_ago: float,
                   ended: bool = True) -> dict[str, str]:
    """A pipeline run with a train stage run (``checkpoints/model_final.pth``, ``config.yaml``)
    and an evaluate stage run, started ``days_ago`` before NOW_MS; returns the run ids."""
    client, start = tracker.client, int(NOW_MS - days_ago * DAY_MS)

    def run(run_name: str, offset: int, parent: str | None = None) -> str:
        tags = {PARENT_TAG: parent, "reid.stage": run_name} if parent else {}
        return client.create_run(tracker.experiment_id, start_time=start + offset,
                                 run_name=run_name, tags=tags).info.run_id

    ids = {"pipeline": run(name, 0)}
    ids["train"] = run("train", 1, ids["pipeline"])
    ids["evaluate"] = run("evaluate", 2, ids["pipeline"])
    weights = tmp_path / name / "model_final.pth"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"\0" * CHECKPOINT_BYTES)
    client.log_artifact(ids["train"], str(weights), "checkpoints")
    client.log_text(ids["train"], "SEED: 0\n", "config.yaml")
    if ended:
        for run_id in ids.values():
            client.set_terminated(run_id)
    return ids


def checkpoints(client: MlflowClient, run_id: str) -> list[str]:
    return [a.path for a in client.list_artifacts(run_id, "checkpoints")]


@pytest.fixture
def store(mlflow_uri, tmp_path):
    """Oldest first: a run not ended, a registered one, then three plain pipeline runs."""
    tracker = Tracker()
    groups = {"running": pipeline_group(tracker, tmp_path, "running", 9, ended=False),
              "registered": pipeline_group(tracker, tmp_path, "registered", 8)}
    for name, days_ago in (("old", 3), ("middle", 2), ("new", 1)):
        groups[name] = pipeline_group(tracker, tmp_path, name, days_ago)
    client = tracker.client
    client.create_registered_model("reid-test")
    evaluate = groups["registered"]["evaluate"]
    client.create_model_version("reid-test", f"runs:/{evaluate}/registered_model",
                                run_id=evaluate)
    return client, groups


def test_keep_last_dry_run_then_delete(store, capsys, monkeypatch):
    client, groups = store
    monkeypatch.setattr("tasks.gc.time.time", lambda: NOW_MS / 1000)
    pruned = [groups["old"]["train"], groups["middle"]["train"]]

    assert main(["gc", "--keep-last", "1", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3  # one per pruned run, then the total
    assert all(line.startswith("would delete checkpoints of run ") for line in lines[:2])
    assert {run_id for run_id in pruned if any(run_id in line for line in lines[:2])} == set(pruned)
    assert lines[2].startswith("would free 1.0 MB (1,000,000 bytes) in 2 runs; groups kept: "
                               "1 newest, 1 registered, 1 running")
    for ids in groups.values():  # a dry run deletes nothing
        assert checkpoints(client, ids["train"]) == ["checkpoints/model_final.pth"]

    assert main(["gc", "--keep-last", "1", "--yes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("freed 1.0 MB (1,000,000 bytes) in 2 runs")
    for name, ids in groups.items():
        run = client.get_run(ids["train"])
        gone = ids["train"] in pruned
        assert checkpoints(client, ids["train"]) == ([] if gone else
                                                     ["checkpoints/model_final.pth"]), name
        assert (PRUNED_TAG in run.data.tags) is gone, name
        assert "config.yaml" in {a.path for a in client.list_artifacts(ids["train"])}
        local = Path(run.info.artifact_uri.removeprefix("file://")) / "checkpoints"
        assert local.exists() is not gone, name  # gone from the embedded store's folder
    assert client.get_run(pruned[0]).data.tags[PRUNED_TAG].startswith("checkpoints (0.5 MB)")

    # Pruned groups hold nothing more to prune and take no place among the newest.
    assert main(["gc", "--keep-last", "1", "--yes"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "freed 0.0 MB (0 bytes) in 0 runs; groups kept: 1 newest, 1 registered, 1 running"]


def test_older_than_and_what_all(store):
    client, groups = store
    plan = gc(Rule(older_than_days=1.5, what="all"), now_ms=NOW_MS)
    assert {d.run.info.run_id for d in plan.deletions} == {groups["old"]["train"],
                                                           groups["middle"]["train"]}
    assert all(sorted(d.paths) == ["checkpoints", "config.yaml"] for d in plan.deletions)
    both = gc(Rule(keep_last=0, older_than_days=2.5), now_ms=NOW_MS, delete=True)
    assert [d.run.info.run_id for d in both.deletions] == [groups["old"]["train"]]
    assert checkpoints(client, groups["old"]["train"]) == []
    assert checkpoints(client, groups["middle"]["train"]) == ["checkpoints/model_final.pth"]


@pytest.mark.parametrize("options, message", [
    (["--keep-last", "-1"], "--keep-last must be 0 or more, got -1"),
    ([], "reid gc needs a rule: --keep-last N and/or --older-than DAYS"),
    (["--older-than", "-2"], "--older-than must be 0 or more days, got -2.0"),
    (["--keep-last", "1", "--what", "models"], "--what must be one of checkpoints, all"),
    (["--keep-last", "1", "--dry-run", "--yes"], "reid gc takes --dry-run"),
    (["--keep-last", "1", "--experiment", "nope"], "no MLflow experiment named 'nope'"),
])
def test_bad_options_give_one_line(options, message, mlflow_uri, capsys):
    assert main(["gc", *options]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("reid: error: " + message)
    assert captured.out == ""
