"""The main job's loop: one host sync per step, checkpoints written in the background (and their
failures reported), --checkpoint-every, --target-acc, --eval-from and the per-epoch timings."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from resnet_cifar.config import resolve_config
from resnet_cifar.distributed import STOP_AGREEMENT_STEPS
from resnet_cifar.engine import checkpointer as checkpointer_module
from resnet_cifar.engine.checkpointer import BEST, LAST, Checkpointer
from resnet_cifar.engine.precision import Precision
from resnet_cifar.engine.step import TrainStep, build_ema, build_loss
from resnet_cifar.engine.trainer import EpochFinished, StepFinished, build_trainer
from resnet_cifar.errors import ResnetCifarError


def small(real_data_root: Path, cache: Path, out: Path, **more: Any):
    # ResNet-18 with the ImageNet stem (32 px shrinks to 8 px at once) on 32 training images in
    # batches of 8: 4 steps an epoch, the loop's every path, at a fraction of the cost. 64 to
    # validate (stratified: every class is there, so a barely trained model scores above 0.01).
    settings = {
        "data.data_dir": real_data_root, "data.cache_dir": cache, "data.batch_size": 8, "data.eval_batch_size": 64,
        "data.limit_train": 32, "data.limit_val": 64, "data.limit_test": 64, "model.depth": 18,
        "model.stem": "imagenet", "precision.device": "cpu", "optim.epochs": 2, "run.out_dir": out,
    }  # fmt: skip
    return resolve_config(overrides={**settings, **more})


class SyncCounter:
    """Counts the host syncs a CPU run would make on a GPU: reading a tensor's value on the host.

    ``where`` keeps the caller of each read (file:line), so a failure says which code synced.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.where: list[str] = []
        for name in ("item", "__float__", "__int__", "__bool__", "tolist"):
            original = getattr(torch.Tensor, name)

            def counted(tensor: torch.Tensor, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
                self.count += 1
                caller = sys._getframe(1)
                self.where.append(f"{Path(caller.f_code.co_filename).name}:{caller.f_lineno}")
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)


# Every preset's CUDA path through the loop, combined so each path is covered by one short run:
# EMA, the three augmentation policies, mixup and cutmix (each alone and together), clipping.
SYNC_PATHS = {
    "default": {},
    "ema+autoaugment+mixup": {"optim.ema": True, "data.augment": "autoaugment", "data.mixup": 0.2},
    "randaugment+cutmix+grad_clip": {"data.augment": "randaugment", "data.cutmix": 1.0, "optim.grad_clip": 1.0},
    "trivialaugment+mixup+cutmix": {"data.augment": "trivialaugment", "data.mixup": 0.2, "data.cutmix": 1.0},
}


@pytest.mark.parametrize("settings", SYNC_PATHS.values(), ids=SYNC_PATHS.keys())
def test_a_training_step_syncs_the_host_at_most_once(
    real_data_root: Path,
    decoded_cache_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    settings: dict[str, Any],
) -> None:
    cfg = small(real_data_root, decoded_cache_dir, tmp_path / "run", **{"optim.epochs": 1, **settings})
    marks: list[int] = []
    trainer = build_trainer(cfg, on_event=lambda event: marks.append(counter.count) if isinstance(event, StepFinished) else None)
    counter = SyncCounter(monkeypatch)
    trainer.fit()
    assert len(marks) == 4
    # Between two steps' events (the next batch's loading and augmentation, the step, the EMA
    # update): the step's own loss.item() (the NaN guard) and nothing else.
    windows = [counter.where[earlier:later] for earlier, later in zip(marks, marks[1:])]
    assert [len(window) for window in windows] == [1, 1, 1], windows
    assert all(window[0].startswith("step.py:") for window in windows), windows


def test_an_fp16_step_syncs_only_for_the_loss_and_the_scalers_check(monkeypatch: pytest.MonkeyPatch) -> None:
    # fp16 is a CUDA choice; its step is the same code on the CPU with an enabled scaler.
    precision = Precision(device=torch.device("cpu"), amp=True, amp_dtype=torch.float16, channels_last=False)
    torch.manual_seed(0)
    # A small conv net (CPU fp16 convolutions are slow); batch norm brings the EMA's int buffers.
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    step = TrainStep(model, optimizer, build_loss(0.1), precision=precision, scaler=scaler, grad_clip=1.0,
                     ema=build_ema(model, 0.9))  # fmt: skip
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    step(images, labels)  # the first step: the scaler's and the EMA's first-use work
    counter = SyncCounter(monkeypatch)
    for _ in range(3):
        step(images, labels)
    # Per step: the loss's NaN guard (step.py) and the GradScaler's own inf check (torch's).
    assert counter.count == 6, counter.where
    assert sorted({where.split(":")[0] for where in counter.where}) == ["grad_scaler.py", "step.py"], counter.where


