"""Helpers the test modules share (import them as ``from helpers import ...``: pytest puts tests/ on
the path, as conftest.py's folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from resnet_cifar.engine.checkpointer import Checkpointer


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` the way every checkpoint is written: the run folder's
    Checkpointer (which stamps the format unless ``payload`` names one), in the background, waited
    on, so its failure is raised here."""
    checkpointer = Checkpointer(Path(path).parent)
    checkpointer.save([Path(path).name], payload)
    checkpointer.wait()


def save_random_resnet18(path: Path, data_root: Path, *, epoch: int) -> None:
    """best.pt-like checkpoint at ``path``: a ResNet-18 (imagenet stem) with random weights and
    batch-norm statistics, so predictions and confidences vary, trained "on" ``data_root``."""
    import torch

    from resnet_cifar.config import resolve_config
    from resnet_cifar.data.types import CIFAR10_CLASSES
    from resnet_cifar.models import resnet18

    cfg = resolve_config(
        preset="smoke", overrides={"data.data_dir": str(data_root), "model.stem": "imagenet", "model.depth": 18}
    )
    torch.manual_seed(0)
    model = resnet18(num_classes=10, stem="imagenet")
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    payload = {"format": 1, "model": model.state_dict(), "ema": None, "classes": list(CIFAR10_CLASSES),
               "config": cfg.to_dict(), "epoch": epoch}  # fmt: skip
    save_checkpoint(path, payload)
