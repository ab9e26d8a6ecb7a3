"""The distill flow's independent branches run concurrently: the KD student and the no-KD
student train at the same time (their MLflow runs overlap), nested as before."""
from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

import tasks.environment  # noqa: F401  (Prefect reads its logging settings when it loads)
from conftest import RECIPE, TINY_DATA, TINY_TRAIN, as_yaml
from reid.config import load_config
from reid.modeling import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_kd_and_no_kd_students_train_at_the_same_time(prefect_server, tiny_root, tmp_path,
                                                      mlflow_uri):
    from flows.distill import run_distill
    tiny = {**TINY_DATA, **TINY_TRAIN, "DATASETS.ROOT": str(tiny_root),
            "MODEL.BACKBONE.PRETRAIN": False, "SOLVER.MAX_EPOCH": 1,
            "TEST.PRECISE_BN.ENABLED": False}
    teacher = tmp_path / "teacher.yml"
    teacher.write_text(f"_BASE_: {RECIPE}\n" + as_yaml({**tiny, "OUTPUT_DIR": str(tmp_path / "t"),
                                                        "MODEL.HEADS.NUM_CLASSES": 8}))
    weights = tmp_path / "teacher.pth"  # exists: the teacher is only evaluated
    torch.save({"model": build_model(load_config(teacher)).state_dict()}, weights)
    student = tmp_path / "student.yml"
    student.write_text(f"_BASE_: {RECIPE}\n" + as_yaml({
        **tiny, "OUTPUT_DIR": str(tmp_path / "s"), "MODEL.META_ARCHITECTURE": "Distiller",
        "KD.MODEL_CONFIG": str(teacher), "KD.MODEL_WEIGHTS": str(weights)}))

    out = run_distill(str(student), max_parallel=2)

    assert set(out["results"]) == {"teacher", "student (KD)", "student (no KD)"}
    client = MlflowClient(mlflow_uri)
    exp = client.get_run(out["mlflow_run_id"]).info.experiment_id

    def children(parent_id):
        runs = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_id}'")
        return {run.info.run_name: run for run in runs}
    roles = children(out["mlflow_run_id"])
    assert set(roles) == {"teacher", "student (KD)", "student (no KD)"}  # nesting as before
    kd = children(roles["student (KD)"].info.run_id)["distill"].info
    plain = children(roles["student (no KD)"].info.run_id)["train"].info
    assert kd.status == plain.status == "FINISHED"
    # The two trainings overlap: each started before the other ended.
    assert kd.start_time < plain.end_time and plain.start_time < kd.end_time
