"""Atomic checkpoint writes (through the run folder's Checkpointer, the one writer), safe loading
(never executing a pickle) and RNG state round trips."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from resnet_cifar.engine.checkpoint import capture_rng_state, load_checkpoint, payload_digest, restore_rng_state
from resnet_cifar.engine.checkpointer import CHECKPOINT_FORMAT, RESUME_KEYS, ResumeCheckpoint, read_trained_checkpoint
from resnet_cifar.engine.early_stopping import EarlyStopping
from resnet_cifar.engine.optim import build_optimizer, build_scheduler
from resnet_cifar.engine.precision import Precision
from resnet_cifar.engine.step import TrainStep, build_ema, build_loss
from resnet_cifar.errors import DataError, ResnetCifarError, UsageError

from helpers import save_checkpoint


SCHEDULE = {"name": "multistep", "epochs": 3, "steps_per_epoch": 2, "milestones": (2,), "warmup_epochs": 1}


def _assert_same(actual: Any, expected: Any, where: str = "payload") -> None:
    """Deep equality for nested dicts/lists/tuples of tensors and plain values."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor) and actual.dtype == expected.dtype, where
        assert torch.equal(actual, expected), where
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for key in expected:
            _assert_same(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert type(actual) is type(expected) and len(actual) == len(expected), where
        for index, (a, e) in enumerate(zip(actual, expected)):
            _assert_same(a, e, f"{where}[{index}]")
    else:
        assert actual == expected and type(actual) is type(expected), where


def _trainer_like_payload() -> dict[str, Any]:
    """A payload like the trainer's, from real parts after a few real steps."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    optimizer = build_optimizer(model, name="sgd", lr=0.1)
    scheduler = build_scheduler(optimizer, **SCHEDULE)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0, enabled=True)
    precision = Precision(device=torch.device("cpu"), amp=False, amp_dtype=None, channels_last=False)
    ema = build_ema(model, 0.9)
    step = TrainStep(
        model, optimizer, build_loss(0.1), precision=precision, scaler=scaler, scheduler=scheduler, ema=ema
    )
    for _ in range(3):
        step(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]))
    stopper = EarlyStopping("val_acc", patience=2)
    stopper.step(0.5, epoch=1)
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "ema": ema.state_dict(),
        "early_stopping": stopper.state_dict(),
        "rng": capture_rng_state(),
        "epoch": 1,
        "global_step": step.global_step,
        "batches_done_in_epoch": 1,
        "loader_seed": 1234,
        "config": {
            "optim": {"lr": 0.1, "milestones": [2, 3], "betas": (0.9, 0.999)},
            "run": {"out": "runs/a", "seed": None, "deterministic": True},
        },
        "metrics": [{"epoch": 1, "val_acc": 0.5, "val_loss": float("inf"), "stopped": False}],
    }


def test_trainer_payload_round_trips_with_weights_only(tmp_path: Path) -> None:
    payload = _trainer_like_payload()
    path = tmp_path / "last.pt"
    save_checkpoint(path, payload)
    loaded = load_checkpoint(path)
    # The checkpointer stamps the format, the run's id and the digest of everything else.
    stamps = {"run_id": loaded["run_id"], "digest": payload_digest(loaded)}
    _assert_same(loaded, {"format": CHECKPOINT_FORMAT, **payload, **stamps})
    # and it loads back into fresh objects
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    model.load_state_dict(loaded["model"])
    optimizer = build_optimizer(model, name="sgd", lr=0.1)
    optimizer.load_state_dict(loaded["optimizer"])
    scheduler = build_scheduler(optimizer, **SCHEDULE)
    scheduler.load_state_dict(loaded["scheduler"])
    assert scheduler.last_epoch == 3
    EarlyStopping("val_acc", patience=2).load_state_dict(loaded["early_stopping"])


def test_save_replaces_the_previous_file_and_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path = tmp_path / "runs" / "best.pt"  # the folder is created
    save_checkpoint(path, {"model": {"w": torch.zeros(2)}, "epoch": 1})
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "epoch": 2})
    assert load_checkpoint(path)["epoch"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]
    assert len(synced) == 4  # the file and the folder, for each save


def _write_then_fail(obj: Any, handle: Any, *args: Any, **kwargs: Any) -> None:
    handle.write(b"PK\x03\x04 half a checkpoint")
    raise RuntimeError("simulated crash during torch.save")


@pytest.mark.parametrize("failure", ["torch.save", "os.replace", "interrupt"])
def test_crash_during_write_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.arange(3)}, "epoch": 4})
    before = path.read_bytes()
    if failure == "torch.save":
        monkeypatch.setattr(torch, "save", _write_then_fail)
        expected: type[BaseException] = RuntimeError
    elif failure == "os.replace":
        def failing_replace(src: Any, dst: Any) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "replace", failing_replace)
        expected = ResnetCifarError
    else:
        def interrupted(obj: Any, handle: Any, *args: Any, **kwargs: Any) -> None:
            handle.write(b"partial")
            raise KeyboardInterrupt

        monkeypatch.setattr(torch, "save", interrupted)
        expected = KeyboardInterrupt
    with pytest.raises(expected) as caught:
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "epoch": 5})
    if failure == "os.replace":
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_missing_checkpoint_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="checkpoint not found: .*nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(UsageError, match="checkpoint not found"):
        load_checkpoint(tmp_path)  # a folder


class _Hostile:
    """Unpickling this would create the marker file: exactly what a safe loader must never do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("container", ["torch.save", "raw pickle"])
def test_hostile_pickle_is_refused_and_never_executed(tmp_path: Path, container: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"model": {"w": torch.zeros(1)}, "surprise": _Hostile(marker)}
    if container == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DataError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert str(path) in message and "refused without running it" in message
    assert "\n" not in message and "\x1b" not in message
    assert not marker.exists()
    # The file really is hostile: an unsafe load runs its code (in this test's temp folder).
    if container == "torch.save":
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker.exists()


def test_truncated_and_foreign_files_are_data_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    save_checkpoint(good, _trainer_like_payload())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.pt"
    text.write_text("this is not a checkpoint\n")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for path in (truncated, text, empty):
        with pytest.raises(DataError) as caught:
            load_checkpoint(path)
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_files_without_a_checkpoint_dict_are_data_errors(tmp_path: Path) -> None:
    tensor_file = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor_file)
    with pytest.raises(DataError, match="tensor.pt is not a checkpoint: it holds a Tensor"):
        load_checkpoint(tensor_file)
    no_model = tmp_path / "no_model.pt"
    torch.save({"epoch": 1}, no_model)
    with pytest.raises(DataError, match="no_model.pt .*missing model"):
        load_checkpoint(no_model)
    assert load_checkpoint(no_model, require=())["epoch"] == 1


