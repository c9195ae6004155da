"""Optimizer parameter groups, optimizers and learning-rate schedules.

Weight decay: normalization-layer weights and all biases get none by default (they set scales
and offsets, not feature detectors, and decaying them mostly hurts; see Goyal et al. 2017,
"Accurate, Large Minibatch SGD", and the "bag of tricks", He et al. 2019). This composes with the
fine-tuning multiplier: up to four groups {backbone, top} x {decay, no decay}, each with its "lr".

Schedules are stepped ONCE PER OPTIMIZER STEP, so every length given in epochs is converted to
iterations with ``steps_per_epoch``:
- ``constant``: the base rate throughout.
- ``step``: multiply by ``gamma`` every ``step_size`` epochs.
- ``multistep``: multiply by ``gamma`` at each epoch in ``milestones``.
- ``cosine``: half a cosine from each group's rate down to ``min_lr_ratio`` times it, ending at
  the last iteration.
- ``onecycle``: ``OneCycleLR`` (cosine ramp up over ``onecycle_pct_start`` of the run from
  lr/25 to lr, then down towards lr/25e4 or ``min_lr_ratio`` * lr). Its ramp IS its warm-up, so
  it takes ``warmup_epochs`` 0 and its rise as ``onecycle_pct_start``. Momentum is not cycled:
  ``--momentum`` keeps meaning what it says. A run too short for its rise (under 1.5 steps)
  gets a rise of 1.5 steps, so every run of 3 steps or more has both phases.

Warm-up (all but onecycle): a linear ramp over ``warmup_epochs`` (``LinearLR``) chained to the
main schedule with ``SequentialLR``; at iteration ``i < W`` the rate is ``lr * (i + 1) / (W + 1)``.
Decay epochs (``step_size``, ``milestones``) count from the start of training, warm-up included
(decay at epoch 30 means epoch 30 with or without warm-up), and the cosine spans what remains
after the warm-up.

The optimizers and schedules are the registries of resnet_cifar.choices: an optimizer is built
from its spec alone (class, options), a schedule by its builder here, bound to the registry at
import. Their settings were checked once, by OptimConfig; these builders trust them and check
only what depends on the run's length in steps, which the config cannot know.

Every schedule is built from ``torch.optim.lr_scheduler`` classes, so ``state_dict()`` round-trips
through a ``weights_only`` checkpoint. The cosine is a ``LambdaLR`` rather than
``CosineAnnealingLR`` because the latter's floor is one absolute ``eta_min`` shared by all groups,
which cannot be a fraction of each group's own rate (backbone vs top).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler

from resnet_cifar.choices import bound
from resnet_cifar.choices.optimizers import OPTIMIZERS
from resnet_cifar.choices.schedules import SCHEDULES
from resnet_cifar.errors import UsageError
from resnet_cifar.models.finetune import finetune_param_groups

# Modules whose parameters are scales and offsets of a normalization.
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*d, SyncBatchNorm, InstanceNorm*d
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
_ONECYCLE_DIV_FACTOR = 25.0  # OneCycleLR's default: the ramp starts at lr / 25
_ONECYCLE_MIN_PHASE = 1.5  # steps: OneCycleLR needs each phase to span more than one step
_ONECYCLE_MIN_STEPS = 3  # two phases of at least 1.5 steps


def _no_decay_param_ids(model: nn.Module) -> set[int]:
    """Ids of normalization-layer parameters and of every bias."""
    ids: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if isinstance(module, _NORM_TYPES) or name == "bias":
                ids.add(id(param))
    return ids


def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    decay_norm_and_bias: bool = False,
    backbone_lr_mult: float = 1.0,
    lr: float,
) -> list[dict[str, Any]]:
    """Trainable parameters split by learning rate (backbone vs ``fc``) and by weight decay.

    Each group carries "params", "lr", "weight_decay" and a "name" such as ``"backbone/no_decay"``
    (kept in the optimizer's state dict, handy in logs). Empty groups are omitted. With
    ``backbone_lr_mult == 1`` there is no backbone/top split (the model needs no ``fc``) and the
    names are ``"all/decay"`` and ``"all/no_decay"``.
    """
    if backbone_lr_mult == 1.0:
        trainable = [param for param in model.parameters() if param.requires_grad]
        lr_groups = [("all", lr, trainable)] if trainable else []
    else:
        # finetune_param_groups defines the split (and validates the multiplier and the ``fc``);
        # it omits empty groups, so a group is the top's when its parameters belong to ``fc``.
        groups_by_lr = finetune_param_groups(model, lr, backbone_lr_mult)
        top_ids = {id(param) for param in model.fc.parameters()}
        lr_groups = [
            ("top" if id(group["params"][0]) in top_ids else "backbone", group["lr"], group["params"])
            for group in groups_by_lr
        ]
    no_decay_ids = set() if decay_norm_and_bias else _no_decay_param_ids(model)
    groups: list[dict[str, Any]] = []
    for part, group_lr, params in lr_groups:
        decay = [param for param in params if id(param) not in no_decay_ids]
        no_decay = [param for param in params if id(param) in no_decay_ids]
        for suffix, members, group_decay in (("decay", decay, weight_decay), ("no_decay", no_decay, 0.0)):
            if members:
                name = f"{part}/{suffix}"
                groups.append({"params": members, "lr": group_lr, "weight_decay": group_decay, "name": name})
    return groups


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The class of a registered optimizer, imported by the dotted path its spec gives."""
    module, _, attribute = OPTIMIZERS[name].torch_class.rpartition(".")
    return getattr(importlib.import_module(module), attribute)


def build_optimizer(
    model: nn.Module,
    *,
    name: str,
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 5e-4,
    decay_norm_and_bias: bool = False,
    backbone_lr_mult: float = 1.0,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """The optimizer ``name`` of resnet_cifar.choices.optimizers (SGD with ``momentum`` and
    ``nesterov``, Adam with L2 decay in the gradient, AdamW with decoupled decay, both with
    ``betas``), given the keyword arguments its spec lists.

    Only trainable parameters are optimized; groups come from ``param_groups``.
    """
    groups = param_groups(
        model, weight_decay, decay_norm_and_bias=decay_norm_and_bias, backbone_lr_mult=backbone_lr_mult, lr=lr
    )
    if not groups:
        raise UsageError(f"{type(model).__name__} has no trainable parameters to optimize")
    options = {"momentum": momentum, "nesterov": nesterov, "betas": betas}
    chosen = {option: options[option] for option in OPTIMIZERS[name].options}
    return optimizer_class(name)(groups, lr=lr, weight_decay=weight_decay, **chosen)


def _epochs_to_iterations(epochs: float, steps_per_epoch: int) -> int:
    return round(epochs * steps_per_epoch)


@dataclass(frozen=True)
class _Span:
    """What a schedule's builder reads: the run's lengths in optimizer steps and its settings."""

    total: int
    warmup: int
    steps_per_epoch: int
    step_size: float
    gamma: float
    milestones: Sequence[float]
    min_lr_ratio: float
    rise: float  # a rising schedule's share of the run spent rising (onecycle's pct_start)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    name: str,
    epochs: int,
    steps_per_epoch: int,
    step_size: float = 30,
    gamma: float = 0.1,
    milestones: Sequence[float] = (),
    warmup_epochs: float = 0.0,
    onecycle_pct_start: float = 0.25,
    min_lr_ratio: float = 0.0,
) -> lr_scheduler.LRScheduler:
    """The learning-rate schedule ``name`` of resnet_cifar.choices.schedules, to be stepped once per
    optimizer step (see the module notes). A schedule that rises by itself (onecycle) takes its rise
    as ``onecycle_pct_start`` and no ``warmup_epochs``; the others get a linear warm-up ramp.

    Build it right after the optimizer: it reads each group's current "lr" as that group's base.
    """
    spec = SCHEDULES[name]
    # OptimConfig checked each of these once, naming its flag; the builder trusts them.
    assert epochs >= 1 and steps_per_epoch >= 1 and 0.0 <= warmup_epochs < epochs and 0.0 <= min_lr_ratio <= 1.0
    assert 0.0 < gamma <= 1.0 and all(a < b for a, b in zip(milestones, milestones[1:]))
    assert not spec.rises or (warmup_epochs == 0.0 and 0.0 < onecycle_pct_start < 1.0), "the rise is pct_start"
    span = _Span(
        total=epochs * steps_per_epoch,
        warmup=_epochs_to_iterations(warmup_epochs, steps_per_epoch),
        steps_per_epoch=steps_per_epoch,
        step_size=step_size,
        gamma=gamma,
        milestones=milestones,
        min_lr_ratio=min_lr_ratio,
        rise=onecycle_pct_start,
    )
    main = _BUILDERS[name](optimizer, span)
    if span.warmup == 0:
        return main
    ramp = lr_scheduler.LinearLR(optimizer, start_factor=1.0 / (span.warmup + 1), end_factor=1.0, total_iters=span.warmup)
    return lr_scheduler.SequentialLR(optimizer, schedulers=[ramp, main], milestones=[span.warmup])


# Each builder returns the schedule after the warm-up; it starts counting at iteration ``span.warmup``.


def _constant(optimizer: torch.optim.Optimizer, span: _Span) -> lr_scheduler.LRScheduler:
    return lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def _cosine(optimizer: torch.optim.Optimizer, span: _Span) -> lr_scheduler.LRScheduler:
    length = span.total - span.warmup
    floor = span.min_lr_ratio

    def cosine_factor(iteration: int) -> float:
        progress = min(iteration / length, 1.0)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return lr_scheduler.LambdaLR(optimizer, lr_lambda=cosine_factor)


def _step(optimizer: torch.optim.Optimizer, span: _Span) -> lr_scheduler.LRScheduler:
    interval = _epochs_to_iterations(span.step_size, span.steps_per_epoch)
    if interval <= span.warmup or interval < 1:  # whole epochs apart in the config, rounding aside
        raise UsageError(f"step size {span.step_size} epochs must be longer than the warm-up and one iteration")
    if span.warmup == 0:
        return lr_scheduler.StepLR(optimizer, step_size=interval, gamma=span.gamma)
    return _decays(optimizer, span, list(range(interval, span.total, interval)))


def _multistep(optimizer: torch.optim.Optimizer, span: _Span) -> lr_scheduler.LRScheduler:
    decay_points = [_epochs_to_iterations(epoch, span.steps_per_epoch) for epoch in span.milestones]
    if decay_points and decay_points[0] <= span.warmup:  # after it in epochs (the config), not once rounded
        raise UsageError(
            f"milestones must come after the warm-up ({span.warmup} iterations), got {list(span.milestones)}"
        )
    return _decays(optimizer, span, decay_points)


def _decays(optimizer: torch.optim.Optimizer, span: _Span, decay_points: list[int]) -> lr_scheduler.LRScheduler:
    # MultiStepLR counts from its own start, i.e. after the warm-up: shift the absolute decay points.
    return lr_scheduler.MultiStepLR(optimizer, milestones=[point - span.warmup for point in decay_points], gamma=span.gamma)


def _onecycle(optimizer: torch.optim.Optimizer, span: _Span) -> lr_scheduler.LRScheduler:
    if span.total < _ONECYCLE_MIN_STEPS:
        # OneCycleLR divides by each phase's length in steps and fails on an empty phase.
        raise UsageError(
            f"a one-cycle schedule of {span.total} steps leaves an empty warm-up or annealing phase; "
            f"train for at least {_ONECYCLE_MIN_STEPS} steps or choose another --schedule"
        )
    # A phase shorter than 1.5 steps is lengthened to 1.5, so a very short run keeps both
    # phases (OneCycleLR needs each to span more than one step) instead of failing.
    shortest = _ONECYCLE_MIN_PHASE / span.total
    pct_start = min(max(span.rise, shortest), 1.0 - shortest)
    # The final rate is initial / final_div_factor = lr / (25 * final_div_factor).
    final_div = 1.0 / (_ONECYCLE_DIV_FACTOR * span.min_lr_ratio) if span.min_lr_ratio > 0 else 1e4
    return lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=span.total,
        pct_start=pct_start,
        anneal_strategy="cos",
        cycle_momentum=False,
        div_factor=_ONECYCLE_DIV_FACTOR,
        final_div_factor=final_div,
    )


_Builder = Callable[[torch.optim.Optimizer, _Span], lr_scheduler.LRScheduler]
_BUILDERS: dict[str, _Builder] = dict(
    bound(
        {"constant": _constant, "step": _step, "multistep": _multistep, "cosine": _cosine, "onecycle": _onecycle},
        SCHEDULES,
        "engine.optim schedule builders",
    )
)
