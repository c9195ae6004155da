"""Nothing lost, nothing misrecorded: one process per run folder, resume rules, full disks, damaged
checkpoints, sweep workers at exactly --trials, and error messages that name real flags."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from resnet_cifar.engine.checkpointer import Checkpointer
from resnet_cifar.errors import UsageError

from helpers import (
    LR_SPACE,
    TINY,
    assert_one_line_error,
    cli,
    cli_env,
    drain,
    one_torch_thread,
    read_until,
    run_cli,
    run_cli_in_process,
    small_run_flags,
    without_calibration,
)

REPO = Path(__file__).resolve().parents[1]
# The default recipe (no preset) on 32 training images in batches of 16: 2 steps an epoch (the tests
# are about the run folder, not about what is learnt; each epoch still writes full-size checkpoints).
SMALL = small_run_flags(preset=None, batch_size=16, train=32, val=32, test=32)


def digests(folder: Path) -> dict[str, str]:
    """Every record in the run folder (the .lock file holds only the latest holder's pid)."""
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != ".lock"
    }


@pytest.fixture(scope="module")
def finished_run(real_data_root: Path, decoded_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    result = run_cli_in_process(
        None, "train", *SMALL, "--epochs", "2", "--data-dir", str(real_data_root), "--out", str(out),
        env={"RESNET_CIFAR_CACHE": str(decoded_cache_dir)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


# --- one process per run folder -----------------------------------------------------------------


def test_two_train_processes_on_one_folder_exactly_one_runs(
    real_data_root: Path, decoded_cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["train", *SMALL, "--epochs", "2", "--data-dir", str(real_data_root), "--out", str(out), "--json"]
    first = subprocess.Popen(
        cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(decoded_cache_dir)
    )
    try:
        assert first.stderr is not None
        # It says (on stderr: the human log, under --json) that training started once it holds the
        # folder; stopped there, it holds the folder for as long as the second needs.
        read_until(first.stderr, "training on cpu")
        first.send_signal(signal.SIGSTOP)
        assert (out / ".lock").read_text().split()[0] == str(first.pid)  # then a token other machines look for
        # The second process is this one (the lock is the kernel's, between processes): the same
        # command, refused before it trains, without a second interpreter's start-up.
        second = run_cli_in_process(capsys, *args, env={"RESNET_CIFAR_CACHE": str(decoded_cache_dir)})
    finally:
        first.send_signal(signal.SIGCONT)
    assert_one_line_error(second, 2, str(out), f"pid {first.pid}", "in use by another run")
    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["epochs_run"] == 2 and summary["checkpoint"] == str(out / "last.pt")
    assert json.loads((out / "result.json").read_text()) == without_calibration(summary)  # the one run's own record
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 2


def test_a_dead_holders_lock_does_not_block_and_a_live_one_does(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    hold = (
        "import fcntl, os, signal\n"
        f"fd = os.open({str(folder / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); print('held', flush=True)\n"
        "signal.pause()\n"  # holds the lock until killed
    )
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    with pytest.raises(UsageError, match=rf"in use by another run \(pid {holder.pid}\)"):
        Checkpointer(folder).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    checkpointer = Checkpointer(folder)
    checkpointer.acquire()  # the kernel dropped the dead process's lock
    assert (folder / ".lock").read_text().split()[0] == str(os.getpid())
    checkpointer.release()


def test_taking_the_lock_removes_the_projects_stale_temp_files(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    stale = [folder / ".last.pt.k3j2.tmp", folder / ".metrics.jsonl.x1.tmp", folder / ".config.toml.ab.tmp"]
    for path in stale:
        path.write_bytes(b"half a write")
    mine = folder / ".my-notes.tmp"  # not the project's: left alone
    mine.write_text("keep")
    checkpointer = Checkpointer(folder)
    checkpointer.acquire()
    checkpointer.release()
    assert not any(path.exists() for path in stale) and mine.exists()


# --- resume rules --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "flag"),
    [(["--epochs", "4"], "--epochs 4"), (["--lr", "0.9"], "--lr 0.9"), (["--depth", "50"], "--depth 50")],
)
def test_a_refused_resume_exits_2_naming_the_flag_and_changes_no_file(
    finished_run: Path, decoded_cache_dir: Path, flags: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = digests(finished_run)
    result = run_cli_in_process(
        capsys, "train", "--resume", str(finished_run / "last.pt"), *flags,
        env={"RESNET_CIFAR_CACHE": str(decoded_cache_dir)},
    )
    assert_one_line_error(result, 2, flag, "differs from the checkpoint's", "start a new run")
    assert digests(finished_run) == before


def test_a_resume_may_change_where_and_how_fast(
    finished_run: Path, decoded_cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "moved"
    result = run_cli_in_process(
        capsys, "train", "--resume", str(finished_run / "last.pt"), "--out", str(out), "--device", "cpu",
        "--eval-batch-size", "16", "--checkpoint-every", "2", "--json", env={"RESNET_CIFAR_CACHE": str(decoded_cache_dir)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["epochs_run"] == 2 and summary["test_acc"] is not None  # nothing left to train: tested again
    assert (out / "config.toml").read_text().count("eval_batch_size = 16") == 1


# --- full disks ----------------------------------------------------------------------------------


@pytest.fixture()
def small_disk(tmp_path: Path):
    """A real 200 MB tmpfs: room for one epoch's last.pt and best.pt of a ResNet-18 (about 90 MB
    each with the optimizer state), not for a third file."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_during_a_checkpoint_write_is_one_line_and_keeps_the_last_good_file(
    real_data_root: Path, decoded_cache_dir: Path, small_disk: Path
) -> None:
    out = small_disk / "run"
    # The checkpoints' size (the disk's point) is the same with either stem: SMALL's ImageNet stem,
    # cheap at 32 px. The second epoch's write is the one that fills the disk.
    result = run_cli(
        "train", *SMALL, "--epochs", "2", "--data-dir", str(real_data_root), "--out", str(out), cache=decoded_cache_dir
    )
    assert_one_line_error(result, 1, ".pt: cannot write (No space left on device)")
    assert "Traceback" not in result.stderr
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1  # the previous good checkpoint
    assert not list(out.glob(".*.tmp"))
    assert not (out / "result.json").exists()  # nothing reported for a run that failed


# --- damaged checkpoints -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def damaged(finished_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each kind of damaged checkpoint, made once for the module (the tests only read them)."""
    folder = tmp_path_factory.mktemp("damaged")
    good = (finished_run / "last.pt").read_bytes()
    files = {name: folder / f"{name}.pt" for name in ("random", "zip", "state", "truncated", "config", "field", "depth")}
    files["random"].write_bytes(os.urandom(5000))
    with zipfile.ZipFile(files["zip"], "w") as archive:
        archive.writestr("notes.txt", "a zip, not a checkpoint")
    torch.save({"conv1.weight": torch.zeros(1)}, files["state"])
    files["truncated"].write_bytes(good[: len(good) // 3])
    payload = torch.load(finished_run / "last.pt", weights_only=True)
    # Rewritten without the digest (as a checkpoint from before it), so each check below is the
    # one that speaks; with the digest kept, every such edit is refused as damaged first.
    del payload["digest"]
    torch.save({**payload, "config": {**payload["config"], "optim": {"lr": -1.0}}}, files["config"])
    torch.save({**payload, "epoch": "two"}, files["field"])
    model = {key: value for key, value in payload["model"].items() if not key.startswith("layer4")}
    torch.save({**payload, "model": model}, files["depth"])
    return files


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("random", "is not a checkpoint of this project: not a PyTorch file"),
        ("zip", "is not a checkpoint of this project: a zip file, but not a PyTorch one"),
        ("state", "is not a checkpoint of this project: missing"),
        ("truncated", "is truncated or corrupt"),
        ("config", "its stored config is invalid: --lr must be positive"),
        ("field", "its 'epoch' field is malformed"),
        ("depth", "does not match this model (expected depth 18, the checkpoint has depth 18;"),
    ],
)
def test_each_kind_of_damaged_checkpoint_is_told_apart_on_resume(
    damaged: dict[str, Path], decoded_cache_dir: Path, tmp_path: Path, kind: str, needle: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = damaged[kind]
    result = run_cli_in_process(
        capsys, "train", "--resume", str(path), "--out", str(tmp_path / "out"),
        env={"RESNET_CIFAR_CACHE": str(decoded_cache_dir)},
    )
    assert_one_line_error(result, 1, str(path), needle)
    assert not (tmp_path / "out" / "config.toml").exists()


def test_a_hostile_checkpoint_is_refused_unread(tmp_path: Path, decoded_cache_dir: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):  # runs `touch marker` if anything ever unpickles it
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "hostile.pt"
    torch.save({"model": Exploit(), "config": {}}, path)
    result = run_cli("train", "--resume", str(path), cache=decoded_cache_dir)
    assert_one_line_error(result, 1, "refused without running it", "posix.system")
    assert not marker.exists()


# --- sweeps --------------------------------------------------------------------------------------


def test_two_sweep_workers_stop_at_exactly_the_trials_asked_for(
    real_data_root: Path, decoded_cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = tmp_path / "space.toml"
    space.write_text(LR_SPACE)
    out = tmp_path / "sweep"
    args = [
        "sweep", "--trials", "3", *TINY, "--batch-size", "16",
        "--data-dir", str(real_data_root), "--space", str(space), "--out", str(out), "--json",
    ]  # fmt: skip
    # One thread each: the two workers share the cores (more would spin, not work).
    env = cli_env(decoded_cache_dir, OMP_NUM_THREADS="1")
    first = subprocess.Popen(cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert first.stdout is not None and first.stderr is not None
    # The second starts once the first has opened the study and begun trial 0 (it says so on
    # stderr), so the two share the study while trials are running. The second worker is this
    # process (the study's locks are the kernel's, between processes), the first's output read
    # meanwhile so that it never waits on a full pipe.
    read_until(first.stderr, "trial 0:")
    first_output = [drain(first.stdout), drain(first.stderr)]
    with one_torch_thread():
        second = run_cli_in_process(capsys, *args, env={"RESNET_CIFAR_CACHE": str(decoded_cache_dir)})
    first.wait(timeout=900)
    outputs = [(first_output[0](), first_output[1]()), (second.stdout, second.stderr)]
    assert [first.returncode, second.returncode] == [0, 0], [err for _, err in outputs]
    final = json.loads(outputs[0][0]) if len(json.loads(outputs[0][0])["trials"]) == 3 else json.loads(outputs[1][0])
    assert [trial["state"] for trial in final["trials"]] == ["COMPLETE"] * 3
    assert sum(json.loads(out_text)["ran"] for out_text, _ in outputs) == 3
    assert sorted(path.name for path in (out / "trials").iterdir()) == ["0", "1", "2"]


# --- error messages name real flags --------------------------------------------------------------


def _all_cli_flags() -> set[str]:
    import typer.main

    from resnet_cifar.cli.main import app

    group = typer.main.get_command(app)
    flags = {"--help"}
    for command in group.commands.values():  # type: ignore[attr-defined]
        for param in command.params:
            for name in (*param.opts, *param.secondary_opts):
                flags.add(name)
    return flags


# Flags of other programs that messages quote on purpose (torchrun, pip).
OTHER_PROGRAMS = {"--nproc_per_node", "--no-python", "--standalone", "--no-index", "--no-deps", "--max-restarts"}
# How cli/options.py builds a bool field's "--x/--no-x" pair.
OTHER_PROGRAMS |= {"--no"}


def test_every_flag_a_message_names_exists() -> None:
    flags = _all_cli_flags()
    named: dict[str, str] = {}
    for path in [*REPO.glob("resnet_cifar/**/*.py"), *REPO.glob("cli/*.py")]:
        tree = ast.parse(path.read_text())
        # Docstrings may quote other tools' flags (timm's --lr-base-size); messages may not.
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(node) is not None
        }
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in docstrings:
                continue
            if ":root" in node.value or "var(--" in node.value:  # the report's CSS custom properties
                continue
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9]", node.value):
                named.setdefault(flag, str(path.relative_to(REPO)))
    missing = {flag: where for flag, where in named.items() if flag not in flags | OTHER_PROGRAMS}
    assert missing == {}
