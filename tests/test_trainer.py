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

from resnet_cifar.engine.checkpoint import load_checkpoint
from resnet_cifar.engine.step import NonFiniteLossError
from resnet_cifar.engine.build import RunParts, build_run
from resnet_cifar.engine.checkpointer import CHECKPOINT_KEYS, Checkpointer
from resnet_cifar.engine.trainer import (
    EpochFinished,
    EpochRecord,
    FitResult,
    StepFinished,
    StopRequest,
    Trainer,
    build_trainer,
    train,
)
from resnet_cifar.errors import UsageError

from helpers import small_config, without_timing


@pytest.mark.parametrize("loader", ["tensor", "dali"])
def test_two_epochs_learn_and_write_the_run_files(
    real_data_root: Path, decoded_cache_dir: Path, tmp_path: Path, loader: str
) -> None:
    # 1,024 images in 64 steps of 32 with AdamW (peak rate 0.002): half the images of the smoke
    # preset's SGD at batch 64, which needs 2,048 to clear 0.2 here. Measured validation accuracy
    # after 2 epochs: 0.264, 0.25 and 0.26 on the tensor loader (--seed 0, 1, 2), 0.27 on DALI
    # (seed 0); SGD on the same images and steps gave 0.208 (rate 0.05), 0.218 (0.025), 0.132 (0.1).
    learns = {"optim.optimizer": "adamw", "optim.lr": 0.002, "data.batch_size": 32, "data.limit_train": 1024}
    cfg = small_config(
        real_data_root,
        decoded_cache_dir,
        tmp_path,
        **{"data.loader": loader, **learns, "data.limit_val": 500, "data.limit_test": 500},
    )
    events: list[Any] = []
    result = train(cfg, on_event=events.append)
    assert result.epochs_run == 2 and not result.stopped_early and result.interrupted is None
    # Chance is 0.10; 500 validation images put 0.2 some seven standard deviations above it.
    assert result.best_val_acc is not None and result.best_val_acc > 0.2, result.history
    assert result.test_acc is not None and result.test_acc > 0.15
    assert [type(event).__name__ for event in events].count("StepFinished") == 2 * (1024 // 32)
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
    # 48 images in 3 steps (the fewest one-cycle takes), 16 to validate and test: bf16 is slow on a CPU.
    smaller = {"data.batch_size": 16, "data.limit_train": 48, "data.limit_val": 16, "data.limit_test": 16}
    cfg = small_config(real_data_root, decoded_cache_dir, tmp_path, **{"precision.amp": True, "optim.epochs": 1, **smaller})
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
        # Two steps an epoch (32 images in batches of 16), so each epoch runs the compiled graph more than once.
        **{"precision.compile": True, "optim.epochs": 3, "data.batch_size": 16, "data.limit_train": 32,
           "data.limit_val": 16, "data.limit_test": 16},
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


# The runs a resume is compared with: deterministic, with dropout (its random draws must resume too);
# 32 training images in batches of 8 (4 steps an epoch, so step 2 is mid-epoch), 32 to validate and test.
RESUMED_RUN = {
    "precision.deterministic": True, "model.dropout": 0.2, "optim.epochs": 2, "data.batch_size": 8,
    "data.limit_train": 32, "data.limit_val": 32, "data.limit_test": 32,
}  # fmt: skip


@pytest.fixture(scope="module")
def straight_run(
    real_data_root: Path, decoded_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[FitResult, dict[str, torch.Tensor]]:
    """RESUMED_RUN trained without a stop, once for every resume compared with it: its result and weights."""
    out = tmp_path_factory.mktemp("straight")
    straight = build_trainer(small_config(real_data_root, decoded_cache_dir, out, **RESUMED_RUN))
    return straight.fit(), straight.parts.module.state_dict()


@pytest.mark.parametrize("stop_step", [None, 2], ids=["at-epoch-end", "mid-epoch"])
def test_resume_continues_exactly(
    real_data_root: Path,
    decoded_cache_dir: Path,
    tmp_path: Path,
    straight_run: tuple[FitResult, dict[str, torch.Tensor]],
    stop_step: int | None,
) -> None:
    straight_result, straight_weights = straight_run
    split_cfg = small_config(real_data_root, decoded_cache_dir, tmp_path / "split", **RESUMED_RUN)
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
    assert without_timing(resumed_result.history) == without_timing(straight_result.history)
    assert resumed_result.test == straight_result.test
    for (name, expected), actual in zip(straight_weights.items(), resumed.parts.module.state_dict().values()):
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
    # 32 images in batches of 16: two steps an epoch, the fewest that put a step before the poisoned one.
    smaller = {"data.batch_size": 16, "data.limit_train": 32, "data.limit_val": 32, "data.limit_test": 32}
    trainer = build_trainer(small_config(real_data_root, decoded_cache_dir, tmp_path, **{"optim.epochs": 2, **smaller}))
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
    # No write may still be running behind the failure: the files are read only once none can be.
    trainer.checkpointer.wait()
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
        # A finite loss beside a NaN accuracy: what early stopping decides on is the metric (a NaN
        # loss is a diverged run, which stops with an error: tests/test_records_cli.py).
        loss = 1.0 - value if math.isfinite(value) else 1.0
        return EpochRecord(epoch + 1, 1.0, 0.5, loss, value, 0.1, 1.0, 0.0)


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
            # Scripted epochs train nothing: only the final test pass reads images.
            "data.limit_test": 32,
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
