"""bfloat16 autocast for training (SOLVER.BF16_ENABLED) beside float16 (SOLVER.FP16_ENABLED)."""
import logging

import pytest
import torch

from reid.evaluation import extract
from reid.engine.trainer import autocast_dtype
from reid.errors import ReidError
from toys import ToyReidNet, make_trainer


class RecordsDtype(ToyReidNet):
    """The toy model, recording the dtype its linear layer computes in (autocast's)."""

    def __init__(self):
        super().__init__()
        self.dtypes = []

    def forward(self, batch):
        if self.training:
            self.dtypes.append(self.backbone[1](batch["images"].flatten(1)).dtype)
        return super().forward(batch)


def train(dtype=None):
    torch.manual_seed(0)
    model = RecordsDtype()
    trainer = make_trainer(model=model, amp=dtype is not None,
                           amp_dtype=dtype or torch.float16)
    trainer.train()
    losses = trainer.storage.history("total_loss").values()
    return trainer, model, [value for value, _ in losses]


def test_bf16_autocast_trains_on_the_cpu_without_loss_scaling():
    trainer, model, losses = train(torch.bfloat16)
    assert model.dtypes == [torch.bfloat16] * 4 and not trainer.scaler.is_enabled()
    _, float_model, float_losses = train()
    assert float_model.dtypes == [torch.float32] * 4
    # Same start, same data: bfloat16's 8-bit mantissa moves the losses by well under 5 %.
    assert losses == pytest.approx(float_losses, rel=0.05) and losses != float_losses


def test_bf16_on_a_cpu_without_native_support_trains_in_float32_with_one_warning(monkeypatch,
                                                                                caplog):
    monkeypatch.setattr(extract, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(extract, "_WARNED_NO_BF16", set())
    with caplog.at_level(logging.WARNING, logger="reid.evaluation.extract"):
        trainer, model, losses = train(torch.bfloat16)
    assert caplog.messages == [
        "SOLVER.BF16_ENABLED is ignored on this CPU: it has no native bfloat16 (a CPU needs "
        "AVX-512 BF16 or AMX, a GPU Ampere or newer), and emulated bfloat16 is slower than "
        "float32; running in float32"]
    assert set(model.dtypes) == {torch.float32} and not trainer.amp
    _, _, float_losses = train()
    assert losses == float_losses  # exactly the float32 training


def test_a_gpu_without_native_bf16_is_not_native(monkeypatch):
    seen = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: seen.append(including_emulation))
    assert not extract.native_bf16(torch.device("cuda"))
    assert seen == [False]  # emulation does not count
    assert not extract.native_bf16(torch.device("mps"))


def test_the_config_keys_choose_the_dtype_and_refuse_both():
    assert autocast_dtype(False, False) is None
    assert autocast_dtype(True, False) == torch.float16
    assert autocast_dtype(False, True) == torch.bfloat16
    with pytest.raises(ReidError, match="SOLVER.FP16_ENABLED and SOLVER.BF16_ENABLED are both "
                                        "True; set one"):
        autocast_dtype(True, True)
