"""Training across nodes: two torchrun launchers on this machine, each a "node" of one process.

Each job is `torchrun --nnodes=2 --nproc-per-node=1 --rdzv-backend=c10d
--rdzv-endpoint=127.0.0.1:PORT --rdzv-id=JOB ... resnet-cifar train --device cpu` started twice,
the way two machines would start it, talking gloo over loopback. torchrun gives rank 0 to either
launcher, so the tests find the ranks by their environment, never by launcher. A reduced model
and small subsets keep each job to seconds of compute; most of the time is process start-up.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from test_distributed import SMALL, console_script, job_env, worker_pid

from resnet_cifar.config import TrainConfig
from resnet_cifar.distributed import DistEnv, PeerLost, peer_lost, read_env
from resnet_cifar.engine.checkpoint import load_checkpoint
from resnet_cifar.engine.checkpointer import JOB, elastic_resume
from resnet_cifar.engine.trainer import build_trainer
from resnet_cifar.errors import UsageError

from helpers import TIMING_FIELDS, wait_for_path

EPOCHS = ["--epochs", "2", "--deterministic"]  # 4 steps an epoch: 256 images, global batch 64
# A fresh rendezvous store for each attempt: what --max-restarts needs (docs/distributed.md).
RESTARTABLE = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def free_port() -> int:
    """A TCP port nothing listens on now: the kernel's pick for a socket bound to port 0. The
    rendezvous binds it again a moment later (the one tiny window left)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Job:
    """A two-node job: its two launchers and what they printed."""

    marker: str
    launchers: list[subprocess.Popen[str]]
    outputs: list[tuple[str, str]] | None = None

    def finish(self, timeout: float = 600) -> list[tuple[str, str]]:
        self.outputs = [launcher.communicate(timeout=timeout) for launcher in self.launchers]
        return self.outputs

    @property
    def codes(self) -> list[int | None]:
        return [launcher.returncode for launcher in self.launchers]

    def stop(self) -> None:
        """End what is still running (a failed check): torchrun forwards SIGTERM to its workers."""
        for launcher in self.launchers:
            if launcher.poll() is None:
                launcher.terminate()
        for launcher in self.launchers:
            try:
                launcher.wait(timeout=60)
            except subprocess.TimeoutExpired:
                launcher.kill()


def start_job(
    cache: Path, outs: tuple[Path, Path], train: list[str], *, run_id: str, torchrun: tuple[str, ...] = (), **env: str
) -> Job:
    """Two torchrun launchers of one job (``outs``: each node's --out), as two machines start it."""
    port, marker = free_port(), uuid.uuid4().hex
    launchers = []
    for out in outs:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
            "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id={run_id}", *torchrun,
            "--no-python", console_script(), "train", *train, "--out", str(out),
        ]  # fmt: skip
        launchers.append(
            subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env=job_env(cache, RESNET_CIFAR_TEST_JOB=marker, **env),
            )  # fmt: skip
        )
    return Job(marker, launchers)


@pytest.fixture
def job_cleanup() -> Iterator[list[Job]]:
    """Jobs a test started; whatever is still running at its end is stopped."""
    jobs: list[Job] = []
    yield jobs
    for job in jobs:
        job.stop()


def running_worker(marker: str, rank: int) -> int:
    """The pid of the job's worker of ``rank``, which runs now: the checkpoint the test waited for
    is written once both ranks have trained an epoch together (their gradients are all-reduced)."""
    pid = worker_pid(marker, rank)
    assert pid is not None, f"no worker of rank {rank} found"
    return pid


def summary_of(job: Job) -> dict[str, Any]:
    """The one JSON object of the job (printed by rank 0's launcher; the other prints nothing)."""
    assert job.outputs is not None
    printed = [line for stdout, _ in job.outputs for line in stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1, job.outputs
    return json.loads(printed[0])


def without_timing(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: value for key, value in record.items() if key not in TIMING_FIELDS} for record in history]


def assert_same_training(first: Path, second: Path) -> None:
    """Two run folders whose last.pt hold bit-identical weights, optimizer and history."""
    a, b = load_checkpoint(first / "last.pt"), load_checkpoint(second / "last.pt")
    assert (a["epoch"], a["global_step"], a["world_size"]) == (b["epoch"], b["global_step"], b["world_size"])
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for index, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][index]["momentum_buffer"]), index
    assert without_timing(a["history"]) == without_timing(b["history"])


