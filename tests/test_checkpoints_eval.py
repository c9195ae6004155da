"""The library behind `eval` and `predict`: rebuilding a model from a checkpoint, the eval splits,
precision per device, reading image files, and predictions checked against a direct computation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_cifar.config import PrecisionConfig, TrainConfig
from resnet_cifar.data import build_loaders
from resnet_cifar.data.split import limit_split
from resnet_cifar.data.types import CIFAR10_CLASSES
from resnet_cifar.engine.checkpointer import select_weights
from resnet_cifar.engine.step import build_ema
from resnet_cifar.errors import DataError, UsageError
from resnet_cifar.inference import (
    default_eval_dir,
    eval_precision,
    evaluate_checkpoint,
    evaluate_split,
    load_eval_split,
    load_trained_model,
    predict_files,
    read_image_file,
)
from resnet_cifar.models import resnet34

from helpers import SUBSET_PER_CLASS, normalize_by_hand, random_resnet18, save_checkpoint, smoke_config, write_checkpoint

CPU = torch.device("cpu")


def random_model(seed: int, **kwargs: Any) -> torch.nn.Module:
    return random_resnet18(seed, random_batch_norm=True, **kwargs)


def ema_state(model: torch.nn.Module) -> dict[str, Any]:
    """The trainer's EMA over ``model``'s weights and buffers: an AveragedModel's state dict."""
    return build_ema(model, 0.999).state_dict()


@pytest.fixture(scope="module")
def cfg(real_data_root: Path, decoded_cache_dir: Path, real_splits) -> TrainConfig:
    # real_splits fills the decoded cache, so every later load here takes a second, not twenty.
    return smoke_config(real_data_root, **{"data.cache_dir": str(decoded_cache_dir), "data.limit_val": 300})


# ----------------------------------------------------------------------------- weights


def test_ema_weights_are_chosen_with_the_averaged_model_prefix_stripped(tmp_path: Path, cfg: TrainConfig) -> None:
    model, ema = random_model(0), random_model(1)
    path = write_checkpoint(tmp_path / "best.pt", cfg, model, ema_state(ema))
    payload = torch.load(path, weights_only=True)
    assert "n_averaged" in payload["ema"]
    assert all(key.startswith("module.") for key in payload["ema"] if key != "n_averaged")

    weights, which = select_weights(payload, path)
    assert which == "ema"
    assert set(weights) == set(ema.state_dict())
    for key, value in ema.state_dict().items():
        assert torch.equal(weights[key], value), key

    weights, which = select_weights({**payload, "ema": None}, path)
    assert which == "model" and torch.equal(weights["fc.weight"], model.state_dict()["fc.weight"])


def test_the_loaded_model_answers_with_the_ema_weights(tmp_path: Path, cfg: TrainConfig, real_splits) -> None:
    plain, averaged = random_model(0), random_model(1)
    with_ema = load_trained_model(write_checkpoint(tmp_path / "ema.pt", cfg, plain, ema_state(averaged)), device="cpu")
    without = load_trained_model(write_checkpoint(tmp_path / "plain.pt", cfg, plain), device="cpu")
    assert (with_ema.weights, without.weights) == ("ema", "model")
    assert with_ema.epoch == 3 and with_ema.classes == CIFAR10_CLASSES

    images = normalize_by_hand(real_splits.test.images[:64])
    averaged.eval()
    plain.eval()
    with torch.inference_mode():
        assert torch.allclose(with_ema.model(images), averaged(images), atol=1e-5)
        assert torch.allclose(without.model(images), plain(images), atol=1e-5)
        # The two checkpoints differ only in "ema", and their answers differ.
        assert not torch.equal(with_ema.model(images).argmax(1), without.model(images).argmax(1))
    assert not with_ema.model.training


def test_the_architecture_comes_from_the_config(tmp_path: Path, cfg: TrainConfig) -> None:
    dropout_cfg = smoke_config(cfg.data.data_dir, **{"model.depth": 34, "model.dropout": 0.2})
    torch.manual_seed(0)
    write_checkpoint(tmp_path / "r34.pt", dropout_cfg, resnet34(num_classes=10, stem="imagenet", dropout=0.2))
    trained = load_trained_model(tmp_path / "r34.pt", device="cpu")
    assert len(trained.model.layer3) == 6  # ResNet-34: 3-4-6-3
    assert isinstance(trained.model.dropout, torch.nn.Dropout) and trained.model.dropout.p == 0.2
    assert trained.model.conv1.kernel_size == (7, 7)


