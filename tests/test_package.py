"""Packaging promises: the library never imports torchvision, DALI only lazily, and the CLI
installs as resnet_cifar.cli with a console script."""

from __future__ import annotations

import shutil
import subprocess
import sys

LIBRARY_MODULES = [
    "resnet_cifar",
    "resnet_cifar.config",
    "resnet_cifar.data",
    "resnet_cifar.data.sources",
    "resnet_cifar.data.cache",
    "resnet_cifar.data.download",
    "resnet_cifar.data.split",
    "resnet_cifar.data.tensor_loader",
    "resnet_cifar.data.dali_loader",
    "resnet_cifar.models",
    "resnet_cifar.models.pretrained",
    "resnet_cifar.models.finetune",
    "resnet_cifar.evaluation",
    "resnet_cifar.evaluation.plots",
    "resnet_cifar.engine",
    "resnet_cifar.engine.trainer",
    "resnet_cifar.cli.main",
]


def test_library_imports_neither_torchvision_nor_dali() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {LIBRARY_MODULES!r}: importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('torchvision', 'nvidia.dali'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_console_script_and_module_entry_points() -> None:
    script = shutil.which("resnet-cifar")
    assert script is not None, "the resnet-cifar console script is not installed"
    for command in ([script, "--help"], [sys.executable, "-m", "resnet_cifar.cli", "--help"]):
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        for name in ("data", "download", "info"):
            assert name in result.stdout


def test_cli_is_not_installed_as_a_top_level_module(tmp_path) -> None:
    # Run from an empty folder so the repository root is not on sys.path.
    code = "import importlib.util; print(importlib.util.find_spec('cli') is None)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert result.stdout.strip() == "True"
