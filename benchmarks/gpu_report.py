"""The GPU run's bookends: check the environment first, judge the goals last (JSON under OUT).

    python benchmarks/gpu_report.py env --out OUT [--require-cuda]   # OUT/env.json; exit 3 if a package is missing
    python benchmarks/gpu_report.py goals --out OUT                  # OUT/goals.json and a table on stdout

``goals`` reads what benchmarks/gpu_run.sh left in OUT: train.json (benchmarks/gpu_train.py) and
bench_<group>.json (pytest-benchmark's --benchmark-json, one file per group). A figure that is
missing (a phase skipped, failed or cut short) makes its goal "not measured", never "met".
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Needed by the run: the library's own dependencies that the trainer and the benchmarks import.
REQUIRED = ("torch", "numpy", "PIL", "typer", "rich", "matplotlib", "torchvision", "pytest", "pytest_benchmark")
# Used by parts the run does not touch (config files, safetensors weights) or optional (DALI).
OPTIONAL = ("yaml", "tomli_w", "safetensors", "nvidia.dali")
BENCH_GROUPS = ("train_step", "loader", "inference")

GOALS = {
    "end_to_end_images_per_sec": 20_000.0,
    "end_to_end_vs_eager_fp32": 4.0,
    "loader_vs_training_rate": 50.0,
    "test_acc_within_60s": 0.94,
    "long_preset_test_acc": 0.96,
}


def module_version(name: str) -> str | None:
    """The module's version, "installed" when it has none, None when it does not import."""
    try:
        module = importlib.import_module(name)
    except Exception:  # an import can fail in many ways (missing CUDA libraries, ABI); all mean "absent"
        return None
    return str(getattr(module, "__version__", "installed"))


def git_commit(repo: Path) -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def check_environment(out: Path, *, require_cuda: bool) -> int:
    required = {name: module_version(name) for name in REQUIRED}
    optional = {name: module_version(name) for name in OPTIONAL}
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "commit": git_commit(Path(__file__).resolve().parents[1]),
        "required": required,
        "optional": optional,
    }
    if required["torch"] is not None:
        import torch

        cuda = torch.cuda.is_available()
        info.update(
            cuda_available=cuda,
            torch_cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version() if cuda else None,
            device_name=torch.cuda.get_device_name(0) if cuda else "cpu",
            bf16_supported=torch.cuda.is_bf16_supported() if cuda else None,
            triton=module_version("triton"),
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "env.json").write_text(json.dumps(info, indent=2))
    missing = [name for name, version in required.items() if version is None]
    shown = ", ".join(f"{name} {version}" for name, version in {**required, **optional}.items() if version)
    print(f"packages: {shown}")
    absent = [name for name, version in optional.items() if version is None]
    if absent:
        print(f"optional, absent: {', '.join(absent)}")
    if missing:
        print(
            f"error: missing required package(s): {', '.join(missing)}; carry their wheels in .device/wheels "
            "(see CONTRIBUTING.md, GPU checks)",
            file=sys.stderr,
        )
        return 3
    if require_cuda and not info.get("cuda_available"):
        print("error: no CUDA device is visible; on a CPU use: bash benchmarks/gpu_run.sh --dry-run", file=sys.stderr)
        return 3
    print(f"device: {info.get('device_name')}, torch {required['torch']}, CUDA {info.get('torch_cuda')}")
    return 0


