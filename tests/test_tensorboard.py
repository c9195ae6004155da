"""TensorBoard as an event consumer: scalars read back with tensorboard's EventAccumulator, the
`train --tensorboard` flag and `run.tensorboard` key, nothing when off, exit 2 without the package."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from resnet_cifar.engine.tensorboard import TensorBoardLogger
from resnet_cifar.engine.trainer import EpochFinished, EpochRecord, RunStarted, StepFinished

from helpers import SMALL, one_line_error, run_in_process, small_run_flags

# 64 training images in batches of 16 (4 steps an epoch), 32 to validate and 32 to test.
TRAINED = small_run_flags(batch_size=16, train=64, val=32, test=32)


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def test_logger_writes_step_and_epoch_scalars(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path / "tb", every_n_steps=3)
    logger(RunStarted(2, 0, 4, 256, 128, "cpu", "tensor", None, False, False))
    for epoch in (1, 2):
        for step in range(1, 5):
            logger(StepFinished(epoch=epoch, step=step, steps=4, loss=10.0 * epoch + step, lr=0.01 * step, images_per_sec=100.0))
        record = EpochRecord(epoch, 1.0 / epoch, 0.3 * epoch, 1.5 / epoch, 0.25 * epoch, 0.1 / epoch, 500.0 + epoch, 2.0)
        logger(EpochFinished(record=record, is_best=True))
    logger.close()
    found = scalars(tmp_path / "tb")
    # Global steps 3, 6 (every 3rd) and 4, 8 (each epoch's last step).
    assert [step for step, _ in found["train/loss"]] == [3, 4, 6, 8]
    assert [value for _, value in found["train/loss"]] == pytest.approx([13.0, 14.0, 22.0, 24.0])
    assert [value for _, value in found["train/lr"]] == pytest.approx([0.03, 0.04, 0.02, 0.04])
    assert found["epoch/val_acc"] == [(1, pytest.approx(0.25)), (2, pytest.approx(0.5))]
    assert found["epoch/train_loss"] == [(1, pytest.approx(1.0)), (2, pytest.approx(0.5))]
    assert found["epoch/images_per_sec"] == [(1, pytest.approx(501.0)), (2, pytest.approx(502.0))]
    assert {"epoch/train_acc", "epoch/val_loss", "epoch/lr", "train/images_per_sec"} <= set(found)


def run_train(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, cache: Path, *args: str) -> None:
    """`train TRAINED ARGS` in this process, reading the decoded images from ``cache``; it succeeds."""
    monkeypatch.setenv("RESNET_CIFAR_CACHE", str(cache))
    code, _, err = run_in_process(capsys, "train", *TRAINED, *args)
    assert code == 0, err


def test_train_tensorboard_flag_writes_the_runs_scalars(
    real_data_root: Path, decoded_cache_dir: Path, real_splits, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "run"
    run_train(capsys, monkeypatch, decoded_cache_dir, "--epochs", "2", "--tensorboard", "--data-dir", str(real_data_root),
              "--out", str(out))  # fmt: skip
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    found = scalars(out / "tensorboard")
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for name in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_sec"):
        assert [step for step, _ in found[f"epoch/{name}"]] == [1, 2], name
        assert [value for _, value in found[f"epoch/{name}"]] == pytest.approx([r[name] for r in history], rel=1e-6)
    # 64 images at batch 16: 4 steps an epoch, logged every 10 steps and at each epoch's end.
    assert [step for step, _ in found["train/loss"]] == [4, 8]
    assert "tensorboard = true" in (out / "config.toml").read_text()


def test_train_without_tensorboard_writes_none(
    real_data_root: Path, decoded_cache_dir: Path, real_splits, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "run"
    run_train(capsys, monkeypatch, decoded_cache_dir, "--epochs", "1", "--limit-train", "32", "--schedule", "constant",
              "--data-dir", str(real_data_root), "--out", str(out))  # fmt: skip
    assert (out / "last.pt").is_file() and not (out / "tensorboard").exists()


def test_config_key_without_the_package_exits_2_with_the_pip_command(
    real_data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "run.toml"
    config.write_text("[run]\ntensorboard = true\n")
    # None in sys.modules makes `import torch.utils.tensorboard` raise ImportError, as when it is absent.
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    out = tmp_path / "run"
    code, _, err = run_in_process(
        capsys, "train", *SMALL, "--config", str(config), "--data-dir", str(real_data_root), "--out", str(out)
    )
    assert code == 2, err
    one_line_error(err, 'pip install "resnet-cifar[tensorboard]"')
    assert not out.exists()  # refused before anything was written


def test_tensorboard_config_value_is_validated() -> None:
    from resnet_cifar.config import RunConfig
    from resnet_cifar.errors import UsageError

    assert RunConfig().tensorboard is False
    with pytest.raises(UsageError, match="--tensorboard must be true or false"):
        RunConfig(tensorboard="yes")  # type: ignore[arg-type]
