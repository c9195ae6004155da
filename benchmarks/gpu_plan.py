"""The GPU run's plan and its runner: the steps in order of importance, one budget for all of them.

    python3 benchmarks/gpu_plan.py --out OUT --keep KEEP --work DIR --data-dir DATA [--dry-run] [--call 1|2]

benchmarks/gpu_run.sh runs it after its set-up (data, install, environment check); CONTRIBUTING.md
("GPU checks") gives the device calls. The steps (STEPS), most important first:
  (a) fast        resnet-cifar train --preset fast --amp --compile --target-acc 0.94
  (b) train_step  the train_step benchmark group: eager fp32 (true fp32 and TF32), bf16 +
                  channels_last, + compile, interleaved in one pytest run
  (c) default     resnet-cifar train --amp --compile, the default preset, as many epochs as fit
  (d) sync_probe, inference, loader, dali   the rest (dali only where DALI imports)

The budget. GPU_RUN_BUDGET_S is the plan's wall time, the set-up included (gpu_run.sh's start,
GPU_RUN_STARTED), across at most two device calls (CALLS: their timeout_s, 11 minutes together).
Each call runs the steps not run yet, in order, and keeps its files and the plan's state in KEEP
(the warm machine's /tmp), where the next call finds them. Before each step the runner decides:
- in call 1, a step runs when its longest time (its max seconds) fits in the call; otherwise it
  and every later step wait for call 2 ("deferred to call 2");
- in the last call (and in a dry run, which runs the whole plan in one call), a step runs when its
  shortest useful time (its min seconds) fits, limited to what is left (at most its max);
  otherwise it is recorded as "not run: budget" and the next one is considered.
A step's limit is enforced: SIGINT GRACE_S before it (the CLI and pytest stop cleanly and keep
what they measured), SIGKILL at it. goals.json and every result file are written before the
deadline, also when the runner itself gets SIGINT or SIGTERM: it passes SIGINT to the step, waits
for it as above, records the steps left out and exits 130/143.

The step times are estimates (the device has never been timed yet); every step's record says how
long it took, so the next session can correct them.

Exit status: 0 every step that ran succeeded (steps left out for the budget or skipped are
recorded, not failures), 1 a step failed or was cut at its limit, 2 bad arguments, 130/143 stopped.
Files in OUT (at most 8 come back from a call): run.log (gpu_run.sh's and this runner's output),
env.json, train.json, bench_<group>.json, goals.json (the goals and the plan: each step's status,
call, limit and seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import gpu_report
import gpu_train

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Step:
    name: str
    group: str  # a, b, c, d: the order of importance
    what: str
    device_seconds: tuple[float, float]  # (min, max) on the device
    dry_seconds: tuple[float, float]  # (min, max) in the dry run on a CPU
    needs: str  # "cli" (the library's runtime needs) or "bench" (and the benchmarks'), device_env.py
    optional: str | None = None  # env.json's "optional" entry without which the step is skipped

    def seconds(self, dry_run: bool) -> tuple[float, float]:
        return self.dry_seconds if dry_run else self.device_seconds


STEPS = (
    Step("fast", "a", "resnet-cifar train --preset fast --amp --compile --target-acc 0.94", (150, 270), (15, 240), "cli"),
    Step("train_step", "b", "train_step group: eager fp32 (true, TF32), bf16 + channels_last, + compile",
         (90, 150), (15, 240), "bench"),
    Step("default", "c", "resnet-cifar train --amp --compile (default preset), as many epochs as fit",
         (90, 200), (15, 240), "cli"),
    Step("sync_probe", "d", "first epoch under torch.cuda.set_sync_debug_mode('warn'), per code path",
         (45, 120), (0, 0), "cli"),
    Step("inference", "d", "inference group: ours vs torchvision, best settings", (40, 120), (15, 240), "bench"),
    Step("loader", "d", "loader group: the tensor loader's epochs (DALI's where it imports)", (40, 120), (15, 240), "bench"),
    Step("dali", "d", "resnet-cifar train --preset fast --amp --compile --loader dali", (150, 270), (15, 240), "cli",
         optional="dali"),
)  # fmt: skip
STEP_NAMES = tuple(step.name for step in STEPS)
# The device calls' timeout_s (CONTRIBUTING.md, "GPU checks"): 11 minutes together, 13 with the
# machine's start, inside the 15 minutes a session has.
CALLS = {1: 420, 2: 240}
CALL_MARGIN_S = 15.0  # each call's work ends this long before its timeout_s
GOALS_RESERVE_S = 3.0  # judging the goals and copying the files at the end
GRACE_S = {False: 15.0, True: 5.0}  # SIGINT this long before a step's limit (device, dry run)
DEFAULT_BUDGET_S = {False: sum(CALLS.values()) - len(CALLS) * CALL_MARGIN_S, True: 900.0}
# Statuses a later call keeps (unless GPU_RUN_STEPS names the step: a rerun of what failed).
FINAL = ("done", "failed", "cut at its limit", "skipped")
# Which benchmarks each group runs, the same on the device and in the dry run: the fp32 compiled
# step is left out (the goals compare with eager fp32; its compilation would cost the budget),
# onnxruntime's benchmark is a CPU figure, and the loader group's CPU references would take most
# of its time. Without DALI its loader benchmarks are left out too.
BENCH_SELECT = {
    "train_step": "baseline or tf32 or amp_bf16_channels_last",
    "inference": "not onnxruntime",
    "loader": "not baseline and not torchvision_autoaugment",
}
# The dry run on a CPU without native bf16 leaves out the bf16 benchmarks (see cpu_has_native_bf16).
NO_BF16_SELECT = {"train_step": "baseline or tf32", "inference": "not onnxruntime and not best"}
DRY_BENCH_ENV = {
    "RESNET_CIFAR_BENCH_TRAIN_BATCH": "2", "RESNET_CIFAR_BENCH_INFER_BATCH": "2", "RESNET_CIFAR_BENCH_ROUNDS": "1",
    "RESNET_CIFAR_BENCH_LOADER_BATCH": "8", "RESNET_CIFAR_BENCH_SKIP_COMPILE": "1",
}  # fmt: skip


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16): elsewhere oneDNN
    emulates it, ResNet-50 steps take minutes, and the dry run keeps to fp32."""
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def now() -> float:
    return time.time()  # wall clock: comparable with gpu_run.sh's start (date +%s.%N)


