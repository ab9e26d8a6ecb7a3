"""The training loop: epochs of iterations, with hooks around each stage.

A step moves the batch to the device, runs the model in training mode (which returns a dict
of scalar losses), backpropagates their sum, optionally clips the gradients, steps the
optimizer and then the per-iteration LR scheduler. Checkpointing, logging, progress and layer
freezing are hooks.

``Trainer.state_dict()`` is what the next step depends on besides the model, optimizer and
scheduler: the iteration, the AMP GradScaler, every rank's random state and the hooks' state
(the metrics being averaged, the best evaluation); with it, ``train(start_iter=...)`` goes on
at the exact iteration, mid-epoch included (the epoch's consumed batches are skipped in the
sampler, not loaded).
"""
from __future__ import annotations

import logging
import math
import warnings
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn

from reid.engine import rng
from reid.engine.hook_base import HookBase
from reid.errors import ReidError
from reid.evaluation.extract import bf16_where_native
from reid.utils import comm
from reid.utils.events import EventStorage

logger = logging.getLogger(__name__)


class TrainingDiverged(ReidError):
    """A loss became NaN or infinite; training stopped before the bad step was applied."""


def to_device(batch: Any, device: torch.device) -> Any:
    """The batch with every tensor (also inside dicts, lists, tuples) moved to ``device``."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


def batch_size(batch: Any) -> int:
    images = batch["images"] if isinstance(batch, dict) else batch
    return len(images) if hasattr(images, "__len__") else 0


def set_sampler_epoch(data_loader: Any, epoch: int) -> None:
    """Call ``set_epoch(epoch)`` on the loader's samplers that have one (reshuffles per epoch)."""
    batch_sampler = getattr(data_loader, "batch_sampler", None)
    candidates = (getattr(data_loader, "sampler", None), batch_sampler,
                  getattr(batch_sampler, "sampler", None))
    seen: set[int] = set()
    for sampler in candidates:
        if hasattr(sampler, "set_epoch") and id(sampler) not in seen:
            seen.add(id(sampler))
            sampler.set_epoch(epoch)


def skip_batches(data_loader: Any, count: int) -> bool:
    """Make the loader's next pass start ``count`` batches into its epoch, in the sampler
    (``start_at_batch``: nothing loaded); False when its sampler cannot, and the caller must
    draw and drop the batches."""
    sampler = getattr(data_loader, "sampler", None)
    if count == 0:
        return True
    if hasattr(sampler, "start_at_batch"):
        sampler.start_at_batch(count)
        return True
    return False


