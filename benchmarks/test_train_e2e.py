"""`resnet-cifar train` end to end against a plain torchvision loop, in one run (group "train_e2e").

    python -m pytest benchmarks/test_train_e2e.py --benchmark-only

What a user runs, timed whole: the CLI as a subprocess (process start, imports, data decoding,
training, validation, checkpoints, the final test pass) on a fixed real subset, ResNet-50 (cifar
stem), batch 32, 2 epochs, checkpoints on (last.pt every epoch, best.pt when validation improves),
fp32 (``--no-amp``) and ``--amp`` (bf16 autocast + channels_last on the CPU). The baseline is the
loop a user would write with torchvision at the same settings, run in this process: ImageFolder +
DataLoader(2 workers, crop + flip, normalize), torchvision's resnet50 with the same cifar stem,
SGD (Nesterov, weight decay) with one-cycle and label smoothing, a validation pass and one
``torch.save`` per epoch, then the test pass. Both see the same images: 320 train images (32 per
class, linked into class folders) of which the CLI holds out 10% for validation and trains on
--limit-train 224 (7 steps per epoch), 32 validation and 32 test images; the plain loop takes the
same counts from the same folders.

Figures (extra_info): images_per_sec = training images / the whole command's wall time;
epoch_images_per_sec (median, the training part of an epoch), checkpoint_seconds_max (the loop
blocked per epoch: metrics.jsonl's checkpoint_seconds for the CLI, the torch.save for the plain
loop) and checkpoint_seconds (each epoch's), and the goals' verdicts: blocked on checkpoints
<= 0.1 s per epoch, and ``--amp`` >= 2x the plain fp32 loop end to end. The checkpoint goal is
measured twice in the same run: on the machine as it is (the fp32 and amp commands) and once more
with a second process keeping one core busy (test_train_e2e_cli_busy_core, fp32), since a
snapshot's cost depends on the load (fresh memory's page faults did; reused buffers do not). One round each (a ResNet-50 epoch is tens of seconds on two cores), so
the ratio moves with a shared machine's load: it is reported, never asserted. To take some of the
load's swing out, the plain loop runs once more right after the ``--amp`` command, and that
benchmark's speedup_vs_baseline (the summary's "x inter") divides the mean wall time of the two
plain runs around it by its own; "x base" compares with the first plain run alone.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import transforms

from resnet_cifar.data.types import CIFAR10_MEAN, CIFAR10_STD

TRAIN_PER_CLASS = 32
TEST_PER_CLASS = 4
LIMIT_TRAIN = 224  # 7 batches of 32 per epoch
LIMIT_VAL = 32
LIMIT_TEST = 32
BATCH_SIZE = 32
EVAL_BATCH_SIZE = 64
EPOCHS = 2
CHECKPOINT_GOAL_SECONDS = 0.1
AMP_GOAL_RATIO = 2.0
CLI = [str(Path(sys.executable).with_name("resnet-cifar"))]

RESULTS: dict[str, dict[str, float]] = {}  # name -> figures, for the ratios to the baseline


@pytest.fixture(scope="module")
def subset(tmp_path_factory: pytest.TempPathFactory, real_train_dir: Path) -> Path:
    """A fixed real subset in the image-folder layout: the first files of each class, linked."""
    root = tmp_path_factory.mktemp("e2e-data") / "cifar10-jpeg"
    for split, count in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for class_dir in sorted((real_train_dir.parent / split).iterdir()):
            (root / split / class_dir.name).mkdir(parents=True)
            for image in sorted(class_dir.glob("*.jpg"))[:count]:
                (root / split / class_dir.name / image.name).symlink_to(image)
    return root


def cifar_stem_resnet50() -> nn.Module:
    """torchvision's resnet50 with the cifar stem: the same network as `--depth 50`."""
    model = torchvision.models.resnet50(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def plain_torchvision_loop(data: Path, out: Path) -> dict[str, float]:
    """The loop a user writes with torchvision; returns per-epoch training rates and save times."""
    torch.manual_seed(0)
    normalize = transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)
    train_tf = transforms.Compose(
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]
    )
    eval_tf = transforms.Compose([transforms.ToTensor(), normalize])
    order = torch.randperm(TRAIN_PER_CLASS * 10, generator=torch.Generator().manual_seed(0)).tolist()
    train_set = Subset(torchvision.datasets.ImageFolder(data / "train", train_tf), order[:LIMIT_TRAIN])
    val_set = Subset(torchvision.datasets.ImageFolder(data / "train", eval_tf), order[-LIMIT_VAL:])
    test_set = torchvision.datasets.ImageFolder(data / "test", eval_tf)
    train_loader = DataLoader(train_set, batch_size=BATCH_SIZE, shuffle=True, drop_last=True, num_workers=2)
    val_loader = DataLoader(val_set, batch_size=EVAL_BATCH_SIZE, num_workers=2)
    test_loader = DataLoader(test_set, batch_size=EVAL_BATCH_SIZE, num_workers=2)
    model = cifar_stem_resnet50()
    lr = 0.4 * BATCH_SIZE / 512  # the default preset's rule: 0.4 at batch 512, scaled linearly
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=EPOCHS * len(train_loader), pct_start=0.3
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    rates, saves = [], []
    for epoch in range(EPOCHS):
        model.train()
        started, seen = time.perf_counter(), 0
        for images, labels in train_loader:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(images), labels).backward()
            optimizer.step()
            scheduler.step()
            seen += labels.shape[0]
        rates.append(seen / (time.perf_counter() - started))
        evaluate(model, val_loader)
        started = time.perf_counter()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}, out / "last.pt")
        saves.append(time.perf_counter() - started)
    evaluate(model, test_loader)
    return {"epoch_images_per_sec": statistics.median(rates), "checkpoint_seconds_max": max(saves), "epochs": EPOCHS}


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    for images, labels in loader:
        correct += int((model(images).argmax(1) == labels).sum())
        total += labels.shape[0]
    return correct / max(total, 1)


