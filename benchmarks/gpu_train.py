"""The GPU run's training steps: the user's own command, `resnet-cifar train --amp --compile`, and its figures.

Used by benchmarks/gpu_plan.py (the runner), which starts each command with its time limit. Nothing
here trains: each run is the CLI in a subprocess, with checkpoints, validation and the loader
exactly as a user gets them, and every figure is read from what that command leaves: its `--json`
result (compile_seconds, train_seconds, reached_target, time_to_target_s, test_acc) and the run
folder's metrics.jsonl (per epoch: images_per_sec, epoch_seconds, eval_seconds, checkpoint_seconds,
val_acc, val_count). The runs:

- "fast": `--preset fast --target-acc 0.94` (stops once validation reaches 94%): the time to 94%
  and the end-to-end rate;
- "default": the default preset, with `--epochs` cut to what the budget allows (its schedule keeps
  its shape), timed from the fast run's epochs;
- "dali": the fast run with `--loader dali`;
- the sync probe (CUDA only): the first epoch of short eager calls of the same command under
  ``torch.cuda.set_sync_debug_mode("warn")``, one per set of code paths (SYNC_PROBES), each warning
  counted by source line; the trainer and CLI have no switch for it, a tiny wrapper sets the mode
  and calls ``resnet_cifar.cli.main.run``.

A run's record (train.json's "runs"):
    {"name", "preset", "loader", "command", "limit_seconds", "exit_code", "status", "wall_seconds",
     "stderr_tail"?, "error"?, "compile_seconds", "train_seconds", "reached_target",
     "time_to_target_s", "test_acc", "epochs_run", "stop_reason", "epochs": [metrics.jsonl records],
     "summary": {...}}
The probe's (train.json's "sync_debug"): {"status", "probes": [{"name", "flags", "exit_code",
"status", "warnings", "by_location", "first_lines"}]}.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TARGET_ACC = 0.94
STDERR_TAIL_LINES = 25
# The probe's share of the data: enough steps for the loop's pattern, a validation and a checkpoint.
SYNC_PROBE_LIMITS = ("--limit-train", "8192", "--limit-val", "1024", "--limit-test", "1024")
# One probe per set of code paths that the default preset does not take (issue 22, item 6).
SYNC_PROBES: dict[str, tuple[str, ...]] = {
    "default": (),
    "ema+trivialaugment+mixup+cutmix+clip": (
        "--ema", "--augment", "trivialaugment", "--mixup", "0.2", "--cutmix", "1.0", "--grad-clip", "1.0",
    ),
    "fp16": ("--amp-dtype", "fp16"),
}  # fmt: skip
# Sets the mode, then runs the CLI in this process: the trainer has no switch for it.
SYNC_WRAPPER = (
    "import sys, warnings, torch\n"
    "warnings.simplefilter('always')  # every synchronizing call, not only the first per line\n"
    "torch.cuda.set_sync_debug_mode('warn')\n"
    "from resnet_cifar.cli.main import run\n"
    "run(sys.argv[1:])\n"
)
SYNC_WARNING = re.compile(r"^(?P<where>.+?:\d+): UserWarning: called a synchronizing CUDA operation")
# Dry run (CPU): the same commands, tiny and eager; ResNet-18 keeps it inside CI's patience.
DRY_SIZES = (
    "--device", "cpu", "--no-compile", "--depth", "18", "--batch-size", "8", "--eval-batch-size", "32",
    "--limit-train", "16", "--limit-val", "10", "--limit-test", "10", "--no-cache",
)  # fmt: skip
DEFAULT_PRESET_EPOCHS = 30


@dataclass(frozen=True)
class TrainSettings:
    data_dir: Path
    dry_run: bool
    target_acc: float = TARGET_ACC
    # The dry run's CPU computes bf16 natively (AVX512-BF16, AMX). Without, bf16 is emulated about
    # 50x slower, and the dry run trains in fp32 (--no-amp): the same plumbing, another dtype.
    cpu_bf16: bool = True


def cli_command() -> list[str]:
    """The installed console script as a user runs it (the run puts the installed project's
    scripts first on PATH), else the same app through its module."""
    found = shutil.which("resnet-cifar")
    return [found] if found else [sys.executable, "-m", "resnet_cifar.cli"]


def train_arguments(
    settings: TrainSettings, preset: str, out_dir: Path, *, loader: str = "tensor", epochs: int | None = None
) -> list[str]:
    """`train` and its flags for a run of ``preset``: the user's command, plus the dry run's tiny sizes."""
    flags = ["train", "--json", "--data-dir", str(settings.data_dir), "--out", str(out_dir)]
    flags += ["--loader", loader, "--amp", "--compile", "--preset", preset]
    if preset == "fast":
        flags += ["--target-acc", f"{settings.target_acc:g}"]
    if settings.dry_run:
        flags += DRY_SIZES  # --no-compile after --compile: the last flag wins
        if not settings.cpu_bf16:
            flags += ["--no-amp"]
        # fast: two epochs, validated only in the second (the preset's --eval-from path); default:
        # one epoch of 3 steps (the fewest a one-cycle schedule takes).
        flags += ["--epochs", "2", "--eval-from", "2"] if preset == "fast" else ["--epochs", "1", "--limit-train", "24"]
    else:
        flags += ["--device", "cuda"]
        if epochs is not None:
            flags += ["--epochs", str(epochs)]
    return flags


def tail_lines(path: Path, count: int = STDERR_TAIL_LINES) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-count:]
    except OSError:
        return []


def finite_or_none(value: Any) -> Any:
    """NaN (a metric of an epoch that was not validated) as null: JSON has no NaN."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def read_epochs(run_dir: Path) -> list[dict[str, Any]]:
    """The run's metrics.jsonl, one record per finished epoch (present even after a kill)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            records.append({key: finite_or_none(value) for key, value in json.loads(line).items()})
    return records


def summarize(epochs: list[dict[str, Any]], train_seconds: float | None) -> dict[str, Any]:
    """The run's figures from its epochs. An epoch's training images are its training rate times
    its training time (epoch_seconds less eval_seconds); the end-to-end rate divides all of them
    by the loop's wall time (train_seconds: training, validation and blocked checkpointing). The
    checkpoint share is judged on the median epoch; the worst is reported beside it."""
    if not epochs:
        return {"epochs": 0}
    images = sum(round(e["images_per_sec"] * (e["epoch_seconds"] - e["eval_seconds"])) for e in epochs)
    shares = [e["checkpoint_seconds"] / e["epoch_seconds"] for e in epochs if e["epoch_seconds"] > 0]
    validated = [e for e in epochs if e["val_count"]]
    loop_seconds = train_seconds or sum(e["epoch_seconds"] + e["checkpoint_seconds"] for e in epochs)
    return {
        "epochs": len(epochs),
        "epochs_validated": len(validated),
        "train_images": images,
        "images_per_sec_end_to_end": images / loop_seconds if loop_seconds > 0 else None,
        "images_per_sec_median_epoch": statistics.median(e["images_per_sec"] for e in epochs),
        "epoch_seconds_median": statistics.median(e["epoch_seconds"] for e in epochs),
        "eval_seconds_total": sum(e["eval_seconds"] for e in epochs),
        "checkpoint_seconds_total": sum(e["checkpoint_seconds"] for e in epochs),
        "checkpoint_seconds_median": statistics.median(e["checkpoint_seconds"] for e in epochs),
        "checkpoint_seconds_max": max(e["checkpoint_seconds"] for e in epochs),
        "checkpoint_share_median": statistics.median(shares) if shares else None,
        "checkpoint_share_max": max(shares) if shares else None,
        "best_val_acc": max((e["val_acc"] for e in validated if e["val_acc"] is not None), default=None),
    }


RESULT_KEYS = ("compile_seconds", "train_seconds", "reached_target", "time_to_target_s", "test_acc",
               "epochs_run", "stop_reason", "interrupted", "best_val_acc")  # fmt: skip


def train_record(
    name: str, preset: str, loader: str, command: list[str], run_dir: Path, outcome: dict[str, Any]
) -> dict[str, Any]:
    """A run's record from the command's outcome ({"exit_code", "stdout", "cut", "limit_seconds",
    "wall_seconds", "stderr_path"}) and what it left in ``run_dir``."""
    record: dict[str, Any] = {"name": name, "preset": preset, "loader": loader, "command": command}
    record.update(
        limit_seconds=round(outcome["limit_seconds"], 1),
        exit_code=outcome["exit_code"],
        wall_seconds=outcome["wall_seconds"],
    )
    stdout = outcome["stdout"]
    result: dict[str, Any] = {}
    try:
        result = json.loads(stdout) if stdout.strip() else {}
    except ValueError:
        record["error"] = "stdout is not the JSON of --json"
    for key in RESULT_KEYS:
        record[key] = finite_or_none(result.get(key))
    record["epochs"] = read_epochs(run_dir)
    record["summary"] = summarize(record["epochs"], record["train_seconds"])
    code, cut = outcome["exit_code"], outcome["cut"]
    if code == 0 and result:
        record["status"] = "finished"
    else:
        record["status"] = "cut at its limit" if cut else "failed"
        record["stderr_tail"] = tail_lines(outcome["stderr_path"])
        limit = outcome["limit_seconds"]
        record.setdefault("error", f"exit code {code}" + (f" after SIGINT at the {limit:.0f} s limit" if cut else ""))
    return record


def count_sync_warnings(lines: Sequence[str]) -> Counter[str]:
    """The sync debug mode's warnings by the source line that synchronized ("file:line")."""
    return Counter(match["where"] for line in lines if (match := SYNC_WARNING.match(line)))


