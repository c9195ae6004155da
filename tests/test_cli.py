"""The command line: exit codes, one-line errors, JSON, no ANSI; the commands that need no torch
start without it (a fresh interpreter each); help texts show the library's values. `info` and
the unknown flag run in this process (helpers.run_cli_in_process: no interpreter start-up)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import ANSI, assert_one_line_error, cli_env, http_server, run_cli_in_process

LIBRARY_FIELD = re.compile(r"\{\w+\.\w+")  # a help text's {source.NAME}, not filled in


# The console script's entry point, run in a fresh interpreter; the last line on stderr then says
# whether anything imported torch.
TORCH_PROBE = (
    "import sys\n"
    "from resnet_cifar.cli.main import run\n"
    "try:\n"
    "    run(sys.argv[1:])\n"
    "finally:\n"
    "    print('torch imported:', 'torch' in sys.modules, file=sys.stderr)\n"
)


def run_cli_without_torch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``run_cli`` for a command that needs no torch: asserts it imported none, and returns its
    output without the probe's line."""
    result = subprocess.run(
        [sys.executable, "-c", TORCH_PROBE, *args], capture_output=True, text=True, env=cli_env(**(env or {})), timeout=300
    )
    *lines, probe = result.stderr.rstrip("\n").split("\n")
    assert probe == "torch imported: False", result.stderr
    stderr = "".join(line + "\n" for line in lines)
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout, stderr)


def write_png_folder(root: Path, per_class: int = 2) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(per_class):
                pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.png")


def test_info_json_is_one_object(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli_in_process(capsys, "info", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["resnet_cifar"] and report["torch"] and "cpu" in report["devices"]


def test_unknown_flag_and_command_exit_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert_one_line_error(run_cli_in_process(capsys, "info", "--bogus"), 2, "--bogus")
    assert_one_line_error(run_cli_in_process(capsys, "frobnicate"), 2, "frobnicate")


def test_data_missing_folder_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert_one_line_error(run_cli_without_torch("data", str(missing)), 2, str(missing))


def test_download_into_a_named_missing_folder_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert_one_line_error(run_cli_without_torch("download", "--data-dir", str(missing)), 2, str(missing))
    assert not missing.exists()


def test_data_corrupt_image_exits_1_naming_the_file(tmp_path: Path) -> None:
    write_png_folder(tmp_path)
    broken = tmp_path / "train" / "dog" / "1.png"
    broken.write_bytes(b"\x89PNG not really")
    assert_one_line_error(run_cli_without_torch("data", str(tmp_path), "--no-cache"), 1, str(broken))


def test_data_small_folder_plain_output_has_no_ansi(tmp_path: Path) -> None:
    write_png_folder(tmp_path)
    result = run_cli_without_torch("data", str(tmp_path), "--no-cache", env={"FORCE_COLOR": "", "TERM": "xterm-256color"})
    assert result.returncode == 0, result.stderr
    assert not ANSI.search(result.stdout + result.stderr)
    assert "image-folder" in result.stdout
    assert re.search(r"^total\s+4\s+4$", result.stdout, re.MULTILINE), result.stdout


def test_data_json_on_the_real_folder(full_data_root: Path, decoded_cache_dir: Path) -> None:
    result = run_cli_without_torch("data", str(full_data_root), "--json", env={"RESNET_CIFAR_CACHE": str(decoded_cache_dir)})
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["layout"] == "image-folder"
    assert summary["train"]["count"] == 50_000 and summary["test"]["count"] == 10_000
    assert set(summary["train"]["per_class"].values()) == {5000}
    assert set(summary["test"]["per_class"].values()) == {1000}
    assert list(summary["train"]["per_class"]) == summary["classes"]


def test_download_md5_mismatch_exits_1_and_leaves_nothing(tmp_path: Path) -> None:
    import functools
    import http.server

    served = tmp_path / "served"
    served.mkdir()
    (served / "cifar-10-python.tar.gz").write_bytes(b"not the official archive" * 1000)
    target = tmp_path / "data"
    target.mkdir()
    with http_server(functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))) as base_url:
        url = f"{base_url}/cifar-10-python.tar.gz"
        result = run_cli_without_torch("download", "--data-dir", str(target), "--url", url, env={"NO_PROXY": "*", "no_proxy": "*"})
    assert_one_line_error(result, 1, "md5")
    assert list(target.iterdir()) == []


@pytest.mark.parametrize("args", [["--help"], ["data", "--help"], ["download", "--help"], ["info", "--help"]])
def test_help_of_the_commands_that_need_no_torch_imports_none(args: list[str]) -> None:
    result = run_cli_without_torch(*args)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    # The command list shows each command's first help paragraph, which names no library value.
    assert not LIBRARY_FIELD.search(result.stdout), result.stdout


def test_every_help_text_fills_in_its_library_values() -> None:
    import typer.main

    from resnet_cifar.cli.helptext import with_library_values
    from resnet_cifar.cli.main import app

    for name, command in typer.main.get_command(app).commands.items():  # type: ignore[attr-defined]
        for owner in (command, *command.params):
            filled = with_library_values(getattr(owner, "help", None) or "")
            assert "{" not in filled and "}" not in filled, (name, filled)


@pytest.mark.parametrize("command", ["eval", "predict", "export", "report", "sweep", "download"])
def test_help_shows_the_library_values(command: str) -> None:
    from typer.testing import CliRunner

    from resnet_cifar import export, inference, report
    from resnet_cifar.cli.main import app
    from resnet_cifar.config import IMAGE_SIDE
    from resnet_cifar.data.download import ARCHIVE_NAME, DATA_DIR_ENV
    from resnet_cifar.engine.checkpointer import BEST, LAST
    from resnet_cifar.tuning import DEFAULT_STUDY_NAME

    expected = {
        "eval": [f"({BEST} or {LAST})", inference.METRICS_FILE, inference.CONFUSION_PNG_FILE, report.REPORT_FILE],
        "predict": [f"resized to {IMAGE_SIDE} x {IMAGE_SIDE} RGB"],
        "export": [f"Default: {export.DEFAULT_OPSET}.", f"on {export.PARITY_IMAGES} real test images", f"within {export.PARITY_TOLERANCE:g} of"],
        "report": [f"(it holds {BEST})", report.REPORT_FILE],
        "sweep": [f"[default: {DEFAULT_STUDY_NAME}]", "--weight-decay, --optimizer"],
        "download": [f"A mirror of {ARCHIVE_NAME}", f"${DATA_DIR_ENV}, else"],
    }[command]
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "1000", "TERM": "dumb"})
    assert result.exit_code == 0, result.output
    for text in expected:
        assert text in result.output, (text, result.output)


def test_an_option_several_commands_share_has_one_help_text() -> None:
    import typer.main

    from resnet_cifar.cli.main import app

    texts: dict[str, set[str]] = {}
    for command in typer.main.get_command(app).commands.values():  # type: ignore[attr-defined]
        for param in command.params:
            for flag in param.opts:
                # A setting flag's help ends with the setting's default, which eval's --device lacks.
                texts.setdefault(flag, set()).add(str(param.help).split(" \\[default: ")[0])
    for flag in ("--json", "--device", "--tta", "--no-cache", "--config", "--scale-lr"):
        assert len(texts[flag]) == 1, (flag, texts[flag])