# ----------------------------------------------------------------------------- goals


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def bench_rates(out: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """{group: {benchmark name: extra_info}} from every bench_<group>.json present."""
    rates: dict[str, dict[str, dict[str, Any]]] = {}
    for group in BENCH_GROUPS:
        document = read_json(out / f"bench_{group}.json")
        for bench in (document or {}).get("benchmarks", []):
            info = bench.get("extra_info", {})
            if info.get("images_per_sec") is not None:
                rates.setdefault(bench.get("group") or group, {})[bench["name"]] = info
    return rates


def goal(name: str, value: float | None, target: float, note: str, *, on_gpu: bool) -> dict[str, Any]:
    """One verdict; ``met`` is None when the figure is missing or was not measured on a GPU."""
    return {
        "goal": name,
        "value": value,
        "target": target,
        "met": None if value is None or not on_gpu else value >= target,
        "note": note if on_gpu else f"{note}; not a GPU run: a check of the plumbing, not a measurement",
    }


def judge(out: Path) -> dict[str, Any]:
    """The goals of issue 5 from OUT's JSON files: {"on_gpu", "goals": [...], the key figures}."""
    env = read_json(out / "env.json") or {}
    on_gpu = bool(env.get("cuda_available"))
    train = read_json(out / "train.json") or {}
    summary = train.get("summary") or {}
    rates = bench_rates(out)
    end_to_end = summary.get("end_to_end_images_per_sec")
    eager = rates.get("train_step", {}).get("test_train_step_baseline_eager_fp32", {}).get("images_per_sec")
    loaders = {
        name: info["images_per_sec"]
        for name, info in rates.get("loader", {}).items()
        if "baseline" not in name and info.get("device") == "cuda"
    }
    best_loader = max(loaders.values()) if loaders else None
    seconds_to_target = summary.get("seconds_to_target")
    within = None
    if summary.get("final_test_acc") is not None:
        # The best test accuracy reached within 60 s of training, 0 when no epoch ended by then.
        within = max(
            (epoch["test_acc"] for epoch in train.get("epochs", []) if epoch["cumulative_train_seconds"] <= 60.0),
            default=0.0,
        )
    goals = [
        goal(
            "end_to_end_images_per_sec",
            end_to_end,
            GOALS["end_to_end_images_per_sec"],
            "training loop incl. loader, bf16 + channels_last + compile, batch 512 (train.json)",
            on_gpu=on_gpu,
        ),
        goal(
            "end_to_end_vs_eager_fp32",
            end_to_end / eager if end_to_end and eager else None,
            GOALS["end_to_end_vs_eager_fp32"],
            "train.json end-to-end img/s over bench_train_step.json's eager fp32 step (same call)",
            on_gpu=on_gpu,
        ),
        goal(
            "loader_vs_training_rate",
            best_loader / end_to_end if best_loader and end_to_end else None,
            GOALS["loader_vs_training_rate"],
            f"fastest CUDA loader in bench_loader.json ({max(loaders, key=loaders.get) if loaders else '-'})",
            on_gpu=on_gpu,
        ),
        goal(
            "test_acc_within_60s",
            within,
            GOALS["test_acc_within_60s"],
            f"best test accuracy at <= 60 s of training; first >= 94% after {seconds_to_target} s"
            if seconds_to_target is not None
            else "best test accuracy at <= 60 s of training",
            on_gpu=on_gpu,
        ),
        goal(
            "long_preset_test_acc",
            summary.get("final_test_acc") if train.get("config", {}).get("run", {}).get("preset") == "long" else None,
            GOALS["long_preset_test_acc"],
            "needs a run of its own (--preset long, 200 epochs)",
            on_gpu=on_gpu,
        ),
    ]
    return {
        "on_gpu": on_gpu,
        "device_name": env.get("device_name"),
        "train_status": train.get("status"),
        "compile_seconds": train.get("compile_seconds"),
        "final_test_acc": summary.get("final_test_acc"),
        "total_train_seconds": summary.get("total_train_seconds"),
        "eager_fp32_step_images_per_sec": eager,
        "goals": goals,
        "benchmarks": {
            group: {name: info["images_per_sec"] for name, info in by_name.items()} for group, by_name in rates.items()
        },
    }


def report_goals(out: Path) -> int:
    verdicts = judge(out)
    (out / "goals.json").write_text(json.dumps(verdicts, indent=2))
    print(f"training: {verdicts['train_status']}, compile {verdicts['compile_seconds']} s, "
          f"final test acc {verdicts['final_test_acc']}, {verdicts['total_train_seconds']} s of training")
    for group, by_name in verdicts["benchmarks"].items():
        for name, rate in sorted(by_name.items(), key=lambda item: -item[1]):
            print(f"  {group:<11} {name:<55} {rate:>12,.1f} img/s")
    for entry in verdicts["goals"]:
        value = "not measured" if entry["value"] is None else f"{entry['value']:,.4g}"
        verdict = {None: "-", True: "met", False: "MISSED"}[entry["met"]]
        print(f"goal {entry['goal']:<28} {value:>14} (target {entry['target']:,g}): {verdict}  [{entry['note']}]")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    env = commands.add_parser("env", help="check packages and the device; write OUT/env.json")
    env.add_argument("--out", type=Path, required=True)
    env.add_argument("--require-cuda", action="store_true")
    goals = commands.add_parser("goals", help="judge the goals from OUT's JSON files; write OUT/goals.json")
    goals.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "env":
        return check_environment(args.out, require_cuda=args.require_cuda)
    return report_goals(args.out)


if __name__ == "__main__":
    sys.exit(main())
