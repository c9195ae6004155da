"""Temperature scaling (Guo et al. 2017, *On Calibration of Modern Neural Networks*): one scalar T
that divides the logits, fitted on held-out data by minimising the negative log-likelihood.

Dividing every logit by the same positive T never changes which class is largest, so accuracy
and the confusion matrix stay as they were; only the confidences move (T > 1 softens an
over-confident model). The fit is the paper's: LBFGS on the NLL of the validation split's logits,
here over log T (so T stays positive without a constraint), in float64, from T = 1. Callers fit
on the validation split only; the test split never chooses T.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from resnet_cifar.errors import DataError
from resnet_cifar.evaluation.metrics import Calibration, calibration_totals

__all__ = ["CalibrationFigures", "TemperatureFit", "calibration_figures", "fit_temperature"]

LBFGS_STEPS = 50  # LBFGS iterations (one closure call each, more inside its line search)


@dataclass(frozen=True)
class CalibrationFigures:
    """How well probabilities ``softmax(logits / T)`` fit the labels: the NLL (plain cross-entropy,
    no label smoothing) and the calibration (ECE, reliability bins)."""

    nll: float
    calibration: Calibration

    def to_dict(self) -> dict[str, Any]:
        return {
            "nll": self.nll,
            "ece": self.calibration.ece,
            "mean_confidence": self.calibration.mean_confidence,
            "calibration": self.calibration.to_dict(),
        }


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature and the figures on the data it was fitted on, before and after."""

    temperature: float
    count: int  # samples it was fitted on
    before: CalibrationFigures  # T = 1
    after: CalibrationFigures  # T = temperature

    def to_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "count": self.count,
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
        }


def calibration_figures(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> CalibrationFigures:
    """NLL and calibration of ``softmax(logits / temperature)`` against ``labels``."""
    scaled = logits.detach().to(torch.float64) / temperature
    labels = labels.detach().to(scaled.device)
    nll = float(F.cross_entropy(scaled, labels))
    probabilities = torch.softmax(scaled, dim=1)
    confidences, predictions = probabilities.max(dim=1)
    totals = calibration_totals(confidences, predictions == labels)
    return CalibrationFigures(nll=nll, calibration=Calibration.from_totals(totals))


def fit_temperature(logits: Tensor, labels: Tensor) -> TemperatureFit:
    """The temperature that minimises the NLL of ``logits`` ``[N, C]`` against ``labels`` ``[N]``."""
    if logits.ndim != 2 or labels.ndim != 1 or logits.shape[0] != labels.shape[0] or logits.shape[0] == 0:
        raise DataError(f"fitting a temperature needs [N, C] logits and N labels, got {tuple(logits.shape)} and {tuple(labels.shape)}")
    data = logits.detach().to("cpu", torch.float64)
    targets = labels.detach().to("cpu")
    if not torch.isfinite(data).all():
        raise DataError("the model's logits are not all finite: no temperature can be fitted")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=LBFGS_STEPS, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(data / log_t.exp(), targets)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not math.isfinite(temperature) or temperature <= 0:
        raise DataError(f"the temperature fit diverged (T = {temperature})")
    before = calibration_figures(data, targets)
    after = calibration_figures(data, targets, temperature)
    if after.nll > before.nll:  # LBFGS from T = 1 never ends worse than T = 1; keep the promise anyway
        temperature, after = 1.0, before
    return TemperatureFit(temperature=temperature, count=int(targets.numel()), before=before, after=after)
