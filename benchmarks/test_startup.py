"""Start-up of the command line (group "startup"): `resnet-cifar --help` and the help of the
commands that need no torch, as a user runs them.

    python -m pytest benchmarks/test_startup.py --benchmark-only

Each benchmark times the installed console script as a subprocess, whole: the interpreter's
start, the imports, building the Typer app and printing the help. The goal (issue 25):
`resnet-cifar --help` within 0.5 s on the 2-core reference machine (docs/performance.md); the
help of a command has no goal of its own (it costs more than the list of commands: Typer 0.29
imports pydantic to parse any command's options), only that it imports no torch. Every
round also runs the bare interpreter (``python -c pass``), untimed by pytest-benchmark but
recorded, so the figure can be read against the floor no command goes below on the same load.

Figures (extra_info): seconds_median (the command's median wall time), bare_interpreter_seconds
(the median of the interleaved ``python -c pass`` runs), and for `--help` goal_seconds and the
verdict; the summary prints them. The time moves with a shared machine's load, so the goal is reported, not
asserted; what makes the time is asserted: the command exits 0 and imports no torch (read from
``python -X importtime``'s list, in a run before the timed ones).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

CLI = str(Path(sys.executable).with_name("resnet-cifar"))
GOAL_SECONDS = {"help": 0.5}  # by benchmark: the goal is for the list of commands
ROUNDS = int(os.environ.get("RESNET_CIFAR_BENCH_ROUNDS", 15))
COMMANDS = {
    "help": ("--help",),
    "data_help": ("data", "--help"),
    "download_help": ("download", "--help"),
    "info_help": ("info", "--help"),
}


def imported_modules(command: list[str]) -> set[str]:
    """Every module ``command`` imports (its exit must be 0), from ``-X importtime``'s report."""
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert lines, "no -X importtime report: is the console script a Python script?"
    return {line.rsplit("|", 1)[-1].strip() for line in lines}


def run_quietly(command: list[str]) -> None:
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)


@pytest.mark.benchmark(group="startup")
@pytest.mark.parametrize("name", list(COMMANDS))
def test_startup(benchmark, name: str) -> None:
    command = [CLI, *COMMANDS[name]]
    modules = imported_modules(command)
    assert "torch" not in modules and "typer" in modules, sorted(modules)

    bare: list[float] = []

    def bare_interpreter() -> None:  # the setup of each round: timed here, not by pytest-benchmark
        started = time.perf_counter()
        run_quietly([sys.executable, "-c", "pass"])
        bare.append(time.perf_counter() - started)

    benchmark.pedantic(run_quietly, args=(command,), setup=bare_interpreter, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    benchmark.extra_info["command"] = " ".join(["resnet-cifar", *COMMANDS[name]])
    benchmark.extra_info["bare_interpreter_seconds"] = statistics.median(bare)
    if benchmark.stats is None:  # under --benchmark-disable: one untimed run
        return
    median = benchmark.stats.stats.median
    benchmark.extra_info["seconds_median"] = median
    if name in GOAL_SECONDS:
        benchmark.extra_info["goal_seconds"] = GOAL_SECONDS[name]
        benchmark.extra_info["verdict"] = "met" if median <= GOAL_SECONDS[name] else "MISSED"