def test_weights_that_do_not_fit_the_configured_architecture_are_a_data_error(tmp_path: Path, cfg: TrainConfig) -> None:
    wrong = smoke_config(cfg.data.data_dir, **{"model.depth": 34})
    path = write_checkpoint(tmp_path / "mismatch.pt", wrong, random_model(0))
    with pytest.raises(DataError, match=r"mismatch\.pt.*ResNet-34.*missing \(first layer1\.2\.conv1\.weight\)"):
        load_trained_model(path, device="cpu")
    # Ten classes of weights, but the checkpoint names eleven: the top layer has another shape.
    payload = torch.load(path, weights_only=True)
    eleven = [*CIFAR10_CLASSES, "extra"]
    save_checkpoint(path, {**payload, "config": cfg.to_dict(), "classes": eleven})
    with pytest.raises(DataError, match=r"2 of another shape \(first fc\.weight: \(10, 512\) instead of \(11, 512\)\)"):
        load_trained_model(path, device="cpu")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": 2}, "unsupported checkpoint format 2"),
        ({"classes": ["cat"]}, "'classes' must be a list"),
        ({"config": {"model": {"depth": 19}, "data": {"data_dir": "x"}}}, "--depth must be one of"),
        ({"ema": {"conv1.weight": torch.zeros(1)}}, "lacks the 'module.' prefix"),
        ({"model": {"conv1.weight": "not a tensor"}}, "'model' is not a state dict"),
    ],
)
def test_malformed_checkpoints_are_data_errors_naming_the_file(
    tmp_path: Path, cfg: TrainConfig, change: dict[str, Any], message: str
) -> None:
    path = write_checkpoint(tmp_path / "bad.pt", cfg, random_model(0))
    payload = torch.load(path, weights_only=True)
    save_checkpoint(path, {**payload, **change})
    with pytest.raises(DataError, match=message) as error:
        load_trained_model(path, device="cpu")
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_a_missing_checkpoint_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not found"):
        load_trained_model(tmp_path / "absent.pt")


# ----------------------------------------------------------------------------- precision


def test_eval_precision_follows_the_checkpoint_for_the_device() -> None:
    auto = eval_precision(PrecisionConfig(), CPU)
    assert (auto.amp, auto.channels_last) == (False, False)  # auto AMP and channels_last mean CUDA only
    bf16 = eval_precision(PrecisionConfig(amp=True, amp_dtype="bf16", channels_last=True), CPU)
    assert (bf16.amp_dtype, bf16.channels_last) == (torch.bfloat16, True)
    # A GPU-trained fp16 checkpoint still evaluates on the CPU, in float32.
    fp16 = eval_precision(PrecisionConfig(amp=True, amp_dtype="fp16"), CPU)
    assert (fp16.amp, fp16.amp_dtype) == (False, None)


def test_bf16_channels_last_checkpoint_evaluates_close_to_float32(
    tmp_path: Path, cfg: TrainConfig, real_splits
) -> None:
    model = random_model(0)
    fast_cfg = smoke_config(cfg.data.data_dir, **{"precision.amp": True, "precision.channels_last": True})
    fast = load_trained_model(write_checkpoint(tmp_path / "bf16.pt", fast_cfg, model), device="cpu")
    exact = load_trained_model(write_checkpoint(tmp_path / "fp32.pt", cfg, model), device="cpu")
    assert fast.batch_dtype == torch.bfloat16
    assert fast.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    data = limit_split(real_splits.test, 100, 0)
    fast_result = evaluate_split(fast, data, batch_size=64)
    exact_result = evaluate_split(exact, data, batch_size=64)
    assert fast_result.count == exact_result.count == 100
    assert abs(fast_result.loss - exact_result.loss) < 0.05


# ----------------------------------------------------------------------------- the eval splits


def test_eval_val_is_the_trainers_val_split(cfg: TrainConfig) -> None:
    """The same images in the same order as the loader the trainer validates with."""
    trainer_cfg = smoke_config(
        cfg.data.data_dir,
        **{"data.cache_dir": str(cfg.data.cache_dir), "data.limit_val": 300, "data.limit_train": 64, "data.seed": 7},
    )
    trainer_val = build_loaders(trainer_cfg.data, CPU).val
    trainer_images, trainer_labels = (torch.cat(parts) for parts in zip(*trainer_val))

    ours = load_eval_split(trainer_cfg.data, "val", cache_dir=trainer_cfg.data.cache_dir)
    assert len(ours) == 300
    assert torch.equal(torch.from_numpy(ours.labels), trainer_labels)
    assert torch.allclose(normalize_by_hand(ours.images), trainer_images, atol=1e-5)

    # --limit replaces limit_val: the same limit gives the same split, a larger one more of val.
    same = load_eval_split(trainer_cfg.data, "val", limit=300, cache_dir=cfg.data.cache_dir)
    assert np.array_equal(same.images, ours.images)
    whole_val = load_eval_split(trainer_cfg.data, "val", limit=10**6, cache_dir=cfg.data.cache_dir)
    # The default tenth of the subset's training images, stratified: all of val.
    per_class = SUBSET_PER_CLASS["train"] // 10
    assert len(whole_val) == 10 * per_class and list(whole_val.per_class_counts().values()) == [per_class] * 10


