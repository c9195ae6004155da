"""The sweep library: search-space files, study guards, failing, pruned and interrupted trials.

Trials train for real on a few real CIFAR-10 images (ResNet-18, imagenet stem, 2 steps an epoch),
so each costs seconds; trials that must fail do so at their first steps or before training.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pytest

from resnet_cifar.config import TrainConfig, resolve_config
from resnet_cifar.engine.checkpoint import load_checkpoint
from resnet_cifar.engine.trainer import StepFinished, StopRequest
from resnet_cifar.errors import UsageError
from resnet_cifar.tuning import (
    DEFAULT_SPACE,
    DEFAULT_STUDY_NAME,
    TrialEvent,
    best_config,
    check_space,
    default_space,
    default_storage,
    load_space,
    parse_space,
    run_sweep,
)

LR_SPACE = {"optim.lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True}}


@pytest.fixture()
def base(real_data_root: Path, decoded_cache_dir: Path) -> TrainConfig:
    """Fixed settings of a tiny sweep: 32 training images in batches of 16, one epoch."""
    return resolve_config(
        preset="smoke",
        overrides={
            "data.data_dir": real_data_root, "data.cache_dir": decoded_cache_dir, "model.depth": 18,
            "model.stem": "imagenet", "precision.device": "cpu", "data.batch_size": 16, "data.limit_train": 32,
            "data.limit_val": 32, "data.limit_test": 32, "optim.epochs": 1, "optim.schedule": "constant",
        },
    )  # fmt: skip


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- search spaces


def test_default_space_searches_the_issue_settings_and_validates() -> None:
    space = default_space()
    assert set(space.keys) == {
        "optim.lr", "data.batch_size", "optim.weight_decay", "optim.optimizer", "optim.schedule",
        "data.crop", "data.flip", "data.cutout", "optim.label_smoothing", "model.dropout",
        "data.augment", "data.mixup", "data.cutmix",  # issue 16: the policy and the mixing alphas
    }  # fmt: skip
    lr = next(parameter for parameter in space.parameters if parameter.key == "optim.lr")
    assert lr.kind == "float" and lr.log
    assert space.to_dict() == parse_space(DEFAULT_SPACE, source="x").to_dict()
    check_space(space, resolve_config(defaults={"data.data_dir": "."}))  # every bound valid for the default recipe


def test_a_space_keeps_the_order_it_was_written_in() -> None:
    # Trials suggest in this order, so a seeded sampler draws the same values for the same space.
    assert default_space().keys == tuple(DEFAULT_SPACE)
    mixed = {"optim.lr": {"type": "float", "low": 0.1, "high": 1.0}, "data": {"flip": {"type": "categorical", "choices": [True]}},
             "optim.momentum": {"type": "float", "low": 0.5, "high": 0.9}}  # fmt: skip
    assert parse_space(mixed, source="s").keys == ("optim.lr", "data.flip", "optim.momentum")


def test_toml_and_yaml_files_dotted_or_nested_read_alike(tmp_path: Path) -> None:
    dotted = write(
        tmp_path / "dotted.toml",
        '["optim.lr"]\ntype = "float"\nlow = 0.01\nhigh = 1.0\nlog = true\n'
        '["data.batch_size"]\ntype = "categorical"\nchoices = [32, 64]\n',
    )
    nested = write(
        tmp_path / "nested.yaml",
        "optim:\n  lr: {type: float, low: 1e-2, high: 1, log: true}\ndata.batch_size: {type: categorical, choices: [32, 64]}\n",
    )
    assert load_space(dotted).to_dict() == load_space(nested).to_dict()
    assert load_space(dotted).to_dict()["optim.lr"] == {"type": "float", "low": 0.01, "high": 1.0, "log": True}


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ('["optim.lrr"]\ntype = "float"\nlow = 0.1\nhigh = 1.0\n', ["optim.lrr", "unknown setting"]),
        ('["lr"]\ntype = "float"\nlow = 0.1\nhigh = 1.0\n', ["'lr'", "dotted"]),
        ('["data.data_dir"]\ntype = "categorical"\nchoices = ["a"]\n', ["data.data_dir", "cannot be searched"]),
        ('["optim.milestones"]\ntype = "categorical"\nchoices = [[1]]\n', ["optim.milestones", "cannot be searched"]),
        ('["data.batch_size"]\ntype = "float"\nlow = 16\nhigh = 64\n', ["data.batch_size", "use type int or categorical"]),
        ('["data.flip"]\ntype = "int"\nlow = 0\nhigh = 1\n', ["data.flip", "use type categorical"]),
        ('["optim.lr"]\ntype = "float"\nlow = 1.0\nhigh = 0.1\n', ["optim.lr", "low must be below high"]),
        ('["optim.lr"]\ntype = "float"\nlow = 0.0\nhigh = 1.0\nlog = true\n', ["optim.lr", "log scale needs low > 0"]),
        ('["optim.lr"]\ntype = "float"\nlow = "a"\nhigh = 1.0\n', ["optim.lr", "low must be a number"]),
        ('["optim.lr"]\ntype = "float"\nlo = 0.1\nhigh = 1.0\n', ["optim.lr", "unknown field 'lo'"]),
        ('["optim.lr"]\ntype = "normal"\n', ["optim.lr", "type must be one of"]),
        ('["optim.lr"]\ntype = "float"\nlow = 0.1\n', ["optim.lr", "needs 'high'"]),
        ('["data.cutout"]\ntype = "int"\nlow = 0\nhigh = 16\nstep = 0.5\n', ["data.cutout", "step"]),
        ('["data.flip"]\ntype = "categorical"\nchoices = []\n', ["data.flip", "non-empty list"]),
        ('["data.flip"]\ntype = "categorical"\nchoices = ["yes"]\n', ["data.flip", "'yes'", "true or false"]),
        ('["optim.lr"]\n', ["optim.lr", "type must be one of"]),
        ('"optim.lr" = 0.1\n', ["optim.lr", "must be a table"]),
        ("optim.lr = [\n", ["invalid TOML"]),
        ("", ["empty"]),
    ],
)
def test_bad_space_files_are_one_line_usage_errors_naming_file_and_key(
    tmp_path: Path, text: str, needles: list[str]
) -> None:
    path = write(tmp_path / "space.toml", text)
    with pytest.raises(UsageError) as caught:
        load_space(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(path))
    for needle in needles:
        assert needle in message


def test_space_file_suffix_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="must end in"):
        load_space(write(tmp_path / "space.json", "{}"))
    with pytest.raises(UsageError, match="no such search space file"):
        load_space(tmp_path / "absent.toml")


def test_check_space_refuses_values_the_setting_refuses_but_not_combinations(base: TrainConfig) -> None:
    bad_dropout = parse_space({"model.dropout": {"type": "float", "low": 0.0, "high": 1.0}}, source="s.toml")
    with pytest.raises(UsageError) as caught:
        check_space(bad_dropout, base)
    assert str(caught.value).startswith("s.toml: model.dropout") and "--dropout must be in [0, 1)" in str(caught.value)
    # 64 is above --limit-train 32 here: a combination, so only the trial that samples it fails.
    check_space(parse_space({"data.batch_size": {"type": "categorical", "choices": [16, 64]}}, source="s"), base)


# ----------------------------------------------------------------------------- study guards (no training)


def test_storage_guards(base: TrainConfig, tmp_path: Path) -> None:
    space = parse_space(LR_SPACE, source="space.toml")
    out = tmp_path / "sweep"
    out.mkdir()
    study = optuna.create_study(storage=default_storage(out), study_name=DEFAULT_STUDY_NAME, direction="maximize")
    study.add_trial(
        optuna.trial.create_trial(
            params={"optim.lr": 0.05},
            distributions={"optim.lr": optuna.distributions.CategoricalDistribution([0.05, 0.1])},
            value=0.5,
        )
    )
    with pytest.raises(UsageError, match=r"space.toml: optim.lr was searched as .*Categorical"):
        run_sweep(base, space, out_dir=out, trials=2)
    with pytest.raises(UsageError, match=f"holds study '{DEFAULT_STUDY_NAME}'; use --study-name"):
        run_sweep(base, space, out_dir=out, trials=2, study_name="other")
    with pytest.raises(UsageError, match="--trials must be at least 1"):
        run_sweep(base, space, out_dir=out, trials=0)

    stale = tmp_path / "stale"
    (stale / "trials" / "0").mkdir(parents=True)  # e.g. study.db deleted, trial folders kept
    with pytest.raises(UsageError, match="holds trial runs of a study"):
        run_sweep(base, space, out_dir=stale, trials=1)
    assert len(study.trials) == 1  # nothing ran

    # --timeout: no trial starts once it has passed.
    timed_out = run_sweep(base, space, out_dir=tmp_path / "timeout", trials=3, timeout=1e-9)
    assert timed_out.ran == 0 and timed_out.trials == () and timed_out.best is None
    assert (tmp_path / "timeout" / "trials.csv").read_text().startswith("number,state,value")


# ----------------------------------------------------------------------------- trials


def test_failing_trials_are_recorded_and_the_study_goes_on(base: TrainConfig, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    out.mkdir()
    space = parse_space(
        {
            "optim.lr": {"type": "categorical", "choices": [0.05, 1e30]},
            "data.batch_size": {"type": "categorical", "choices": [16, 64]},
        },
        source="space",
    )
    # Enqueued parameters make the trials deterministic: fine; lr 1e30 (NaN at the second step);
    # a batch above --limit-train 32 (refused by the config).
    study = optuna.create_study(storage=default_storage(out), study_name=DEFAULT_STUDY_NAME, direction="maximize")
    for lr, batch in ((0.05, 16), (1e30, 16), (0.05, 64)):
        study.enqueue_trial({"optim.lr": lr, "data.batch_size": batch})

    events: list[Any] = []
    result = run_sweep(base, space, out_dir=out, trials=3, on_event=events.append)

    assert [trial.state for trial in result.trials] == ["COMPLETE", "FAIL", "FAIL"]
    complete, nan, refused = result.trials
    assert "non-finite loss" in (nan.error or "")
    assert "--limit-train 32 is smaller than --batch-size 64" in (refused.error or "")
    assert 0.0 <= (complete.value or -1.0) <= 1.0 and complete.error is None and complete.test_acc is not None
    assert result.ran == 3 and result.completed == 1 and result.best == complete
    epoch_events = [event for event in events if isinstance(event, TrialEvent) and type(event.event).__name__ == "EpochFinished"]
    assert [event.number for event in epoch_events] == [0]

    # The best config is trial 0's full config as a fresh run: `train --config best.toml` gets it back.
    assert result.best_config == out / "best.toml"
    trial_cfg = resolve_config(file=out / "trials" / "0" / "config.toml")
    assert trial_cfg.optim.lr == 0.05 and trial_cfg.run.out_dir == out / "trials" / "0"
    assert resolve_config(file=out / "best.toml") == best_config(trial_cfg.to_dict())
    assert resolve_config(file=out / "best.toml").run.out_dir == Path("runs/best")

    with open(out / "trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["state"] for row in rows] == ["COMPLETE", "FAIL", "FAIL"]
    assert float(rows[0]["optim.lr"]) == 0.05 and rows[2]["data.batch_size"] == "64"
    assert json.loads((out / "trials" / "1" / "trial.json").read_text())["state"] == "FAIL"
    assert not (out / "trials" / "2").exists()  # refused before anything was written
    assert result.to_dict()["best"]["config_file"] == str(out / "best.toml")

    again = run_sweep(base, space, out_dir=out, trials=3, best_format="yaml")  # already 3: runs nothing
    assert again.ran == 0 and again.best_config == out / "best.yaml"
    assert resolve_config(file=out / "best.yaml") == resolve_config(file=out / "best.toml")


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


def test_interrupted_trials_do_not_count_and_pruned_ones_stop_after_their_epoch(
    base: TrainConfig, tmp_path: Path
) -> None:
    out = tmp_path / "sweep"
    space = parse_space(LR_SPACE, source="s")
    stop = StopRequest()

    def signal_at_first_step(event: Any) -> None:
        if isinstance(event, TrialEvent) and isinstance(event.event, StepFinished):
            stop.request("SIGTERM")  # what the CLI's signal handler does

    first = run_sweep(base, space, out_dir=out, trials=2, on_event=signal_at_first_step, stop=stop)
    assert first.interrupted == "SIGTERM" and first.ran == 1
    assert [trial.state for trial in first.trials] == ["FAIL"] and "interrupted by SIGTERM" in (first.trials[0].error or "")

    # The interrupted trial does not count towards --trials: this run replaces it, and its pruner
    # stops the new trial after epoch 1 of 3.
    three_epochs = replace(base, optim=replace(base.optim, epochs=3))
    second = run_sweep(three_epochs, space, out_dir=out, trials=1, pruner=AlwaysPrune())
    assert second.interrupted is None and second.ran == 1
    assert [(trial.number, trial.state) for trial in second.trials] == [(0, "FAIL"), (1, "PRUNED")]
    folder = out / "trials" / "1"
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and second.trials[1].value == metrics[0]["val_acc"]  # its last report
    checkpoint = load_checkpoint(folder / "last.pt")
    assert checkpoint["epoch"] == 1 and checkpoint["batches_done_in_epoch"] == 0  # resumable at epoch 2
    assert json.loads((folder / "trial.json").read_text())["state"] == "PRUNED"
    # Pruning is no interruption: the run's record names it for what it is.
    recorded = json.loads((folder / "result.json").read_text())
    assert recorded["pruned"] is True and recorded["interrupted"] is None
    assert second.best is None and not (out / "best.toml").exists()

    third = run_sweep(base, space, out_dir=out, trials=1)  # a pruned trial counts: nothing to run
    assert third.ran == 0 and len(third.trials) == 2


def test_a_trial_another_worker_failed_as_stale_is_let_go_and_replaced(base: TrainConfig, tmp_path: Path) -> None:
    """What a worker does when its machine was too busy to beat in time and another worker failed
    its trial (fail_stale_trials): the storage refuses the trial's next update; the worker lets it
    go and the study still ends with exactly --trials trials."""
    out = tmp_path / "sweep"
    other_worker = {}

    def fail_it_from_elsewhere(event: Any) -> None:
        if isinstance(event, TrialEvent) and isinstance(event.event, StepFinished) and not other_worker:
            elsewhere = optuna.load_study(study_name=DEFAULT_STUDY_NAME, storage=default_storage(out))
            elsewhere.tell(event.number, state=optuna.trial.TrialState.FAIL)
            other_worker["failed"] = event.number
        events.append(event)

    events: list[Any] = []
    result = run_sweep(base, parse_space(LR_SPACE, source="s"), out_dir=out, trials=2, on_event=fail_it_from_elsewhere)

    assert other_worker == {"failed": 0}
    assert [(trial.number, trial.state) for trial in result.trials] == [(0, "FAIL"), (1, "COMPLETE"), (2, "COMPLETE")]
    lost = [event.trial for event in events if type(event).__name__ == "TrialFinished" and event.trial.number == 0]
    assert len(lost) == 1 and "failed by another worker" in (lost[0].error or "")
    assert result.completed == 2 and result.best_config == out / "best.toml"
