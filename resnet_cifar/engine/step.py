"""One training step, apart from the epoch loop: forward, loss, backward, clip, update.

The step runs the same code for every precision: the forward sits in the injected
``precision.autocast()`` and the update goes through the ``GradScaler``, which is a pass-through
when disabled (fp32 and bf16). The trainer owns train/eval mode (``set_train_mode`` keeps a
frozen backbone's batch norms in eval mode), so the step never calls ``model.train()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from resnet_cifar.engine.precision import Precision, unwrap_model
from resnet_cifar.errors import ResnetCifarError, UsageError

LossFn = Callable[[Tensor, Tensor], Tensor]


class NonFiniteLossError(ResnetCifarError):
    """The loss became NaN or infinite; raised before the optimizer step, so the weights are the last good ones."""

    exit_code = 1

    def __init__(self, step_index: int, loss: float) -> None:
        super().__init__(f"non-finite loss ({loss}) at global step {step_index}; the weights were not updated")
        self.step_index = step_index
        self.loss = loss


@dataclass(frozen=True)
class StepOutput:
    """What one step reports: the mean loss as the float the step already read for its NaN guard
    (``loss_value``: the step's one host sync, so nobody needs another), the same loss as a device
    tensor, and the top-1 hit count as a device tensor (summed on the device, read once an epoch)."""

    loss: Tensor
    correct: Tensor
    loss_value: float


class TrainStep:
    """Callable running one optimizer step on a batch already on the device.

    ``global_step`` counts the optimizer steps taken; the trainer saves it and sets it back on
    resume. The scheduler, if any, is stepped once per optimizer step.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn,
        *,
        precision: Precision,
        scaler: torch.amp.GradScaler,
        scheduler: LRScheduler | None = None,
        grad_clip: float | None = None,
        ema: AveragedModel | None = None,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if grad_clip is not None and not (math.isfinite(grad_clip) and grad_clip > 0):
            raise UsageError(f"gradient clipping norm must be a positive number, got {grad_clip!r}")
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.precision = precision
        self.scaler = scaler
        self.scheduler = scheduler
        self.grad_clip = grad_clip
        self.ema = ema
        # Applied to each batch before the forward, e.g. the fine-tuning upsampling (--image-size).
        self.transform = transform
        self.global_step = 0
        self._params = [param for group in optimizer.param_groups for param in group["params"]]

    def __call__(self, images: Tensor, labels: Tensor) -> StepOutput:
        self.optimizer.zero_grad(set_to_none=True)
        if self.transform is not None:
            images = self.transform(images)
        with self.precision.autocast():
            logits = self.model(images)
            loss = self.loss_fn(logits, labels)
        # One host sync per step, the price of never applying an update computed from a bad loss.
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(self.global_step, loss_value)
        self.scaler.scale(loss).backward()
        if self.grad_clip is not None:
            # The gradients must be unscaled first, or the threshold would apply to scaled values.
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self._params, self.grad_clip)
        self.scaler.step(self.optimizer)  # skipped by an enabled scaler if the gradients overflowed
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(unwrap_model(self.model))
        self.global_step += 1
        # Soft targets (mixup/cutmix): a hit is the dominant label's; cross-entropy takes them as they are.
        hard = labels.argmax(dim=1) if labels.ndim == 2 else labels
        correct = (logits.detach().argmax(dim=1) == hard).sum()
        return StepOutput(loss=loss.detach().float(), correct=correct, loss_value=loss_value)


class WeightsEMA(AveragedModel):
    """torch's ``AveragedModel`` with the EMA's multi-tensor update, minus its host syncs.

    ``AveragedModel.update_parameters`` reads its ``n_averaged`` counter on the host twice per
    update and copies it to the model's device (a blocking host-to-device copy on CUDA) for an
    EMA function that never reads it. This update keeps a host-side mirror of "has it averaged
    yet" instead and does the same arithmetic: the first update copies the weights, later ones
    apply ``multi_avg_fn`` to each (device, dtype) group, as ``AveragedModel`` groups them. The
    state dict is ``AveragedModel``'s (``module.<name>`` keys and ``n_averaged``), so older
    checkpoints load and resume as before.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self._averaged = False  # n_averaged > 0, known without reading the tensor

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        ema_tensors = [*self.module.parameters(), *self.module.buffers()]
        model_tensors = [*model.parameters(), *model.buffers()]
        if not self._averaged:
            for ema_tensor, model_tensor in zip(ema_tensors, model_tensors, strict=True):
                ema_tensor.copy_(model_tensor)
        else:
            groups: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[Tensor]]] = {}
            for ema_tensor, model_tensor in zip(ema_tensors, model_tensors, strict=True):
                group = groups.setdefault((ema_tensor.device, ema_tensor.dtype), ([], []))
                group[0].append(ema_tensor)
                group[1].append(model_tensor.detach())
            assert self.multi_avg_fn is not None
            for ema_group, model_group in groups.values():
                # The EMA function ignores its count argument: the host counter goes as it is.
                self.multi_avg_fn(ema_group, model_group, self.n_averaged)
        self.n_averaged += 1  # where it lives (the host unless moved): no device sync
        self._averaged = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # Once per load (a resume, the compile warm-up's restore), never per step.
        self._averaged = bool(self.n_averaged.item() > 0)


def build_ema(model: nn.Module, decay: float) -> WeightsEMA:
    """An exponential moving average of the weights AND buffers (batch-norm statistics).

    Averaging the buffers too (``use_buffers=True``) keeps the EMA model's batch-norm statistics
    consistent with its averaged weights, so it can be evaluated directly without recomputing
    them. It copies the unwrapped module (not a ``torch.compile`` wrapper).
    """
    if not (math.isfinite(decay) and 0.0 < decay < 1.0):
        raise UsageError(f"EMA decay must be in (0, 1), got {decay!r}")
    return WeightsEMA(unwrap_model(model), decay)


def build_loss(label_smoothing: float = 0.0) -> nn.CrossEntropyLoss:
    """Cross-entropy with optional label smoothing (``0 <= label_smoothing < 1``), for int64 labels
    [N] or soft targets [N, C] (mixup/cutmix); with soft targets, smoothing mixes them with the
    uniform distribution too, so the two compose."""
    # OptimConfig reports a bad --label-smoothing to users; this guards direct library callers.
    if not (math.isfinite(label_smoothing) and 0.0 <= label_smoothing < 1.0):
        raise UsageError(f"label smoothing must be in [0, 1), got {label_smoothing!r}")
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)