@pytest.fixture(scope="module")
def straight_run(two_process_run: tuple[Path, subprocess.CompletedProcess[str]]) -> Path:
    """An uninterrupted 2-process run of 2 epochs: what the others must equal. The session's one
    (conftest.py, a single torchrun of 2 processes): the same world size trains the same bits
    whichever launchers started the processes, so it serves as the two-node jobs' reference too."""
    out, completed = two_process_run
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary = json.loads(completed.stdout)
    assert summary["world_size"] == 2 and summary["epochs_run"] == 2 and summary["interrupted"] is None
    assert [record["val_count"] for record in summary["history"]] == [100, 100]  # each image once
    return out


# --- in process: the job's identity and its restart rules --------------------------------------

NODE = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "10.0.0.1",
        "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "job7", "TORCHELASTIC_RESTART_COUNT": "1"}  # fmt: skip


def test_a_node_reads_its_job_and_restart_from_torchrun() -> None:
    assert read_env(NODE) == DistEnv(rank=1, world_size=2, local_rank=0, run_id="job7", restart=1)
    with pytest.raises(UsageError, match="TORCHELASTIC_RESTART_COUNT must be an integer"):
        read_env({**NODE, "TORCHELASTIC_RESTART_COUNT": "x"})
    # A restartable job through the rendezvous store the agents share: refused before any work.
    shared = {**NODE, "TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_MAX_RESTARTS": "1"}
    with pytest.raises(UsageError, match="needs TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1") as raised:
        read_env(shared)
    assert "\n" not in str(raised.value)
    assert read_env({**shared, "TORCHELASTIC_MAX_RESTARTS": "0"}).run_id == "job7"  # no restarts: nothing to fear
    assert read_env({**shared, "TORCHELASTIC_USE_AGENT_STORE": "False"}).restart == 1


def test_a_job_resumes_only_its_own_run(tmp_path: Path) -> None:
    job = read_env(NODE)
    assert elastic_resume(tmp_path, job) is None  # no run here
    (tmp_path / "last.pt").write_bytes(b"a checkpoint")
    assert elastic_resume(tmp_path, job) is None  # a run, but no job's record: another run's, refused later
    (tmp_path / JOB).write_text("job6\n")
    assert elastic_resume(tmp_path, job) is None  # another job's run
    (tmp_path / JOB).write_text("job7\n")
    assert elastic_resume(tmp_path, job) == tmp_path / "last.pt"
    assert elastic_resume(tmp_path, DistEnv()) is None  # a single process has no job
    # torchrun's id when none is given names no job: never resumed on its strength.
    (tmp_path / JOB).write_text("none\n")
    assert elastic_resume(tmp_path, read_env({**NODE, "TORCHELASTIC_RUN_ID": "none"})) is None
    (tmp_path / "last.pt").unlink()
    assert elastic_resume(tmp_path, job) is None  # stopped before its first checkpoint: starts afresh


