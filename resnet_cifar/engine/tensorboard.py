"""TensorBoard as a consumer of the trainer's events: scalars written through torch.utils.tensorboard.

The trainer knows nothing about it: a caller (the CLI's `train --tensorboard`, on rank 0 only)
passes a :class:`TensorBoardLogger` the same events the progress renderer gets. Scalars, with the
global step (steps since the run began, resumes included) or the epoch as their step:

    train/loss, train/lr, train/images_per_sec      every ``every_n_steps`` steps (and each epoch's last)
    epoch/train_loss, epoch/train_acc, epoch/val_loss, epoch/val_acc, epoch/lr, epoch/images_per_sec

The ``tensorboard`` package is an optional extra (``pip install "resnet-cifar[tensorboard]"``);
:func:`require_tensorboard` turns its absence into a UsageError naming that command.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from resnet_cifar.engine.trainer import EpochFinished, Event, StepFinished
from resnet_cifar.errors import UsageError
from resnet_cifar.files import UnwritableFolder

__all__ = ["DEFAULT_EVERY_N_STEPS", "TENSORBOARD_DIR", "TensorBoardLogger", "require_tensorboard"]

TENSORBOARD_DIR = "tensorboard"
# The default recipe trains 87 steps an epoch (45,000 images, batch 512): about 9 points per epoch,
# smooth enough to read, and rare enough that writing them never shows in the step time.
DEFAULT_EVERY_N_STEPS = 10
INSTALL_HINT = 'pip install "resnet-cifar[tensorboard]"'


def require_tensorboard() -> Any:
    """torch.utils.tensorboard's SummaryWriter class; UsageError (exit 2) when the package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UsageError(f"--tensorboard needs the tensorboard package: {INSTALL_HINT}") from None
    return SummaryWriter


def usable_log_dir(log_dir: Path) -> None:
    """Make ``log_dir`` (a folder TensorBoard can write into) or say in one line why it cannot be:
    a file or a dangling link in its place, or a folder that cannot be written into (exit 2)."""
    if log_dir.is_symlink() and not log_dir.exists():
        raise UsageError(f"{log_dir}: a dangling link where the TensorBoard folder goes; remove it or use another --out")
    if log_dir.exists() and not log_dir.is_dir():
        raise UsageError(f"{log_dir}: a file where the TensorBoard folder goes; remove it or use another --out")
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=log_dir):
            pass  # the writer creates its event file here: can it?
    except OSError as error:
        raise UnwritableFolder(log_dir, error) from None


class TensorBoardLogger:
    """Writes the trainer's events as TensorBoard scalars into ``log_dir``; call :meth:`close` at the end."""

    def __init__(self, log_dir: Path, *, every_n_steps: int = DEFAULT_EVERY_N_STEPS) -> None:
        if every_n_steps < 1:
            raise UsageError(f"every_n_steps must be at least 1, got {every_n_steps}")
        writer_class = require_tensorboard()
        self.log_dir = Path(log_dir)
        self.every_n_steps = every_n_steps
        usable_log_dir(self.log_dir)
        try:
            self.writer = writer_class(log_dir=str(self.log_dir))
        except OSError as error:
            raise UnwritableFolder(self.log_dir, error) from None

    def __call__(self, event: Event) -> None:
        if isinstance(event, StepFinished):
            # Steps are counted from the start of the run, so a resumed run continues its curves.
            global_step = (event.epoch - 1) * event.steps + event.step
            if global_step % self.every_n_steps == 0 or event.step == event.steps:
                self.writer.add_scalar("train/loss", event.loss, global_step)
                self.writer.add_scalar("train/lr", event.lr, global_step)
                self.writer.add_scalar("train/images_per_sec", event.images_per_sec, global_step)
        elif isinstance(event, EpochFinished):
            record = event.record
            for name in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_sec"):
                self.writer.add_scalar(f"epoch/{name}", getattr(record, name), record.epoch)
            # Each epoch is on disk when it ends, so a crashed or watched run shows it at once.
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()
