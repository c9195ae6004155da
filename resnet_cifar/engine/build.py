"""From one TrainConfig to the parts of a run, as one value: ``build_run(cfg) -> RunParts``.

The caller builds (``trainer.build_trainer``, behind ``train()`` and the CLI) and the Trainer only
loops over what this returns; evaluation of a checkpoint (resnet_cifar.inference) rebuilds its
model with the same ``build_model`` and decides its precision with the same ``run_precision``, so
a setting means one thing everywhere.

Order matters and is the one PyTorch recommends: the device and seeds first (so the initial
weights and dropout are drawn from the run's seed), the loaders (whose batch dtype and memory
format follow the precision), the model (pretrained weights, frozen parts, SyncBatchNorm), then
``torch.compile`` and, under torchrun, DistributedDataParallel around the compiled module, and
last the optimizer, schedule, scaler, EMA, loss and the step that uses them all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.optim.swa_utils import AveragedModel

from resnet_cifar.choices.schedules import SCHEDULES
from resnet_cifar.config import PrecisionConfig, TrainConfig
from resnet_cifar.data import Loaders, build_loaders
from resnet_cifar.distributed import SINGLE_PROCESS, DistEnv, sync_batchnorm
from resnet_cifar.engine.optim import build_optimizer, build_scheduler
from resnet_cifar.engine.precision import (
    Precision,
    configure_determinism,
    make_grad_scaler,
    prepare_model,
    resolve_precision,
    select_device,
    unwrap_model,
)
from resnet_cifar.engine.step import LossFn, TrainStep, build_ema, build_loss
from resnet_cifar.models import RESNET_BUILDERS, LoadReport, freeze_backbone, load_pretrained, resize_batch


@dataclass
class RunParts:
    """Everything one run trains with. ``model`` is what the step calls (possibly a torch.compile
    wrapper, and under DDP the DistributedDataParallel wrapper around it); ``module`` is the plain
    module under both, for state dicts, EMA and evaluation (so evaluation never recompiles the
    train graph and runs no collective per batch)."""

    cfg: TrainConfig
    device: torch.device
    precision: Precision
    loaders: Loaders
    model: nn.Module
    module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    scaler: torch.amp.GradScaler
    ema: AveragedModel | None
    loss_fn: LossFn
    step: TrainStep
    # What the weights came from (LoadReport.provenance: name, file, sha256), for checkpoints.
    pretrained: dict[str, str] | None = None
    distributed: DistEnv = SINGLE_PROCESS  # the job the parts were built for

    @property
    def classes(self) -> tuple[str, ...]:
        return self.loaders.classes

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loaders.train)

    @property
    def eval_model(self) -> nn.Module:
        """What validation and test score: the EMA weights when the run keeps them."""
        return self.ema.module if self.ema is not None else self.module

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """A batch resized to --image-size before the model (a no-op without it)."""
        return resize_batch(images, self.cfg.model.image_size)


def run_precision(cfg: PrecisionConfig, device: torch.device, *, fp32_fallback: bool = False) -> Precision:
    """AMP and channels_last for ``device`` as the config says (see PrecisionConfig), checked
    against what the device can run: an AMP dtype it cannot run is an error, or with
    ``fp32_fallback`` float32 (for inference on another device than training's)."""
    bf16_ok = device.type != "cuda" or torch.cuda.is_bf16_supported()
    amp = cfg.use_amp(device.type, bf16_supported=bf16_ok)
    if fp32_fallback:
        runnable = (cfg.amp_dtype == "bf16" and bf16_ok) or (cfg.amp_dtype == "fp16" and device.type == "cuda")
        amp = amp and runnable
    channels_last = cfg.use_channels_last(device.type, amp=amp)
    return resolve_precision(device, amp=amp, amp_dtype=cfg.amp_dtype, channels_last=channels_last)


def build_model(
    cfg: TrainConfig, num_classes: int, *, load_weights: bool = True
) -> tuple[nn.Module, LoadReport | None]:
    """The configured ResNet with its pretrained weights and frozen parts; returns (model, what
    ``load_pretrained`` loaded, or None when no weights were read).

    ``load_weights=False`` builds the architecture only, for a checkpoint that brings every weight.
    """
    model_cfg = cfg.model
    model = RESNET_BUILDERS[model_cfg.depth](
        num_classes=num_classes,
        stem=model_cfg.stem,
        dropout=model_cfg.dropout,
        zero_init_residual=model_cfg.zero_init_residual,
    )
    report = None
    if load_weights and model_cfg.pretrained is not None:
        report = load_pretrained(model, model_cfg.pretrained, reinit_conv1=model_cfg.reinit_conv1)
    if model_cfg.freeze_backbone:
        freeze_backbone(model)
    return model, report


class GlobalMeanLoss:
    """The loss whose *value* is the mean over all ranks and whose *gradient* is the local loss's.

    Every rank then sees the same number, so the step's non-finite check raises on all ranks
    together (never one rank leaving while the others wait in the gradient all-reduce), and the
    logged loss is the global batch's. DDP averages the gradients itself.
    """

    def __init__(self, loss_fn: LossFn, dist: DistEnv) -> None:
        self.loss_fn = loss_fn
        self.dist = dist

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = self.loss_fn(logits, labels)
        mean = self.dist.all_reduce_sum_(loss.detach().float().clone()) / self.dist.world_size
        return loss + (mean - loss.detach())


def build_schedule(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> LRScheduler:
    """The configured schedule; a rising schedule's (one-cycle's) rise is the configured warm-up."""
    optim = cfg.optim
    rises = SCHEDULES[optim.schedule].rises
    assert optim.warmup_epochs is not None, "a resolved OptimConfig has its warm-up in epochs"
    return build_scheduler(
        optimizer,
        name=optim.schedule,
        epochs=optim.epochs,
        steps_per_epoch=steps_per_epoch,
        step_size=optim.step_size,
        gamma=optim.gamma,
        milestones=optim.milestones,
        warmup_epochs=0.0 if rises else optim.warmup_epochs,
        # The config refuses a rising schedule without a rise, so this is always positive there.
        onecycle_pct_start=optim.warmup_epochs / optim.epochs if rises else 0.0,
        min_lr_ratio=optim.min_lr_ratio,
    )


def _wrapped(model: nn.Module, precision: Precision, cfg: TrainConfig, dist: DistEnv, device: torch.device) -> nn.Module:
    model = prepare_model(model, precision, compile=cfg.precision.compile)
    if dist.is_distributed:
        # Compiled first, as PyTorch recommends; broadcasts rank 0's weights and buffers, so every
        # rank starts from the same model.
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True
        )
    return model


def build_run(cfg: TrainConfig, *, distributed: DistEnv = SINGLE_PROCESS) -> RunParts:
    """The run's parts from its config, for the process ``distributed`` describes."""
    device = distributed.place(select_device(cfg.precision.device))
    # Rank 0 draws what a single process would; the others get their own dropout masks.
    # (The initial weights are rank 0's everywhere: DDP broadcasts them.)
    configure_determinism(cfg.precision.deterministic, cfg.run.seed + distributed.rank)
    precision = run_precision(cfg.precision, device)
    # Rank 0 first: it fills the decoded-image cache that the other ranks then read.
    with distributed.main_first():
        loaders = build_loaders(
            cfg.data,
            device,
            # Batches arrive in the autocast dtype: half the bytes to move, and the first conv
            # would cast them anyway.
            dtype=precision.amp_dtype or torch.float32,
            channels_last=precision.channels_last,
            shard_id=distributed.rank,
            num_shards=distributed.world_size,
        )
    plain, loaded = build_model(cfg, len(loaders.classes))
    if cfg.model.sync_bn:
        plain = sync_batchnorm(plain, distributed, device)
    model = _wrapped(plain, precision, cfg, distributed, device)
    module = unwrap_model(model)
    optim = cfg.optim
    assert optim.lr is not None, "a resolved OptimConfig has its learning rate"
    optimizer = build_optimizer(
        module,
        name=optim.optimizer,
        lr=optim.lr,
        momentum=optim.momentum,
        nesterov=optim.nesterov,
        weight_decay=optim.weight_decay,
        decay_norm_and_bias=optim.decay_norm_and_bias,
        backbone_lr_mult=cfg.model.backbone_lr_mult,
    )
    scheduler = build_schedule(cfg, optimizer, len(loaders.train))
    scaler = make_grad_scaler(precision)
    ema = build_ema(module, optim.ema_decay) if optim.ema else None
    loss_fn = build_loss(optim.label_smoothing)
    image_size = cfg.model.image_size
    step = TrainStep(
        model,
        optimizer,
        GlobalMeanLoss(loss_fn, distributed) if distributed.is_distributed else loss_fn,
        precision=precision,
        scaler=scaler,
        scheduler=scheduler,
        grad_clip=optim.grad_clip,
        ema=ema,
        transform=(lambda images: resize_batch(images, image_size)) if image_size is not None else None,
    )
    return RunParts(
        cfg=cfg, device=device, precision=precision, loaders=loaders, model=model, module=module,
        optimizer=optimizer, scheduler=scheduler, scaler=scaler, ema=ema, loss_fn=loss_fn, step=step,
        pretrained=None if loaded is None else loaded.provenance(), distributed=distributed,
    )  # fmt: skip
