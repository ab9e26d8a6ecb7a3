"""``reid gc``: delete old runs' artifacts from the MLflow artifact store, by a rule.

A *group* is a top-level run with all the runs nested under it: a pipeline or distill flow
run with its stage runs, or a stage run started alone (``reid train``, a DVC stage without
REID_PARENT_RUN_ID). The rule keeps or prunes whole groups: a pipeline's train and precise-BN
weights stay or go together, with the evaluation that judged them.

Rule (``Rule``): a group is pruned when it is not among the newest ``keep_last`` groups that
still hold artifacts of the kind pruned, and, with ``older_than_days``, started more than that
many days ago; either option alone is a rule, both together must both hold. Never pruned: a
group with a run that has not ended (RUNNING, SCHEDULED) and a group holding the run of a
registered model version (any version, any alias: the lineage of a model in use).

``what``: ``checkpoints`` removes each run's ``checkpoints/`` folder (the stages' weights);
``all`` every artifact. Deletion goes through MLflow's artifact repository of the run (a local
folder, S3, GCS, ...), and each pruned run gets the tag ``reid.gc.pruned`` saying what was
removed and when, so the MLflow UI tells why files are gone. Runs themselves (params, metrics,
tags) stay: deleting runs, and then their files, is ``mlflow gc``'s work.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

from mlflow.entities import Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient

from reid.errors import ReidError, one_line
from tasks.tracked import CHECKPOINTS_DIR
from tasks.tracking import EXPERIMENT, PARENT_TAG

PRUNED_TAG = "reid.gc.pruned"
WHAT = ("checkpoints", "all")
DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class Rule:
    keep_last: Optional[int] = None           # the newest N groups keep their artifacts
    older_than_days: Optional[float] = None   # only groups started longer ago are pruned
    what: str = "checkpoints"                 # one of WHAT

    def __post_init__(self) -> None:
        if self.keep_last is None and self.older_than_days is None:
            raise ReidError("reid gc needs a rule: --keep-last N and/or --older-than DAYS")
        if self.keep_last is not None and self.keep_last < 0:
            raise ReidError(f"--keep-last must be 0 or more, got {self.keep_last}")
        if self.older_than_days is not None and not self.older_than_days >= 0:
            raise ReidError(f"--older-than must be 0 or more days, got {self.older_than_days}")
        if self.what not in WHAT:
            raise ReidError(f"--what must be one of {', '.join(WHAT)}, got {self.what!r}")


@dataclass
class Deletion:
    """Artifacts of one run that the rule removes."""
    run: Run
    group: Run                  # the group's top-level run
    paths: list[str]            # top-level artifact paths (folders or files)
    size: int                   # bytes


@dataclass
class Plan:
    deletions: list[Deletion] = field(default_factory=list)
    kept: dict[str, int] = field(default_factory=dict)  # why -> number of groups
    deleted: bool = False       # False: a dry run

    @property
    def size(self) -> int:
        return sum(d.size for d in self.deletions)

    def lines(self) -> list[str]:
        """One line per pruned run, then the total (what the CLI prints)."""
        verb = "deleted" if self.deleted else "would delete"
        out = [f"{verb} {', '.join(d.paths)} of run {d.run.info.run_id} "
               f"({d.run.info.run_name}, group {d.group.info.run_name} started "
               f"{_date(d.group.info.start_time)}): {megabytes(d.size)}" for d in self.deletions]
        kept = ", ".join(f"{n} {why}" for why, n in self.kept.items() if n) or "none"
        total = (f"{'freed' if self.deleted else 'would free'} {megabytes(self.size)} "
                 f"({self.size:,} bytes) in {len(self.deletions)} run"
                 f"{'' if len(self.deletions) == 1 else 's'}; groups kept: {kept}")
        if not self.deleted and self.deletions:
            total += " (dry run: add --yes to delete)"
        return out + [total]


def gc(rule: Rule, experiment: Optional[str] = None, delete: bool = False,
       tracking_uri: Optional[str] = None, now_ms: Optional[int] = None) -> Plan:
    """Plan what ``rule`` prunes in ``experiment`` (default: the pipeline's); with ``delete``,
    delete it and tag the runs."""
    experiment = experiment or EXPERIMENT
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ReidError(f"no MLflow experiment named {experiment!r} in {client.tracking_uri}")
    plan = make_plan(client, found.experiment_id, rule,
                     int(time.time() * 1000) if now_ms is None else now_ms)
    if delete:
        for deletion in plan.deletions:
            prune(client, deletion)
        plan.deleted = True
    return plan


def make_plan(client: MlflowClient, experiment_id: str, rule: Rule, now_ms: int) -> Plan:
    registered = registered_run_ids(client)
    plan = Plan(kept={"newest": 0, "recent": 0, "registered": 0, "running": 0})
    rank = 0  # among the groups that hold something to prune, newest first
    for root, runs in groups(_paged(lambda token: client.search_runs(
            [experiment_id], max_results=1000, page_token=token))):
        deletions = [d for d in (planned(run, root, rule.what) for run in runs) if d.paths]
        if not deletions:
            continue  # an already pruned group takes none of the keep_last places
        rank += 1
        why = kept_because(root, runs, rank, rule, registered, now_ms)
        if why:
            plan.kept[why] += 1
        else:
            plan.deletions += deletions
    return plan


def kept_because(root: Run, runs: list[Run], rank: int, rule: Rule, registered: set[str],
                 now_ms: int) -> Optional[str]:
    """Why the group of ``root`` (the ``rank``-th newest) is kept; None: it is pruned."""
    if any(not _ended(run) for run in runs):
        return "running"
    if any(run.info.run_id in registered for run in runs):
        return "registered"
    if rule.keep_last is not None and rank <= rule.keep_last:
        return "newest"
    if (rule.older_than_days is not None
            and root.info.start_time > now_ms - rule.older_than_days * DAY_MS):
        return "recent"
    return None


def prune(client: MlflowClient, deletion: Deletion) -> None:
    """Delete one run's planned artifacts, then tag the run with what went."""
    run = deletion.run
    try:
        repository = get_artifact_repository(run.info.artifact_uri)
        for path in deletion.paths:
            repository.delete_artifacts(path)
    except (MlflowException, OSError) as exc:
        raise ReidError(f"cannot delete artifacts of run {run.info.run_id} at "
                        f"{run.info.artifact_uri}: {one_line(exc)}") from exc
    client.set_tag(run.info.run_id, PRUNED_TAG,
                   f"{', '.join(deletion.paths)} ({megabytes(deletion.size)}) by reid gc on "
                   f"{_date(int(time.time() * 1000))}")


# --------------------------------------------------------------------------- runs
def groups(runs: Iterator[Run]) -> list[tuple[Run, list[Run]]]:
    """(top-level run, the runs of its group) for every group, newest top-level run first.
    A run whose parent is gone (deleted) heads a group of its own."""
    by_id = {run.info.run_id: run for run in runs}

    def root(run: Run) -> Run:
        while (parent := by_id.get(run.data.tags.get(PARENT_TAG, ""))) is not None:
            run = parent
        return run

    members: dict[str, list[Run]] = {}
    for run in by_id.values():
        members.setdefault(root(run).info.run_id, []).append(run)
    heads = sorted((by_id[i] for i in members), key=lambda r: r.info.start_time, reverse=True)
    return [(head, members[head.info.run_id]) for head in heads]


def registered_run_ids(client: MlflowClient) -> set[str]:
    """The runs that registered model versions point at."""
    versions = _paged(lambda token: client.search_model_versions(page_token=token))
    return {version.run_id for version in versions if version.run_id}


def planned(run: Run, group: Run, what: str) -> Deletion:
    """What ``what`` would remove from ``run`` (top-level artifact paths and their bytes)."""
    repository = get_artifact_repository(run.info.artifact_uri)
    top = repository.list_artifacts()
    chosen = top if what == "all" else [i for i in top if i.path == CHECKPOINTS_DIR and i.is_dir]
    size = sum(_size(repository, info) for info in chosen)
    return Deletion(run, group, [info.path for info in chosen], size)


def _size(repository, info) -> int:
    if not info.is_dir:
        return info.file_size or 0
    return sum(_size(repository, child) for child in repository.list_artifacts(info.path))


def _ended(run: Run) -> bool:
    return RunStatus.is_terminated(RunStatus.from_string(run.info.status))


def _paged(search: Callable) -> Iterator:
    """Every item of an MLflow search answered in pages (``search(page_token)``)."""
    token = None
    while True:
        page = search(token)
        yield from page
        token = page.token
        if not token:
            return


def megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _date(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ms / 1000))
