"""The rehearsal's import fence: a third-party module the device would not have cannot be imported.

benchmarks/gpu_run.sh --dry-run puts this folder first on PYTHONPATH, so every Python process of
every step (the CLI, pytest, their children) loads it at start-up. It reads the table that
`benchmarks/device_env.py fence-table` wrote (GPU_RUN_FENCE: top-level modules of the device
list's distributions, of the carried wheels and of the project are allowed; every other installed
distribution's modules are refused, and "support" modules, which only this machine's versions
of device packages need, may be imported by those packages' code alone) and the step's name
(GPU_RUN_STEP). A refused import raises
ModuleNotFoundError naming the module, its distribution and the step, as the import would fail on
the device, and is appended to the table's log (one JSON line), which the plan runner reads to
name the module when the step fails. Standard-library modules, modules of no installed
distribution (the benchmarks' own files) and submodules (their package decided, except the
second-level packages of a namespace shared with refused distributions, nvidia.dali) pass.

Without GPU_RUN_FENCE it does nothing. It then runs the sitecustomize it shadows, if any.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)


class ImportFence:
    """A meta path finder that refuses the top-level modules of the table's "refused" map."""

    def __init__(self, table: dict, step: str, log: str) -> None:
        self.allowed = frozenset(table["allowed"])
        self.support: dict[str, dict] = table.get("support", {})
        self.refused: dict[str, str] = table["refused"]
        self.step = step
        self.log = log

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.count(".") == 1 and name in self.refused:
            pass  # a package of another distribution inside a shared namespace (nvidia.dali)
        elif path is not None or "." in name or name in self.allowed or name in sys.stdlib_module_names:
            return None
        if name in self.support:
            entry = self.support[name]
            if _importer() in entry["importers"]:
                return None
            distribution = f"{entry['distribution']}, here only for this machine's {', '.join(entry['needed_by'])}"
        else:
            distribution = self.refused.get(name)
            if distribution is None:
                return None  # not an installed distribution's: a local module, or absent as on the device
        message = (
            f"import fence: step {self.step!r} imports {name!r} (distribution {distribution}), which is neither "
            "on the device's package list (benchmarks/device_packages.txt) nor carried in .device/wheels"
        )
        record = {"step": self.step, "module": name, "distribution": distribution, "pid": os.getpid()}
        with open(self.log, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        raise ModuleNotFoundError(message, name=name)


def _importer() -> str:
    """The top-level package of the code that runs the import (import machinery frames skipped)."""
    frame = sys._getframe(2)
    while frame is not None and ("importlib" in frame.f_code.co_filename or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    if frame is None:
        return ""
    return str(frame.f_globals.get("__name__", "")).partition(".")[0]


def _install() -> None:
    table_path = os.environ.get("GPU_RUN_FENCE")
    if not table_path:
        return
    table = json.loads(Path(table_path).read_text())
    log = table.get("log") or f"{table_path}.log"
    sys.meta_path.insert(0, ImportFence(table, os.environ.get("GPU_RUN_STEP", "setup"), log))


def _run_shadowed() -> None:
    """The sitecustomize this file hides (a distribution's or the system's), as site would have run it."""
    others = [entry for entry in sys.path if entry and str(Path(entry).resolve()) != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", others)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


_install()
_run_shadowed()
