"""Trials per hour of one study with 1, 2 and 4 sweep workers, on PostgreSQL and on SQLite.

Run by hand (the tests check only correctness):

    python benchmarks/sweep_workers.py [--trials 8] [--workers 1,2,4] [--data-dir DIR]

Each worker is a `resnet-cifar sweep` process with its own --out folder (as on its own machine),
one CPU thread (OMP_NUM_THREADS=1), and tiny trials (ResNet-18, 32 real images, 2 steps). The
figure is the study's --trials over the wall time from the first worker's start to the last
one's exit. PostgreSQL is a throwaway cluster started here (Debian's initdb/pg_ctl, as the tests'
fixture); SQLite is one study.db file shared by the workers. A worker whose output says
"database is locked" is counted and reported.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg"
TINY = [
    "--preset", "smoke", "--depth", "18", "--stem", "imagenet", "--device", "cpu", "--schedule", "constant",
    "--limit-train", "32", "--limit-val", "32", "--limit-test", "32", "--epochs", "1", "--batch-size", "16",
]  # fmt: skip
SPACE = '["optim.lr"]\ntype = "float"\nlow = 0.01\nhigh = 0.1\nlog = true\n'


@contextmanager
def postgres_cluster(root: Path) -> Iterator[str]:
    """A throwaway PostgreSQL server under ``root``; yields a URL to its database `sweeps`."""
    bindir = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))[-1]).parent
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (root / "pw").write_text("bench\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(root / "pw", "postgres")

    def run(*command: object) -> None:
        subprocess.run([*as_postgres, *map(str, command)], check=True, capture_output=True, env={**os.environ, "PGPASSWORD": "bench"})

    run(bindir / "initdb", "-D", root / "data", "-U", "bench", "--pwfile", root / "pw", "--auth", "scram-sha-256")
    run(bindir / "pg_ctl", "-D", root / "data", "-l", root / "log", "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "-w", "start")
    try:
        run(bindir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "bench", "sweeps")
        yield f"postgresql+psycopg://bench:bench@127.0.0.1:{port}/sweeps"
    finally:
        run(bindir / "pg_ctl", "-D", root / "data", "-m", "immediate", "-w", "stop")


def measure(storage: str, workers: int, trials: int, data_dir: Path, folder: Path, study: str) -> tuple[float, int]:
    """(trials per hour, workers that saw "database is locked") for one study run by ``workers``."""
    space = folder / "space.toml"
    space.write_text(SPACE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "resnet_cifar.cli", "sweep", *TINY, "--data-dir", str(data_dir), "--space", str(space),
               "--storage", storage, "--study-name", study, "--trials", str(trials)]  # fmt: skip
    start = time.perf_counter()
    processes = [
        subprocess.Popen([*command, "--out", str(folder / f"{study}-{index}")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for index in range(workers)
    ]  # fmt: skip
    outputs = [process.communicate()[0] for process in processes]
    seconds = time.perf_counter() - start
    failed = [output for process, output in zip(processes, outputs) if process.returncode != 0]
    if failed:
        print(f"  a worker failed:\n{failed[0][-2000:]}", file=sys.stderr)
    return trials / seconds * 3600, sum("database is locked" in output for output in outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    counts = [int(count) for count in args.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as scratch:
        folder = Path(scratch)
        (folder / "pg").mkdir()
        os.chmod(folder, 0o755)
        with postgres_cluster(folder / "pg") as postgres:
            for workers in counts:
                for name, storage in (("postgresql", postgres), ("sqlite", f"sqlite:///{folder / 'shared.db'}")):
                    per_hour, locked = measure(storage, workers, args.trials, args.data_dir, folder, f"{name}-{workers}")
                    print(f"{name:<10} workers {workers}  {per_hour:7.0f} trials/hour  'database is locked' in {locked} worker(s)", flush=True)


if __name__ == "__main__":
    main()