def test_eval_test_is_the_whole_test_split_or_a_stratified_subset(cfg: TrainConfig, real_splits) -> None:
    whole = load_eval_split(cfg.data, "test", cache_dir=cfg.data.cache_dir)
    assert np.array_equal(whole.labels, real_splits.test.labels)
    subset = load_eval_split(cfg.data, "test", limit=500, cache_dir=cfg.data.cache_dir)
    assert len(subset) == 500 and set(subset.per_class_counts().values()) == {50}
    again = load_eval_split(cfg.data, "test", limit=500, cache_dir=cfg.data.cache_dir)
    assert np.array_equal(subset.images, again.images)


def test_eval_split_arguments_are_checked(tmp_path: Path, cfg: TrainConfig) -> None:
    with pytest.raises(UsageError, match="--split must be one of test, val"):
        load_eval_split(cfg.data, "train")
    with pytest.raises(UsageError, match="--limit must be positive"):
        load_eval_split(cfg.data, "test", limit=0)
    with pytest.raises(UsageError, match="no such folder"):
        load_eval_split(cfg.data, "test", data_dir=tmp_path / "absent")
    moved = smoke_config(tmp_path / "gone")
    with pytest.raises(UsageError, match="checkpoint's data folder does not exist here; pass --data-dir"):
        load_eval_split(moved.data, "test")


# ----------------------------------------------------------------------------- evaluate_checkpoint


def test_evaluate_checkpoint_matches_a_direct_computation_and_writes_its_files(
    tmp_path: Path, cfg: TrainConfig, real_splits
) -> None:
    model = random_model(0)
    path = write_checkpoint(tmp_path / "run" / "best.pt", cfg, model)
    outcome = evaluate_checkpoint(path, limit=500, device="cpu", batch_size=128, cache_dir=cfg.data.cache_dir)

    assert outcome.out_dir == default_eval_dir(path, "test") == tmp_path / "run" / "eval-test"
    written = sorted(path.name for path in outcome.out_dir.iterdir())
    assert written == ["confusion_matrix.csv", "confusion_matrix.png", "metrics.json"]
    report = outcome.report
    matrix = np.array(report["confusion_matrix"])
    assert report["count"] == matrix.sum() == 500
    assert report["accuracy"] == np.trace(matrix) / 500

    # Independently: the same 500 images normalized by hand through the same weights.
    data = limit_split(real_splits.test, 500, cfg.data.seed)
    model.eval()
    with torch.inference_mode():
        logits = model(normalize_by_hand(data.images))
    predicted = logits.argmax(1).numpy()
    expected = np.zeros((10, 10), dtype=np.int64)
    np.add.at(expected, (data.labels, predicted), 1)
    top2 = logits.topk(2, dim=1).values
    near_ties = int(((top2[:, 0] - top2[:, 1]) < 1e-4).sum())  # float noise may flip these, nothing else
    assert np.abs(matrix - expected).sum() <= 2 * near_ties
    expected_loss = torch.nn.functional.cross_entropy(
        logits, torch.from_numpy(data.labels), label_smoothing=cfg.optim.label_smoothing
    )
    assert report["loss"] == pytest.approx(float(expected_loss), abs=1e-4)


def test_tta_averages_with_the_mirror(tmp_path: Path, cfg: TrainConfig, real_splits) -> None:
    path = write_checkpoint(tmp_path / "best.pt", cfg, random_model(0))
    trained = load_trained_model(path, device="cpu")
    data = limit_split(real_splits.test, 100, 0)
    plain = evaluate_split(trained, data, batch_size=50)
    tta = evaluate_split(trained, data, batch_size=50, tta=True)
    mirrored = data.__class__(np.ascontiguousarray(data.images[:, :, ::-1]), data.labels, data.classes)
    flipped = evaluate_split(trained, mirrored, batch_size=50, tta=True)
    assert tta.count == 100 and tta.loss != plain.loss
    # Averaging an image with its mirror is the same as averaging the mirror with the image.
    assert torch.equal(tta.confusion, flipped.confusion)


def test_data_with_other_classes_is_refused(tmp_path: Path, cfg: TrainConfig, real_splits) -> None:
    trained = load_trained_model(write_checkpoint(tmp_path / "best.pt", cfg, random_model(0)), device="cpu")
    renamed = limit_split(real_splits.test, 20, 0)
    renamed = renamed.__class__(renamed.images, renamed.labels, tuple(f"c{i}" for i in range(10)))
    with pytest.raises(DataError, match="was trained on classes"):
        evaluate_split(trained, renamed, batch_size=10)


# ----------------------------------------------------------------------------- predict


