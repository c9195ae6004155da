"""Multi-process training: the torchrun environment, the collectives, and real 2-process gloo runs.

The job tests launch `torchrun --standalone --nproc_per_node=2 --no-python resnet-cifar train ...`
(as `python -m torch.distributed.run`, the same program) on the CPU with a reduced model and
small subsets, so each job takes seconds of compute; most of their time is process start-up.
The one training job is the session's `two_process_run` (conftest.py), which test_multinode.py
also uses as its reference; stopping a job by a signal and resuming it is checked there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from resnet_cifar.config import TrainConfig
from resnet_cifar.distributed import SINGLE_PROCESS, DistEnv, read_env, sync_batchnorm
from resnet_cifar.data import build_loaders
from resnet_cifar.engine.checkpoint import load_checkpoint
from resnet_cifar.engine.step import build_loss
from resnet_cifar.errors import UsageError
from resnet_cifar.evaluation import evaluate
from resnet_cifar.models import resnet18

from helpers import cli_env, small_run_flags, without_calibration

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
# 256 training images in batches of 32 per process: 4 steps an epoch on each of the 2 ranks.
SMALL = small_run_flags(batch_size=32, val=100, test=100)
# The run's files, the lock file that says which process holds the folder and the torchrun job's record.
RUN_FILES = {".lock", ".torchrun-job", "best.pt", "config.toml", "curves.png", "last.pt", "metrics.csv", "metrics.jsonl", "result.json"}


def console_script() -> str:
    """The installed `resnet-cifar` entry point, next to this Python (a venv's or pyenv's bin)."""
    beside = Path(sys.executable).parent / "resnet-cifar"
    found = str(beside) if beside.is_file() else shutil.which("resnet-cifar")
    assert found, "the resnet-cifar console script is not installed (pip install -e .)"
    return found


def job_env(cache: Path, **extra: str) -> dict[str, str]:
    # One thread per process: two processes share the CI machine's cores.
    env = cli_env(cache, OMP_NUM_THREADS="1", **extra)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


# --- the environment, in process -----------------------------------------------------------------

TORCHRUN_ENV = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def test_without_torchrun_variables_it_is_a_single_process() -> None:
    assert read_env({}) is SINGLE_PROCESS
    assert read_env({"PATH": "/usr/bin", "RANK": " "}) == DistEnv(rank=0, world_size=1, local_rank=0)
    assert not SINGLE_PROCESS.is_distributed and SINGLE_PROCESS.is_main
    # Every collective is a no-op in a single process, with no process group at all.
    SINGLE_PROCESS.barrier()
    assert SINGLE_PROCESS.sum_numbers([1.5, 2.0], torch.device("cpu")) == [1.5, 2.0]
    assert SINGLE_PROCESS.agree_on_stop("SIGINT", torch.device("cpu")) == "SIGINT"
    assert SINGLE_PROCESS.gather_objects({"a": 1}) == [{"a": 1}]


def test_torchrun_variables_give_the_rank_and_its_device() -> None:
    env = read_env(TORCHRUN_ENV)
    assert env == DistEnv(rank=1, world_size=2, local_rank=1)
    assert env.is_distributed and not env.is_main
    assert env.place(torch.device("cuda")) == torch.device("cuda", 1)
    assert env.place(torch.device("cpu")) == torch.device("cpu")
    # One process under torchrun is an ordinary run.
    assert not read_env({"RANK": "0", "WORLD_SIZE": "1"}).is_distributed
    # LOCAL_RANK defaults to RANK (one machine).
    assert read_env({**TORCHRUN_ENV, "LOCAL_RANK": ""}).local_rank == 1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"WORLD_SIZE": None}, "RANK is set but WORLD_SIZE is not"),
        ({"RANK": None}, "WORLD_SIZE is set but RANK is not"),
        ({"RANK": None, "WORLD_SIZE": None}, "LOCAL_RANK is set but RANK and WORLD_SIZE are not"),
        ({"RANK": "one"}, "RANK must be an integer, got 'one'"),
        ({"RANK": "2"}, "RANK must be in 0..1 for WORLD_SIZE 2, got 2"),
        ({"RANK": "-1"}, "RANK must be in 0..1"),
        ({"WORLD_SIZE": "0", "RANK": "0"}, "WORLD_SIZE must be at least 1, got 0"),
        ({"LOCAL_RANK": "5"}, "LOCAL_RANK must be in 0..1 for WORLD_SIZE 2, got 5"),
        ({"LOCAL_WORLD_SIZE": "1"}, "LOCAL_RANK 1 and LOCAL_WORLD_SIZE 1 do not fit WORLD_SIZE 2"),
        ({"MASTER_ADDR": None}, "MASTER_ADDR is not set"),
        ({"MASTER_PORT": "70000"}, "MASTER_PORT must be a TCP port"),
    ],
)
def test_inconsistent_torchrun_variables_are_usage_errors(changes: dict[str, str | None], message: str) -> None:
    environ = {**TORCHRUN_ENV, **{key: value for key, value in changes.items() if value is not None}}
    for key in [key for key, value in changes.items() if value is None]:
        environ.pop(key)
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(".", r"\.")) as raised:
        read_env(environ)
    assert raised.value.exit_code == 2 and "\n" not in str(raised.value)


def test_sync_batchnorm_converts_only_a_multi_process_gpu_job() -> None:
    model = resnet18(num_classes=10)
    assert sync_batchnorm(model, SINGLE_PROCESS, torch.device("cuda")) is model
    job = DistEnv(rank=0, world_size=2, local_rank=0)
    with pytest.raises(UsageError, match="--sync-bn needs GPUs"):
        sync_batchnorm(model, job, torch.device("cpu"))
    keys = list(model.state_dict())
    converted = sync_batchnorm(model, job, torch.device("cuda"))  # conversion itself needs no GPU
    norms = [module for module in converted.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(module, nn.SyncBatchNorm) for module in norms)
    assert list(converted.state_dict()) == keys  # checkpoints load either way


# --- the collectives, in a 2-process gloo job ----------------------------------------------------

COLLECTIVES_SCRIPT = r"""
import json, os, sys
from pathlib import Path
import torch
from torch import nn
from resnet_cifar.distributed import process_group, read_env
from resnet_cifar.evaluation import evaluate

