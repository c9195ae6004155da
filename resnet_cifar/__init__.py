"""resnet-cifar: a hand-written ResNet-50 trained and evaluated on CIFAR-10.

The package never imports torchvision, and imports DALI only when a DALI loader is asked for.
"""

from resnet_cifar.errors import DataError, ResnetCifarError, UsageError
from resnet_cifar.models import (
    PRETRAINED_FILES,
    BasicBlock,
    Bottleneck,
    LoadReport,
    ResNet,
    finetune_param_groups,
    freeze_backbone,
    load_pretrained,
    resize_batch,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
    set_train_mode,
)

__version__ = "0.1.0"

__all__ = [
    "PRETRAINED_FILES",
    "BasicBlock",
    "Bottleneck",
    "DataError",
    "LoadReport",
    "ResNet",
    "ResnetCifarError",
    "UsageError",
    "__version__",
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
]
