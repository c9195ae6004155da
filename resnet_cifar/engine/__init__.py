"""Training engine building blocks: precision, optimizers and schedules, the training step,
early stopping and checkpoints. ``build_run`` (engine/build.py) maps the frozen config onto these
plain-keyword APIs and the Trainer loops over what it built; the named choices they build
(optimizers, schedules, monitors) come from resnet_cifar.choices."""

from resnet_cifar.engine.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state
from resnet_cifar.engine.early_stopping import EarlyStopping
from resnet_cifar.engine.optim import build_optimizer, build_scheduler, param_groups
from resnet_cifar.engine.precision import (
    AMP_DTYPES,
    Precision,
    configure_determinism,
    make_grad_scaler,
    prepare_model,
    resolve_precision,
    select_device,
    unwrap_model,
)
from resnet_cifar.engine.step import NonFiniteLossError, StepOutput, TrainStep, build_ema, build_loss

__all__ = [
    "AMP_DTYPES",
    "EarlyStopping",
    "NonFiniteLossError",
    "Precision",
    "StepOutput",
    "TrainStep",
    "build_ema",
    "build_loss",
    "build_optimizer",
    "build_scheduler",
    "capture_rng_state",
    "configure_determinism",
    "load_checkpoint",
    "make_grad_scaler",
    "param_groups",
    "prepare_model",
    "resolve_precision",
    "restore_rng_state",
    "select_device",
    "unwrap_model",
]
