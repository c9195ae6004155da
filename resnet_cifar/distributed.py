"""Multi-process training plumbing: the torchrun environment, the process group, a few collectives.

``torchrun --nproc_per_node=N`` starts N copies of the program and tells each its place through
environment variables: ``RANK`` (0..WORLD_SIZE-1 over the whole job), ``WORLD_SIZE``,
``LOCAL_RANK`` (its index on its machine, which picks its GPU), and ``MASTER_ADDR``/``MASTER_PORT``
(the rendezvous store). :func:`read_env` turns a mapping of them into a :class:`DistEnv`; the CLI
passes ``os.environ``, nothing in the library reads the environment by itself (torch's ``env://``
rendezvous reads MASTER_ADDR/MASTER_PORT when :func:`process_group` starts the group).

:func:`process_group` initializes the default process group (NCCL on GPUs, gloo on the CPU) and
destroys it afterwards. The :class:`DistEnv` methods are the collectives the trainer needs; in a
single process they are no-ops (or return their input), so callers use them unconditionally.

A job of one process (no torchrun, or ``--nproc_per_node=1``) is an ordinary run: no process group.

Across machines (``torchrun --nnodes=M --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT --rdzv-id=JOB``
on each), torchrun also sets ``TORCHELASTIC_RUN_ID`` (the job: the same on every machine and across
restarts) and ``TORCHELASTIC_RESTART_COUNT`` (0, then 1.. after each elastic restart of this
machine's workers, ``--max-restarts``); :class:`DistEnv` carries both. The job id is what lets
restarted workers continue from their job's last checkpoint (the checkpointer's
``elastic_resume``; docs/distributed.md, "Training across nodes"); the count, kept per machine, is
only reported.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from resnet_cifar.errors import ResnetCifarError, UsageError
from resnet_cifar.files import first_line

__all__ = [
    "SINGLE_PROCESS", "STOP_AGREEMENT_STEPS", "DistEnv", "PeerLost", "peer_lost", "process_group", "read_env", "sync_batchnorm",
]


class PeerLost(ResnetCifarError):
    """Another process of the job is gone (killed, or its machine lost), so a collective failed."""

    exit_code = 1


# How gloo and NCCL say that the process at the other end of a collective is gone.
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted")

# How often the ranks of a job agree on a stop request inside an epoch (DistEnv.agree_on_stop).
STOP_AGREEMENT_STEPS = 8


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a job: its global ``rank``, the ``world_size`` and its ``local_rank``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    run_id: str = ""  # torchrun's job id (--rdzv-id, TORCHELASTIC_RUN_ID); "" outside torchrun
    restart: int = 0  # how many times torchrun has restarted the job's workers (TORCHELASTIC_RESTART_COUNT)

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise UsageError(f"WORLD_SIZE must be at least 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise UsageError(
                f"RANK must be in 0..{self.world_size - 1} for WORLD_SIZE {self.world_size}, got {self.rank}"
            )
        if not 0 <= self.local_rank < self.world_size:
            raise UsageError(
                f"LOCAL_RANK must be in 0..{self.world_size - 1} for WORLD_SIZE {self.world_size}, "
                f"got {self.local_rank}"
            )

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints and writes files."""
        return self.rank == 0

    def place(self, device: torch.device) -> torch.device:
        """The device of this process: ``cuda:LOCAL_RANK`` for CUDA in a job, ``device`` otherwise."""
        if self.is_distributed and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    # -- collectives (no-ops in a single process)

    def _group_ready(self) -> bool:
        if not self.is_distributed:
            return False
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise UsageError(
                f"rank {self.rank} of {self.world_size} has no process group; start it with "
                "resnet_cifar.distributed.process_group (the train command does)"
            )
        return True

    def barrier(self) -> None:
        if self._group_ready():
            import torch.distributed as dist

            dist.barrier()

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (a download, a cache build), the other ranks after it, so
        they find its result instead of repeating the work side by side."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def all_reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all ranks, in place; returns it."""
        if self._group_ready():
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def sum_numbers(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sums over all ranks of a few numbers (float64: exact for counts below 2**53)."""
        if not self.is_distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        return self.all_reduce_sum_(tensor).tolist()

    def agree_on_stop(self, signal_name: str | None, device: torch.device, *, step: int | None = None) -> str | None:
        """The stop request of the job: if any rank was asked to stop, every rank gets the signal's
        name (the highest signal number wins a tie), so all of them leave the loop after the same
        step and none is left waiting in a collective.

        Agreeing is a blocking read of a collective's result, a device sync on CUDA. In a training
        loop, pass ``step`` (the steps taken in the epoch): the ranks then agree only every
        STOP_AGREEMENT_STEPS steps (None, "no stop yet", in between, on every rank alike), so the
        loop keeps one sync per step and a request waits at most that many steps. Without
        ``step`` they agree now (after validation, at the end).
        """
        if not self.is_distributed:
            return signal_name
        if step is not None and step % STOP_AGREEMENT_STEPS != 0:
            return None
        code = _signal_code(signal_name)
        tensor = torch.tensor([code], dtype=torch.int64, device=device)
        if self._group_ready():
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        agreed = int(tensor.item())
        if agreed == 0:
            return None
        return signal_name if agreed == code else _signal_name(agreed)

    def gather_objects(self, value: Any) -> list[Any]:
        """``value`` from every rank, in rank order (picklable values; small ones)."""
        if not self._group_ready():
            return [value]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def broadcast_buffers_(self, module: nn.Module) -> None:
        """Copy rank 0's buffers (batch-norm running statistics) to every rank.

        DDP only broadcasts them at the start of each forward, so after the last training step each
        rank holds the statistics of its own last batch; evaluating, or averaging into an EMA, with
        rank 0's makes every rank use the model rank 0 saves.
        """
        if not self._group_ready():
            return
        import torch.distributed as dist

        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)


SINGLE_PROCESS = DistEnv()


def _int_var(environ: Mapping[str, str], key: str) -> int:
    text = environ[key].strip()
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{key} must be an integer, got {environ[key]!r}") from None


def _optional_int(environ: Mapping[str, str], key: str, default: int) -> int:
    return _int_var(environ, key) if environ.get(key, "").strip() else default


def _check_restartable(environ: Mapping[str, str]) -> None:
    """Refuse a job torchrun would restart (``--max-restarts`` > 0) through a rendezvous store its
    agents share with the workers (the c10d default): the store outlives the workers, so restarted
    ones find the previous attempt's addresses (of processes now gone) and cannot connect
    (pytorch/pytorch#135712). Asking torchrun for a fresh store per attempt avoids it."""
    shared = environ.get("TORCHELASTIC_USE_AGENT_STORE", "").strip() == "True"
    if shared and _optional_int(environ, "TORCHELASTIC_MAX_RESTARTS", 0) > 0:
        raise UsageError(
            "torchrun --max-restarts needs TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in every launcher's environment "
            "(a shared rendezvous store hands restarted workers the previous attempt's addresses)"
        )


def read_env(environ: Mapping[str, str]) -> DistEnv:
    """This process's place in a torchrun job, from ``environ`` (pass ``os.environ``).

    Neither RANK nor WORLD_SIZE set: a single process. Set (torchrun sets both, and LOCAL_RANK,
    MASTER_ADDR and MASTER_PORT): their values, checked for consistency. LOCAL_RANK defaults to
    RANK (one machine). Raises UsageError, naming the variable, for a half-set, non-integer or
    inconsistent environment.
    """
    present = [key for key in ("RANK", "WORLD_SIZE") if environ.get(key, "").strip()]
    if not present:
        if environ.get("LOCAL_RANK", "").strip():
            raise UsageError("LOCAL_RANK is set but RANK and WORLD_SIZE are not; launch with torchrun")
        return SINGLE_PROCESS
    if len(present) == 1:
        missing = "WORLD_SIZE" if present == ["RANK"] else "RANK"
        raise UsageError(f"{present[0]} is set but {missing} is not; launch with torchrun, which sets both")
    rank = _int_var(environ, "RANK")
    world_size = _int_var(environ, "WORLD_SIZE")
    local_rank = _optional_int(environ, "LOCAL_RANK", rank)
    restart = _optional_int(environ, "TORCHELASTIC_RESTART_COUNT", 0)
    if restart < 0:
        raise UsageError(f"TORCHELASTIC_RESTART_COUNT must be at least 0, got {restart}")
    run_id = environ.get("TORCHELASTIC_RUN_ID", "").strip()
    env = DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, run_id=run_id, restart=restart)
    if env.is_distributed:
        if environ.get("LOCAL_WORLD_SIZE", "").strip():
            local_world = _int_var(environ, "LOCAL_WORLD_SIZE")
            if not 0 <= local_rank < local_world <= world_size:
                raise UsageError(
                    f"LOCAL_RANK {local_rank} and LOCAL_WORLD_SIZE {local_world} do not fit WORLD_SIZE {world_size}"
                )
        for key in ("MASTER_ADDR", "MASTER_PORT"):
            if not environ.get(key, "").strip():
                raise UsageError(f"{key} is not set; launch with torchrun, which sets it")
        port = _int_var(environ, "MASTER_PORT")
        if not 0 < port < 65536:
            raise UsageError(f"MASTER_PORT must be a TCP port (1-65535), got {port}")
        _check_restartable(environ)
    return env


@contextmanager
def process_group(env: DistEnv, device: torch.device) -> Iterator[DistEnv]:
    """The default process group for ``env``'s job while the block runs, destroyed afterwards.

    ``device`` is the device type the run asked for (``select_device``'s answer): NCCL for CUDA,
    with this process on ``cuda:LOCAL_RANK``, gloo for the CPU. A single process starts nothing.
    """
    if not env.is_distributed:
        yield env
        return
    import torch.distributed as dist

    if not dist.is_available():
        raise UsageError("this PyTorch build has no torch.distributed; multi-process training needs it")
    if dist.is_initialized():
        raise UsageError("a process group is already running in this process")
    device_id = None
    if device.type == "cuda":
        visible = torch.cuda.device_count()
        if env.local_rank >= visible:
            raise UsageError(
                f"LOCAL_RANK {env.local_rank} needs GPU {env.local_rank}, but {visible} are visible; "
                f"start at most {visible} processes per machine (torchrun --nproc_per_node {visible})"
            )
        device_id = env.place(device)
        # Makes plain "cuda" mean this rank's GPU for every later allocation (NCCL, DALI, caching).
        torch.cuda.set_device(device_id)
    backend = "nccl" if device.type == "cuda" else "gloo"
    options: dict[str, Any] = {"device_id": device_id} if device_id is not None else {}
    dist.init_process_group(backend, init_method="env://", rank=env.rank, world_size=env.world_size, **options)
    try:
        yield env
    finally:
        dist.destroy_process_group()


def peer_lost(env: DistEnv, error: BaseException) -> PeerLost | None:
    """``error`` as a one-line PeerLost when it is a collective of ``env``'s job failing because
    another process of the job is gone; None for anything else, which keeps its traceback."""
    text = str(error)
    if not (env.is_distributed and isinstance(error, RuntimeError) and any(sign in text for sign in _PEER_GONE)):
        return None
    # The message without gloo's source location, advice and emoji: "Connection closed by peer [host]:port".
    reason = re.sub(r"^\[[^\]]*\]\s*", "", first_line(error)).split(". ")[0]
    return PeerLost(
        f"rank {env.rank}: another process of the job is gone ({reason}); its last checkpoint is the run "
        "folder's last.pt"
    )


def sync_batchnorm(model: nn.Module, env: DistEnv, device: torch.device) -> nn.Module:
    """``model`` with its batch norms turned into SyncBatchNorm for a multi-process job on GPUs.

    In a single process there is nothing to synchronize and the model is returned unchanged.
    PyTorch's SyncBatchNorm has no CPU implementation, so a CPU job is refused. The state dict keys
    stay the same, so checkpoints load either way.
    """
    if not env.is_distributed:
        return model
    if device.type != "cuda":
        raise UsageError("--sync-bn needs GPUs (SyncBatchNorm has no CPU implementation); leave it out on the CPU")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def _signal_code(name: str | None) -> int:
    if name is None:
        return 0
    try:
        return int(signal.Signals[name].value)
    except KeyError:
        return 255  # a stop request under another name still stops every rank


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(code).name
    except ValueError:
        return "STOP"
