"""Fixtures for the benchmarks: the real CIFAR-10 JPEGs beside the repo (../shared/data/cifar10-jpeg).

Like tests/conftest.py, RESNET_CIFAR_TEST_DATA overrides the location, and a missing folder
fails (never skips) the benchmarks that need it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from resnet_cifar.data.types import CifarSplit

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA_ROOT = Path(
    os.environ.get("RESNET_CIFAR_TEST_DATA", REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg")
)


@pytest.fixture(scope="session")
def real_train_dir() -> Path:
    train_dir = REAL_DATA_ROOT / "train"
    assert train_dir.is_dir(), f"real CIFAR-10 JPEGs not found at {REAL_DATA_ROOT}"
    return train_dir


@pytest.fixture(scope="session")
def real_train_split(real_train_dir: Path) -> CifarSplit:
    """The 50,000 real training images, decoded once per session."""
    from resnet_cifar.data.sources import read_image_folder_split

    return read_image_folder_split(real_train_dir)


# ----------------------------------------------------------------------------- summary table

# The goals a single CPU run can check (issue 5), each against its group's baseline from the same
# run: (group, names compared (None: every non-baseline benchmark of the group; the best counts),
# goal ratio, label).
CPU_GOALS = (
    ("loader", ("test_tensor_loader",), 10.0, "tensor loader vs torchvision DataLoader"),
    # Issue 16, against test_torchvision_autoaugment_dataloader (the benchmark's extra_info "baseline").
    (
        "loader",
        ("test_tensor_loader_policy[trivialaugment]",),
        10.0,
        "tensor loader + trivialaugment vs torchvision AutoAugment DataLoader",
    ),
    ("train_step", None, 2.0, "best train step vs eager fp32"),
    ("inference", ("test_inference_resnet50",), 0.97, "ours vs torchvision, same settings"),
    ("train_e2e", ("test_train_e2e_cli[amp]",), 2.0, "resnet-cifar train --amp vs plain torchvision fp32 loop, end to end"),
)


def _images_per_sec(bench) -> float | None:
    value = bench.extra_info.get("images_per_sec")
    return float(value) if value is not None else None


def summary_rows(benchmarks) -> list[dict[str, object]]:
    """One row per benchmark with images/s: its group's ratio to that group's baseline (the one
    benchmark whose name contains "baseline"), or to the benchmark its extra_info "baseline"
    names, from the same run."""
    by_group: dict[str, list] = {}
    for bench in benchmarks:
        if _images_per_sec(bench) is not None:
            by_group.setdefault(bench.group or "", []).append(bench)
    rows: list[dict[str, object]] = []
    rate_by_name = {bench.name: _images_per_sec(bench) for bench in benchmarks}
    for group in sorted(by_group):
        members = sorted(by_group[group], key=lambda bench: -(_images_per_sec(bench) or 0.0))
        baselines = [bench for bench in members if "baseline" in bench.name]
        group_baseline_rate = _images_per_sec(baselines[0]) if len(baselines) == 1 else None
        for bench in members:
            rate = _images_per_sec(bench)
            info = bench.extra_info
            # A benchmark may name its own reference (extra_info "baseline"), else the group's.
            baseline_rate = rate_by_name.get(info["baseline"]) if "baseline" in info else group_baseline_rate
            rows.append(
                {
                    "group": group,
                    "name": bench.name,
                    "device": info.get("device", "?"),
                    "dtype": info.get("dtype", "?"),
                    "batch": info.get("batch_size", "?"),
                    "compile": info.get("compile", False),
                    "images_per_sec": rate,
                    "ratio": rate / baseline_rate if rate and baseline_rate else None,
                    # The baseline's own interleaved figure compares it with another benchmark: not shown.
                    "interleaved": None
                    if "baseline" in bench.name
                    else info.get("speedup_vs_baseline", info.get("ours_vs_baseline_speed")),
                    "compile_seconds": info.get("compile_seconds"),
                }
            )
    return rows


def goal_lines(rows: list[dict[str, object]]) -> list[str]:
    """The CPU goals, each judged on the interleaved ratio where the benchmark measured one (it
    is robust to the load of a shared machine), else on the ratio of medians."""
    lines = []
    for group, names, goal, label in CPU_GOALS:
        candidates = [
            row
            for row in rows
            if row["group"] == group
            and "baseline" not in str(row["name"])
            and (names is None or row["name"] in names)
        ]
        ratios = []
        for row in candidates:
            if row["interleaved"] is not None:
                ratios.append((float(row["interleaved"]), "interleaved"))
            elif row["ratio"] is not None:
                ratios.append((float(row["ratio"]), "medians"))
        if not ratios:
            continue
        best, how = max(ratios)
        verdict = "met" if best >= goal else "MISSED"
        lines.append(f"  {label}: {best:.2f}x ({how}; goal >= {goal:g}x): {verdict}")
    return lines


def _cell(value: object, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def startup_lines(benchmarks) -> list[str]:
    """The start-up figures (benchmarks/test_startup.py), with the goal where there is one."""
    lines = []
    for info in (bench.extra_info for bench in benchmarks):
        if "seconds_median" not in info:
            continue
        goal = f"; goal <= {info['goal_seconds']:g} s): {info['verdict']}" if "goal_seconds" in info else ")"
        lines.append(
            f"  {info['command']}: median {info['seconds_median']:.3f} s "
            f"(bare interpreter {info['bare_interpreter_seconds']:.3f} s{goal}"
        )
    return lines


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own tables
def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    session = getattr(config, "_benchmarksession", None)
    benchmarks = getattr(session, "benchmarks", None) or []
    write = terminalreporter.write_line
    startup = startup_lines(benchmarks)
    if startup:
        terminalreporter.section("start-up (issue 25)")
        for line in startup:
            write(line)
    rows = summary_rows(benchmarks)
    if not rows:
        return
    terminalreporter.section("images/sec (ratio to the baseline of the same group, same run)")
    header = (
        f"{'group':<11} {'benchmark':<52} {'device':<6} {'dtype':<8} {'batch':>5} {'compile':<7} "
        f"{'img/s':>10} {'x base':>7} {'x inter':>7} {'compile s':>9}"
    )
    write(header)
    write("-" * len(header))
    for row in rows:
        write(
            f"{row['group']:<11} {str(row['name'])[:52]:<52} {row['device']!s:<6} {row['dtype']!s:<8} "
            f"{row['batch']!s:>5} {('yes' if row['compile'] else 'no'):<7} "
            f"{_cell(row['images_per_sec'], ',.1f'):>10} {_cell(row['ratio'], '.2f'):>7} "
            f"{_cell(row['interleaved'], '.2f'):>7} {_cell(row['compile_seconds'], '.1f'):>9}"
        )
    write("x base: median img/s over the baseline's; x inter: median of per-round ratios against")
    write("interleaved baseline runs (robust to a shared CPU's load), where the benchmark measures it.")
    if all(row["device"] == "cpu" for row in rows):
        lines = goal_lines(rows)
        if lines:
            write("CPU goals (issue 5):")
            for line in lines:
                write(line)