def test_read_image_file_accepts_any_size_and_mode(tmp_path: Path, real_data_root: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (60, 100, 3), dtype=np.uint8)).save(tmp_path / "wide.png")
    Image.fromarray(rng.integers(0, 256, (50, 40), dtype=np.uint8)).save(tmp_path / "gray.png")
    Image.new("RGBA", (20, 20), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    Image.new("RGB", (64, 64), (10, 200, 30)).save(tmp_path / "flat.jpg", quality=100)

    for name in ("wide.png", "gray.png", "clear.png", "flat.jpg"):
        pixels = read_image_file(tmp_path / name)
        assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8, name
    gray = read_image_file(tmp_path / "gray.png")
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 0], gray[..., 2])
    assert (read_image_file(tmp_path / "clear.png") == 255).all()  # fully transparent shows the white background
    assert np.abs(read_image_file(tmp_path / "flat.jpg").astype(int) - [10, 200, 30]).max() <= 3

    # A 32 x 32 CIFAR image is read unchanged.
    jpeg = real_data_root / "test" / "cat" / "0000.jpg"
    with Image.open(jpeg) as image:
        assert np.array_equal(read_image_file(jpeg), np.asarray(image.convert("RGB")))


def test_read_image_file_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such image file"):
        read_image_file(tmp_path / "absent.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DataError, match=r"broken\.png: not a readable image"):
        read_image_file(tmp_path / "broken.png")
    # A truncated JPEG fails at decode time, after the header was read.
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(tmp_path / "whole.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "whole.jpg").read_bytes()[:200])
    with pytest.raises(DataError, match=r"cut\.jpg"):
        read_image_file(tmp_path / "cut.jpg")


def test_predict_files_matches_a_direct_softmax(tmp_path: Path, cfg: TrainConfig, real_data_root: Path) -> None:
    model = random_model(0)
    trained = load_trained_model(write_checkpoint(tmp_path / "best.pt", cfg, model), device="cpu")
    files = [real_data_root / "test" / name / "0000.jpg" for name in ("cat", "ship", "truck")]
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (60, 100, 3), dtype=np.uint8)).save(tmp_path / "wide.png")
    files.append(tmp_path / "wide.png")

    predictions = predict_files(trained, files, top_k=10, batch_size=3)  # two batches, the last partial
    pixels = np.stack([read_image_file(path) for path in files])
    model.eval()
    with torch.inference_mode():
        expected = torch.softmax(model(normalize_by_hand(pixels)), dim=1)
    assert [prediction.image for prediction in predictions] == files
    for prediction, probabilities in zip(predictions, expected):
        names = [name for name, _ in prediction.top]
        values = [value for _, value in prediction.top]
        assert sorted(names) == sorted(CIFAR10_CLASSES)
        assert values == sorted(values, reverse=True)
        assert sum(values) == pytest.approx(1.0, abs=1e-5)
        for name, value in prediction.top:
            assert value == pytest.approx(float(probabilities[CIFAR10_CLASSES.index(name)]), abs=1e-5)

    top2 = predict_files(trained, files, top_k=2)
    assert all(len(prediction.top) == 2 and sum(v for _, v in prediction.top) <= 1.0 for prediction in top2)
    assert top2[0].to_dict()["top"][0] == {"class": predictions[0].top[0][0], "probability": predictions[0].top[0][1]}


def test_predict_files_checks_top_k(tmp_path: Path, cfg: TrainConfig, real_data_root: Path) -> None:
    trained = load_trained_model(write_checkpoint(tmp_path / "best.pt", cfg, random_model(0)), device="cpu")
    image = real_data_root / "test" / "cat" / "0000.jpg"
    for top_k in (0, 11):
        with pytest.raises(UsageError, match=r"--top-k must be in 1\.\.10"):
            predict_files(trained, [image], top_k=top_k)


def test_predict_applies_the_fine_tuning_resize(tmp_path: Path, cfg: TrainConfig, real_data_root: Path) -> None:
    """A model trained on upsampled batches (--image-size) sees the same upsampling at predict time."""
    resized_cfg = smoke_config(cfg.data.data_dir, **{"model.image_size": 64})
    model = random_model(0)
    trained = load_trained_model(write_checkpoint(tmp_path / "big.pt", resized_cfg, model), device="cpu")
    image = real_data_root / "test" / "cat" / "0000.jpg"
    [prediction] = predict_files(trained, [image], top_k=10)
    model.eval()
    with torch.inference_mode():
        batch = torch.nn.functional.interpolate(
            normalize_by_hand(read_image_file(image)[None]), size=(64, 64), mode="bilinear", align_corners=False
        )
        expected = torch.softmax(model(batch), dim=1)[0]
    for name, value in prediction.top:
        assert value == pytest.approx(float(expected[CIFAR10_CLASSES.index(name)]), abs=1e-5)