def run_cli(data: Path, out: Path, *, amp: bool) -> dict[str, float]:
    """`resnet-cifar train` as a user types it; its figures from --json and metrics.jsonl."""
    command = [
        *CLI, "train", "--json", "--data-dir", str(data), "--out", str(out), "--device", "cpu",
        "--depth", "50", "--batch-size", str(BATCH_SIZE), "--eval-batch-size", str(EVAL_BATCH_SIZE),
        "--epochs", str(EPOCHS), "--limit-train", str(LIMIT_TRAIN), "--limit-val", str(LIMIT_VAL),
        "--limit-test", str(LIMIT_TEST), "--amp" if amp else "--no-amp", "--loader", "tensor",
    ]  # fmt: skip
    env = {**os.environ, "RESNET_CIFAR_CACHE": str(out.parent / "cache")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stderr[-3000:]}"
    result = json.loads(done.stdout)
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [record["epoch"] for record in epochs] == list(range(1, EPOCHS + 1))
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file()  # checkpoints were on
    return {
        "epoch_images_per_sec": statistics.median(record["images_per_sec"] for record in epochs),
        "checkpoint_seconds_max": max(record["checkpoint_seconds"] for record in epochs),
        "checkpoint_seconds": [record["checkpoint_seconds"] for record in epochs],
        "epochs": result["epochs_run"],
        "train_seconds": result["train_seconds"],
        "test_acc": result["test_acc"],
    }


