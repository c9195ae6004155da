"""Augmentation through the engine and the CLI: soft-target loss and accuracy, exact resume with
a policy and mixing on, config validation, and exit 2 for unknown values."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from resnet_cifar.config import PRESETS, TrainConfig, resolve_config
from resnet_cifar.engine.checkpoint import load_checkpoint
from resnet_cifar.engine.precision import Precision, make_grad_scaler
from resnet_cifar.engine.step import TrainStep, build_loss
from resnet_cifar.engine.trainer import StepFinished, StopRequest, build_trainer
from resnet_cifar.errors import UsageError

import helpers
from helpers import one_line_error, run_in_process, without_timing

CPU = torch.device("cpu")


def test_soft_targets_compose_with_label_smoothing_and_count_the_dominant_label() -> None:
    torch.manual_seed(0)
    model = nn.Linear(12, 10)
    images = torch.randn(6, 12)
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    partner = labels.roll(1, 0)
    lam = 0.7
    targets = lam * nn.functional.one_hot(labels, 10).float() + (1 - lam) * nn.functional.one_hot(partner, 10).float()
    loss_fn = build_loss(0.1)
    logits = model(images)
    # Label smoothing on soft targets: (1 - eps) * targets + eps / C, then cross-entropy.
    smoothed = 0.9 * targets + 0.1 / 10
    expected = -(smoothed * logits.log_softmax(dim=1)).sum(dim=1).mean()
    assert torch.allclose(loss_fn(logits, targets), expected, atol=1e-6)

    precision = Precision(device=CPU, amp=False, amp_dtype=None, channels_last=False)
    step = TrainStep(
        model, torch.optim.SGD(model.parameters(), lr=0.0), loss_fn, precision=precision, scaler=make_grad_scaler(precision)
    )
    predicted = logits.argmax(dim=1)
    output = step(images, targets)
    # lam > 0.5: each image's own label dominates; flipping lam makes its partner's dominate.
    assert int(output.correct) == int((predicted == labels).sum())
    swapped = (1 - lam) * nn.functional.one_hot(labels, 10).float() + lam * nn.functional.one_hot(partner, 10).float()
    flipped = step(images, swapped)
    assert int(flipped.correct) == int((predicted == partner).sum())


def small_config(data_root: Path, cache: Path, out: Path, **overrides: Any) -> TrainConfig:
    """helpers.small_config, deterministic (runs compared bit for bit), on 32 training images in
    batches of 16 (2 steps an epoch: a stop after the first leaves one to resume) and 32 to
    validate and test."""
    smaller = {"data.batch_size": 16, "data.limit_train": 32, "data.limit_val": 32, "data.limit_test": 32}
    return helpers.small_config(data_root, cache, out, **{"precision.deterministic": True, **smaller, **overrides})


def test_resume_mid_epoch_is_exact_with_a_policy_mixing_and_ema(
    real_data_root: Path, decoded_cache_dir: Path, tmp_path: Path
) -> None:
    augmented = {"data.augment": "trivialaugment", "data.mixup": 0.4, "data.cutmix": 1.0, "data.cutout": 8,
                 "optim.ema": True}  # fmt: skip
    straight = build_trainer(small_config(real_data_root, decoded_cache_dir, tmp_path / "straight", **augmented))
    straight_result = straight.fit()
    # Train accuracy counts dominant labels: a fraction, well below 1 on 32 mixed images.
    assert all(0.0 <= record.train_acc <= 1.0 for record in straight_result.history)

    split_cfg = small_config(real_data_root, decoded_cache_dir, tmp_path / "split", **augmented)
    stop = StopRequest()

    def on_event(event: Any) -> None:
        if isinstance(event, StepFinished) and (event.epoch, event.step) == (2, 1):
            stop.request("SIGTERM")

    assert build_trainer(split_cfg, on_event=on_event, stop=stop).fit().interrupted == "SIGTERM"
    saved = load_checkpoint(tmp_path / "split" / "last.pt")
    assert (saved["epoch"], saved["batches_done_in_epoch"]) == (1, 1)
    assert saved["config"]["data"]["augment"] == "trivialaugment"

    resumed = build_trainer(replace(split_cfg, run=replace(split_cfg.run, resume=tmp_path / "split" / "last.pt")))
    resumed_result = resumed.fit()
    assert without_timing(resumed_result.history) == without_timing(straight_result.history)
    for (name, expected), actual in zip(straight.parts.module.state_dict().items(), resumed.parts.module.state_dict().values()):
        assert torch.equal(expected, actual), name
    assert straight.parts.ema is not None and resumed.parts.ema is not None
    for (name, expected), actual in zip(straight.parts.ema.state_dict().items(), resumed.parts.ema.state_dict().values()):
        assert torch.equal(expected, actual), name


def test_augmentation_settings_validate_and_round_trip(tmp_path: Path) -> None:
    data_dir = tmp_path / "cifar"
    data_dir.mkdir()
    cfg = resolve_config(
        overrides={
            "data.data_dir": data_dir,
            "data.augment": "randaugment",
            "data.randaugment_ops": 3,
            "data.randaugment_magnitude": 14,
            "data.mixup": 0.2,
            "data.cutmix": 1,
            "data.mix_prob": 0.5,
        }
    )
    assert (cfg.data.augment, cfg.data.randaugment_ops, cfg.data.randaugment_magnitude) == ("randaugment", 3, 14)
    assert cfg.data.cutmix == 1.0 and isinstance(cfg.data.cutmix, float)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    for key, value, flag in [
        ("data.augment", "autoaugment-imagenet", "--augment"),
        ("data.randaugment_ops", 0, "--randaugment-ops"),
        ("data.randaugment_magnitude", 31, "--randaugment-magnitude"),
        ("data.mixup", -0.1, "--mixup"),
        ("data.cutmix", float("inf"), "--cutmix"),
        ("data.mix_prob", 1.01, "--mix-prob"),
    ]:
        with pytest.raises(UsageError, match=flag):
            resolve_config(overrides={"data.data_dir": data_dir, key: value})
    assert PRESETS["long"]["data"]["augment"] == "autoaugment" and PRESETS["long"]["data"]["cutout"] == 16


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--augment", "autoaugment-imagenet"], "--augment must be one of none, autoaugment, randaugment, trivialaugment"),
        (["--randaugment-magnitude", "40"], "--randaugment-magnitude"),
        (["--mixup", "-1"], "--mixup"),
        (["--mix-prob", "2"], "--mix-prob"),
    ],
)
def test_bad_augmentation_flags_exit_2_with_one_line(
    real_data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    code, _, err = run_in_process(capsys, "train", "--data-dir", str(real_data_root), "--out", str(tmp_path / "run"), *flags)
    assert code == 2, err
    one_line_error(err, message)
    assert not (tmp_path / "run").exists()


def test_sweep_default_space_varies_the_policy_and_alphas() -> None:
    from resnet_cifar.tuning.space import DEFAULT_SPACE

    assert set(DEFAULT_SPACE["data.augment"]["choices"]) == {"none", "autoaugment", "randaugment", "trivialaugment"}
    assert 0.0 in DEFAULT_SPACE["data.mixup"]["choices"] and len(DEFAULT_SPACE["data.mixup"]["choices"]) > 1
    assert 0.0 in DEFAULT_SPACE["data.cutmix"]["choices"] and len(DEFAULT_SPACE["data.cutmix"]["choices"]) > 1
    json.dumps(DEFAULT_SPACE)  # plain values, as a space file would hold