out = Path(sys.argv[1])
job = read_env(os.environ)
cpu = torch.device("cpu")
with process_group(job, cpu):
    torch.manual_seed(0)  # the same model and data on both ranks
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    images, labels = torch.randn(11, 3, 2, 2), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2])
    # Unequal shards (3 and 8 samples, in 1 and 2 batches); rank 1 also gets an empty batch list
    # for the second evaluation, which must still take part in the reduction.
    if job.rank == 0:
        shard = [(images[:3], labels[:3])]
    else:
        shard = [(images[3:7], labels[3:7]), (images[7:], labels[7:])]
    result = evaluate(model, shard, num_classes=4, loss_fn=nn.CrossEntropyLoss(), reduce=True)
    lopsided = evaluate(model, [(images, labels)] if job.rank == 0 else [], num_classes=4, reduce=True)
    bn = nn.BatchNorm1d(2)
    bn.running_mean.fill_(job.rank + 1.0)
    job.broadcast_buffers_(bn)
    with job.main_first():
        marker = out / "rank0-was-here"
        first = marker.exists()
        if job.is_main:
            marker.write_text("x")
    report = {
        "confusion": result.confusion.tolist(),
        "count": result.count,
        "loss": result.loss,
        "lopsided_count": lopsided.count,
        "stop_from_rank1": job.agree_on_stop("SIGTERM" if job.rank == 1 else None, cpu),
        "stop_from_nobody": job.agree_on_stop(None, cpu),
        "sums": job.sum_numbers([job.rank + 1.0, 0.5], cpu),
        "gathered": job.gather_objects(job.rank * 10),
        "bn_mean": bn.running_mean.tolist(),
        "saw_rank0_marker": first,
    }
    (out / f"rank{job.rank}.json").write_text(json.dumps(report))
