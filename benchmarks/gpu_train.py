"""Timed from-scratch training with the default recipe, test accuracy after every epoch, as JSON.

    python benchmarks/gpu_train.py --data-dir DATA --out-json OUT/train.json          # the GPU run
    python benchmarks/gpu_train.py --data-dir SMALL --out-json t.json --device cpu \\
        --no-compile --epochs 2 --batch-size 32 --limit-train 64 ...                 # a dry run

It builds the library's ``Trainer`` from a preset (default: "default", 30 epochs of one-cycle SGD
at batch 512) with bf16 autocast, channels_last and ``torch.compile`` on, and hooks its events:

- compilation is done and timed BEFORE training, apart: a few steps on the first real batch,
  after which the weights, batch-norm statistics, optimizer, scheduler and scaler are put back to
  their initial state (``load_state_dict`` copies in place, so the compiled graph stays valid);
- training time counts the training loop only (loader included: the images/s the trainer
  reports per epoch); validation, the extra test evaluation and the metric files are outside it;
- after every epoch the model is evaluated on the test split (the goal is stated in test
  accuracy), and the JSON file is rewritten, so a run cut short still leaves its epochs behind.

Checkpoints are not written (the benchmark measures training, not disk I/O) unless
``--checkpoint-dir`` is given, which also resumes from ``last.pt`` there: the way to split a long
run (``--preset long``) over consecutive calls. ``--max-wall-seconds`` stops training cleanly
(after the current step) once that much time has passed since the script started.

The JSON layout (every time in seconds):
    {"status": "running" | "finished" | "stopped" | "interrupted" | "failed", "config": {...}, "environment": {...},
     "setup_seconds", "compile_seconds", "warmup_steps", "epochs": [{"epoch", "train_loss",
     "train_acc", "val_acc", "test_acc", "lr", "train_seconds", "cumulative_train_seconds",
     "images_per_sec", "test_eval_seconds", "wall_seconds"}, ...],
     "summary": {"final_test_acc", "best_test_acc", "total_train_seconds", "train_images",
     "end_to_end_images_per_sec", "first_epoch_at_or_above_target", "seconds_to_target",
     "target_test_acc", "target_seconds", "target_met"}}
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from resnet_cifar.config import PRESETS, TrainConfig, resolve_config
from resnet_cifar.engine.checkpointer import Checkpointer
from resnet_cifar.engine.trainer import EpochFinished, Event, RunStarted, StepFinished, StopRequest, Trainer
from resnet_cifar.errors import ResnetCifarError
from resnet_cifar.evaluation import evaluate

TARGET_TEST_ACC = 0.94
TARGET_SECONDS = 60.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="CIFAR-10 folder (image folders or a release)")
    parser.add_argument("--out-json", type=Path, required=True, help="where the figures go (rewritten every epoch)")
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--epochs", type=int, help="instead of the preset's (its warm-up phase scales along)")
    parser.add_argument("--batch-size", type=int, help="default: the preset's (512)")
    parser.add_argument("--eval-batch-size", type=int)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--loader", default="auto", choices=("auto", "tensor", "dali"))
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="eager (dry runs on the CPU)")
    parser.add_argument("--no-amp", dest="amp", action="store_false", help="float32 instead of bf16 autocast")
    parser.add_argument("--limit-train", type=int)
    parser.add_argument("--limit-val", type=int)
    parser.add_argument("--limit-test", type=int)
    parser.add_argument("--cache-dir", type=Path, help="decoded-image cache (a second run loads faster)")
    parser.add_argument("--warmup-steps", type=int, default=3, help="compile/autotune steps before training")
    parser.add_argument("--max-wall-seconds", type=float, help="stop cleanly after this long (since start)")
    parser.add_argument("--checkpoint-dir", type=Path, help="write checkpoints there and resume from its last.pt")
    parser.add_argument("--target-acc", type=float, default=TARGET_TEST_ACC)
    parser.add_argument("--target-seconds", type=float, default=TARGET_SECONDS)
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs <= 0:
        parser.error(f"--epochs must be positive, got {args.epochs}")
    if args.warmup_steps < 1:
        parser.error(f"--warmup-steps must be at least 1, got {args.warmup_steps}")
    if not args.data_dir.is_dir():
        parser.error(f"--data-dir {args.data_dir} is not a folder")
    return args


def build_config(args: argparse.Namespace, run_dir: Path) -> TrainConfig:
    overrides: dict[str, Any] = {
        "data.data_dir": args.data_dir,
        "data.batch_size": args.batch_size,
        "data.eval_batch_size": args.eval_batch_size,
        "data.loader": args.loader,
        "data.limit_train": args.limit_train,
        "data.limit_val": args.limit_val,
        "data.limit_test": args.limit_test,
        "data.cache_dir": args.cache_dir,
        "precision.device": args.device,
        "precision.amp": args.amp,
        "precision.amp_dtype": "bf16",
        "precision.channels_last": True,
        "precision.compile": args.compile,
        "run.out_dir": run_dir,
        "run.resume": run_dir / "last.pt" if args.checkpoint_dir and (run_dir / "last.pt").exists() else None,
    }
    if args.epochs is not None:
        # The schedule keeps its shape: a preset's warm-up is a fraction of the run.
        overrides["optim.epochs"] = args.epochs
    return resolve_config(preset=args.preset, overrides=overrides)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compile_and_restore(trainer: Trainer, steps: int) -> float:
    """Run ``steps`` training steps on the first training batch (the first one compiles, the next
    ones autotune), then put every piece of training state back; returns the first step's seconds."""
    module, optimizer, scheduler, scaler = trainer.parts.module, trainer.parts.optimizer, trainer.parts.scheduler, trainer.parts.scaler
    saved = {
        "model": copy.deepcopy(module.state_dict()),
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "scheduler": copy.deepcopy(scheduler.state_dict()),
        "scaler": copy.deepcopy(scaler.state_dict()),
        "ema": copy.deepcopy(trainer.parts.ema.state_dict()) if trainer.parts.ema is not None else None,
        "global_step": trainer.parts.step.global_step,
    }
    train_loader = trainer.parts.loaders.train
    train_loader.set_epoch(trainer.start_epoch)
    images, labels = next(iter(train_loader))
    trainer.set_train_mode()
    first_seconds = 0.0
    for index in range(steps):
        synchronize(trainer.device)
        start = time.perf_counter()
        trainer.parts.step(images, labels)
        synchronize(trainer.device)
        if index == 0:
            first_seconds = time.perf_counter() - start
    # In place (copy_), so the compiled graph keeps the very tensors it was traced with.
    module.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])  # also the learning rates of the param groups
    scheduler.load_state_dict(saved["scheduler"])
    scaler.load_state_dict(saved["scaler"])
    if trainer.parts.ema is not None:
        trainer.parts.ema.load_state_dict(saved["ema"])
    trainer.parts.step.global_step = saved["global_step"]
    # The loader's order depends on (seed, epoch) only: the first epoch starts afresh.
    train_loader.set_epoch(trainer.start_epoch)
    return first_seconds