def cycle(data_loader: Iterable) -> Iterator:
    """The loader's batches, starting over whenever it is exhausted."""
    while True:
        empty = True
        for batch in data_loader:
            empty = False
            yield batch
        if empty:
            raise ReidError("the data loader yielded no batch; is the dataset smaller than one "
                            "batch (SOLVER.IMS_PER_BATCH)?")


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on any rank (every rank must call this)."""
    if comm.get_world_size() == 1:
        return flag
    tensor = torch.tensor([float(flag)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


# PyTorch's warning when a scheduler steps before its optimizer ever did.
_SCHEDULER_BEFORE_OPTIMIZER = (r"Detected call of `lr_scheduler\.step\(\)` before "
                               r"`optimizer\.step\(\)`")


def autocast_dtype(fp16: bool, bf16: bool) -> Optional[torch.dtype]:
    """The autocast dtype of SOLVER.FP16_ENABLED / SOLVER.BF16_ENABLED (None: float32)."""
    if fp16 and bf16:
        raise ReidError("SOLVER.FP16_ENABLED and SOLVER.BF16_ENABLED are both True; set one "
                        "(bfloat16 needs no loss scaling, float16 runs on CUDA only)")
    return torch.float16 if fp16 else torch.bfloat16 if bf16 else None


def amp_enabled(requested: bool, device: torch.device,
                dtype: torch.dtype = torch.float16) -> bool:
    """Whether autocast runs: float16 on CUDA only (as FastReID's AMP); bfloat16 where the
    device has it natively (a CPU with AVX-512 BF16 or AMX, a GPU from Ampere on; elsewhere
    float32 with a warning, see ``bf16_where_native``)."""
    if not requested:
        return False
    if dtype == torch.bfloat16:
        return bf16_where_native("SOLVER.BF16_ENABLED", True, device)
    if device.type != "cuda":
        logger.warning("SOLVER.FP16_ENABLED is ignored on %s: mixed precision runs on CUDA only",
                       device)
        return False
    return True


# clip type (SOLVER.CLIP_GRADIENTS.CLIP_TYPE) -> fn(parameter, clip value, norm type)
GRADIENT_CLIPS: dict[str, Callable[[nn.Parameter, float, float], Any]] = {
    "value": lambda param, value, norm_type: nn.utils.clip_grad_value_(param, value),
    "norm": lambda param, value, norm_type: nn.utils.clip_grad_norm_(param, value, norm_type),
}


class GradientClipper:
    """Clips the gradient of every parameter on its own, as FastReID 1.4 does.

    ``"value"``: every gradient element into ``[-clip_value, clip_value]``; ``"norm"``: each
    parameter's gradient rescaled so that its ``norm_type``-norm is at most ``clip_value``
    (``norm_type`` may be ``inf``).
    """

    def __init__(self, clip_type: str = "norm", clip_value: float = 5.0,
                 norm_type: float = 2.0) -> None:
        if clip_type not in GRADIENT_CLIPS:
            raise ReidError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE must be one of "
                            f"{', '.join(GRADIENT_CLIPS)}; got {clip_type!r}")
        if not clip_value > 0:
            raise ReidError(f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE must be > 0; got {clip_value}")
        if not norm_type > 0:
            raise ReidError(f"SOLVER.CLIP_GRADIENTS.NORM_TYPE must be > 0 (or inf); "
                            f"got {norm_type}")
        self.clip = GRADIENT_CLIPS[clip_type]
        self.clip_type, self.clip_value, self.norm_type = clip_type, clip_value, norm_type

    def __call__(self, parameters: Iterable[nn.Parameter]) -> None:
        for param in parameters:
            if param.grad is not None:
                self.clip(param, self.clip_value, self.norm_type)


def build_gradient_clipper(clip_cfg: Any) -> Optional[GradientClipper]:
    """The clipper of SOLVER.CLIP_GRADIENTS (a config node), or None when not ENABLED."""
    if not clip_cfg.ENABLED:
        return None
    return GradientClipper(clip_cfg.CLIP_TYPE, clip_cfg.CLIP_VALUE, clip_cfg.NORM_TYPE)


class Trainer:
    """Trains ``model`` for epochs ``start_epoch .. max_epoch - 1``.

    Hooks see the trainer's state: ``epoch`` (0-based), ``iter`` (global 0-based index of the
    current iteration inside step hooks; the number of iterations done in epoch hooks),
    ``max_iter``, ``iters_per_epoch``, ``metrics`` (the last step's loss terms, total_loss and
    lr), ``images_seen`` (on this rank), ``done`` (iterations completed: the one a checkpoint
    taken now resumes at), ``last_checkpoint`` (set by the checkpointing hook) and
    ``completed`` (True once the last epoch has finished). ``storage`` (``EventStorage``, also
    ``get_event_storage()`` while training) gets every step's losses and lr (not smoothed).

    ``grad_clipper`` (e.g. ``build_gradient_clipper(cfg.SOLVER.CLIP_GRADIENTS)``) is called on
    the optimizer's parameters after backward (and after AMP unscaling), before the step.
    With ``amp`` the forward runs under autocast to ``amp_dtype`` (float16: CUDA, GradScaler).
    """

    def __init__(self, model: nn.Module, data_loader: Iterable, optimizer: torch.optim.Optimizer,
                 scheduler: Any, max_epoch: int, iters_per_epoch: Optional[int] = None,
                 device: str | torch.device | None = None, amp: bool = False,
                 hooks: Iterable[HookBase] = (), amp_dtype: torch.dtype = torch.float16,
                 grad_clipper: Optional[Callable[[Iterable[nn.Parameter]], Any]] = None) -> None:
        self.model = model
        self.data_loader = data_loader
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.max_epoch = max_epoch
        self.iters_per_epoch = iters_per_epoch or len(data_loader)
        self.max_iter = max_epoch * self.iters_per_epoch
        if device is None:
            device = next(model.parameters()).device
        self.device = torch.device(device)
        self.amp = amp_enabled(amp, self.device, amp_dtype)
        self.amp_dtype = amp_dtype
        # Loss scaling keeps float16's small gradients from vanishing; bfloat16 needs none.
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.amp and amp_dtype == torch.float16)
        self.grad_clipper = grad_clipper
        self.hooks = list(hooks)
        for hook in self.hooks:
            hook.trainer = self
        self.epoch = self.start_epoch = 0
        self.iter = self.start_iter = self.done = 0
        self._resumed_rng: Optional[dict] = None
        self.metrics: dict[str, float] = {}
        self.images_seen = 0
        self.last_checkpoint: Optional[str] = None
        self.completed = False
        self.storage = EventStorage()

    # ------------------------------------------------------------------ loop
    def train(self, start_epoch: int = 0, start_iter: Optional[int] = None) -> None:
        """Train from the beginning of ``start_epoch`` or, when given, from global iteration
        ``start_iter`` (which may fall inside an epoch)."""
        if start_iter is None:
            start_iter = start_epoch * self.iters_per_epoch
        self.iter = self.start_iter = self.done = start_iter
        self.epoch = self.start_epoch = start_iter // self.iters_per_epoch
        self.completed = False
        logger.info("training epochs %d..%d, %d iterations each%s", self.start_epoch + 1,
                    self.max_epoch, self.iters_per_epoch,
                    f", from iteration {start_iter + 1}" if start_iter else "")
        self.model.train()
        self.storage.iter = start_iter
        with self.storage:
            try:
                self._call_hooks("before_train")
                if start_iter % self.iters_per_epoch == 0:  # last: nothing before may draw
                    self._restore_rng()
                for self.epoch in range(self.start_epoch, self.max_epoch):
                    self._run_epoch()
                self.completed = True
            finally:
                # Hooks always clean up (close progress bars); they check ``completed`` before
                # doing end-of-training work such as saving the final checkpoint.
                self._call_every_hook("after_train")

    def _run_epoch(self) -> None:
        position = self.iter - self.epoch * self.iters_per_epoch  # > 0 when resumed mid-epoch
        set_sampler_epoch(self.data_loader, self.epoch)
        skipped = skip_batches(self.data_loader, position)
        batches = cycle(self.data_loader)
        self._call_hooks("before_epoch")
        try:
            for _ in range(0 if skipped else position):
                next(batches)
            for _ in range(position, self.iters_per_epoch):
                self.storage.iter = self.iter
                self._call_hooks("before_step")
                batch = next(batches)
                # Resumed inside the epoch: the saved state already holds whatever starting
                # the epoch's pass drew (a loader without a generator draws its workers' base
                # seed from torch's), so it is restored once that pass has started.
                self._restore_rng()
                self.run_step(batch)
                self.done = self.iter + 1
                self._call_hooks("after_step")
                self.iter += 1
        finally:
            batches.close()  # lets the loader's workers shut down now
        self._call_hooks("after_epoch")

    def run_step(self, batch: Any) -> None:
        batch = to_device(batch, self.device)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            losses = self.model(batch)
        if not isinstance(losses, dict) or not losses:
            raise TypeError(f"a model in training mode must return a dict of losses, got "
                            f"{type(losses).__name__}")
        total = sum(losses.values())
        values = self._loss_values(losses, total)
        self._stop_if_diverged(values)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.grad_clipper is not None:
            # Clip the true gradients, not the loss-scaled ones (a no-op without AMP); the
            # scaler remembers the unscaling and does not repeat it in step().
            self.scaler.unscale_(self.optimizer)
            self.grad_clipper(p for group in self.optimizer.param_groups for p in group["params"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.optimizer.param_groups[0]["lr"]
        self._step_scheduler()
        self.images_seen += batch_size(batch)
        self.metrics = {**values, "lr": lr}
        self.storage.put_scalars(**values)
        self.storage.put_scalar("lr", lr, smoothing_hint=False)

    def _step_scheduler(self) -> None:
        """The per-iteration LR schedule advances every iteration (as FastReID's), also when
        AMP's scaler skipped the optimizer step for inf/NaN gradients. A skipped first step
        makes PyTorch warn that the scheduler stepped before the optimizer: expected with
        AMP, so that one warning is silenced there (and only there)."""
        if not self.amp:
            self.scheduler.step()
            return
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_SCHEDULER_BEFORE_OPTIMIZER)
            self.scheduler.step()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """The trainer's part of a training checkpoint, at ``done`` iterations. Collective:
        every rank must call it (each rank's random state is gathered)."""
        hooks = {}
        for hook in self.hooks:
            state = hook.state_dict()
            if state:
                hooks[type(hook).__name__] = state
        return {"iteration": self.done, "iters_per_epoch": self.iters_per_epoch,
                "grad_scaler": self.scaler.state_dict(), "rng": comm.all_gather(rng.capture()),
                "hooks": hooks}

    def load_state_dict(self, state: dict) -> int:
        """Take back ``state_dict()``'s content; returns the iteration to ``train`` from. The
        random states are restored when training starts."""
        if state["iters_per_epoch"] != self.iters_per_epoch:
            raise ReidError(f"the checkpoint was written with {state['iters_per_epoch']} "
                            f"iterations per epoch, this training has {self.iters_per_epoch} "
                            "(another dataset or SOLVER.IMS_PER_BATCH); resume with the "
                            "same data and batch size, or start afresh in another OUTPUT_DIR")
        if state["grad_scaler"]:  # empty when AMP was off
            self.scaler.load_state_dict(state["grad_scaler"])
        for hook in self.hooks:
            hook.load_state_dict(state["hooks"].get(type(hook).__name__, {}))
        saved_ranks, rank = len(state["rng"]), comm.get_rank()
        if saved_ranks != comm.get_world_size():
            logger.warning("resuming %d processes from a checkpoint of %d: the random state of "
                           "rank %d %s", comm.get_world_size(), saved_ranks, rank,
                           "is its own" if rank < saved_ranks else "starts from SEED + rank")
        self._resumed_rng = state["rng"][rank] if rank < saved_ranks else None
        return int(state["iteration"])

    def _restore_rng(self) -> None:
        if self._resumed_rng is not None:
            rng.restore(self._resumed_rng)
            self._resumed_rng = None

    def _call_hooks(self, stage: str) -> None:
        for hook in self.hooks:
            getattr(hook, stage)()

    def _call_every_hook(self, stage: str) -> None:
        """Every hook's ``stage`` even when one fails (a final checkpoint on a full disk must
        not keep the progress bar from closing); then the first failure is raised."""
        failure = None
        for hook in self.hooks:
            try:
                getattr(hook, stage)()
            except BaseException as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    # ------------------------------------------------------------------ divergence
    @staticmethod
    def _loss_values(losses: dict, total: torch.Tensor) -> dict[str, float]:
        """Every loss term and the total as floats, read from the device in one transfer."""
        tensors = [value.detach().float().reshape(()) for value in losses.values()]
        numbers = torch.stack(tensors + [total.detach().float().reshape(())]).tolist()
        return dict(zip(list(losses) + ["total_loss"], numbers))

    def _stop_if_diverged(self, values: dict[str, float]) -> None:
        """Raise TrainingDiverged on every rank when any rank's loss is not finite.

        Runs before backward, so the bad step is never applied, and all ranks stop together
        (a rank that went on would wait forever for the others' gradients).
        """
        finite = all(math.isfinite(v) for v in values.values())
        if not any_rank(not finite, self.device):
            return
        reports = comm.all_gather(values)
        rank = next(r for r, report in enumerate(reports)
                    if not all(math.isfinite(v) for v in report.values()))
        raise TrainingDiverged(self._divergence_message(reports[rank], rank))

    def _divergence_message(self, values: dict[str, float], rank: int) -> str:
        total = values["total_loss"]
        where = f" on rank {rank}" if comm.get_world_size() > 1 else ""
        terms = ", ".join(f"{name}={value:.4g}" for name, value in values.items()
                          if name != "total_loss")
        checkpoint = self.last_checkpoint or "none saved yet"
        lr = self.optimizer.param_groups[0]["lr"]
        return (f"loss became {total:.4g}{where} at epoch {self.epoch + 1}, iteration "
                f"{self.iter + 1} ({terms}); last good checkpoint: {checkpoint}; try a lower "
                f"SOLVER.BASE_LR (the LR was {lr:.3g})")
