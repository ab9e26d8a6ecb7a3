"""reid.utils.analysis (FLOPs and activations per operator, hand-counted), activations in
`reid info`, reid.utils.collect_env and `reid info --env`."""
from __future__ import annotations

import re
from importlib.metadata import version

import pytest
import torch
from torch import nn

from reid.cli import main
from reid.utils.analysis import (activation_count_operators, count_operators,
                                 flop_count_operators, parameter_count)
from reid.utils.collect_env import collect_env, collect_env_info
from toys import write_config


def conv_linear() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 5, 7), nn.BatchNorm1d(7)).eval()


def test_counts_by_operator_match_a_hand_count():
    images = torch.randn(2, 3, 6, 5)
    counts, output = count_operators(conv_linear(), images)
    assert output.shape == (2, 7)
    # conv: every output element (2 x 4 x 6 x 5) is 3 x 3 x 3 multiply-adds; linear: 2 x 7
    # outputs of 120 multiply-adds each; ReLU and BatchNorm are not counted.
    assert counts.flops == {"convolution": 2 * (2 * 4 * 6 * 5) * 27, "addmm": 2 * (2 * 7) * 120}
    assert counts.activations == {"convolution": 2 * 4 * 6 * 5, "addmm": 2 * 7}
    assert counts.total_activations == 254
    gflops = flop_count_operators(conv_linear(), images)
    assert gflops == pytest.approx({"convolution": 12960 / 1e9, "addmm": 3360 / 1e9})
    assert activation_count_operators(conv_linear(), images) == pytest.approx(
        {"convolution": 240 / 1e6, "addmm": 14 / 1e6})


def test_arguments_given_as_a_tuple_and_matrix_products():
    class Product(nn.Module):
        def forward(self, a, b):
            return a @ b

    counts, _ = count_operators(Product(), (torch.ones(3, 4), torch.ones(4, 5)))
    assert counts.flops == {"mm": 2 * 3 * 4 * 5} and counts.activations == {"mm": 15}


def test_parameter_count_per_module_prefix():
    counts = parameter_count(conv_linear())
    conv, linear, norm = 4 * 27 + 4, 120 * 7 + 7, 2 * 7
    assert counts[""] == conv + linear + norm
    assert counts["0"] == conv and counts["3"] == linear and counts["3.weight"] == 840


def info_rows(capsys) -> dict[str, str]:
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        name, value = re.split(r"\s{2,}", line.strip(), maxsplit=1)
        rows[name] = value
    return rows


def test_info_shows_activations_beside_flops(tmp_path, capsys):
    # tiny backbone: 3x3 conv 3->8, stride 2, on 32x16 -> 8 x 16 x 8 outputs; head: 1x1
    # embedding conv 8->4 on the pooled 1x1 map -> 4 outputs.
    config = write_config(tmp_path / "tiny.yml", {"MODEL.HEADS.EMBEDDING_DIM": 4})
    assert main(["info", "--config", str(config)]) == 0
    rows = info_rows(capsys)
    assert rows["activations"] == f"{8 * 16 * 8 + 4:,} (output elements of convolutions, " \
                                  "matrix products and attention)"
    assert "FLOPs" in rows and "parameters" in rows


def test_collect_env_names_the_versions():
    env = dict(collect_env())
    assert env["PyTorch"] == torch.__version__
    assert env["numpy"] == version("numpy")
    assert env["GPU available"] == ("yes" if torch.cuda.is_available() else "no")
    for name in ("Python", "PyTorch CUDA build", "cuDNN", "faiss", "prefect", "mlflow", "dvc"):
        assert env[name]
    assert env["prefect"] == version("prefect") and env["dvc"] == version("dvc")


def test_info_env_prints_the_table(capsys):
    assert main(["info", "--env"]) == 0
    out = capsys.readouterr().out
    assert out == collect_env_info()
    assert re.search(rf"^PyTorch\s+{re.escape(torch.__version__)}$", out, re.M)
    assert re.search(r"^mlflow\s+\S+", out, re.M)


def test_every_tracked_training_run_keeps_its_environment(tmp_path, mlflow_uri):
    from types import SimpleNamespace

    from mlflow import MlflowClient

    from reid.config import load_config
    from tasks import tracked
    from tasks.tracking import Tracker

    def fake_training(cfg, sink=None, resume=False):
        return {"metrics": {}, "files": [], "checkpoint": str(tmp_path / "model_final.pth")}

    stage = SimpleNamespace(name="train", run=fake_training)
    cfg = load_config(None, ["OUTPUT_DIR", str(tmp_path / "out"), "DATASETS.ROOT",
                             str(tmp_path / "no-data"), "SOLVER.LOG_CHECKPOINTS", "none"])
    tracker = Tracker()
    tracked.train(stage, cfg, tracker)
    client = MlflowClient(mlflow_uri)
    run, = client.search_runs([tracker.experiment_id])
    assert "environment.txt" in {a.path for a in client.list_artifacts(run.info.run_id)}
    local = client.download_artifacts(run.info.run_id, "environment.txt", str(tmp_path))
    text = open(local).read()
    assert text == collect_env_info()
    assert re.search(rf"^PyTorch\s+{re.escape(torch.__version__)}$", text, re.M)