"""


def test_collectives_reduce_exactly_across_two_processes(tmp_path: Path) -> None:
    script = tmp_path / "collectives.py"
    script.write_text(COLLECTIVES_SCRIPT)
    completed = subprocess.run(
        [*TORCHRUN, str(script), str(tmp_path)], capture_output=True, text=True, env=job_env(tmp_path), timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]

    torch.manual_seed(0)  # the script's model and data, evaluated whole in this process
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    images, labels = torch.randn(11, 3, 2, 2), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2])
    whole = evaluate(model, [(images, labels)], num_classes=4, loss_fn=nn.CrossEntropyLoss())
    for rank, report in enumerate(reports):
        # Summed matrices: every rank holds the whole data set's metrics, each sample counted once.
        assert report["confusion"] == whole.confusion.tolist(), rank
        assert report["count"] == 11 and report["lopsided_count"] == 11
        assert report["loss"] == pytest.approx(whole.loss, rel=1e-6)
        assert report["stop_from_rank1"] == "SIGTERM" and report["stop_from_nobody"] is None
        assert report["sums"] == [3.0, 1.0] and report["gathered"] == [0, 10]
        assert report["bn_mean"] == [1.0, 1.0]  # rank 0's buffers everywhere
    assert reports[0]["saw_rank0_marker"] is False and reports[1]["saw_rank0_marker"] is True


# --- the train command under torchrun ------------------------------------------------------------


def test_two_process_run_writes_one_run_folder_and_counts_each_image_once(two_process_run) -> None:
    out, completed = two_process_run  # 2 epochs (test_multinode's reference too): conftest.py
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = [line for line in completed.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, completed.stdout  # rank 1 prints nothing
    summary = json.loads(lines[0])
    assert summary["world_size"] == 2 and summary["epochs_run"] == 2 and summary["interrupted"] is None
    # The validation metrics are those of all 100 images: each rank's shard counted once.
    assert [record["val_count"] for record in summary["history"]] == [100, 100]
    assert completed.stderr.count("training on cpu") == 1  # only rank 0 renders
    assert "256 train / 100 val images" in completed.stderr and "2 processes, global batch 64" in completed.stderr

    assert sorted(path.name for path in out.parent.iterdir()) == ["run"]  # one run folder
    assert {path.name for path in out.iterdir()} == RUN_FILES  # and no temp files left
    assert json.loads((out / "result.json").read_text()) == without_calibration(summary)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    checkpoint = load_checkpoint(out / "last.pt")
    assert checkpoint["world_size"] == 2 and len(checkpoint["rng_by_rank"]) == 2
    # The unwrapped module's state (no "module." prefix) loads into a plain model, and one process
    # evaluating it on the whole validation split gets the job's metrics: the per-sample losses
    # add up to the same sum, so no image was missed or counted twice.
    model = resnet18(num_classes=10, stem="imagenet")
    model.load_state_dict(checkpoint["model"])
    cfg = TrainConfig.from_dict(checkpoint["config"])
    val_loader = build_loaders(cfg.data, torch.device("cpu")).val
    whole = evaluate(model, val_loader, num_classes=10, loss_fn=build_loss(cfg.optim.label_smoothing))
    record = summary["history"][-1]  # last.pt holds the weights of the last epoch
    assert whole.count == 100 and whole.accuracy == record["val_acc"]
    assert whole.loss == pytest.approx(record["val_loss"], rel=1e-5)


def worker_pid(marker: str, rank: int) -> int | None:
    """The pid of the torchrun worker of `rank` in the job whose environment holds `marker`, if it runs."""
    wanted = {f"RESNET_CIFAR_TEST_JOB={marker}".encode(), f"RANK={rank}".encode()}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            variables = set((entry / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue  # gone, or not ours to read
        if wanted <= variables:
            return int(entry.name)
    return None


# SIGTERM to one rank (both stop, the job resumes, a single process is refused its checkpoint):
# tests/test_multinode.py, test_a_stopped_node_stops_the_job_which_resumes_exactly, the same job's
# processes started by two launchers, its resume compared bit for bit with the run above.