TORCHRUN_SYNC_SCRIPT = r"""
import json, os, sys
from pathlib import Path
import torch
sys.path.insert(0, sys.argv[3])
from test_lean_loop import SyncCounter, small
from resnet_cifar.distributed import process_group, read_env
from resnet_cifar.engine.trainer import StepFinished, build_trainer


class Patcher:  # pytest's monkeypatch.setattr, for a script
    def setattr(self, target, name, value):
        setattr(target, name, value)


job = read_env(os.environ)
cfg = small(Path(sys.argv[1]), Path(os.environ["RESNET_CIFAR_CACHE"]), Path(sys.argv[2]) / "run",
            **{"optim.epochs": 1, "data.batch_size": 4, "data.limit_train": 96, "data.limit_val": 16,
               "data.limit_test": 16})
with process_group(job, torch.device("cpu")):
    marks = []
    trainer = build_trainer(cfg, distributed=job,
                      on_event=lambda event: marks.append(counter.count) if isinstance(event, StepFinished) else None)
    counter = SyncCounter(Patcher())
    trainer.fit()
    windows = [counter.where[a:b] for a, b in zip(marks, marks[1:])]
    (Path(sys.argv[2]) / f"rank{job.rank}.json").write_text(json.dumps(windows))
"""


def test_a_torchrun_step_syncs_once_and_agrees_on_stops_every_few_steps(
    real_data_root: Path, decoded_cache_dir: Path, tmp_path: Path
) -> None:
    script = tmp_path / "sync.py"
    script.write_text(TORCHRUN_SYNC_SCRIPT)
    env = {**os.environ, "RESNET_CIFAR_CACHE": str(decoded_cache_dir), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
               str(real_data_root), str(tmp_path), str(Path(__file__).parent)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        windows = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert len(windows) == 11  # 12 steps of 4 images per rank
        # The window after step k holds the stop agreement when k is a multiple of 8, else only
        # the next step's loss read.
        for after_step, window in enumerate(windows, start=1):
            expected = 2 if after_step % STOP_AGREEMENT_STEPS == 0 else 1
            assert len(window) == expected, (rank, after_step, window)
            assert window[-1].startswith("step.py:"), (rank, after_step, window)
            if expected == 2:
                assert window[0].startswith("distributed.py:"), (rank, after_step, window)


@pytest.fixture(scope="module")
def two_epoch_run(real_data_root: Path, decoded_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One 2-epoch run of ``small`` with every checkpoint write recorded (name, bytes), trained once
    for the tests that read it: (run folder, FitResult, writes). Its target, 1.0, is never reached,
    so it trains and writes exactly as a run without one (the target only ends a run early)."""
    writes: list[tuple[str, bytes]] = []
    original = checkpointer_module.write_checkpoint_bytes

    def recording(path: Path, data: Any) -> None:
        writes.append((Path(path).name, bytes(data)))
        original(path, data)

    out = tmp_path_factory.mktemp("two-epochs") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpointer_module, "write_checkpoint_bytes", recording)
        result = build_trainer(small(real_data_root, decoded_cache_dir, out, **{"run.target_acc": 1.0})).fit()
    return out, result, writes


def test_checkpoints_are_written_in_the_background_from_one_serialization(two_epoch_run) -> None:
    out, result, writes = two_epoch_run
    assert result.epochs_run == 2
    names = [name for name, _ in writes]
    assert names.count(LAST) == 2 and 1 <= names.count(BEST) <= 2
    # Epoch 1 is always the best so far: its best.pt is the same bytes as its last.pt (one
    # snapshot, one serialization).
    assert [name for name, _ in writes[:2]] == [LAST, BEST] and writes[0][1] == writes[1][1]
    final_last = [data for name, data in writes if name == LAST][-1]
    assert (out / LAST).read_bytes() == final_last
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for record in history:
        assert record["checkpoint_seconds"] > 0 and record["eval_seconds"] > 0
        assert record["epoch_seconds"] > record["eval_seconds"]
    # The checkpoint's copy of the last epoch record carries the blocked time it measured too.
    saved = torch.load(out / LAST, weights_only=True)["history"][-1]
    assert saved["checkpoint_seconds"] == pytest.approx(history[-1]["checkpoint_seconds"], abs=0.05)
    assert not list(out.glob(".*.tmp"))


def test_a_failed_background_write_fails_the_run_with_one_line(
    real_data_root: Path, decoded_cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    calls = {"n": 0}
    original = checkpointer_module.write_checkpoint_bytes

    def second_write_fails(path: Path, data: Any) -> None:
        calls["n"] += 1
        if calls["n"] >= 3:  # epoch 1 wrote last.pt and best.pt; epoch 2's first write fails
            raise ResnetCifarError(f"could not write checkpoint {path}: No space left on device")
        original(path, data)

    monkeypatch.setattr(checkpointer_module, "write_checkpoint_bytes", second_write_fails)
    trainer = build_trainer(small(real_data_root, decoded_cache_dir, out))
    with pytest.raises(ResnetCifarError, match=r"could not write checkpoint .*last.pt: No space left on device"):
        trainer.fit()
    # The previous good checkpoint is intact and loads; no result was reported.
    assert torch.load(out / LAST, weights_only=True)["epoch"] == 1
    assert not (out / "result.json").exists()


@pytest.fixture(scope="module")
def three_epoch_run(real_data_root: Path, decoded_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One 3-epoch run of ``small`` with --checkpoint-every 2 and --eval-from 3, no target, trained
    once for the tests that read it: (FitResult, events, (epoch, names) of every Checkpointer.save).
    The two settings are independent: one picks the epochs that write last.pt, the other the
    epochs that validate (and so may write best.pt)."""
    saved: list[tuple[int, tuple[str, ...]]] = []
    original = Checkpointer.save

    def recording(self: Checkpointer, names: Any, payload: dict[str, Any], **kwargs: Any) -> float:
        saved.append((payload["epoch"], tuple(names)))
        return original(self, names, payload, **kwargs)

    settings = {"optim.epochs": 3, "run.checkpoint_every": 2, "run.eval_from": 3}
    cfg = small(real_data_root, decoded_cache_dir, tmp_path_factory.mktemp("three-epochs") / "run", **settings)
    events: list[Any] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Checkpointer, "save", recording)
        result = build_trainer(cfg, on_event=events.append).fit()
    return result, events, saved


def test_checkpoint_every_writes_last_pt_every_n_epochs_and_at_the_end(three_epoch_run) -> None:
    _, _, saved = three_epoch_run
    last_epochs = [epoch for epoch, names in saved if LAST in names]
    assert last_epochs == [2, 3]  # every 2nd epoch, and the last one


def test_target_accuracy_stops_the_run_and_is_reported(
    real_data_root: Path, decoded_cache_dir: Path, tmp_path: Path, two_epoch_run, three_epoch_run
) -> None:
    reached = build_trainer(
        small(real_data_root, decoded_cache_dir, tmp_path / "a", **{"optim.epochs": 3, "run.target_acc": 0.01})
    ).fit()
    assert reached.epochs_run == 1 and reached.reached_target is True and reached.time_to_target_s > 0
    assert reached.test_acc is not None and "reached the target" in reached.stop_reason
    assert reached.time_to_target_s <= reached.train_seconds
    result = json.loads((tmp_path / "a" / "result.json").read_text())
    assert result["reached_target"] is True and result["compile_seconds"] == 0.0
    _, missed, _ = two_epoch_run  # the target 1.0
    assert missed.epochs_run == 2 and missed.reached_target is False and missed.time_to_target_s is None
    plain, _, _ = three_epoch_run  # no target
    assert plain.reached_target is None


def test_eval_from_validates_only_the_last_epochs(three_epoch_run) -> None:
    result, events, _ = three_epoch_run
    history = result.history
    assert [record.val_count for record in history] == [0, 0, 64]
    assert [record.validated for record in history] == [False, False, True]
    assert math.isnan(history[0].val_acc) and history[0].eval_seconds == 0.0
    assert result.best_epoch == 3  # best.pt comes from a validated epoch
    assert [event.is_best for event in events if isinstance(event, EpochFinished)] == [False, False, True]


def test_the_last_epoch_validates_whatever_eval_from_says(
    real_data_root: Path, decoded_cache_dir: Path, tmp_path: Path
) -> None:
    # The fast preset validates from epoch 15: a 2-epoch run of it still validates its last epoch.
    cfg = small(real_data_root, decoded_cache_dir, tmp_path / "run", **{"optim.epochs": 2, "run.eval_from": 15})
    result = build_trainer(cfg).fit()
    assert [record.validated for record in result.history] == [False, True] and result.best_epoch == 2


def test_the_fast_preset_resolves_to_its_recipe(tmp_path: Path) -> None:
    cfg = resolve_config(preset="fast", overrides={"data.data_dir": tmp_path})
    assert cfg.optim.epochs == 20 and cfg.optim.warmup_epochs == 4.0 and cfg.run.eval_from == 15
    assert cfg.run.test_tta is True and cfg.model.depth == 50 and cfg.optim.lr == 0.4