def environment() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "device_name": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Atomically: a reader (or a kill) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False)
    with handle:
        json.dump(payload, handle, indent=2)
    os.chmod(handle.name, 0o644)  # NamedTemporaryFile makes it private
    os.replace(handle.name, path)


def summarize(epochs: list[dict[str, Any]], target_acc: float, target_seconds: float) -> dict[str, Any]:
    if not epochs:
        return {"target_test_acc": target_acc, "target_seconds": target_seconds, "target_met": None}
    total_seconds = epochs[-1]["cumulative_train_seconds"]
    images = sum(epoch["train_images"] for epoch in epochs)
    reached = next((epoch for epoch in epochs if epoch["test_acc"] >= target_acc), None)
    return {
        "final_test_acc": epochs[-1]["test_acc"],
        "best_test_acc": max(epoch["test_acc"] for epoch in epochs),
        "epochs_run": len(epochs),
        "total_train_seconds": total_seconds,
        "train_images": images,
        "end_to_end_images_per_sec": images / total_seconds if total_seconds > 0 else None,
        "first_epoch_at_or_above_target": None if reached is None else reached["epoch"],
        "seconds_to_target": None if reached is None else reached["cumulative_train_seconds"],
        "target_test_acc": target_acc,
        "target_seconds": target_seconds,
        "target_met": reached is not None and reached["cumulative_train_seconds"] <= target_seconds,
    }


def run(args: argparse.Namespace) -> int:
    if args.checkpoint_dir is not None:
        return train_into(args, args.checkpoint_dir)
    # Without checkpoints the run folder holds only the trainer's metric files: thrown away.
    with tempfile.TemporaryDirectory(prefix="resnet-cifar-bench-run-") as run_dir:
        return train_into(args, Path(run_dir))


