"""Sweeps past one machine: several workers (separate processes, each with its own --out folder, as
on separate machines) sharing one study on a real PostgreSQL server or an Optuna journal file. The
PostgreSQL test's three workers are children (one killed, one stopped, one finishing); the
journal test's second worker is this test process (helpers.run_cli_in_process: one interpreter
start-up less).

The PostgreSQL server is a throwaway cluster that the `postgres` fixture makes with Debian's
initdb/pg_ctl (the `postgresql` package, which .ci/run installs) under a temporary folder, listening
on 127.0.0.1 with password authentication, and stops at the end of the module. Tests wait on files
and process states, never on sleeps.
"""

from __future__ import annotations

import csv
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from resnet_cifar.config import resolve_config
from resnet_cifar.tuning import best_config

from helpers import LR_SPACE, drain, one_torch_thread, run_cli_in_process
from helpers import TINY as TINY_TRIAL

PASSWORD = "s3cret-p4ss"
USER = "sweeper"
TINY = [*TINY_TRIAL, "--batch-size", "16"]  # 32 training images in batches of 16: two steps a trial


# ----------------------------------------------------------------------------- a real server


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its tools as the postgres user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A PostgreSQL server of its own, with database `sweeps`; yields its URL (password included)."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    assert bins, "Debian's postgresql package is needed (apt-get install postgresql; .ci/run installs it)"
    bindir = Path(bins[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="resnet-cifar-pg-"))  # not under pytest's root-only folder
    data, port = root / "data", _free_port()
    (root / "pw").write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(root / "pw", "postgres")
    run = lambda *command: subprocess.run(_as_postgres([str(c) for c in command]), check=True, capture_output=True, timeout=120)  # noqa: E731
    run(bindir / "initdb", "-D", data, "-U", USER, "--pwfile", root / "pw", "--auth", "scram-sha-256", "-E", "UTF8")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=50"
    run(bindir / "pg_ctl", "-D", data, "-l", root / "log", "-o", options, "-w", "start")
    try:
        env = {**os.environ, "PGPASSWORD": PASSWORD}
        subprocess.run(_as_postgres([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", USER, "sweeps"]), check=True, env=env, capture_output=True, timeout=60)  # fmt: skip
        yield f"postgresql+psycopg://{USER}:{PASSWORD}@127.0.0.1:{port}/sweeps"
    finally:
        run(bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


# ----------------------------------------------------------------------------- workers


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "resnet_cifar.cli", "sweep", *args]


def _worker(args: list[str], out: Path, cache: Path) -> subprocess.Popen[str]:
    # One thread per worker: two or three share the machine's cores (more would spin, not work).
    env = {**os.environ, "RESNET_CIFAR_CACHE": str(cache), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(_command(*args, "--out", str(out)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip


def _in_process_worker(
    capsys: pytest.CaptureFixture[str], args: list[str], out: Path, cache: Path
) -> subprocess.CompletedProcess[str]:
    """A worker as _worker runs it, but in this process (another process than the children: one
    worker more without an interpreter's start-up), to its end."""
    return run_cli_in_process(capsys, "sweep", *args, "--out", str(out), env={"RESNET_CIFAR_CACHE": str(cache)})


def _next_trial_started(process: subprocess.Popen[str]) -> int:
    """Wait (reading the worker's output) for its next "trial N: ..." line: trial N is running."""
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(line)
        started = re.match(r"trial (\d+): ", line)
        if started:
            return int(started[1])
    raise AssertionError("the worker ended before starting a trial:\n" + "".join(seen))


def _finished(process: subprocess.Popen[str]) -> tuple[int, str]:
    output, _ = process.communicate(timeout=600)
    return process.returncode, output


def _study(url: str) -> optuna.Study:
    return optuna.load_study(study_name="resnet-cifar", storage=url)


def _states(url: str) -> dict[int, str]:
    return {trial.number: trial.state.name for trial in _study(url).get_trials(deepcopy=False)}


def _kill_mid_trial(url: str, process: subprocess.Popen[str]) -> int:
    """SIGKILL ``process`` while the study shows its trial RUNNING (stopped first, so that the
    trial cannot finish between the look and the kill); returns that trial's number."""
    while True:
        number = _next_trial_started(process)
        process.send_signal(signal.SIGSTOP)
        if _states(url).get(number) == "RUNNING":
            process.kill()
            process.communicate()
            return number
        process.send_signal(signal.SIGCONT)  # it had finished already: catch the next one


def test_three_workers_on_postgresql_one_killed_one_terminated_finish_exactly(
    postgres: str, real_data_root: Path, decoded_cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = tmp_path / "space.toml"
    space.write_text(LR_SPACE)
    args = [*TINY, "--data-dir", str(real_data_root), "--space", str(space), "--storage", postgres, "--trials", "4", "--heartbeat", "5"]  # fmt: skip
    outs = [tmp_path / f"machine-{index}" for index in range(3)]
    # Three separate processes from the start: the survivor runs trials beside the two that die,
    # so the killed trial is failed by the heartbeat of a study in full use.
    workers = [_worker(args, out, decoded_cache_dir) for out in outs]

    killed = _kill_mid_trial(postgres, workers[0])
    _next_trial_started(workers[1])
    workers[1].send_signal(signal.SIGTERM)
    code, output = _finished(workers[1])
    assert code == 143, output
    code, output = _finished(workers[2])
    assert code == 0, output

    trials = _study(postgres).get_trials(deepcopy=False)
    complete = [trial for trial in trials if trial.state.name == "COMPLETE"]
    assert len(complete) == 4  # exactly --trials, whatever died on the way
    dead = next(trial for trial in trials if trial.number == killed)
    assert dead.state.name == "FAIL" and "error" not in dead.user_attrs  # failed by the heartbeat
    retries = [trial for trial in trials if trial.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE"
    assert retries[0].params == dead.params  # the same sampled values, run again once
    for trial in trials:  # the terminated worker's trial failed cleanly (or had finished)
        if trial.state.name == "FAIL" and trial.number != killed:
            assert trial.user_attrs.get("interrupted") or trial.user_attrs.get("surplus"), trial.user_attrs

    # The surviving worker wrote the best config as it left; any machine can read the study.
    best = max(complete, key=lambda trial: (trial.value, -trial.number))
    expected = best_config(best.user_attrs["config"])
    assert resolve_config(file=outs[2] / "best.toml") == expected
    elsewhere = tmp_path / "laptop"
    report = run_cli_in_process(capsys, "sweep", "--storage", postgres, "--report", "--out", str(elsewhere))  # this process: another machine
    assert report.returncode == 0, report.stderr
    assert resolve_config(file=elsewhere / "best.toml") == expected
    with open(elsewhere / "trials.csv", newline="") as handle:
        rows = {int(row["number"]): row["state"] for row in csv.DictReader(handle)}
    assert rows == _states(postgres)
    assert PASSWORD not in report.stdout + report.stderr
    for out in (outs[2], elsewhere):  # the page of the whole study, password masked
        page = (out / "sweep.html").read_text(encoding="utf-8")
        assert page.count("<tr data-trial=") == len(rows) and PASSWORD not in page and f"{USER}:***@" in page


def test_journal_storage_shared_by_concurrent_workers_holds_exactly_the_trials(
    real_data_root: Path, decoded_cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = tmp_path / "space.toml"
    space.write_text(LR_SPACE)
    journal = tmp_path / "shared" / "study.log"
    journal.parent.mkdir()
    args = [*TINY, "--data-dir", str(real_data_root), "--space", str(space), "--storage", f"journal:{journal}", "--trials", "3"]  # fmt: skip
    outs = [tmp_path / f"machine-{index}" for index in range(2)]
    # The first worker a child, the second this process, started once the first is running a
    # trial (so the two share the journal while trials run); the child's output read meanwhile.
    worker = _worker(args, outs[0], decoded_cache_dir)
    _next_trial_started(worker)
    output = drain(worker.stdout)
    with one_torch_thread():
        second = _in_process_worker(capsys, args, outs[1], decoded_cache_dir)
    worker.wait(timeout=600)
    assert worker.returncode == 0, output()
    assert second.returncode == 0, second.stdout + second.stderr

    study = optuna.load_study(
        study_name="resnet-cifar", storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    )
    trials = study.get_trials(deepcopy=False)
    assert sum(trial.state.name == "COMPLETE" for trial in trials) == 3
    assert all(trial.state.name == "COMPLETE" or trial.user_attrs.get("surplus") for trial in trials)
    ran = sum(len(list(out.glob("trials/*/last.pt"))) for out in outs)
    assert ran == 3  # every complete trial trained once, in one worker's folder


@pytest.mark.parametrize(
    ("make_url", "reason"),
    [
        (lambda url: url.rsplit(":", 1)[0] + f":{_free_port()}/sweeps", "connect"),  # nothing listens there
        (lambda url: url.replace(PASSWORD, "wrong-" + PASSWORD), "password authentication failed"),
        (lambda url: url.rsplit("/", 1)[0] + "/no_such_db", 'database "no_such_db" does not exist'),
    ],
    ids=["unreachable", "bad-password", "missing-database"],
)
def test_bad_storage_urls_are_one_line_exit_2_password_masked(
    postgres: str, make_url, reason: str, real_data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = make_url(postgres)
    for mode in (["--data-dir", str(real_data_root), "--trials", "1"], ["--report"]):
        # In this process: the refusal comes before any trial (a child would only add its start-up).
        result = run_cli_in_process(capsys, "sweep", *mode, "--storage", url, "--out", str(tmp_path / "s"))
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert lines[0].startswith(f"error: postgresql+psycopg://{USER}:***@127.0.0.1:") and reason in lines[0]
        assert PASSWORD not in result.stdout + result.stderr and "Traceback" not in result.stderr
    assert not list((tmp_path / "s").glob("trials/*"))
