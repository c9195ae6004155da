"""The epoch loop on real images: learning, both loaders, bf16, compile, exact resume, stops.

Engine tests use a reduced model (ResNet-18 with the ImageNet stem, which downsamples 32-pixel
images 4x before the first stage) and small stratified subsets, so each run takes seconds.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from resnet_cifar.config import TrainConfig, resolve_config
from resnet_cifar.engine.checkpoint import load_checkpoint
from resnet_cifar.engine.step import NonFiniteLossError
from resnet_cifar.engine.build import RunParts, build_run
from resnet_cifar.engine.checkpointer import CHECKPOINT_KEYS, Checkpointer
from resnet_cifar.engine.trainer import (
    TIMING_FIELDS,
    EpochFinished,
    EpochRecord,
    StepFinished,
    StopRequest,
    Trainer,
    build_trainer,
    train,
)
from resnet_cifar.errors import UsageError


def small_config(data_root: Path, cache: Path, out: Path, **overrides: Any) -> TrainConfig:
    settings = {
        "data.data_dir": data_root,
        "data.cache_dir": cache,
        "data.batch_size": 64,
        "data.eval_batch_size": 256,
        "data.limit_train": 256,
        "data.limit_val": 128,
        "data.limit_test": 128,
        "data.loader": "tensor",
        "model.depth": 18,
        "model.stem": "imagenet",
        "optim.epochs": 2,
        "precision.device": "cpu",
        "run.out_dir": out,
    }
    settings.update(overrides)
    return resolve_config(preset="smoke", overrides=settings)


@pytest.mark.parametrize("loader", ["tensor", "dali"])
def test_two_epochs_learn_and_write_the_run_files(
    real_data_root: Path, decoded_cache_dir: Path, tmp_path: Path, loader: str
) -> None:
    cfg = small_config(
        real_data_root,
        decoded_cache_dir,
        tmp_path,
        **{"data.loader": loader, "data.limit_train": 2048, "data.limit_val": 500, "data.limit_test": 500},
    )
    events: list[Any] = []
    result = train(cfg, on_event=events.append)
    assert result.epochs_run == 2 and not result.stopped_early and result.interrupted is None
    # Chance is 0.10; 500 validation images put 0.2 some seven standard deviations above it.
    assert result.best_val_acc is not None and result.best_val_acc > 0.2, result.history
    assert result.test_acc is not None and result.test_acc > 0.15
    assert [type(event).__name__ for event in events].count("StepFinished") == 2 * (2048 // 64)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    csv_lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,train_loss") and len(csv_lines) == 3
    for name in ("last.pt", "best.pt", "curves.png"):
        assert (tmp_path / name).is_file(), name
    checkpoint = load_checkpoint(tmp_path / "last.pt")
    assert checkpoint["epoch"] == 2 and checkpoint["config"] == cfg.to_dict()
    assert set(checkpoint) == set(CHECKPOINT_KEYS)  # the one list of keys is the whole format
    assert list(checkpoint["model"]) == list(torch.load(tmp_path / "best.pt", weights_only=True)["model"])


def test_bf16_autocast_runs_on_the_cpu(real_data_root: Path, decoded_cache_dir: Path, tmp_path: Path) -> None:
    cfg = small_config(real_data_root, decoded_cache_dir, tmp_path, **{"precision.amp": True, "optim.epochs": 1})
    trainer = build_trainer(cfg)
    assert trainer.parts.precision.amp_dtype == torch.bfloat16
    images, _ = next(iter(trainer.parts.loaders.train))
    assert images.dtype == torch.bfloat16
    result = trainer.fit()
    assert all(math.isfinite(record.train_loss) for record in result.history)
    # The weights stay fp32 under autocast.
    assert all(param.dtype == torch.float32 for param in trainer.parts.module.parameters())


def test_compile_does_not_recompile_between_epochs(
    real_data_root: Path, decoded_cache_dir: Path, tmp_path: Path
) -> None:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    graphs_after_epoch: list[int] = []

    def on_event(event: Any) -> None:
        if isinstance(event, EpochFinished):
            graphs_after_epoch.append(counters["stats"]["unique_graphs"])

    cfg = small_config(
        real_data_root,
        decoded_cache_dir,
        tmp_path,
        **{"precision.compile": True, "optim.epochs": 3, "data.limit_val": 64},
    )
    result = train(cfg, on_event=on_event)
    assert result.epochs_run == 3
    assert graphs_after_epoch[0] >= 1
    # Epochs 2 and 3 reuse the graph compiled in epoch 1: evaluation runs the eager module.
    assert graphs_after_epoch[1] == graphs_after_epoch[0] == graphs_after_epoch[2]
    # The compiled wrapper's state dict prefix never reaches the checkpoint.
    assert not any(key.startswith("_orig_mod") for key in load_checkpoint(tmp_path / "last.pt")["model"])


def _stop_after(stop: StopRequest, *, epoch: int, step: int | None = None):
    def on_event(event: Any) -> None:
        if step is None and isinstance(event, EpochFinished) and event.record.epoch == epoch:
            stop.request("SIGTERM")
        if step is not None and isinstance(event, StepFinished) and (event.epoch, event.step) == (epoch, step):
            stop.request("SIGTERM")

    return on_event


def _without_timing(history: tuple[EpochRecord, ...]) -> list[dict[str, float]]:
    return [
        {key: value for key, value in record.to_dict().items() if key not in TIMING_FIELDS}
        for record in history
    ]


@pytest.mark.parametrize("stop_step", [None, 2], ids=["at-epoch-end", "mid-epoch"])
def test_resume_continues_exactly(
    real_data_root: Path, decoded_cache_dir: Path, tmp_path: Path, stop_step: int | None
) -> None:
    common = {"precision.deterministic": True, "model.dropout": 0.2, "optim.epochs": 2}
    straight_cfg = small_config(real_data_root, decoded_cache_dir, tmp_path / "straight", **common)
    straight = build_trainer(straight_cfg)
    straight_result = straight.fit()

    split_cfg = small_config(real_data_root, decoded_cache_dir, tmp_path / "split", **common)
    stop = StopRequest()
    first = build_trainer(split_cfg, on_event=_stop_after(stop, epoch=1, step=stop_step), stop=stop)
    interrupted = first.fit()
    assert interrupted.interrupted == "SIGTERM"
    saved = load_checkpoint(tmp_path / "split" / "last.pt")
    assert (saved["epoch"], saved["batches_done_in_epoch"]) == ((1, 0) if stop_step is None else (0, stop_step))

    resumed_cfg = replace(split_cfg, run=replace(split_cfg.run, resume=tmp_path / "split" / "last.pt"))
    resumed = build_trainer(resumed_cfg)
    resumed_result = resumed.fit()

    assert resumed_result.epochs_run == 2
    assert _without_timing(resumed_result.history) == _without_timing(straight_result.history)
    assert resumed_result.test == straight_result.test
    for (name, expected), actual in zip(straight.parts.module.state_dict().items(), resumed.parts.module.state_dict().values()):
        assert torch.equal(expected, actual), name
    logged = [json.loads(line)["epoch"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2]


def test_an_existing_run_is_not_overwritten(real_data_root: Path, decoded_cache_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "last.pt").write_bytes(b"an earlier run")
    with pytest.raises(UsageError, match="already holds a run"):
        build_trainer(small_config(real_data_root, decoded_cache_dir, tmp_path))
    assert (tmp_path / "last.pt").read_bytes() == b"an earlier run"


def test_nan_loss_names_the_step_and_keeps_the_last_good_checkpoint(
    real_data_root: Path, decoded_cache_dir: Path, tmp_path: Path
) -> None:
    trainer = build_trainer(small_config(real_data_root, decoded_cache_dir, tmp_path, **{"optim.epochs": 2}))
    real_loss = trainer.parts.step.loss_fn
    steps_per_epoch = trainer.steps_per_epoch
    poisoned_step = steps_per_epoch + 1  # the second step of epoch 2 (global steps count from 0)

    def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = real_loss(logits, labels)
        return loss * math.nan if trainer.parts.step.global_step == poisoned_step else loss

    trainer.parts.step.loss_fn = loss_fn
    snapshots: dict[str, bytes] = {}

    def remember(event: Any) -> None:
        if isinstance(event, StepFinished) and event.epoch == 2 and event.step == 1:
            trainer.checkpointer.wait()  # epoch 1's files are written in the background
            snapshots.update({name: (tmp_path / name).read_bytes() for name in ("last.pt", "best.pt")})

    trainer.on_event = remember
    with pytest.raises(NonFiniteLossError, match=f"global step {poisoned_step}") as raised:
        trainer.fit()
    assert raised.value.exit_code == 1
    assert (tmp_path / "last.pt").read_bytes() == snapshots["last.pt"]
    assert (tmp_path / "best.pt").read_bytes() == snapshots["best.pt"]
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1


class ScriptedTrainer(Trainer):
    """A trainer whose epochs return scripted validation metrics (no real training)."""

    def __init__(self, parts: RunParts, checkpointer: Checkpointer, val_accs: list[float]) -> None:
        super().__init__(parts, checkpointer)
        self.val_accs = val_accs

    def _train_epoch(self, epoch: int) -> EpochRecord | None:
        # Mark the weights with the epoch, so restoring the best weights can be checked.
        with torch.no_grad():
            self.parts.module.fc.bias.fill_(epoch + 1)
        value = self.val_accs[epoch]
        return EpochRecord(epoch + 1, 1.0, 0.5, 1.0 - value, value, 0.1, 1.0, 0.0)


@pytest.mark.parametrize(
    ("val_accs", "patience", "min_delta", "epochs_run", "best_epoch"),
    [
        ([0.5, 0.4, 0.6, 0.7], 0, 0.0, 2, 1),  # patience 0: the first non-improvement stops
        ([0.5, 0.6, 0.6, 0.55, 0.7], 2, 0.0, 4, 2),  # two checks without improvement
        # Binary fractions, so "exactly min_delta" is exact: +0.0625 is no improvement, +0.125 is one.
        ([0.5, 0.5625, 0.625, 0.6875, 0.75], 1, 0.0625, 2, 1),
        ([0.5, 0.625, 0.75, 0.7, 0.5], 1, 0.0625, 4, 3),
        ([0.5, math.nan, 0.9, 0.9], 3, 0.0, 2, 1),  # a NaN metric stops at once
    ],
)
def test_early_stopping_stops_at_the_right_epoch_and_restores_the_best(
    real_data_root: Path,
    decoded_cache_dir: Path,
    tmp_path: Path,
    val_accs: list[float],
    patience: int,
    min_delta: float,
    epochs_run: int,
    best_epoch: int,
) -> None:
    cfg = small_config(
        real_data_root,
        decoded_cache_dir,
        tmp_path,
        **{
            "optim.epochs": len(val_accs),
            "early_stopping.patience": patience,
            "early_stopping.min_delta": min_delta,
            "early_stopping.monitor": "val_acc",
        },
    )
    # The caller builds the parts and takes the run folder; the trainer only loops.
    checkpointer = Checkpointer(tmp_path)
    checkpointer.open_run(cfg, world_size=1)
    trainer = ScriptedTrainer(build_run(cfg), checkpointer, val_accs)
    result = trainer.fit()
    assert result.stopped_early and result.epochs_run == epochs_run
    assert result.best_epoch == best_epoch and result.best_val_acc == val_accs[best_epoch - 1]
    assert float(trainer.parts.module.fc.bias.detach()[0]) == best_epoch  # the best weights were restored
    assert load_checkpoint(tmp_path / "best.pt")["early_stopping"]["best_epoch"] == best_epoch
