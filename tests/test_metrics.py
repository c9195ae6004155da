"""Confusion matrix and classification metrics on hand-made cases with the answers worked out by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch

from resnet_cifar.errors import DataError
from resnet_cifar.evaluation import ClassificationReport, ConfusionMeter, confusion_matrix

# Ten samples, three classes. Pairs (true, predicted):
# (0,0) (0,1) (0,0) (1,1) (1,2) (2,2) (2,2) (2,0) (2,2) (0,2)
TARGETS = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 0])
PREDS = torch.tensor([0, 1, 0, 1, 2, 2, 2, 0, 2, 2])
EXPECTED = torch.tensor(
    [
        [2, 1, 1],  # class 0: 4 samples, 2 right, one taken for 1, one for 2
        [0, 1, 1],  # class 1: 2 samples, 1 right
        [1, 0, 3],  # class 2: 4 samples, 3 right
    ]
)


def test_confusion_matrix_matches_the_hand_count() -> None:
    matrix = confusion_matrix(TARGETS, PREDS, 3)
    assert matrix.dtype == torch.int64
    assert torch.equal(matrix, EXPECTED)
    assert int(matrix.sum()) == TARGETS.numel()


def test_confusion_matrix_rows_are_true_classes() -> None:
    # One sample of class 2 predicted as 0 lands in row 2, column 0 and nowhere else.
    matrix = confusion_matrix(torch.tensor([2]), torch.tensor([0]), 3)
    assert matrix[2, 0] == 1
    assert int(matrix.sum()) == 1


def test_confusion_matrix_accepts_other_integer_dtypes_and_empty_input() -> None:
    matrix = confusion_matrix(TARGETS.to(torch.int32), PREDS.to(torch.uint8), 3)
    assert torch.equal(matrix, EXPECTED)
    empty = confusion_matrix(torch.tensor([], dtype=torch.int64), torch.tensor([], dtype=torch.int64), 4)
    assert torch.equal(empty, torch.zeros(4, 4, dtype=torch.int64))


@pytest.mark.parametrize(
    ("targets", "preds", "message"),
    [
        ([0, 3], [0, 0], "target label 3"),
        ([0, -1], [0, 0], "target label -1"),
        # (0, 3) would flatten to cell (1, 0) of a 3-class matrix: it must be rejected, not miscounted.
        ([0, 0], [0, 3], "prediction 3"),
    ],
)
def test_confusion_matrix_rejects_ids_outside_the_class_range(targets, preds, message) -> None:
    with pytest.raises(DataError, match=message):
        confusion_matrix(torch.tensor(targets), torch.tensor(preds), 3)


def test_confusion_matrix_rejects_malformed_input() -> None:
    with pytest.raises(DataError, match="integer"):
        confusion_matrix(TARGETS.float(), PREDS, 3)
    with pytest.raises(DataError, match="differ in length"):
        confusion_matrix(TARGETS, PREDS[:-1], 3)
    with pytest.raises(DataError, match="1-D"):
        confusion_matrix(TARGETS.reshape(2, 5), PREDS.reshape(2, 5), 3)
    for bad in (0, -2, True, 2.0):
        with pytest.raises(ValueError, match="num_classes"):
            confusion_matrix(TARGETS, PREDS, bad)


def test_report_metrics_match_the_hand_computation() -> None:
    report = ClassificationReport.from_confusion(EXPECTED)
    assert report.count == 10
    assert report.accuracy == pytest.approx(6 / 10)  # trace / N
    # precision = TP / column sum, recall = TP / row sum, F1 = 2 TP / (row sum + column sum)
    assert report.precision == pytest.approx((2 / 3, 1 / 2, 3 / 5))
    assert report.recall == pytest.approx((2 / 4, 1 / 2, 3 / 4))
    assert report.f1 == pytest.approx((4 / 7, 1 / 2, 6 / 9))
    assert report.support == (4, 2, 4)
    assert report.macro_precision == pytest.approx((2 / 3 + 1 / 2 + 3 / 5) / 3)
    assert report.macro_recall == pytest.approx((2 / 4 + 1 / 2 + 3 / 4) / 3)
    assert report.macro_f1 == pytest.approx((4 / 7 + 1 / 2 + 6 / 9) / 3)
    # F1 is the harmonic mean of precision and recall.
    for precision, recall, f1 in zip(report.precision, report.recall, report.f1):
        assert f1 == pytest.approx(2 * precision * recall / (precision + recall))


def test_zero_support_and_never_predicted_classes_are_zero_not_nan() -> None:
    # Class 2 never occurs but is predicted once; class 3 neither occurs nor is predicted.
    matrix = confusion_matrix(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 2, 1, 1]), 4)
    report = ClassificationReport.from_confusion(matrix)
    assert report.support == (2, 2, 0, 0)
    assert report.precision == pytest.approx((1.0, 1.0, 0.0, 0.0))
    assert report.recall == pytest.approx((0.5, 1.0, 0.0, 0.0))
    assert report.f1 == pytest.approx((2 / 3, 1.0, 0.0, 0.0))
    assert not any(math.isnan(value) for value in report.precision + report.recall + report.f1)
    # Macro averages cover the classes seen in the data or the predictions (0, 1, 2), not class 3.
    assert report.macro_recall == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert report.macro_f1 == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)


def test_report_of_an_empty_matrix_is_all_zero() -> None:
    report = ClassificationReport.from_confusion(torch.zeros(3, 3, dtype=torch.int64))
    assert report.count == 0
    assert report.accuracy == 0.0
    assert report.macro_f1 == 0.0


def test_report_rejects_a_matrix_that_is_not_one() -> None:
    with pytest.raises(ValueError, match="square"):
        ClassificationReport.from_confusion(torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="integer"):
        ClassificationReport.from_confusion(torch.eye(3))
    with pytest.raises(ValueError, match="negative"):
        ClassificationReport.from_confusion(-torch.eye(3, dtype=torch.int64))


def test_to_dict_is_plain_json_keyed_by_class_name() -> None:
    report = ClassificationReport.from_confusion(EXPECTED)
    payload = report.to_dict(["cat", "dog", "frog"])
    # Strict JSON: fails on tensors, numpy scalars or NaN.
    decoded = json.loads(json.dumps(payload, allow_nan=False))
    assert decoded == payload
    assert payload["accuracy"] == pytest.approx(6 / 10)
    assert payload["count"] == 10
    assert payload["confusion_matrix"] == EXPECTED.tolist()
    assert payload["per_class"]["frog"] == pytest.approx(
        {"precision": 3 / 5, "recall": 3 / 4, "f1": 6 / 9, "support": 4}
    )
    assert type(payload["per_class"]["frog"]["support"]) is int
    assert payload["macro"]["f1"] == pytest.approx(report.macro_f1)
    assert list(report.to_dict()["per_class"]) == ["0", "1", "2"]
    with pytest.raises(ValueError, match="2 class names"):
        report.to_dict(["cat", "dog"])
    with pytest.raises(ValueError, match="unique"):
        report.to_dict(["cat", "cat", "dog"])


def test_meter_streaming_equals_the_whole_matrix_and_weights_the_loss_per_sample() -> None:
    meter = ConfusionMeter(3)
    # Uneven batches: 4, 4, 2. The batch mean losses must be weighted by batch size.
    batches = [(slice(0, 4), 1.0), (slice(4, 8), 2.0), (slice(8, 10), 4.0)]
    for part, mean_loss in batches:
        meter.update(PREDS[part], TARGETS[part], torch.tensor(mean_loss))
    assert torch.equal(meter.matrix, EXPECTED)
    assert meter.count == 10
    assert meter.mean_loss == pytest.approx((4 * 1.0 + 4 * 2.0 + 2 * 4.0) / 10)
    assert meter.report() == ClassificationReport.from_confusion(EXPECTED)


def test_meter_without_losses_has_no_mean_loss() -> None:
    meter = ConfusionMeter(3)
    meter.update(PREDS, TARGETS)
    assert meter.mean_loss is None
    assert meter.report().accuracy == pytest.approx(0.6)


def test_meter_state_sums_exactly_across_shards() -> None:
    # What a distributed all_reduce does: sum the raw state of each shard, then compute metrics once.
    left, right = ConfusionMeter(3), ConfusionMeter(3)
    left.update(PREDS[:3], TARGETS[:3], 0.5)
    right.update(PREDS[3:], TARGETS[3:], 1.5)
    merged = ConfusionMeter(3)
    merged.matrix += left.matrix + right.matrix
    merged.loss_totals += left.loss_totals + right.loss_totals
    assert torch.equal(merged.matrix, EXPECTED)
    assert merged.mean_loss == pytest.approx((3 * 0.5 + 7 * 1.5) / 10)
    # Averaging the shards' accuracies instead would be wrong here: (2/3 + 4/7) / 2 != 6/10.
    assert merged.report().accuracy == pytest.approx(0.6)


def test_meter_all_reduce_runs_in_a_one_process_group(tmp_path) -> None:
    import torch.distributed as dist

    meter = ConfusionMeter(3)
    meter.update(PREDS, TARGETS, 2.0)
    meter.all_reduce_()  # no process group: a no-op
    assert torch.equal(meter.matrix, EXPECTED)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        meter.all_reduce_()
    finally:
        dist.destroy_process_group()
    assert torch.equal(meter.matrix, EXPECTED)
    assert meter.mean_loss == pytest.approx(2.0)
