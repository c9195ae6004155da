"""`resnet-cifar sweep`: outputs, a top-up run, exit codes and one-line errors (two workers sharing a
study: a real subprocess and this process; the rest in this process too, its state restored:
helpers.run_cli_in_process)."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
import typer.main

from resnet_cifar.config import resolve_config
from resnet_cifar.tuning import best_config

from helpers import ANSI, LR_SPACE, TINY, cli, cli_env, drain, one_torch_thread, run_cli_in_process


def test_sweep_writes_study_table_and_best_config_then_tops_up(
    real_data_root: Path, decoded_cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = tmp_path / "space.toml"
    space.write_text(LR_SPACE)
    out = tmp_path / "sweep"
    common = [*TINY, "--batch-size", "16", "--data-dir", str(real_data_root), "--space", str(space), "--out", str(out)]

    # In this process (the study, not the process, is under test), the process state restored after.
    cache = {"RESNET_CIFAR_CACHE": str(decoded_cache_dir)}
    first = run_cli_in_process(capsys, "sweep", *common, "--trials", "1", env=cache)
    assert first.returncode == 0, first.stderr
    assert not ANSI.search(first.stdout + first.stderr)
    lines = first.stdout.splitlines()
    header = next(index for index, line in enumerate(lines) if line.split()[:4] == ["trial", "state", "val_acc", "time"])
    assert lines[header].split()[4:] == ["lr"]  # one column per searched setting
    assert lines[header + 1].split()[:2] == ["0", "COMPLETE"]
    assert f"resnet-cifar train --config {out / 'best.toml'}" in first.stdout
    assert (out / "study.db").is_file() and (out / "trials" / "0" / "last.pt").is_file()

    second = run_cli_in_process(capsys, "sweep", *common, "--trials", "2", "--json", env=cache)
    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout)  # one JSON object; the trials' progress went to stderr
    assert report["ran"] == 1  # topped up from 1 trial to 2
    assert [trial["number"] for trial in report["trials"]] == [0, 1]
    assert all(trial["state"] == "COMPLETE" for trial in report["trials"])
    assert all(set(trial) >= {"params", "value", "duration_seconds"} for trial in report["trials"])
    assert all(0.01 <= trial["params"]["optim.lr"] <= 0.1 for trial in report["trials"])
    assert "trial 1:" in second.stderr and "trial 0:" not in second.stderr  # trial 0 was not rerun
    best = report["best"]
    assert best["value"] == max(trial["value"] for trial in report["trials"])
    assert best["config_file"] == str(out / "best.toml")

    with open(out / "trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["number"] for row in rows] == ["0", "1"] and {row["state"] for row in rows} == {"COMPLETE"}
    # `train --config best.toml` resolves to the best trial's config, as a fresh run in runs/best.
    trial_cfg = resolve_config(file=out / "trials" / str(best["number"]) / "config.toml")
    assert trial_cfg.optim.lr == best["params"]["optim.lr"] and trial_cfg.data.batch_size == 16
    assert resolve_config(file=out / "best.toml") == best_config(trial_cfg.to_dict())


def test_two_processes_share_a_study_and_all_failing_trials_exit_1(
    real_data_root: Path, decoded_cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "base.toml"
    config.write_text("[data]\nbatch_size = 16\n")  # a --config setting, unlike a flag, is searched over
    space = tmp_path / "space.yaml"
    space.write_text("data.batch_size: {type: categorical, choices: [64]}\n")  # above --limit-train 32: every trial fails
    out = tmp_path / "sweep"
    args = [
        "sweep", *TINY, "--config", str(config),
        "--data-dir", str(real_data_root), "--space", str(space), "--out", str(out), "--trials", "4",
    ]  # fmt: skip
    env = cli_env(decoded_cache_dir, OMP_NUM_THREADS="1")  # one thread each: the two share the cores
    worker = subprocess.Popen(cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # The second worker is this process (the study's locks are the kernel's, between processes), its
    # state restored after; the child's output read meanwhile, so it never waits on a full pipe.
    assert worker.stdout is not None and worker.stderr is not None
    child_output = [drain(worker.stdout), drain(worker.stderr)]
    with one_torch_thread():
        second = run_cli_in_process(capsys, *args, env={"RESNET_CIFAR_CACHE": str(decoded_cache_dir)})
    worker.wait(timeout=600)
    results = [(child_output[0](), child_output[1]()), (second.stdout, second.stderr)]
    codes = [worker.returncode, second.returncode]

    with open(out / "trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # Each worker starts a trial only while fewer than 4 take a place: exactly 4, whoever ran them.
    assert [row["number"] for row in rows] == ["0", "1", "2", "3"]
    assert {row["state"] for row in rows} == {"FAIL"}
    for code, (stdout, stderr) in zip(codes, results):
        assert code == 1, stderr
        errors = [line for line in stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and errors[0].startswith("error: no trial of study resnet-cifar completed"), stderr
        assert "--limit-train 32 is smaller than --batch-size 64" in errors[0]
    assert not (out / "best.toml").exists()


def test_bad_space_file_exits_2_naming_file_and_key(
    real_data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = tmp_path / "space.toml"
    space.write_text('["model.dropout"]\ntype = "float"\nlow = 0.5\nhigh = 0.1\n')
    args = ("--data-dir", str(real_data_root), "--space", str(space), "--out", str(tmp_path / "s"))
    result = run_cli_in_process(capsys, "sweep", *args, env={"RESNET_CIFAR_CACHE": str(tmp_path)})
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == [f"error: {space}: model.dropout: low must be below high, got low 0.5 and high 0.1"]
    assert not (tmp_path / "s").exists()  # nothing written


def test_sweep_takes_every_setting_flag_of_train() -> None:
    from resnet_cifar.cli.main import app

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    train_flags = {option for param in commands["train"].params for option in [*param.opts, *param.secondary_opts]}
    sweep_flags = {option for param in commands["sweep"].params for option in [*param.opts, *param.secondary_opts]}
    assert train_flags - sweep_flags == {"--resume", "--seeds", "--repeats"}  # --out and --json exist in both, with the sweep's meaning
    assert {"--trials", "--epochs", "--timeout", "--space", "--lr", "--seed", "--amp", "--no-amp"} <= sweep_flags


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--timeout", "nan"], "error: --timeout must be a positive number of seconds, got nan"),
        (["--timeout", "inf"], "error: --timeout must be a positive number of seconds, got inf"),
        (["--study-name", ""], "error: --study-name must not be empty"),
        (["--heartbeat", "0"], "error: --heartbeat must be at least 1 second, got 0"),
        (["--storage", "sweeper:hunter2@db.example/sweeps"], "error: --storage must be an RDB URL"),
        (["--storage", "journal:"], "error: --storage journal:PATH needs a file path, got 'journal:'"),
        (["--storage", "postgresql+psycopg://u:hunter2@127.0.0.1:1/x", "--report"], "error: postgresql+psycopg://u:***@127.0.0.1:1/x: "),
        (["--report", "--study-name", "nope"], "does not exist; give the sweep's --out or its --storage URL"),
    ],
    ids=["timeout-nan", "timeout-inf", "empty-study-name", "heartbeat-0", "not-a-url", "journal-without-path", "report-unreachable", "report-no-study"],
)
def test_bad_sweep_values_are_one_line_exit_2_and_write_nothing(
    args: list[str], message: str, real_data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from resnet_cifar.cli.main import run

    out = tmp_path / "sweep"
    with pytest.raises(SystemExit) as exit_info:
        run(["sweep", *TINY, "--batch-size", "16", "--data-dir", str(real_data_root), "--out", str(out), *args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_info.value.code == 2 and len(lines) == 1, err
    assert message in lines[0] and "hunter2" not in err
    assert not out.exists() or not any(out.iterdir())
