"""Where the network looks: Grad-CAM overlays for the gallery of mistakes (the optional ``[explain]`` extra).

Grad-CAM (Selvaraju et al., 2017) by captum's ``LayerGradCam`` on the model's last stage
(``layer4``): the ReLU of the sum of that stage's activation maps, each weighted by the mean
gradient of the class score over it, upsampled bilinearly to the image. captum is imported only
here and only when asked; without it the gallery is as before and says how to get the overlays.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["EXPLAIN_HINT", "explain_available", "gradcam", "heat_overlay", "last_stage"]

EXPLAIN_HINT = 'pip install "resnet-cifar[explain]"'
OVERLAY_ALPHA = 0.5  # share of the heat colour in an overlay pixel


def explain_available() -> bool:
    return importlib.util.find_spec("captum") is not None


def last_stage(model: nn.Module) -> nn.Module:
    """The module Grad-CAM reads: the ResNet's last stage."""
    return model.get_submodule("layer4")


def gradcam(model: nn.Module, images: Tensor, targets: Sequence[int]) -> Tensor:
    """float32 ``[N, H, W]`` Grad-CAM maps of ``images`` (normalized, as the model takes them) for
    the class ``targets[i]`` of each, from the last stage, upsampled to the images' size."""
    from captum.attr import LayerAttribution, LayerGradCam

    explainer = LayerGradCam(model, last_stage(model))
    with torch.enable_grad():
        maps = explainer.attribute(images.float(), target=list(targets), relu_attributions=True)
    upsampled = LayerAttribution.interpolate(maps, tuple(images.shape[-2:]), interpolate_mode="bilinear")
    return upsampled[:, 0].detach().float()


def heat_overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """uint8 ``[H, W, 3]``: ``image`` blended with ``heat`` (scaled to its maximum) in matplotlib's jet colours."""
    from matplotlib import colormaps

    peak = float(heat.max())
    scaled = heat / peak if peak > 0 else np.zeros_like(heat)
    colours = colormaps["jet"](scaled)[..., :3] * 255
    blended = (1 - OVERLAY_ALPHA) * image.astype(np.float64) + OVERLAY_ALPHA * colours
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)