def train_into(args: argparse.Namespace, run_dir: Path) -> int:
    started = time.perf_counter()
    cfg = build_config(args, run_dir)
    payload: dict[str, Any] = {"status": "running", "config": cfg.to_dict(), "environment": environment()}
    payload["config"]["data"]["data_dir"] = str(args.data_dir)
    write_json(args.out_json, payload)
    epochs: list[dict[str, Any]] = []
    stop = StopRequest()
    state: dict[str, Any] = {"cumulative": 0.0}

    def log(message: str) -> None:
        print(f"[gpu_train +{time.perf_counter() - started:.0f}s] {message}", flush=True)

    def on_event(event: Event) -> None:
        if isinstance(event, RunStarted):
            payload["run"] = {
                "device": event.device,
                "loader": event.loader,
                "amp_dtype": event.amp_dtype,
                "channels_last": event.channels_last,
                "compiled": event.compiled,
                "train_samples": event.train_samples,
                "val_samples": event.val_samples,
                "steps_per_epoch": event.steps_per_epoch,
                "batch_size": cfg.data.batch_size,
                "epochs": cfg.optim.epochs,
                "start_epoch": event.start_epoch,
            }
        elif isinstance(event, StepFinished):
            if args.max_wall_seconds is not None and time.perf_counter() - started > args.max_wall_seconds:
                stop.request("wall-clock budget")
        elif isinstance(event, EpochFinished):
            record = event.record
            train_images = trainer.steps_per_epoch * cfg.data.batch_size
            # The trainer's images/s counts the training loop alone (loader included).
            train_seconds = train_images / record.images_per_sec
            state["cumulative"] += train_seconds
            eval_start = time.perf_counter()
            model = trainer.parts.ema.module if trainer.parts.ema is not None else trainer.parts.module
            test = evaluate(
                model, trainer.parts.loaders.test, num_classes=len(trainer.classes), autocast=trainer.parts.precision.autocast
            )
            epochs.append(
                {
                    "epoch": record.epoch,
                    "train_loss": record.train_loss,
                    "train_acc": record.train_acc,
                    "val_acc": record.val_acc,
                    "test_acc": test.accuracy,
                    "lr": record.lr,
                    "train_images": train_images,
                    "train_seconds": train_seconds,
                    "cumulative_train_seconds": state["cumulative"],
                    "images_per_sec": record.images_per_sec,
                    "test_eval_seconds": time.perf_counter() - eval_start,
                    "wall_seconds": time.perf_counter() - started,
                }
            )
            payload["epochs"] = epochs
            payload["summary"] = summarize(epochs, args.target_acc, args.target_seconds)
            write_json(args.out_json, payload)
            log(
                f"epoch {record.epoch}/{cfg.optim.epochs}: test acc {test.accuracy:.4f}, "
                f"{record.images_per_sec:,.0f} img/s, {state['cumulative']:.1f} s of training"
            )

    try:
        # Checkpoints only when asked: a checkpointer that keeps none instead of an overridden trainer.
        checkpointer = Checkpointer(run_dir, keep_checkpoints=args.checkpoint_dir is not None)
        trainer = Trainer(cfg, on_event=on_event, stop=stop, checkpointer=checkpointer)
        payload["setup_seconds"] = time.perf_counter() - started
        log(f"set up in {payload['setup_seconds']:.1f} s (data, model); compiling and warming up")
        payload["compile_seconds"] = compile_and_restore(trainer, args.warmup_steps)
        payload["warmup_steps"] = args.warmup_steps
        log(f"first step (compilation) took {payload['compile_seconds']:.1f} s")
        write_json(args.out_json, payload)
        result = trainer.fit()
    except KeyboardInterrupt:  # the time limit of gpu_run.sh (SIGINT): keep what was measured
        payload["status"] = "interrupted"
        payload["summary"] = summarize(epochs, args.target_acc, args.target_seconds)
        write_json(args.out_json, payload)
        print("interrupted; the epochs done so far are in the JSON file", file=sys.stderr)
        return 130
    except (ResnetCifarError, RuntimeError) as error:
        payload["status"] = "failed"
        payload["error"] = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        write_json(args.out_json, payload)
        print(f"error: {payload['error']}", file=sys.stderr)
        return 1
    payload["status"] = "stopped" if result.interrupted else "finished"
    payload["final_test"] = result.test_acc
    payload["summary"] = summarize(epochs, args.target_acc, args.target_seconds)
    payload["wall_seconds"] = time.perf_counter() - started
    write_json(args.out_json, payload)
    summary = payload["summary"]
    log(
        f"{payload['status']}: final test acc {summary.get('final_test_acc')}, "
        f"{summary.get('total_train_seconds')} s of training, target met: {summary.get('target_met')}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
