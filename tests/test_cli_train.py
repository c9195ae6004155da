"""`resnet-cifar train`: config layering, JSON, signals (a real subprocess, stopped by SIGTERM),
bad input; all but the signalled run in this process (helpers.run_cli_in_process: the same exit
code and output, without the interpreter's start-up)."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from resnet_cifar.config import read_config_file
from resnet_cifar.engine.checkpoint import load_checkpoint

from helpers import ANSI, SMALL, assert_one_line_error, cli, cli_env, read_until, run_cli, run_cli_in_process, small_run_flags

# The signalled run: 32 training images in batches of 16 (2 steps an epoch), 32 to validate and to
# test; what is checked is the stop and the resume, not what is learnt.
SIGNALLED = small_run_flags(batch_size=16, train=32, val=32, test=32)


def test_config_file_then_flags_json_result_and_saved_config(
    real_data_root: Path, decoded_cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "run.toml"
    config.write_text('[optim]\nepochs = 1\nlr = 0.02\nlabel_smoothing = 0.0\n[model]\ndropout = 0.1\n')
    out = tmp_path / "run"
    result = run_cli_in_process(
        capsys, "train", *SMALL, "--data-dir", str(real_data_root), "--out", str(out), "--config", str(config),
        "--lr", "0.03", "--json", env={"RESNET_CIFAR_CACHE": str(decoded_cache_dir)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # exactly one JSON object on stdout
    assert summary["epochs_run"] == 1 and summary["stopped_early"] is False
    assert summary["out_dir"] == str(out) and 0.0 <= summary["best_val_acc"] <= 1.0
    assert not ANSI.search(result.stdout + result.stderr)
    assert "epoch 1" in result.stderr  # the human log goes to stderr under --json
    saved = read_config_file(out / "config.toml")
    assert saved["optim"]["lr"] == 0.03  # the flag beats the file
    assert saved["optim"]["epochs"] == 1 and saved["model"]["dropout"] == 0.1  # the file beats the preset
    assert saved["model"]["depth"] == 18
    assert json.loads((out / "result.json").read_text())["epochs_run"] == 1
    # A finished run's best.pt got its temperature, fitted on the validation split (128 images).
    scaling = summary["temperature_scaling"]
    assert scaling["split"] == "val" and scaling["count"] == 128 and scaling["after"]["nll"] <= scaling["before"]["nll"]
    assert load_checkpoint(out / "best.pt")["temperature"]["temperature"] == scaling["temperature"]


def test_sigterm_leaves_a_resumable_checkpoint(
    real_data_root: Path, decoded_cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    command = cli("train", *SIGNALLED, "--epochs", "2", "--data-dir", str(real_data_root), "--out", str(out))
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(decoded_cache_dir)
    )
    assert process.stdout is not None
    # Said when training starts, after the signal handlers are in place; the stop is honoured after
    # the current step, so the signal may come at once.
    read_until(process.stdout, "training on cpu")
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr
    assert "interrupted by SIGTERM" in stdout and "--resume" in stdout
    assert "Traceback" not in stderr
    checkpoint = load_checkpoint(out / "last.pt")
    assert checkpoint["epoch"] * 2 + checkpoint["batches_done_in_epoch"] >= 1  # at least one step was saved (2 an epoch)
    assert not list(out.glob(".*.tmp"))

    resumed = run_cli_in_process(
        capsys, "train", "--resume", str(out / "last.pt"), "--json", env={"RESNET_CIFAR_CACHE": str(decoded_cache_dir)}
    )
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["epochs_run"] == 2 and summary["interrupted"] is None
    assert [row["epoch"] for row in summary["history"]] == [1, 2]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch-size", "0"], "--batch-size must be positive"),
        (["--lr", "0"], "--lr must be positive"),
        (["--optimizer", "rmsprop"], "--optimizer must be one of"),
        (["--dropout", "1.0"], "--dropout"),
        (["--epochs", "two"], "--epochs"),
        (["--preset", "fastest"], "fastest"),
    ],
)
def test_bad_values_exit_2_with_one_line(
    real_data_root: Path, tmp_path: Path, flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_cli_in_process(capsys, "train", "--data-dir", str(real_data_root), "--out", str(tmp_path / "run"), *flags)
    assert_one_line_error(result, 2, message)
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_missing_data_dir_exits_2_without_downloading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-folder"
    result = run_cli_in_process(capsys, "train", "--data-dir", str(missing), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {missing}: no such folder"
    assert not missing.exists()