def test_a_collective_failing_on_a_gone_peer_is_one_line() -> None:
    gloo = RuntimeError(
        "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer [10.0.0.2]:12171. "
        "This is typically caused by a remote worker crashing. Check the logs of the remote worker."
    )
    lost = peer_lost(read_env(NODE), gloo)
    assert isinstance(lost, PeerLost) and lost.exit_code == 1
    assert str(lost) == (
        "rank 1: another process of the job is gone (Connection closed by peer [10.0.0.2]:12171); "
        "its last checkpoint is the run folder's last.pt"
    )
    # Anything else keeps its traceback: another error, or no job at all.
    assert peer_lost(read_env(NODE), RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert peer_lost(DistEnv(), gloo) is None


# --- two launchers ---------------------------------------------------------------------------------


def test_a_stopped_node_stops_the_job_which_resumes_exactly(
    real_data_root: Path, decoded_cache_dir: Path, tmp_path: Path, straight_run: Path, job_cleanup: list[Job]
) -> None:
    out = tmp_path / "run"
    train = [*SMALL, *EPOCHS, "--data-dir", str(real_data_root)]
    job = start_job(decoded_cache_dir, (out, out), train, run_id="stopped")
    job_cleanup.append(job)
    wait_for_path(out / "last.pt", job.launchers)  # epoch 1 is done: its checkpoint is in place
    os.kill(running_worker(job.marker, 1), signal.SIGTERM)  # one node's worker, as a scheduler would
    job.finish()
    # Both nodes stop (torchrun reports its worker's 143 as a failure) and rank 0 says how to go on.
    assert all(code not in (0, None) for code in job.codes), job.outputs
    stdout = "".join(printed for printed, _ in job.outputs or [])
    assert "interrupted by SIGTERM" in stdout and "--resume" in stdout, job.outputs
    stopped = load_checkpoint(out / "last.pt")
    assert stopped["world_size"] == 2 and 4 <= stopped["epoch"] * 4 + stopped["batches_done_in_epoch"] <= 8
    assert not list(out.glob(".*.tmp"))
    # The same checkpoint in a single process: refused before any work, naming the process count.
    cfg = TrainConfig.from_dict(stopped["config"])
    cfg = replace(cfg, run=replace(cfg.run, resume=out / "last.pt"))
    with pytest.raises(UsageError, match=r"was trained by 2 process\(es\), not 1; .*--nproc_per_node 2"):
        build_trainer(cfg)

    resumed = start_job(
        decoded_cache_dir, (out, out), ["--resume", str(out / "last.pt"), "--json"], run_id="resumed"
    )
    job_cleanup.append(resumed)
    resumed.finish()
    assert resumed.codes == [0, 0], resumed.outputs
    summary = summary_of(resumed)
    assert summary["epochs_run"] == 2 and summary["world_size"] == 2 and summary["interrupted"] is None
    assert [record["epoch"] for record in summary["history"]] == [1, 2]
    assert all(record["val_count"] == 100 for record in summary["history"])
    assert_same_training(straight_run, out)


def test_elastic_restart_after_a_killed_node_resumes_from_last_checkpoint(
    real_data_root: Path, decoded_cache_dir: Path, tmp_path: Path, straight_run: Path, job_cleanup: list[Job]
) -> None:
    out = tmp_path / "run"
    train = [*SMALL, *EPOCHS, "--data-dir", str(real_data_root), "--json"]
    job = start_job(
        decoded_cache_dir, (out, out), train, run_id="elastic", torchrun=("--max-restarts=1",), **RESTARTABLE
    )
    job_cleanup.append(job)
    wait_for_path(out / "last.pt", job.launchers)  # epoch 1's checkpoint is in place
    os.kill(running_worker(job.marker, 1), signal.SIGKILL)  # no chance to save: a crash
    job.finish()
    # torchrun restarted both nodes' workers, which found this job's last.pt and finished the run.
    assert job.codes == [0, 0], job.outputs
    stderr = "".join(printed for _, printed in job.outputs or [])
    assert "torchrun job elastic" in stderr and "resuming from" in stderr  # --json: notes go to stderr
    assert "cli/train.py" not in stderr  # the survivor's failed collective was one line, no traceback
    summary = summary_of(job)
    assert summary["interrupted"] is None and [record["epoch"] for record in summary["history"]] == [1, 2]
    assert (out / JOB).read_text().strip() == "elastic"  # the job's --rdzv-id, recorded with its run
    assert_same_training(straight_run, out)


def test_a_folder_that_is_not_shared_is_refused(
    real_data_root: Path, decoded_cache_dir: Path, tmp_path: Path, job_cleanup: list[Job]
) -> None:
    # Each "machine" its own --out: rank 0's files are not where the other rank looks.
    outs = (tmp_path / "node-a" / "run", tmp_path / "node-b" / "run")
    job = start_job(decoded_cache_dir, outs, [*SMALL, "--data-dir", str(real_data_root)], run_id="unshared")
    job_cleanup.append(job)
    job.finish()
    assert all(code not in (0, None) for code in job.codes), job.outputs
    for _, stderr in job.outputs or []:  # each machine's log says why, in one line
        refusals = [line for line in stderr.splitlines() if "is not one folder that every process" in line]
        assert len(refusals) == 1 and refusals[0].startswith("error: --out "), stderr[-3000:]
        assert "cli/train.py" not in stderr  # no traceback of ours (torchrun prints its own summary)
    # Nothing of a run was written: no config, no checkpoint, no job record.
    written = {path.name for out in outs if out.exists() for path in out.iterdir()}
    assert written <= {".lock"}, written
