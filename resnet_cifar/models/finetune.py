"""Pieces for fine-tuning a pretrained ResNet; the training engine wires them to CLI flags.

- ``resize_batch``  (``--image-size N``): bilinear upsampling of a batch on its device, applied to
  batches before the model rather than as a wrapper module, so the model's state-dict keys stay
  those of a plain ResNet (checkpoints load into ``resnet50()`` directly).
- ``freeze_backbone`` + ``set_train_mode`` (``--freeze-backbone``): train only the top layer (``fc``).
- ``finetune_param_groups`` (``--backbone-lr-mult x``): a lower learning rate for the backbone.

Batch-norm choice for a frozen backbone: its batch-norm layers stay in eval mode while training,
so they normalise with the pretrained running statistics and never update them. Freezing only
the affine weights would still let the running statistics drift towards CIFAR batches, so the
"frozen" features would change under the top layer during training and between train and eval.
Because ``model.train()`` switches every layer back to training mode, the engine calls
``set_train_mode(model, frozen_backbone=True)`` instead of ``model.train()``.
"""

from __future__ import annotations

import math
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from resnet_cifar.errors import UsageError


def resize_batch(images: Tensor, image_size: int | None) -> Tensor:
    """Bilinearly resize a float batch ``[N, C, H, W]`` to ``image_size`` pixels square, on its device.

    ``None`` or the batch's own size returns the batch unchanged (no copy). Run it after
    normalisation and before the model, inside autocast if the engine uses it.
    """
    if image_size is None:
        return images
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise UsageError(f"image size must be a positive integer, got {image_size!r}")
    if images.ndim != 4:
        raise UsageError(f"resize_batch expects a batch [N, C, H, W], got shape {tuple(images.shape)}")
    if images.shape[-2:] == (image_size, image_size):
        return images
    # align_corners=False is the convention of torchvision's Resize on tensors.
    return F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)


def _top_layer(model: nn.Module) -> nn.Module:
    top = getattr(model, "fc", None)
    if not isinstance(top, nn.Module):
        raise UsageError(f"{type(model).__name__} has no 'fc' top layer to fine-tune")
    return top


def freeze_backbone(model: nn.Module) -> list[str]:
    """Make only the top layer (``fc``) trainable and put the backbone's batch norms in eval mode.

    Returns the names of the parameters that stay trainable.
    """
    top = _top_layer(model)
    top_params = {id(param) for param in top.parameters()}
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(id(param) in top_params)
        if param.requires_grad:
            trainable.append(name)
    _backbone_batch_norms_to_eval(model, top)
    return trainable


def set_train_mode(model: nn.Module, *, frozen_backbone: bool) -> nn.Module:
    """``model.train()``, keeping a frozen backbone's batch norms in eval mode (see module notes)."""
    model.train()
    if frozen_backbone:
        _backbone_batch_norms_to_eval(model, _top_layer(model))
    return model


def _backbone_batch_norms_to_eval(model: nn.Module, top: nn.Module) -> None:
    top_modules = {id(module) for module in top.modules()}
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and id(module) not in top_modules:
            module.eval()


def finetune_param_groups(model: nn.Module, lr: float, backbone_lr_mult: float = 1.0) -> list[dict[str, Any]]:
    """Optimizer parameter groups: the backbone at ``lr * backbone_lr_mult``, the top layer at ``lr``.

    Returns ``[{"params": backbone, "lr": lr * backbone_lr_mult}, {"params": top, "lr": lr}]``.
    Frozen parameters (``requires_grad`` False) are left out, and a group left empty is omitted,
    so after ``freeze_backbone`` only the top layer's group remains. The config checked both rates.
    """
    assert math.isfinite(lr) and lr > 0, f"learning rate {lr!r}"
    assert math.isfinite(backbone_lr_mult) and backbone_lr_mult >= 0, f"backbone_lr_mult {backbone_lr_mult!r}"
    top_params = {id(param) for param in _top_layer(model).parameters()}
    backbone: list[nn.Parameter] = []
    top: list[nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (top if id(param) in top_params else backbone).append(param)
    groups: list[dict[str, Any]] = []
    if backbone:
        groups.append({"params": backbone, "lr": lr * backbone_lr_mult})
    if top:
        groups.append({"params": top, "lr": lr})
    return groups