def record(benchmark, name: str, figures: dict[str, float], wall_seconds: float, *, dtype: str) -> None:
    images = EPOCHS * LIMIT_TRAIN
    figures = {**figures, "images_per_sec": images / wall_seconds, "wall_seconds": wall_seconds}
    RESULTS[name] = figures
    blocked = figures["checkpoint_seconds_max"]
    benchmark.extra_info.update(
        images_per_sec=round(figures["images_per_sec"], 3),
        wall_seconds=round(wall_seconds, 2),
        epoch_images_per_sec=round(figures["epoch_images_per_sec"], 3),
        checkpoint_seconds_max=round(blocked, 4),
        checkpoint_seconds=[round(seconds, 4) for seconds in figures.get("checkpoint_seconds", [blocked])],
        goal_checkpoint_blocked_le_0_1_s="met" if blocked <= CHECKPOINT_GOAL_SECONDS else "MISSED",
        device="cpu",
        dtype=dtype,
        batch_size=BATCH_SIZE,
        compile=False,
        epochs=EPOCHS,
        train_images=images,
        threads=torch.get_num_threads(),
        torch_version=torch.__version__,
    )
    baseline = RESULTS.get("baseline")
    if baseline is not None and name != "baseline":
        ratio = figures["images_per_sec"] / baseline["images_per_sec"]
        benchmark.extra_info["ratio_vs_plain_fp32_end_to_end"] = round(ratio, 3)
        benchmark.extra_info["ratio_vs_plain_fp32_epoch"] = round(
            figures["epoch_images_per_sec"] / baseline["epoch_images_per_sec"], 3
        )
        if dtype == "bfloat16":
            benchmark.extra_info["goal_amp_2x_plain_fp32"] = "met" if ratio >= AMP_GOAL_RATIO else "MISSED"


def timed(benchmark, function) -> tuple[dict[str, float], float]:
    """One round (a whole training run), timed with the wall clock around it."""
    box: dict[str, object] = {}

    def run() -> None:
        started = time.perf_counter()
        box["figures"] = function()
        box["seconds"] = time.perf_counter() - started

    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    return box["figures"], box["seconds"]  # type: ignore[return-value]


@pytest.mark.benchmark(group="train_e2e")
def test_train_e2e_baseline_torchvision_fp32(benchmark, subset: Path, tmp_path: Path) -> None:
    figures, seconds = timed(benchmark, lambda: plain_torchvision_loop(subset, tmp_path))
    record(benchmark, "baseline", figures, seconds, dtype="float32")
    assert figures["epoch_images_per_sec"] > 0 and (tmp_path / "last.pt").is_file()


@pytest.mark.benchmark(group="train_e2e")
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "amp"])
def test_train_e2e_cli(benchmark, subset: Path, tmp_path: Path, amp: bool) -> None:
    figures, seconds = timed(benchmark, lambda: run_cli(subset, tmp_path / "run", amp=amp))
    record(benchmark, f"cli_{'amp' if amp else 'fp32'}", figures, seconds, dtype="bfloat16" if amp else "float32")
    assert figures["epochs"] == EPOCHS and 0.0 <= figures["test_acc"] <= 1.0
    assert "ratio_vs_plain_fp32_end_to_end" in benchmark.extra_info, "the baseline runs first, in the same run"
    if amp:
        # The closing plain run: the goal's ratio against both plain runs around the measured ones.
        started = time.perf_counter()
        plain_torchvision_loop(subset, tmp_path)
        closing = time.perf_counter() - started
        plain_mean = (RESULTS["baseline"]["wall_seconds"] + closing) / 2
        benchmark.extra_info["plain_fp32_closing_wall_seconds"] = round(closing, 2)
        benchmark.extra_info["speedup_vs_baseline"] = round(plain_mean / seconds, 3)
        verdict = "met" if plain_mean / seconds >= AMP_GOAL_RATIO else "MISSED"
        benchmark.extra_info["goal_amp_2x_plain_fp32"] = verdict


# One core kept busy by a plain Python loop (bounded: it stops by itself after an hour).
SPINNER = "import time\nend = time.monotonic() + 3600\nwhile time.monotonic() < end:\n    pass\n"


@pytest.mark.benchmark(group="train_e2e")
def test_train_e2e_cli_busy_core(benchmark, subset: Path, tmp_path: Path) -> None:
    """`resnet-cifar train --no-amp` while another process keeps one of the cores busy: the
    checkpoint stall under load (its ratio to the plain loop is reported like the others')."""
    spinner = subprocess.Popen([sys.executable, "-c", SPINNER])
    try:
        figures, seconds = timed(benchmark, lambda: run_cli(subset, tmp_path / "run", amp=False))
    finally:
        spinner.kill()
        spinner.wait()
    record(benchmark, "cli_fp32_busy_core", figures, seconds, dtype="float32")
    benchmark.extra_info["busy_core"] = True
    assert figures["epochs"] == EPOCHS and len(figures["checkpoint_seconds"]) == EPOCHS