def sync_probe_command(settings: TrainSettings, probe: str, run_dir: Path) -> list[str]:
    """One probe's command: the default preset, eager (compilation's own syncs are not the loop's),
    on a share of the data, with the probe's flags, under the sync debug mode."""
    flags = train_arguments(settings, "default", run_dir, epochs=1)
    flags += ["--no-compile", *SYNC_PROBE_LIMITS, *SYNC_PROBES[probe]]
    return [sys.executable, "-c", SYNC_WRAPPER, *flags]


def sync_probe_record(probe: str, command: list[str], outcome: dict[str, Any]) -> dict[str, Any]:
    lines = tail_lines(outcome["stderr_path"], count=10**9)
    by_location = count_sync_warnings(lines)
    code = outcome["exit_code"]
    return {
        "name": probe,
        "flags": list(SYNC_PROBES[probe]),
        "command": ["python", "-c", "<set_sync_debug_mode('warn'); resnet_cifar.cli.main.run>", *command[3:]],
        "exit_code": code,
        "status": "finished" if code == 0 else ("cut at its limit" if outcome["cut"] else "failed"),
        "warnings": sum(by_location.values()),
        "by_location": dict(by_location.most_common()),
        "first_lines": [line for line in lines if SYNC_WARNING.match(line)][:20],
        **({} if code == 0 else {"stderr_tail": lines[-STDERR_TAIL_LINES:]}),
    }


def default_epochs(fast: dict[str, Any] | None, seconds_left: float, grace_seconds: float) -> int:
    """The default preset's epochs that fit in ``seconds_left``: the fast run's set-up, compilation
    and test once, then its median epoch (validation and checkpoint included) per epoch, with a
    tenth to spare; the preset's 30 when the fast run gave nothing to go by."""
    epochs = (fast or {}).get("epochs") or []
    if not epochs or fast is None:
        return DEFAULT_PRESET_EPOCHS
    per_epoch = 1.1 * statistics.median(e["epoch_seconds"] + e["checkpoint_seconds"] for e in epochs)
    overhead = fast["wall_seconds"] - (fast.get("train_seconds") or 0.0)
    fitting = int((seconds_left - overhead - grace_seconds) / per_epoch)
    return max(1, min(DEFAULT_PRESET_EPOCHS, fitting))


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Atomically: a reader (or a kill) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False)
    with handle:
        json.dump(payload, handle, indent=2, allow_nan=False)
    os.chmod(handle.name, 0o644)  # NamedTemporaryFile makes it private
    os.replace(handle.name, path)
