"""Models: the hand-written ResNet family and pretrained-weight loading."""

from resnet_cifar.models.finetune import finetune_param_groups, freeze_backbone, resize_batch, set_train_mode
from resnet_cifar.models.pretrained import (
    PRETRAINED_FILES,
    CachedWeights,
    LoadReport,
    load_pretrained,
    offline_weights,
    weights_cache_dir,
)
from resnet_cifar.models.resnet import (
    RESNET_BUILDERS,
    BasicBlock,
    Bottleneck,
    ResNet,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
)

__all__ = [
    "PRETRAINED_FILES",
    "RESNET_BUILDERS",
    "BasicBlock",
    "Bottleneck",
    "CachedWeights",
    "LoadReport",
    "ResNet",
    "finetune_param_groups",
    "freeze_backbone",
    "load_pretrained",
    "offline_weights",
    "resize_batch",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "set_train_mode",
    "weights_cache_dir",
]
