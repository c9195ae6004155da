"""resnet-cifar: a hand-written ResNet-50 trained and evaluated on CIFAR-10.

The package never imports torchvision, and imports DALI only when a DALI loader is asked for.
``import resnet_cifar`` imports no torch either: the models below are imported on first use
(``resnet_cifar.resnet50``), so the command line and the torch-free modules (config, data
sources, download) start without it.
"""

from __future__ import annotations

from typing import Any

from resnet_cifar.errors import DataError, ResnetCifarError, UsageError

__version__ = "0.1.0"

# Re-exported from resnet_cifar.models, which imports torch: looked up there on first use.
_MODEL_NAMES = (
    "PRETRAINED_FILES",
    "BasicBlock",
    "Bottleneck",
    "LoadReport",
    "ResNet",
    "finetune_param_groups",
    "freeze_backbone",
    "load_pretrained",
    "resize_batch",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "set_train_mode",
)

__all__ = ["DataError", "ResnetCifarError", "UsageError", "__version__", *_MODEL_NAMES]


def __getattr__(name: str) -> Any:
    """A model name, imported (with torch) when first asked for (PEP 562)."""
    if name not in _MODEL_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from resnet_cifar import models

    value = getattr(models, name)
    globals()[name] = value  # the next lookup finds it without this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODEL_NAMES})