def test_a_checkpoint_of_another_format_is_refused_by_every_reader(tmp_path: Path) -> None:
    path = tmp_path / "future.pt"
    save_checkpoint(path, {**{key: {} for key in RESUME_KEYS}, "format": CHECKPOINT_FORMAT + 1})
    for read in (ResumeCheckpoint.read, read_trained_checkpoint):
        with pytest.raises(DataError, match=rf"future.pt: unsupported checkpoint format {CHECKPOINT_FORMAT + 1} "):
            read(path)


def test_rng_state_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    random.seed(1)
    torch.manual_seed(1)
    state = capture_rng_state()
    assert set(state) == {"python", "torch", "cuda"}
    expected = ([random.random() for _ in range(3)], torch.rand(4), torch.randint(0, 100, (5,)))
    save_checkpoint(tmp_path / "rng.pt", {"model": {}, "rng": state})
    random.seed(99)
    torch.manual_seed(99)
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    again = ([random.random() for _ in range(3)], torch.rand(4), torch.randint(0, 100, (5,)))
    assert again[0] == expected[0]
    assert torch.equal(again[1], expected[1]) and torch.equal(again[2], expected[2])


def test_malformed_rng_state_is_a_data_error() -> None:
    with pytest.raises(DataError, match="RNG state"):
        restore_rng_state({"python": (3, (1, 2), None), "torch": torch.zeros(3), "cuda": []})
    with pytest.raises(DataError, match="RNG state"):
        restore_rng_state({"torch": torch.get_rng_state()})
