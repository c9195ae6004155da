"""A preset keeps its meaning when --batch-size changes; the best CPU settings by default; torch's
known-harmless CPU noise stays out of the user's output."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import torch

from resnet_cifar.cli.common import quiet_known_harmless_logs
from resnet_cifar.cli.options import resolve_run_config
from resnet_cifar.config import describe_lr, resolve_config
from resnet_cifar.engine.precision import resolve_precision


def resolve(tmp_path: Path, preset: str | None = None, world_size: int = 1, **overrides: object):
    return resolve_config(preset=preset, overrides={"data.data_dir": tmp_path, **overrides}, world_size=world_size)


@pytest.mark.parametrize(
    ("preset", "batch_size", "lr"),
    [("default", 512, 0.4), ("default", 64, 0.05), ("default", 1024, 0.8), ("long", 128, 0.1), ("smoke", 64, 0.05),
     ("smoke", 256, 0.2)],
)  # fmt: skip
def test_a_preset_scales_its_rate_linearly_from_its_reference_batch(
    tmp_path: Path, preset: str, batch_size: int, lr: float
) -> None:
    cfg = resolve(tmp_path, preset, **{"data.batch_size": batch_size})
    assert cfg.optim.lr == pytest.approx(lr)


def test_describe_lr_says_how_the_rate_was_resolved(tmp_path: Path) -> None:
    scaled = resolve(tmp_path, **{"data.batch_size": 64})
    assert describe_lr(scaled.optim, 64) == "0.05 = 0.4 x 64/512"
    assert describe_lr(resolve(tmp_path).optim, 512) == "0.4"  # the reference batch: nothing to explain
    given = resolve(tmp_path, **{"data.batch_size": 64, "optim.lr": 0.3})
    assert given.optim.lr == 0.3 and describe_lr(given.optim, 64) == "0.3"  # an explicit --lr is used as given


def test_adam_scales_by_the_square_root(tmp_path: Path) -> None:
    settings = {"optim.optimizer": "adamw", "optim.lr_base": 1e-3, "optim.lr_base_batch_size": 512}
    cfg = resolve(tmp_path, **settings, **{"data.batch_size": 128})
    assert cfg.optim.lr == pytest.approx(1e-3 * 0.5)  # sqrt(128 / 512)
    assert describe_lr(cfg.optim, 128) == "0.0005 = 0.001 x sqrt(128/512)"


def test_the_global_batch_under_torchrun_scales_the_rate(tmp_path: Path) -> None:
    cfg = resolve(tmp_path, world_size=4)
    assert cfg.optim.lr == pytest.approx(1.6) and describe_lr(cfg.optim, 512 * 4) == "1.6 = 0.4 x 2048/512"
    given = resolve(tmp_path, world_size=4, **{"optim.lr": 0.1})
    assert given.optim.lr == 0.1  # used as given, whatever the number of processes


def test_scale_lr_scales_a_given_rate_from_one_process_batch(tmp_path: Path) -> None:
    values = {"data_dir": tmp_path, "lr": 0.1, "batch_size": 64, "scale_lr": True}
    defaults = {"data.data_dir": tmp_path}
    cfg = resolve_run_config(values, defaults=defaults, world_size=2)
    assert cfg.optim.lr == pytest.approx(0.2)
    assert cfg.optim.lr_base == 0.1 and cfg.optim.lr_base_batch_size == 64  # what the rule started from
    assert resolve_run_config(values, defaults=defaults, world_size=1).optim.lr == 0.1


def test_a_saved_config_keeps_the_resolved_rate(tmp_path: Path) -> None:
    from resnet_cifar.config import save_config

    cfg = resolve(tmp_path, **{"data.batch_size": 64})
    saved = save_config(cfg, tmp_path / "config.toml")
    replayed = resolve_config(file=saved)
    assert replayed == cfg and replayed.optim.lr == 0.05
    # A replay is explicit: changing the batch of a saved config keeps its recorded rate.
    assert resolve_config(file=saved, overrides={"data.batch_size": 128}).optim.lr == 0.05


def test_channels_last_follows_the_fastest_measured_cpu_setting() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision(cpu, amp=True, amp_dtype="bf16").channels_last is True
    assert resolve_precision(cpu, amp=False).channels_last is False
    assert resolve_precision(cpu, amp=True, amp_dtype="bf16", channels_last=False).channels_last is False


def test_trainer_on_the_cpu_with_amp_goes_channels_last(
    real_data_root: Path, decoded_cache_dir: Path, tmp_path: Path
) -> None:
    from resnet_cifar.engine.trainer import build_trainer

    settings = {
        "data.data_dir": real_data_root, "data.cache_dir": decoded_cache_dir, "data.batch_size": 32,
        "data.limit_train": 64, "data.limit_val": 32, "data.limit_test": 32, "model.depth": 18,
        "precision.device": "cpu",
    }  # fmt: skip
    with_amp = build_trainer(resolve_config(overrides={**settings, "precision.amp": True, "run.out_dir": tmp_path / "a"}))
    assert with_amp.parts.precision.channels_last is True and with_amp.parts.precision.amp_dtype == torch.bfloat16
    images, _ = next(iter(with_amp.parts.loaders.train))
    assert images.is_contiguous(memory_format=torch.channels_last)
    fp32 = build_trainer(resolve_config(overrides={**settings, "run.out_dir": tmp_path / "b"}))
    assert fp32.parts.precision.channels_last is False


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_the_warning_filter_drops_only_the_known_message() -> None:
    quiet_known_harmless_logs()
    quiet_known_harmless_logs()  # idempotent: one filter, not two
    logger = logging.getLogger("torch.utils.cpp_extension")
    other = logging.getLogger("torch.other")
    assert len(logger.filters) == 1
    # Handlers on the loggers themselves: torch's loggers need not propagate to the root.
    collected = _Collect()
    logger.addHandler(collected)
    other.addHandler(collected)
    try:
        logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local")
        logger.warning("something else went wrong")
        other.warning("No CUDA runtime is found, but from another logger")
    finally:
        logger.removeHandler(collected)
        other.removeHandler(collected)
    assert collected.messages == ["something else went wrong", "No CUDA runtime is found, but from another logger"]
    with pytest.warns(UserWarning, match="still shown"):
        warnings.warn("still shown", UserWarning, stacklevel=1)