def fits(seconds: tuple[float, float], left: float, *, before_last_call: bool, deferring: bool) -> tuple[str, float]:
    """("run", limit) for a step of (min, max) ``seconds`` with ``left`` seconds to the deadline,
    else its status. Before the last call a step runs whole (max) or waits, with every step after
    it; in the last call it runs when its min fits, for what is left up to its max."""
    shortest, longest = seconds
    if before_last_call:
        if deferring or longest > left:
            return "deferred to call 2", 0.0
        return "run", longest
    if shortest <= left:
        return "run", min(longest, left)
    return "not run: budget", 0.0


class Runner:
    """Runs the plan's steps for one call within the budget, keeping the state in KEEP."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dry = args.dry_run
        self.grace = GRACE_S[self.dry]
        self.bf16 = not self.dry or cpu_has_native_bf16()
        self.settings = gpu_train.TrainSettings(data_dir=args.data_dir, dry_run=self.dry, cpu_bf16=self.bf16)
        self.keep: Path = args.keep
        self.out: Path = args.out
        self.log_file: IO[str] = (self.out / "run.log").open("a")
        self.child: subprocess.Popen | None = None
        self.stop_signal: str | None = None
        self.state = self._load_state()
        self.call_started = args.started
        used = sum(call["seconds"] for call in self.state["calls"])
        self.plan_deadline = self.call_started + args.budget - used
        self.last_call = args.call in ("all", str(max(CALLS)))
        limit = float("inf") if args.call == "all" else CALLS[int(args.call)] - CALL_MARGIN_S
        self.call_deadline = self.call_started + limit
        self.env = gpu_report.read_json(self.out / "env.json") or {}

    # -- bookkeeping

    def log(self, message: str) -> None:
        line = f"[gpu_plan +{now() - self.call_started:.0f}s] {message}"
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def _load_state(self) -> dict[str, Any]:
        state = gpu_report.read_json(self.keep / "plan.json")
        if state is None or state.get("dry_run") != self.dry:
            state = {"dry_run": self.dry, "budget_seconds": self.args.budget, "calls": [], "steps": {}}
        return state

    def _save(self) -> None:
        gpu_train.write_json(self.keep / "plan.json", self.state)

    def _record(self, step: Step, status: str, **details: Any) -> None:
        entry = {"name": step.name, "group": step.group, "what": step.what, "status": status,
                 "call": self.args.call, **details}  # fmt: skip
        self.state["steps"][step.name] = entry
        self._save()
        self.log(f"step {step.name}: {status}" + (f" ({details['error']})" if details.get("error") else ""))

    def deadline(self) -> float:
        return min(self.plan_deadline, self.call_deadline) - GOALS_RESERVE_S

    # -- deciding

    def decide(self, step: Step, deferring: bool) -> tuple[str, float]:
        """("run", limit seconds) or the status of a step that does not run now."""
        if self.args.steps and step.name not in self.args.steps:
            return "not run: not in GPU_RUN_STEPS", 0.0
        if self.stop_signal:
            return f"not run: stopped by {self.stop_signal}", 0.0
        if step.optional and not self.env.get("optional", {}).get(step.optional, False):
            return f"skipped: {step.optional} does not import here (env.json)", 0.0
        if step.name == "sync_probe" and (self.dry or not self.env.get("cuda_available")):
            return "skipped: not on CUDA (the sync debug mode is CUDA's)", 0.0
        before_last = not self.last_call and self.plan_deadline > self.call_deadline
        return fits(step.seconds(self.dry), self.deadline() - now(), before_last_call=before_last, deferring=deferring)

    # -- running

    def run_limited(
        self, step: Step, command: list[str], limit: float, *, stdout_path: Path | None, stderr_path: Path,
        env: dict[str, str] | None = None, echo: bool = True,
    ) -> dict[str, Any]:  # fmt: skip
        """Run ``command`` for ``step`` in its own process group: SIGINT GRACE_S before ``limit``
        (or when the runner is stopped), SIGKILL at it. Its stderr (and stdout when ``stdout_path``
        is None) is kept in ``stderr_path`` and, with ``echo``, copied to the console and run.log.
        GPU_RUN_STEP names the step to the import fence."""
        env = {**(env if env is not None else os.environ), "GPU_RUN_STEP": step.name}
        started = now()
        hard = min(started + limit, self.deadline())
        stdout = stdout_path.open("w") if stdout_path else subprocess.PIPE
        process = subprocess.Popen(
            command, stdout=stdout, stderr=subprocess.PIPE if stdout_path else subprocess.STDOUT,
            # Outside the checkout, whose resnet_cifar/ would shadow the installed project.
            text=True, env=env, cwd=self.args.work, process_group=0,
        )  # fmt: skip
        self.child = process
        stream = process.stderr if stdout_path else process.stdout
        copier = threading.Thread(target=self._copy_lines, args=(stream, stderr_path, echo), daemon=True)
        copier.start()
        interrupted = False
        while process.poll() is None:
            moment = now()
            if not interrupted and (moment >= hard - self.grace or self.stop_signal):
                interrupted = True
                hard = min(hard, moment + self.grace)
                self._signal_child(signal.SIGINT)
            if moment >= hard:
                self._signal_child(signal.SIGKILL)
                break
            time.sleep(0.1)
        process.wait()
        copier.join(timeout=5)
        self.child = None
        if stdout_path:
            stdout.close()  # type: ignore[union-attr]
        return {
            "exit_code": process.returncode,
            "cut": interrupted,
            "wall_seconds": now() - started,
            "limit_seconds": limit,
            "stdout": stdout_path.read_text() if stdout_path else "",
            "stderr_path": stderr_path,
        }

    def _copy_lines(self, stream: IO[str], path: Path, echo: bool) -> None:
        with path.open("w") as kept:
            for line in stream:
                kept.write(line)
                if echo:
                    sys.stdout.write(line)
                    self.log_file.write(line)
        sys.stdout.flush()
        self.log_file.flush()

    def _signal_child(self, number: signal.Signals) -> None:
        if self.child is not None and self.child.poll() is None:
            try:
                os.killpg(self.child.pid, number)
            except ProcessLookupError:
                pass

    def on_signal(self, number: int, frame: Any) -> None:
        self.stop_signal = signal.Signals(number).name
        self._signal_child(signal.SIGINT)

    # -- the steps

    def train_json(self) -> dict[str, Any]:
        return gpu_report.read_json(self.keep / "train.json") or {"dry_run": self.dry, "runs": []}

    def run_training(self, step: Step, limit: float) -> tuple[str, dict[str, Any]]:
        preset, loader = ("fast", "dali") if step.name == "dali" else (step.name, "tensor")
        train = self.train_json()
        epochs = None
        if step.name == "default" and not self.dry:
            fast = next((run for run in train["runs"] if run.get("name") == "fast"), None)
            epochs = gpu_train.default_epochs(fast, limit, self.grace)
        run_dir = self.args.work / "runs" / step.name
        shutil.rmtree(run_dir, ignore_errors=True)
        command = [*gpu_train.cli_command(),
                   *gpu_train.train_arguments(self.settings, preset, run_dir, loader=loader, epochs=epochs)]  # fmt: skip
        self.log(f"step {step.name}: {' '.join(command)} (limit {limit:.0f} s)")
        outcome = self.run_limited(
            step, command, limit, stdout_path=self.args.work / f"{step.name}.out", stderr_path=self.args.work / f"{step.name}.err"
        )
        record = gpu_train.train_record(step.name, preset, loader, command, run_dir, outcome)
        train["runs"] = [run for run in train["runs"] if run.get("name") != step.name] + [record]
        self._write_result("train.json", train)
        summary = record["summary"]
        self.log(
            f"step {step.name}: {record['status']}, {summary['epochs']} epochs, "
            f"{summary.get('images_per_sec_end_to_end') or 0:,.0f} img/s end to end, compile "
            f"{record.get('compile_seconds')} s, test acc {record.get('test_acc')}, 94% at {record.get('time_to_target_s')} s"
        )
        status = "done" if record["status"] == "finished" else record["status"]
        return status, self._outcome_details(step, outcome, record.get("error"))

    def run_sync_probe(self, step: Step, limit: float) -> tuple[str, dict[str, Any]]:
        train = self.train_json()
        probes = []
        ends = now() + limit
        for probe in gpu_train.SYNC_PROBES:
            left = ends - now()
            if left < step.device_seconds[0] / len(gpu_train.SYNC_PROBES) or self.stop_signal:
                probes.append({"name": probe, "status": "not run: budget" if not self.stop_signal else "not run: stopped"})
                continue
            command = gpu_train.sync_probe_command(self.settings, probe, self.args.work / "runs" / f"sync-{len(probes)}")
            stderr = self.args.work / f"sync_probe_{len(probes)}.err"
            outcome = self.run_limited(step, command, left, stdout_path=self.args.work / "sync_probe.out",
                                       stderr_path=stderr, echo=False)  # fmt: skip
            probes.append(gpu_train.sync_probe_record(probe, command, outcome))
            self.log(f"sync probe {probe}: {probes[-1]['status']}, {probes[-1]['warnings']} warnings")
        ran = [probe for probe in probes if "warnings" in probe]
        ok = bool(ran) and all(probe["status"] == "finished" for probe in ran)
        train["sync_debug"] = {"status": "ran" if ok else "failed", "probes": probes}
        self._write_result("train.json", train)
        return ("done" if ok else "failed"), {"seconds": round(limit - max(ends - now(), 0.0), 1)}

    def run_bench(self, step: Step, limit: float) -> tuple[str, dict[str, Any]]:
        select = BENCH_SELECT[step.name] if self.bf16 else NO_BF16_SELECT.get(step.name, BENCH_SELECT[step.name])
        if step.name == "loader" and not self.env.get("optional", {}).get("dali"):
            select += " and not dali"
        result = self.keep / f"bench_{step.name}.json"
        result.unlink(missing_ok=True)
        env = {**os.environ, **(DRY_BENCH_ENV if self.dry else {}), "RESNET_CIFAR_TEST_DATA": str(self.args.data_dir)}
        command = [sys.executable, "-m", "pytest", str(REPO / "benchmarks" / f"test_{step.name}.py"), "--benchmark-only",
                   "-p", "no:cacheprovider", "-o", "addopts=", "-q", "-k", select, "--benchmark-json", str(result)]  # fmt: skip
        self.log(f"step {step.name}: {' '.join(command)} (limit {limit:.0f} s)")
        outcome = self.run_limited(step, command, limit, stdout_path=None, stderr_path=self.args.work / f"{step.name}.log", env=env)
        if result.is_file():
            shutil.copy(result, self.out / result.name)
        code, cut = outcome["exit_code"], outcome["cut"]
        status = "done" if code == 0 and result.is_file() else ("cut at its limit" if cut else "failed")
        error = None if status == "done" else f"pytest exit code {code}" + ("" if result.is_file() else ", no JSON")
        return status, self._outcome_details(step, outcome, error)

    def _outcome_details(self, step: Step, outcome: dict[str, Any], error: str | None) -> dict[str, Any]:
        details: dict[str, Any] = {"seconds": round(outcome["wall_seconds"], 1), "exit_code": outcome["exit_code"]}
        if error:
            details["error"] = error
            missing = missing_modules(step.name, outcome["stderr_path"], self.args.fence_log)
            if missing:
                details["modules_missing_on_device"] = missing
                details["error"] += f"; imports what the device lacks: {', '.join(missing)}"
        return details

    def _write_result(self, name: str, payload: dict[str, Any]) -> None:
        gpu_train.write_json(self.keep / name, payload)
        gpu_train.write_json(self.out / name, payload)

    # -- the plan

    def run(self) -> int:
        self.log(f"plan: call {self.args.call}, {'dry run (CPU, tiny sizes)' if self.dry else 'GPU run'}, "
                 f"{max(self.plan_deadline - now(), 0):.0f} s of the {self.args.budget:.0f} s budget left, "
                 f"call deadline in {min(self.call_deadline - now(), 1e9):.0f} s")  # fmt: skip
        if not self.bf16:
            self.log("dry run on a CPU without native bf16: the training commands add --no-amp, the bf16 "
                     "benchmarks are left out (the same plumbing in fp32)")  # fmt: skip
        if (self.out / "env.json").is_file():
            shutil.copy(self.out / "env.json", self.keep / "env.json")
        deferring = False
        for step in STEPS:
            previous = self.state["steps"].get(step.name, {}).get("status", "")
            if previous.startswith(FINAL) and step.name not in self.args.steps:
                continue  # an earlier call's outcome; GPU_RUN_STEPS naming it runs it again
            decision, limit = self.decide(step, deferring)
            if decision != "run":
                deferring = deferring or decision.startswith("deferred")
                self._record(step, decision)
                continue
            self.log(f"step {step.name} ({step.group}): {step.what}; limit {limit:.0f} s")
            started = now()
            runner = {"cli": self.run_training, "bench": self.run_bench}[step.needs]
            if step.name == "sync_probe":
                runner = self.run_sync_probe
            try:
                status, details = runner(step, limit)
            except Exception as error:  # a fault of this runner: recorded, and the plan goes on
                status, details = "failed", {"error": f"runner: {type(error).__name__}: {error}"}
            self._record(step, status, limit_seconds=round(limit, 1), started_at_plan_second=round(started - self.call_started, 1), **details)
        return self.finish()

    def finish(self) -> int:
        self.state["calls"].append({"call": self.args.call, "seconds": round(now() - self.call_started, 1)})
        self._save()
        steps = [self.state["steps"].get(step.name, {"name": step.name, "status": "not run"}) for step in STEPS]
        gpu_report.report_goals(self.out, self.keep, plan=steps)
        files = sorted(path.name for path in self.out.iterdir() if path.is_file())
        self.log(f"finished call {self.args.call} in {now() - self.call_started:.0f} s; files in {self.out}: {' '.join(files)}")
        if len(files) > 8:
            self.log(f"warning: {len(files)} files in OUT; a device call brings back 8")
        self.log_file.close()
        if self.stop_signal:
            return 128 + int(signal.Signals[self.stop_signal])
        failed = [step["name"] for step in steps if step["status"] in ("failed", "cut at its limit")]
        return 1 if failed else 0


MISSING_MODULE = re.compile(r"No module named '([^'.]+)")


def missing_modules(step: str, output: Path, fence_log: Path | None) -> list[str]:
    """The top-level modules a failed step could not import: the fence's refusals in that step
    and Python's own "No module named" errors at the end of its output."""
    names = set(MISSING_MODULE.findall("\n".join(gpu_train.tail_lines(output, count=200))))
    if fence_log is not None and fence_log.is_file():
        for line in fence_log.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("step") == step:
                names.add(entry["module"])
    return sorted(names)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="this call's files (the device call's $OUT)")
    parser.add_argument("--keep", type=Path, required=True, help="the plan's state and files across calls")
    parser.add_argument("--work", type=Path, required=True, help="scratch: run folders and logs")
    parser.add_argument("--data-dir", type=Path, required=True, help="CIFAR-10 image folders (train/, test/)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, eager: the plumbing only")
    parser.add_argument("--call", default="all", choices=("all", *map(str, CALLS)), help="which device call this is")
    parser.add_argument("--budget", type=float, help="the plan's seconds (default: GPU_RUN_BUDGET_S's default)")
    parser.add_argument("--started", type=float, default=None, help="the call's start (seconds since the epoch)")
    parser.add_argument("--steps", default="", help="run only these steps (space- or comma-separated)")
    parser.add_argument("--fence-log", type=Path, help="the import fence's log (dry run)")
    args = parser.parse_args(argv)
    args.steps = [name for name in re.split(r"[\s,]+", args.steps) if name]
    unknown = [name for name in args.steps if name not in STEP_NAMES]
    if unknown:
        parser.error(f"GPU_RUN_STEPS takes {', '.join(STEP_NAMES)}; got {', '.join(unknown)}")
    if args.budget is None:
        args.budget = DEFAULT_BUDGET_S[args.dry_run]
    if args.budget <= 0:
        parser.error(f"the budget must be positive, got {args.budget:g}")
    if args.started is None:
        args.started = now()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for folder in (args.out, args.keep, args.work):
        folder.mkdir(parents=True, exist_ok=True)
    runner = Runner(args)
    signal.signal(signal.SIGINT, runner.on_signal)
    signal.signal(signal.SIGTERM, runner.on_signal)
    return runner.run()


if __name__ == "__main__":
    sys.exit(main())
