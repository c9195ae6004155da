"""Expected calibration error and mean confidence: hand-made predictions, bins, additivity, evaluate()."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from resnet_cifar.evaluation import evaluate
from resnet_cifar.evaluation.metrics import CALIBRATION_BINS, Calibration, ConfusionMeter, calibration_totals


def calibration_of(confidences: list[float], correct: list[bool]) -> Calibration:
    return Calibration.from_totals(calibration_totals(torch.tensor(confidences, dtype=torch.float64), torch.tensor(correct)))


def test_ece_of_hand_made_predictions() -> None:
    # Four at 0.9 with three right (gap 0.15 each), two at 0.3 with one right (gap 0.2 each):
    # ECE = (4 * 0.15 + 2 * 0.2) / 6 = 1/6; mean confidence = (4 * 0.9 + 2 * 0.3) / 6 = 0.7.
    calibration = calibration_of([0.9, 0.9, 0.9, 0.9, 0.3, 0.3], [True, True, True, False, False, True])
    assert calibration.ece == pytest.approx(1 / 6, abs=1e-12)
    assert calibration.mean_confidence == pytest.approx(0.7, abs=1e-12)
    assert calibration.num_bins == CALIBRATION_BINS == 15
    # 0.9 lies in (13/15, 14/15], 0.3 in (4/15, 5/15].
    assert calibration.counts[13] == 4 and calibration.counts[4] == 2 and sum(calibration.counts) == 6
    assert calibration.accuracy[13] == 0.75 and calibration.confidence[13] == pytest.approx(0.9)
    assert calibration.accuracy[4] == 0.5 and calibration.counts[0] == 0 and calibration.accuracy[0] == 0.0


def test_gaps_in_opposite_directions_do_not_cancel_across_bins() -> None:
    # Overall the mean confidence (0.5) equals the accuracy (0.5), yet each bin is off by 0.4.
    calibration = calibration_of([0.9] * 5 + [0.1] * 5, [True] * 5 + [False] * 5)
    assert calibration.mean_confidence == pytest.approx(0.5)
    assert calibration.ece == pytest.approx(0.1)
    perfect = calibration_of([0.75] * 4, [True, True, True, False])
    assert perfect.ece == pytest.approx(0.0, abs=1e-12)


def test_bin_edges_one_and_zero() -> None:
    calibration = calibration_of([1.0, 0.0, 0.5], [True, False, True])
    assert calibration.counts[14] == 1  # a confidence of 1 is in the last bin, (14/15, 1]
    assert calibration.counts[0] == 1  # 0 joins the first bin rather than falling outside
    assert calibration.counts[7] == 1  # 0.5 is in (7/15, 8/15]


def test_totals_add_up_exactly_over_batches() -> None:
    generator = torch.Generator().manual_seed(0)
    confidences = torch.rand(1000, generator=generator, dtype=torch.float64)
    correct = torch.rand(1000, generator=generator) < confidences
    whole = calibration_totals(confidences, correct)
    parts = sum(calibration_totals(confidences[i : i + 128], correct[i : i + 128]) for i in range(0, 1000, 128))
    assert torch.allclose(whole, parts, rtol=0, atol=1e-9)
    # And the ECE equals the textbook formula over the same bins, computed independently.
    ece = 0.0
    for m in range(15):
        low, high = m / 15, (m + 1) / 15
        mask = (confidences > low) & (confidences <= high)
        if mask.any():
            share = mask.double().mean()
            ece += float(share * (correct[mask].double().mean() - confidences[mask].mean()).abs())
    assert Calibration.from_totals(whole).ece == pytest.approx(ece, abs=1e-12)


def test_meter_without_confidences_has_no_calibration() -> None:
    meter = ConfusionMeter(3)
    meter.update(torch.tensor([0, 1]), torch.tensor([0, 2]))
    assert meter.calibration() is None


class TableModel(nn.Module):
    """Returns fixed logits: image i (its first pixel holds i) gets row i of the table."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table
        self.anchor = nn.Parameter(torch.zeros(()))  # evaluate() asks the model for its device

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.table[images[:, 0, 0, 0].long()]


def test_evaluate_reports_ece_mean_confidence_and_keeps_predictions_in_order() -> None:
    logits = torch.tensor(
        [[4.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [3.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 6.0]]
    )
    labels = torch.tensor([0, 1, 0, 1, 0, 2])
    images = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 3, 2, 2).contiguous()
    batches = [(images[:4], labels[:4]), (images[4:], labels[4:])]
    result = evaluate(TableModel(logits), batches, num_classes=3, keep_predictions=True)

    probabilities = torch.softmax(logits, dim=1).double()
    confidences, predictions = probabilities.max(dim=1)
    assert torch.equal(result.predictions, predictions)
    assert torch.allclose(result.confidences.double(), confidences, atol=1e-6)
    hits = (predictions == labels).double()
    ece = 0.0
    for m in range(15):
        mask = (confidences > m / 15) & (confidences <= (m + 1) / 15)
        if mask.any():
            ece += float(mask.double().sum() / 6 * (hits[mask].mean() - confidences[mask].mean()).abs())
    payload = result.to_dict(["a", "b", "c"])
    assert payload["ece"] == pytest.approx(ece, abs=1e-6)
    assert payload["mean_confidence"] == pytest.approx(float(confidences.mean()), abs=1e-6)
    assert sum(payload["calibration"]["count"]) == 6 and payload["calibration"]["bins"] == 15
    assert math.isclose(payload["accuracy"], float(hits.mean()))
    # Without keep_predictions, nothing per image is kept, but calibration still is.
    plain = evaluate(TableModel(logits), batches, num_classes=3)
    assert plain.predictions is None and plain.confidences is None
    assert plain.calibration == result.calibration
