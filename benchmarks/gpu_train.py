"""Times the user's own command, `resnet-cifar train --amp --compile`, and writes its figures as JSON.

    python benchmarks/gpu_train.py --data-dir DATA --out-json OUT/train.json --budget-s 420 \\
        --sync-log OUT/sync_warnings.log                                   # the GPU run (part train)
    python benchmarks/gpu_train.py ... --runs fast --loader dali --out-json OUT/train_dali.json
    python benchmarks/gpu_train.py ... --dry-run                           # CPU, tiny sizes, eager

Nothing here trains: each run is the CLI in a subprocess, with checkpoints, validation and the
loader exactly as a user gets them, and every figure is read from what that command leaves:
its `--json` result (compile_seconds, train_seconds, reached_target, time_to_target_s, test_acc)
and the run folder's metrics.jsonl (per epoch: images_per_sec, epoch_seconds, eval_seconds,
checkpoint_seconds, val_acc, val_count). The runs, in order:

- "fast": `--preset fast --target-acc 0.94` (stops once validation reaches 94%): the time to 94%
  and the end-to-end rate;
- the sync probe (only with --sync-log, only on CUDA): the first epoch of a short eager call of the
  same command under ``torch.cuda.set_sync_debug_mode("warn")``, every warning kept in the log and
  counted by source line; the trainer and CLI have no switch for it, a tiny wrapper sets the mode
  and calls ``resnet_cifar.cli.main.run``;
- "default": the default preset, with `--epochs` cut to what the budget still allows (its
  schedule keeps its shape), timed from the fast run's epochs.

Each command has a time limit from the budget: at the limit it gets SIGINT (the CLI stops after
the current step, writes last.pt and still prints its JSON), 20 s later SIGKILL; metrics.jsonl
keeps the epochs done either way. A failed command (exit code, stderr's last lines) and any
exception of this helper are recorded in the JSON, which is rewritten after every step.

Layout (seconds throughout):
    {"status": "running" | "finished" | "failed", "dry_run", "environment", "budget_seconds",
     "wall_seconds", "error"?, "traceback"?,
     "runs": [{"name", "preset", "loader", "command", "limit_seconds", "exit_code", "status",
               "wall_seconds", "stderr_tail"?, "error"?, "compile_seconds", "train_seconds",
               "reached_target", "time_to_target_s", "test_acc", "epochs_run", "stop_reason",
               "epochs": [metrics.jsonl records], "summary": {...}}],
     "sync_debug": {"status": "ran" | "not on CUDA" | "skipped: ..." | "failed", "warnings",
                    "by_location", "log"}}
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TARGET_ACC = 0.94
RUN_NAMES = ("fast", "default")
# SIGINT -> the CLI stops after the current step and writes last.pt; then this long before SIGKILL.
GRACE_SECONDS = 20.0
STDERR_TAIL_LINES = 25
# The probe's share of the data: enough steps for the loop's pattern, a validation and a checkpoint.
SYNC_PROBE_LIMITS = ("--limit-train", "8192", "--limit-val", "1024", "--limit-test", "1024")
SYNC_PROBE_SECONDS = 90.0
# Sets the mode, then runs the CLI in this process: the trainer has no switch for it.
SYNC_WRAPPER = (
    "import sys, warnings, torch\n"
    "warnings.simplefilter('always')  # every synchronizing call, not only the first per line\n"
    "torch.cuda.set_sync_debug_mode('warn')\n"
    "from resnet_cifar.cli.main import run\n"
    "run(sys.argv[1:])\n"
)
# Set once this helper itself got SIGINT (gpu_run.sh's limit): no further command starts.
STOPPED: list[str] = []
SYNC_WARNING = re.compile(r"^(?P<where>.+?:\d+): UserWarning: called a synchronizing CUDA operation")
# Dry run (CPU): the same commands, tiny and eager; ResNet-18 keeps it inside CI's patience.
DRY_SIZES = (
    "--device", "cpu", "--no-compile", "--depth", "18", "--batch-size", "8", "--eval-batch-size", "32",
    "--limit-train", "16", "--limit-val", "10", "--limit-test", "10", "--no-cache",
)  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="CIFAR-10 image folders (train/, test/)")
    parser.add_argument("--out-json", type=Path, required=True, help="where the figures go (rewritten after each step)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="seconds for all the runs together")
    parser.add_argument("--runs", default=",".join(RUN_NAMES), help="comma-separated, of: fast, default")
    parser.add_argument("--loader", default="tensor", choices=("tensor", "dali"))
    parser.add_argument("--target-acc", type=float, default=TARGET_ACC, help="the fast run's --target-acc")
    parser.add_argument("--sync-log", type=Path, help="run the sync probe (CUDA only) and keep its warnings here")
    parser.add_argument("--run-root", type=Path, help="parent of the runs' folders (default: a temporary one)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, eager: the plumbing only")
    args = parser.parse_args(argv)
    args.runs = [name.strip() for name in args.runs.split(",") if name.strip()]
    unknown = [name for name in args.runs if name not in RUN_NAMES]
    if unknown or not args.runs:
        parser.error(f"--runs takes {', '.join(RUN_NAMES)}; got {', '.join(unknown) or 'nothing'}")
    if args.budget_s <= 0:
        parser.error(f"--budget-s must be positive, got {args.budget_s:g}")
    if not args.data_dir.is_dir():
        parser.error(f"--data-dir {args.data_dir} is not a folder")
    return args


def cli_command() -> list[str]:
    """The installed console script, as a user runs it; else the same app through its module."""
    script = Path(sys.executable).with_name("resnet-cifar")
    if script.is_file():
        return [str(script)]
    found = shutil.which("resnet-cifar")
    return [found] if found else [sys.executable, "-m", "resnet_cifar.cli"]


def train_arguments(args: argparse.Namespace, name: str, out_dir: Path, *, epochs: int | None) -> list[str]:
    """`train` and its flags for run `name`: the user's command, plus the dry run's tiny sizes."""
    flags = ["train", "--json", "--data-dir", str(args.data_dir), "--out", str(out_dir)]
    flags += ["--loader", args.loader, "--amp", "--compile", "--preset", name]
    if name == "fast":
        flags += ["--target-acc", f"{args.target_acc:g}"]
    if args.dry_run:
        flags += DRY_SIZES  # --no-compile after --compile: the last flag wins
        # fast: two epochs, validated only in the second (the preset's --eval-from path); default:
        # one epoch of 3 steps (the fewest a one-cycle schedule takes).
        flags += ["--epochs", "2", "--eval-from", "2"] if name == "fast" else ["--epochs", "1", "--limit-train", "24"]
    else:
        flags += ["--device", "cuda"]
        if epochs is not None:
            flags += ["--epochs", str(epochs)]
    return flags


def run_command(command: list[str], limit_seconds: float, *, stderr_path: Path) -> tuple[int | None, str, bool]:
    """(exit code, stdout, hit the limit); SIGINT at the limit, SIGKILL GRACE_SECONDS later.
    stderr goes to a file (a long run's progress would fill a pipe)."""
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
        try:
            stdout, _ = process.communicate(timeout=max(limit_seconds - GRACE_SECONDS, 1.0))
            return process.returncode, stdout, False
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
        except KeyboardInterrupt:
            # gpu_run.sh's limit: the SIGINT reached the whole process group, the command too, and
            # it is stopping cleanly; wait for its JSON (inside the 15 s before that limit's
            # SIGKILL), then let the caller record and stop.
            STOPPED.append("SIGINT")
        try:
            stdout, _ = process.communicate(timeout=10.0 if STOPPED else GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, _ = process.communicate()
        return process.returncode, stdout, True


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
    by the loop's wall time (train_seconds: training, validation and blocked checkpointing)."""
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
        "checkpoint_seconds_max": max(e["checkpoint_seconds"] for e in epochs),
        "checkpoint_share_max": max(shares) if shares else None,
        "checkpoint_share_median": statistics.median(shares) if shares else None,
        "best_val_acc": max((e["val_acc"] for e in validated if e["val_acc"] is not None), default=None),
    }


def train_run(
    args: argparse.Namespace, name: str, root: Path, limit: float, *, epochs: int | None = None
) -> dict[str, Any]:
    run_dir = root / name
    command = [*cli_command(), *train_arguments(args, name, run_dir, epochs=epochs)]
    record: dict[str, Any] = {"name": name, "preset": name, "loader": args.loader, "command": command}
    record["limit_seconds"] = round(limit, 1)
    started = time.perf_counter()
    code, stdout, cut = run_command(command, limit, stderr_path=root / f"{name}.stderr")
    record.update(exit_code=code, wall_seconds=time.perf_counter() - started)
    result: dict[str, Any] = {}
    try:
        result = json.loads(stdout) if stdout.strip() else {}
    except ValueError:
        record["error"] = "stdout is not the JSON of --json"
    for key in ("compile_seconds", "train_seconds", "reached_target", "time_to_target_s", "test_acc",
                "epochs_run", "stop_reason", "interrupted", "best_val_acc"):  # fmt: skip
        record[key] = finite_or_none(result.get(key))
    record["epochs"] = read_epochs(run_dir)
    record["summary"] = summarize(record["epochs"], record["train_seconds"])
    if code == 0 and result:
        record["status"] = "finished"
    else:
        record["status"] = "time limit" if cut else "failed"
        record["stderr_tail"] = tail_lines(root / f"{name}.stderr")
        record.setdefault("error", f"exit code {code}" + (f" after SIGINT at the {limit:.0f} s limit" if cut else ""))
    return record


def count_sync_warnings(lines: Sequence[str]) -> Counter[str]:
    """The sync debug mode's warnings by the source line that synchronized ("file:line")."""
    return Counter(match["where"] for line in lines if (match := SYNC_WARNING.match(line)))


def sync_probe(args: argparse.Namespace, root: Path, limit: float) -> dict[str, Any]:
    """The first epoch of a short eager call under sync debug mode; warnings counted by line."""
    import torch

    if args.dry_run or not torch.cuda.is_available():
        return {"status": "not on CUDA"}
    assert args.sync_log is not None
    flags = train_arguments(args, "default", root / "sync-probe", epochs=1)
    flags += ["--no-compile", *SYNC_PROBE_LIMITS]  # eager: compilation's own syncs are not the loop's
    command = [sys.executable, "-c", SYNC_WRAPPER, *flags]
    code, _, cut = run_command(command, limit, stderr_path=args.sync_log)
    lines = tail_lines(args.sync_log, count=10**9)
    by_location = count_sync_warnings(lines)
    return {
        "status": "ran" if code == 0 else ("time limit" if cut else "failed"),
        "exit_code": code,
        "command": ["python", "-c", "<set_sync_debug_mode('warn'); resnet_cifar.cli.main.run>", *flags],
        "warnings": sum(by_location.values()),
        "by_location": dict(by_location.most_common()),
        "log": str(args.sync_log),
        **({} if code == 0 else {"stderr_tail": lines[-STDERR_TAIL_LINES:]}),
    }


def default_epochs(fast: dict[str, Any] | None, seconds_left: float) -> int:
    """The default preset's epochs that fit in ``seconds_left``: the fast run's set-up, compilation
    and test once, then its slowest epoch (validation and checkpoint included) per epoch; its 30
    when the fast run gave nothing to go by."""
    epochs = (fast or {}).get("epochs") or []
    if not epochs or fast is None:
        return 30
    per_epoch = max(e["epoch_seconds"] + e["checkpoint_seconds"] for e in epochs)
    overhead = fast["wall_seconds"] - (fast.get("train_seconds") or 0.0)
    return max(1, min(30, int((seconds_left - overhead - GRACE_SECONDS) / per_epoch)))


def environment() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device_name": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Atomically: a reader (or a kill) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False)
    with handle:
        json.dump(payload, handle, indent=2, allow_nan=False)
    os.chmod(handle.name, 0o644)  # NamedTemporaryFile makes it private
    os.replace(handle.name, path)


def log(started: float, message: str) -> None:
    print(f"[gpu_train +{time.perf_counter() - started:.0f}s] {message}", flush=True)


def run_all(args: argparse.Namespace, payload: dict[str, Any], root: Path, started: float) -> None:
    def left() -> float:
        return args.budget_s - (time.perf_counter() - started)

    from resnet_cifar.data.dali_loader import dali_available

    if args.loader == "dali" and not dali_available():
        payload["status"] = "skipped: DALI or its PyTorch plugin does not import"
        return
    fast: dict[str, Any] | None = None
    for name in args.runs:
        if STOPPED:
            payload["runs"].append({"name": name, "loader": args.loader, "status": "skipped: stopped by SIGINT"})
            continue
        if name == "default" and args.sync_log is not None:
            payload["sync_debug"] = sync_probe(args, root, min(SYNC_PROBE_SECONDS, max(left() - 60.0, 0.0)))
            write_json(args.out_json, payload)
            log(started, f"sync probe: {payload['sync_debug']['status']}")
        # The fast run leaves the default one room when both run; the default one takes the rest.
        limit = left() if name == "default" or len(args.runs) == 1 else min(left() - 90.0, 330.0)
        if limit < 30.0:
            payload["runs"].append({"name": name, "loader": args.loader, "status": f"skipped: {limit:.0f} s left"})
            continue
        epochs = default_epochs(fast, limit) if name == "default" and not args.dry_run else None
        log(started, f"run {name} ({args.loader} loader, limit {limit:.0f} s{f', {epochs} epochs' if epochs else ''})")
        record = train_run(args, name, root, limit, epochs=epochs)
        payload["runs"].append(record)
        write_json(args.out_json, payload)
        summary = record["summary"]
        log(
            started,
            f"run {name}: {record['status']}, {summary['epochs']} epochs, "
            f"{summary.get('images_per_sec_end_to_end') or 0:,.0f} img/s end to end, "
            f"compile {record.get('compile_seconds')} s, test acc {record.get('test_acc')}, "
            f"target reached {record.get('reached_target')} at {record.get('time_to_target_s')} s",
        )
        if name == "fast":
            fast = record
    failed = [run["name"] for run in payload["runs"] if run["status"] != "finished"]
    probe_failed = payload.get("sync_debug", {}).get("status") in ("failed", "time limit")
    payload["status"] = "failed" if failed or probe_failed else "finished"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    payload: dict[str, Any] = {
        "status": "running",
        "dry_run": args.dry_run,
        "budget_seconds": args.budget_s,
        "runs": [],
        "sync_debug": {"status": "skipped: no --sync-log"},
    }
    try:
        payload["environment"] = environment()
        write_json(args.out_json, payload)
        if args.run_root is not None:
            args.run_root.mkdir(parents=True, exist_ok=True)
            run_all(args, payload, args.run_root, started)
        else:
            with tempfile.TemporaryDirectory(prefix="resnet-cifar-gpu-train-") as root:
                run_all(args, payload, Path(root), started)
    except BaseException as error:  # the time limit's SIGINT too: keep what was measured
        payload["status"] = "failed"
        payload["error"] = f"{type(error).__name__}: {error}".strip()
        payload["traceback"] = traceback.format_exc().splitlines()[-STDERR_TAIL_LINES:]
    payload["wall_seconds"] = time.perf_counter() - started
    write_json(args.out_json, payload)
    log(started, f"{payload['status']}; figures in {args.out_json}")
    return 0 if payload["status"] in ("finished",) or payload["status"].startswith("skipped") else 1


if __name__ == "__main__":
    sys.exit(main())
