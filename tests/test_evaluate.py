"""evaluate(): one pass over a loader with tiny deterministic models whose answers are computed directly."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnet_cifar.errors import DataError, UsageError
from resnet_cifar.evaluation import ClassificationReport, confusion_matrix, evaluate, predict_logits
from resnet_cifar.models import resize_batch

NUM_CLASSES = 3
NUM_SAMPLES = 23  # not a multiple of the batch size
BATCH_SIZE = 5


def make_data(seed: int = 0, size: int = 4) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(NUM_SAMPLES, 3, size, size, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (NUM_SAMPLES,), generator=generator)
    return images, labels


def batches(images: Tensor, labels: Tensor, batch_size: int = BATCH_SIZE) -> list[tuple[Tensor, Tensor]]:
    return [(images[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, len(labels), batch_size)]


class LinearClassifier(nn.Module):
    """A fixed linear layer on the flattened image, with a dropout to make train/eval mode matter."""

    def __init__(self, size: int = 4, seed: int = 1) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.dropout = nn.Dropout(0.5)
        self.linear = nn.Linear(3 * size * size, NUM_CLASSES)
        self.seen_training: list[bool] = []
        self.seen_inference_mode: list[bool] = []

    def forward(self, images: Tensor) -> Tensor:
        self.seen_training.append(self.training)
        self.seen_inference_mode.append(torch.is_inference_mode_enabled())
        return self.linear(self.dropout(images.flatten(1)))


class LeftRightClassifier(nn.Module):
    """Class 0 scores the left half's mean, class 1 the right half's: a mirror swaps the two."""

    def forward(self, images: Tensor) -> Tensor:
        width = images.shape[-1]
        left = images[..., : width // 2].mean(dim=(1, 2, 3))
        right = images[..., width // 2 :].mean(dim=(1, 2, 3))
        return torch.stack([left, right, torch.full_like(left, -10.0)], dim=1)


def direct_answer(model: nn.Module, images: Tensor, labels: Tensor) -> tuple[Tensor, float, float]:
    """The confusion matrix, accuracy and mean cross entropy computed in one go, without evaluate()."""
    model.eval()
    with torch.no_grad():
        logits = model(images)
    preds = logits.argmax(dim=1)
    accuracy = (preds == labels).double().mean().item()
    return confusion_matrix(labels, preds, NUM_CLASSES), accuracy, F.cross_entropy(logits, labels).item()


def test_evaluate_counts_every_sample_once_and_matches_the_direct_computation() -> None:
    images, labels = make_data()
    model = LinearClassifier()
    expected_matrix, expected_accuracy, expected_loss = direct_answer(model, images, labels)

    result = evaluate(model, batches(images, labels), num_classes=NUM_CLASSES, loss_fn=F.cross_entropy)

    assert result.count == NUM_SAMPLES
    assert int(result.confusion.sum()) == NUM_SAMPLES
    assert result.confusion.device.type == "cpu"
    assert torch.equal(result.confusion, expected_matrix)
    assert result.report.support == tuple(torch.bincount(labels, minlength=NUM_CLASSES).tolist())
    assert result.accuracy == pytest.approx(expected_accuracy)
    assert result.accuracy == pytest.approx(int(result.confusion.trace()) / NUM_SAMPLES)
    # The per-batch mean losses are weighted by batch size: the last batch has 3 samples, not 5.
    assert result.loss == pytest.approx(expected_loss, rel=1e-6)
    assert result.report == ClassificationReport.from_confusion(expected_matrix)


def test_evaluate_without_loss_fn_reports_no_loss_and_accepts_a_generator() -> None:
    images, labels = make_data()

    def loader() -> Iterator[tuple[Tensor, Tensor]]:
        yield from batches(images, labels, batch_size=7)

    result = evaluate(LinearClassifier(), loader(), num_classes=NUM_CLASSES)
    assert result.loss is None
    assert result.count == NUM_SAMPLES
    assert result.to_dict()["loss"] is None


def test_evaluate_runs_in_eval_and_inference_mode_and_restores_each_modules_mode() -> None:
    images, labels = make_data()
    model = LinearClassifier()
    model.train()
    model.linear.eval()  # a mixed state, like a frozen backbone's batch norms
    evaluate(model, batches(images, labels), num_classes=NUM_CLASSES)
    assert model.seen_training and not any(model.seen_training)
    assert all(model.seen_inference_mode)
    assert model.training and model.dropout.training
    assert not model.linear.training

    model.eval()
    evaluate(model, batches(images, labels), num_classes=NUM_CLASSES)
    assert not model.training


def test_evaluate_restores_the_mode_when_the_model_fails() -> None:
    images, labels = make_data()
    model = LinearClassifier(size=8)  # expects 8x8 images, gets 4x4
    model.train()
    with pytest.raises(RuntimeError):
        evaluate(model, batches(images, labels), num_classes=NUM_CLASSES)
    assert model.training


def test_resize_is_applied_before_the_model() -> None:
    images, labels = make_data(size=4)
    model = LinearClassifier(size=8)
    result = evaluate(
        model, batches(images, labels), num_classes=NUM_CLASSES, resize=lambda batch: resize_batch(batch, 8)
    )
    expected_matrix, _, _ = direct_answer(model, resize_batch(images, 8), labels)
    assert torch.equal(result.confusion, expected_matrix)


def test_tta_on_mirror_symmetric_images_changes_nothing() -> None:
    images, labels = make_data()
    symmetric = (images + images.flip(-1)) / 2
    model = LinearClassifier()
    loader = batches(symmetric, labels)
    plain = evaluate(model, loader, num_classes=NUM_CLASSES, loss_fn=F.cross_entropy)
    with_tta = evaluate(model, loader, num_classes=NUM_CLASSES, loss_fn=F.cross_entropy, tta=True)
    assert torch.equal(plain.confusion, with_tta.confusion)
    assert with_tta.loss == pytest.approx(plain.loss, rel=1e-5)


def test_tta_averages_the_logits_of_the_image_and_its_mirror() -> None:
    images, _ = make_data()
    model = LinearClassifier().eval()
    with torch.no_grad():
        expected = (model(images) + model(images.flip(-1))) / 2
        actual = predict_logits(model, images, tta=True)
    assert torch.allclose(actual, expected, atol=1e-6)
    assert not torch.allclose(actual, model(images).detach(), atol=1e-3)


def test_tta_changes_the_answer_of_a_mirror_sensitive_model() -> None:
    # Bright left half means class 0, bright right half class 1: the plain model is always right.
    generator = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 2, (NUM_SAMPLES,), generator=generator)
    images = torch.rand(NUM_SAMPLES, 3, 4, 4, generator=generator) * 0.1
    images[labels == 0, :, :, :2] += 1.0
    images[labels == 1, :, :, 2:] += 1.0
    model = LeftRightClassifier()
    plain = evaluate(model, batches(images, labels), num_classes=NUM_CLASSES)
    with_tta = evaluate(model, batches(images, labels), num_classes=NUM_CLASSES, tta=True)
    assert plain.accuracy == 1.0
    # Averaged with its mirror, every image scores both halves alike: the evidence is gone.
    assert with_tta.accuracy < 0.9
    assert with_tta.count == plain.count == NUM_SAMPLES


def test_tta_flip_is_the_width_flip_for_channels_last_batches() -> None:
    images, labels = make_data()
    channels_last = images.contiguous(memory_format=torch.channels_last)
    model = LinearClassifier()
    expected = evaluate(model, batches(images, labels), num_classes=NUM_CLASSES, tta=True, loss_fn=F.cross_entropy)
    actual = evaluate(
        model, batches(channels_last, labels), num_classes=NUM_CLASSES, tta=True, loss_fn=F.cross_entropy
    )
    assert torch.equal(actual.confusion, expected.confusion)
    assert actual.loss == pytest.approx(expected.loss, rel=1e-5)
    model.eval()  # predict_logits leaves the mode to its caller; dropout must be off here
    with torch.no_grad():
        assert torch.allclose(
            predict_logits(model, channels_last, tta=True), predict_logits(model, images, tta=True), atol=1e-6
        )


def test_bf16_autocast_runs_on_cpu() -> None:
    images, labels = make_data()
    model = LinearClassifier()
    output_dtypes: list[torch.dtype] = []
    model.linear.register_forward_hook(lambda module, inputs, output: output_dtypes.append(output.dtype))
    _, expected_accuracy, expected_loss = direct_answer(model, images, labels)
    output_dtypes.clear()

    result = evaluate(
        model,
        batches(images, labels),
        num_classes=NUM_CLASSES,
        autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16),
        loss_fn=F.cross_entropy,
        tta=True,
    )
    assert output_dtypes and all(dtype == torch.bfloat16 for dtype in output_dtypes)
    assert result.count == NUM_SAMPLES
    assert isinstance(result.loss, float)
    # bf16 keeps ~3 significant digits: the loss is close, not equal (and TTA shifts it a little).
    assert result.loss == pytest.approx(expected_loss, abs=0.2)
    assert abs(result.accuracy - expected_accuracy) <= 0.2


def test_evaluate_rejects_an_empty_loader() -> None:
    with pytest.raises(DataError, match="no samples"):
        evaluate(LinearClassifier(), [], num_classes=NUM_CLASSES)


def test_evaluate_rejects_labels_outside_the_class_range() -> None:
    images, labels = make_data()
    labels = labels.clone()
    labels[-1] = NUM_CLASSES
    with pytest.raises(DataError, match="target label 3"):
        evaluate(LinearClassifier(), batches(images, labels), num_classes=NUM_CLASSES)


def test_evaluate_rejects_a_model_with_the_wrong_number_of_classes() -> None:
    images, labels = make_data()
    with pytest.raises(UsageError, match=r"expected \(5, 10\)"):
        evaluate(LinearClassifier(), batches(images, labels), num_classes=10)


@pytest.mark.parametrize(
    "batch",
    [
        (torch.zeros(2, 3, 4, 4),),
        (torch.zeros(2, 48), torch.zeros(2, dtype=torch.int64)),
        (torch.zeros(2, 3, 4, 4), torch.zeros(3, dtype=torch.int64)),
    ],
)
def test_evaluate_rejects_malformed_batches(batch) -> None:
    with pytest.raises(DataError, match="batch 0"):
        evaluate(LinearClassifier(), [batch], num_classes=NUM_CLASSES)
