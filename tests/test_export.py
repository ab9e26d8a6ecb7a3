"""ONNX export: dynamic batch axis, normalisation inside the graph, onnxruntime == PyTorch."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import RECIPE

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from reid.cli import main  # noqa: E402
from reid.config import load_config  # noqa: E402
from reid.errors import ReidError  # noqa: E402
from reid.export import check_onnx, export_model, export_onnx  # noqa: E402
from reid.modeling import build_model  # noqa: E402

SIZE = (64, 32)
OVERRIDES = ["MODEL.DEVICE", "cpu", "INPUT.SIZE_TEST", str(list(SIZE)),
             "MODEL.HEADS.NUM_CLASSES", "4", "MODEL.BACKBONE.PRETRAIN", "False"]


def checkpoint_model(path) -> torch.nn.Module:
    """The reference: a model built from the config with the checkpoint's state dict loaded
    by plain PyTorch, in eval mode."""
    model = build_model(load_config(RECIPE, OVERRIDES))
    model.load_state_dict(torch.load(path, weights_only=True)["model"])
    return model.eval()


def tiny_checkpoint(path, seed: int):
    """A ResNet-18 Baseline with random weights and non-trivial BatchNorm statistics (the
    export must carry the running statistics, not recompute them)."""
    torch.manual_seed(seed)
    model = build_model(load_config(RECIPE, OVERRIDES))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def cfg():
    torch.set_num_threads(1)
    return load_config(RECIPE, OVERRIDES)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pth", seed=0)


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y)))
                     for x, y in zip(a.astype(np.float64), b.astype(np.float64))])


def assert_matches_pytorch(onnx_path, cfg, weights):
    """Our own comparison (not reid.export.check_onnx): raw 0..255 images in, at batch 1 and 3."""
    model = checkpoint_model(weights)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        images = torch.rand(batch, 3, *SIZE, generator=torch.Generator().manual_seed(100 + batch))
        images = images * 255.0
        with torch.no_grad():
            expected = model(images).numpy()
        got = session.run(None, {"images": images.numpy()})[0]
        assert got.shape == expected.shape == (batch, 512)
        assert row_cosine(got, expected).min() >= 0.9999


def dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_dynamo_export_has_a_dynamic_batch_and_matches_pytorch(tmp_path, cfg, weights):
    target = tmp_path / "model.onnx"
    result = export_model(cfg, weights, target)
    assert result["exporter"] == "dynamo" and target.is_file()
    assert not list(tmp_path.glob("*.data"))  # one self-contained file
    graph = onnx.load(str(target)).graph
    input_dims, output_dims = dims(graph.input[0]), dims(graph.output[0])
    assert [d for d in input_dims[1:]] == [3, *SIZE] and isinstance(input_dims[0], str)
    assert isinstance(output_dims[0], str) and output_dims[1] == 512
    assert set(result["cosine"]) == {1, 3} and min(result["cosine"].values()) >= 0.9999
    assert_matches_pytorch(target, cfg, weights)


def test_cli_torchscript_export_without_tracking(tmp_path, cfg, weights, capsys):
    target = tmp_path / "ts.onnx"
    assert main(["export", "--no-track", "--config", str(RECIPE), "--weights", str(weights),
                 "--exporter", "torchscript", *OVERRIDES, "OUTPUT_DIR", str(tmp_path),
                 "--output", str(target)]) == 0
    assert "cosine batch 1:" in capsys.readouterr().out
    graph = onnx.load(str(target)).graph
    assert isinstance(dims(graph.input[0])[0], str)
    assert_matches_pytorch(target, cfg, weights)


def test_cli_export_is_logged_to_mlflow(tmp_path, weights, mlflow_uri, monkeypatch):
    from mlflow.tracking import MlflowClient
    monkeypatch.chdir(tmp_path)  # the run's data version comes from ./data.dvc
    (tmp_path / "data.dvc").write_text("outs:\n- md5: feedbeef.dir\n  path: data\n")
    target = tmp_path / "model.onnx"
    assert main(["export", "--config", str(RECIPE), "--weights", str(weights),
                 "--exporter", "torchscript", "--output", str(target), *OVERRIDES,
                 "OUTPUT_DIR", str(tmp_path / "out")]) == 0
    client = MlflowClient(mlflow_uri)
    [run] = client.search_runs([client.get_experiment_by_name("reid").experiment_id])
    assert run.info.run_name == "export" and run.data.tags["reid.stage"] == "export"
    assert run.data.tags["dvc.data.md5"] == "feedbeef.dir"
    assert "mlflow.source.git.commit" in run.data.tags
    assert min(run.data.metrics["onnx.cosine.batch1"], run.data.metrics["onnx.cosine.batch3"]) \
        >= 0.9999
    logged = client.download_artifacts(run.info.run_id, "export/model.onnx", str(tmp_path / "dl"))
    assert open(logged, "rb").read() == target.read_bytes()


def test_check_rejects_an_unfaithful_export(tmp_path, cfg, weights):
    target = tmp_path / "a.onnx"
    export_model(cfg, weights, target, exporter="torchscript")
    other = checkpoint_model(tiny_checkpoint(tmp_path / "b.pth", seed=1))
    with pytest.raises(ReidError, match=r"ONNX features differ from PyTorch's at batch 1 "
                                        r"\(cosine .* < 0.9999\)"):
        check_onnx(other.eval(), target, SIZE)


def test_a_failed_check_leaves_no_file(tmp_path, cfg, weights, monkeypatch):
    import reid.export

    def failing_check(*args, **kwargs):
        raise ReidError("ONNX features differ")
    monkeypatch.setattr(reid.export, "check_onnx", failing_check)
    model = checkpoint_model(weights)
    with pytest.raises(ReidError, match="ONNX features differ"):
        export_onnx(model, tmp_path / "bad.onnx", SIZE, exporter="torchscript")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, message", [
    (["--format", "tflite", "--output", "m.tflite"], "unknown export format 'tflite'"),
    (["--exporter", "jit", "--output", "m.onnx"], "unknown ONNX exporter 'jit'"),
    ([], "reid export needs --output FILE"),
])
def test_cli_user_errors(tmp_path, weights, capsys, argv, message):
    code = main(["export", "--no-track", "--config", str(RECIPE), "--weights", str(weights),
                 *OVERRIDES, "OUTPUT_DIR", str(tmp_path), *argv])
    assert code == 2 and message in capsys.readouterr().err
