"""The GPU run's script (benchmarks/gpu_run.sh) in its dry mode, and its Python helpers.

The dry run is the real script end to end on the CPU: tiny sizes, eager, a few real images per
class, the same steps and the same JSON layout as a device call. The helpers are checked where a
CPU can check them: the compile warm-up must leave the training exactly as if it had not run, and
the goals must be judged right from the files a GPU run would write.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "gpu_run.sh"


def load_benchmark_module(name: str) -> ModuleType:
    """benchmarks/ is not a package: load one of its scripts by path."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO_ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_train = load_benchmark_module("gpu_train")
gpu_report = load_benchmark_module("gpu_report")


def run_script(*args: str, env: dict[str, str], cwd: Path = REPO_ROOT, script: Path = SCRIPT, timeout: float = 300):
    return subprocess.run(
        ["bash", str(script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def script_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("OUT", "DRY_RUN")}
    env["PYTHON"] = sys.executable
    env.update(extra)
    return env


# ----------------------------------------------------------------------------- the dry run


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory, real_data_root: Path) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("gpu-run-out")
    done = run_script("--dry-run", env=script_env(OUT=str(out), RESNET_CIFAR_TEST_DATA=str(real_data_root)))
    output = f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert done.returncode == 0, f"dry run failed (exit {done.returncode}):\n{output}"
    return out, done.stdout


def test_dry_run_writes_every_file_of_a_gpu_run(dry_run) -> None:
    out, stdout = dry_run
    names = {path.name for path in out.iterdir()}
    assert names == {"run.log", "env.json", "train.json", "bench_train_step.json", "bench_inference.json", "goals.json"}
    # The device call brings back at most 8 files, with plain names, no deeper than 2 folders.
    assert len(names) <= 8
    assert "dry run (CPU, tiny sizes)" in stdout
    assert "FAILED" not in (out / "run.log").read_text()


def test_dry_run_training_reports_test_accuracy_every_epoch(dry_run) -> None:
    out, _ = dry_run
    train = json.loads((out / "train.json").read_text())
    assert train["status"] == "finished"
    config = train["config"]
    assert config["run"]["preset"] == "default"
    assert config["optim"]["epochs"] == 2
    assert config["precision"] == {**config["precision"], "amp": True, "amp_dtype": "bf16", "channels_last": True}
    assert config["precision"]["compile"] is False  # the dry run stays eager
    assert train["run"]["batch_size"] == 16 and train["run"]["train_samples"] == 32
    assert train["compile_seconds"] > 0 and train["warmup_steps"] == 2
    epochs = train["epochs"]
    assert [epoch["epoch"] for epoch in epochs] == [1, 2]
    for epoch in epochs:
        assert 0.0 <= epoch["test_acc"] <= 1.0
        assert epoch["train_images"] == 32 and epoch["train_seconds"] > 0 and epoch["images_per_sec"] > 0
    both = epochs[0]["train_seconds"] + epochs[1]["train_seconds"]
    assert epochs[1]["cumulative_train_seconds"] == pytest.approx(both)
    summary = train["summary"]
    assert summary["final_test_acc"] == epochs[-1]["test_acc"]
    assert summary["train_images"] == 64
    assert summary["end_to_end_images_per_sec"] == pytest.approx(64 / summary["total_train_seconds"])


def test_dry_run_benchmarks_store_images_per_sec_with_their_settings(dry_run) -> None:
    out, stdout = dry_run
    by_name = {}
    for group in ("train_step", "inference"):
        for bench in json.loads((out / f"bench_{group}.json").read_text())["benchmarks"]:
            assert bench["group"] == group
            by_name[bench["name"]] = bench["extra_info"]
    assert set(by_name) == {
        "test_train_step_baseline_eager_fp32",
        "test_train_step[amp_bf16_channels_last]",
        "test_inference_torchvision_resnet50_baseline",
        "test_inference_resnet50_best_settings",
    }
    for info in by_name.values():
        assert info["images_per_sec"] > 0 and info["device"] == "cpu" and info["batch_size"] == 2
        assert info["compile"] is False
    assert by_name["test_train_step_baseline_eager_fp32"]["dtype"] == "float32"
    assert by_name["test_train_step[amp_bf16_channels_last]"]["dtype"] == "bfloat16"
    assert by_name["test_train_step[amp_bf16_channels_last]"]["speedup_vs_baseline"] > 0
    assert by_name["test_inference_resnet50_best_settings"]["channels_last"] is True
    # The summary table of benchmarks/conftest.py is printed at the end of each pytest run.
    assert "images/sec (ratio to the baseline of the same group, same run)" in stdout


def test_dry_run_judges_no_goal_on_a_cpu(dry_run) -> None:
    out, _ = dry_run
    goals = json.loads((out / "goals.json").read_text())
    assert goals["on_gpu"] is False
    assert [entry["goal"] for entry in goals["goals"]] == list(gpu_report.GOALS)
    assert all(entry["met"] is None for entry in goals["goals"])
    env = json.loads((out / "env.json").read_text())
    assert env["cuda_available"] is False and env["required"]["torch"]


# ----------------------------------------------------------------------------- refusals


def test_unknown_argument_is_a_usage_error() -> None:
    done = run_script("--fast", env=script_env())
    assert done.returncode == 2
    assert done.stderr.strip() == "error: unknown argument '--fast'; usage: bash benchmarks/gpu_run.sh [--dry-run]"


def test_gpu_mode_needs_out_and_the_carried_data(tmp_path: Path) -> None:
    done = run_script(env=script_env())
    assert done.returncode == 2 and "OUT is not set" in done.stderr
    # A checkout without .device/: the script must stop before installing or training anything.
    checkout = tmp_path / "checkout"
    (checkout / "benchmarks").mkdir(parents=True)
    shutil.copy(SCRIPT, checkout / "benchmarks" / "gpu_run.sh")
    out = tmp_path / "out"
    done = run_script(env=script_env(OUT=str(out)), cwd=checkout, script=checkout / "benchmarks" / "gpu_run.sh")
    assert done.returncode == 2
    assert ".device/cifar10-jpeg.tgz is missing" in done.stderr
    assert not (out / "train.json").exists()


def test_bad_budget_is_refused() -> None:
    done = run_script("--dry-run", env=script_env(GPU_RUN_BUDGET_S="ten"))
    assert done.returncode == 2 and "GPU_RUN_BUDGET_S" in done.stderr


# ----------------------------------------------------------------------------- gpu_train.py


def link_subset(source: Path, target: Path, per_class: dict[str, int]) -> Path:
    """A few real images per class, linked into an image-folder layout (nothing is copied)."""
    for split, count in per_class.items():
        for class_dir in sorted((source / split).iterdir()):
            (target / split / class_dir.name).mkdir(parents=True)
            for image in sorted(class_dir.iterdir())[:count]:
                (target / split / class_dir.name / image.name).symlink_to(image)
    return target


def test_compile_warm_up_leaves_training_as_if_it_had_not_run(tmp_path: Path, real_data_root: Path) -> None:
    data = link_subset(real_data_root, tmp_path / "data", {"train": 8, "test": 2})

    def trainer(name: str):
        args = gpu_train.parse_args(
            ["--data-dir", str(data), "--out-json", str(tmp_path / "unused.json"), "--preset", "smoke",
             "--device", "cpu", "--no-compile", "--no-amp", "--epochs", "1", "--batch-size", "4",
             "--limit-train", "24", "--limit-val", "8"]  # fmt: skip
        )
        cfg = gpu_train.build_config(args, tmp_path / name)
        return gpu_train.Trainer(cfg, checkpointer=gpu_train.Checkpointer(tmp_path / name, keep_checkpoints=False))

    plain = trainer("plain")
    warmed = trainer("warmed")
    initial = {key: value.clone() for key, value in warmed.parts.module.state_dict().items()}
    first_step_seconds = gpu_train.compile_and_restore(warmed, steps=2)
    assert first_step_seconds > 0
    for key, value in warmed.parts.module.state_dict().items():
        assert value.equal(initial[key]), f"{key} was not restored"
    assert not warmed.parts.optimizer.state  # no momentum left from the warm-up steps
    assert warmed.parts.step.global_step == 0
    assert warmed.parts.scheduler.state_dict() == plain.parts.scheduler.state_dict()
    # Same data order, same updates: one epoch (6 steps) of each gives the same losses and weights.
    plain_record = plain.fit().history[0]
    warmed_record = warmed.fit().history[0]
    assert warmed_record.train_loss == pytest.approx(plain_record.train_loss, rel=1e-6)
    for key, value in warmed.parts.module.state_dict().items():
        assert value.float().allclose(plain.parts.module.state_dict()[key].float(), atol=1e-6), key
    # Checkpoints are off for timing runs.
    assert not (tmp_path / "warmed" / "last.pt").exists()


def test_shorter_run_keeps_the_schedule_shape(tmp_path: Path) -> None:
    args = gpu_train.parse_args(["--data-dir", str(tmp_path), "--out-json", str(tmp_path / "t.json"), "--epochs", "10"])
    cfg = gpu_train.build_config(args, tmp_path / "run")
    # The default preset warms up for 9 of its 30 epochs: 30% of the run.
    assert cfg.optim.epochs == 10 and cfg.optim.warmup_epochs == pytest.approx(3.0)
    assert cfg.precision.compile and cfg.precision.amp and cfg.precision.channels_last
    assert cfg.data.batch_size == 512


@pytest.mark.parametrize("bad", [["--epochs", "0"], ["--warmup-steps", "0"]])
def test_gpu_train_refuses_bad_arguments(tmp_path: Path, bad: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        gpu_train.parse_args(["--data-dir", str(tmp_path), "--out-json", str(tmp_path / "t.json"), *bad])
    assert stopped.value.code == 2
    assert bad[0] in capsys.readouterr().err


# ----------------------------------------------------------------------------- gpu_report.py


def write_gpu_run(out: Path, *, accuracies: list[float], epoch_seconds: float, eager: float, loader: float) -> None:
    """The files a GPU run leaves, with chosen figures."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "env.json").write_text(json.dumps({"cuda_available": True, "device_name": "NVIDIA H100 80GB HBM3"}))
    epochs, cumulative = [], 0.0
    for index, accuracy in enumerate(accuracies, start=1):
        cumulative += epoch_seconds
        epochs.append(
            {"epoch": index, "test_acc": accuracy, "cumulative_train_seconds": cumulative, "train_images": 44_544}
        )
    summary = gpu_train.summarize(epochs, 0.94, 60.0)
    train = {"status": "finished", "config": {"run": {"preset": "default"}}, "epochs": epochs, "summary": summary}
    (out / "train.json").write_text(json.dumps(train))

    def bench(group: str, name: str, rate: float, device: str = "cuda") -> dict:
        return {"group": group, "name": name, "extra_info": {"images_per_sec": rate, "device": device}}

    (out / "bench_train_step.json").write_text(
        json.dumps({"benchmarks": [bench("train_step", "test_train_step_baseline_eager_fp32", eager)]})
    )
    (out / "bench_loader.json").write_text(
        json.dumps(
            {
                "benchmarks": [
                    bench("loader", "test_tensor_loader", loader),
                    bench("loader", "test_baseline_torchvision_imagefolder_dataloader", 3_000.0, device="cpu"),
                ]
            }
        )
    )


def verdicts(out: Path) -> dict[str, dict]:
    return {entry["goal"]: entry for entry in gpu_report.judge(out)["goals"]}


def test_goals_met(tmp_path: Path) -> None:
    # 44,544 images per 2 s epoch = 22,272 img/s; 94.1% after 28 epochs = 56 s.
    write_gpu_run(tmp_path, accuracies=[0.5] * 27 + [0.941, 0.945, 0.946], epoch_seconds=2.0, eager=5_000, loader=1.5e6)
    goals = verdicts(tmp_path)
    assert goals["end_to_end_images_per_sec"]["value"] == pytest.approx(22_272)
    assert goals["end_to_end_images_per_sec"]["met"] is True
    assert goals["end_to_end_vs_eager_fp32"]["value"] == pytest.approx(22_272 / 5_000)
    assert goals["end_to_end_vs_eager_fp32"]["met"] is True
    assert goals["loader_vs_training_rate"]["value"] == pytest.approx(1.5e6 / 22_272)
    assert goals["loader_vs_training_rate"]["met"] is True
    assert goals["test_acc_within_60s"]["value"] == pytest.approx(0.946)
    assert goals["test_acc_within_60s"]["met"] is True
    assert goals["long_preset_test_acc"]["met"] is None  # not this run's preset


def test_goals_missed_and_missing(tmp_path: Path) -> None:
    # 3 s epochs: 94% only after 84 s; 14,848 img/s; no loader file at all.
    write_gpu_run(tmp_path, accuracies=[0.5] * 27 + [0.941, 0.945, 0.946], epoch_seconds=3.0, eager=5_000, loader=1.0)
    (tmp_path / "bench_loader.json").unlink()
    goals = verdicts(tmp_path)
    assert goals["end_to_end_images_per_sec"]["met"] is False
    assert goals["end_to_end_vs_eager_fp32"]["met"] is False  # 2.97x
    assert goals["loader_vs_training_rate"] == {**goals["loader_vs_training_rate"], "value": None, "met": None}
    assert goals["test_acc_within_60s"]["value"] == pytest.approx(0.5)  # the best epoch inside 60 s
    assert goals["test_acc_within_60s"]["met"] is False
    written = gpu_report.report_goals(tmp_path)
    assert written == 0 and json.loads((tmp_path / "goals.json").read_text())["on_gpu"] is True
