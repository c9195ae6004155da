"""`eval --corruptions`: the numbers in --json, metrics.json and report.html, the one-line refusals,
and Grad-CAM (captum) against the textbook formula computed by hand."""

from __future__ import annotations

import base64
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from resnet_cifar.models import resnet18
from resnet_cifar.report import explain

from helpers import random_resnet18, smoke_config, write_checkpoint

LIMIT = 100


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, real_data_root: Path) -> Path:
    """best.pt of a ResNet-18 with random weights and batch-norm statistics (predictions vary)."""
    path = tmp_path_factory.mktemp("run") / "best.pt"
    cfg = smoke_config(real_data_root, **{"model.depth": 18})
    return write_checkpoint(path, cfg, random_resnet18(random_batch_norm=True), epoch=1)


def run_eval(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from resnet_cifar.cli.main import run

    with pytest.raises(SystemExit) as exit_info:
        run(["eval", *args])
    captured = capsys.readouterr()
    return int(exit_info.value.code), captured.out, captured.err


@pytest.fixture(scope="module")
def evaluated(checkpoint: Path, decoded_cache_dir: Path) -> tuple[dict[str, Any], Path]:
    """`resnet-cifar eval --corruptions ... --json`, in this process (helpers.run_cli_in_process)."""
    from helpers import run_cli_in_process

    out_dir = checkpoint.parent / "eval"
    result = run_cli_in_process(
        None, "eval", str(checkpoint), "--limit", str(LIMIT), "--device", "cpu", "--out", str(out_dir),
        "--corruptions", "contrast,pixelate,frost", "--severities", "1,5", "--json",
        env={"RESNET_CIFAR_CACHE": str(decoded_cache_dir)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), out_dir


def test_json_and_metrics_hold_accuracy_per_corruption_and_severity(evaluated: tuple[dict[str, Any], Path]) -> None:
    payload, out_dir = evaluated
    robustness = payload["robustness"]
    assert json.loads((out_dir / "metrics.json").read_text())["robustness"] == robustness
    assert list(robustness["accuracy"]) == ["contrast", "pixelate"] and robustness["severities"] == [1, 5]
    values = [value for row in robustness["accuracy"].values() for value in row.values()]
    assert all(value * LIMIT == round(value * LIMIT) for value in values)  # shares of the 100 images
    mean = sum(values) / len(values)
    assert robustness["mean_corruption_accuracy"] == pytest.approx(mean)
    assert robustness["clean_accuracy"] == payload["accuracy"]
    assert robustness["relative_drop"] == pytest.approx((payload["accuracy"] - mean) / payload["accuracy"])
    assert set(robustness["left_out"]) == {"frost"} and "photographs" in robustness["left_out"]["frost"]


def test_report_shows_the_robustness_numbers_and_examples(evaluated: tuple[dict[str, Any], Path]) -> None:
    payload, out_dir = evaluated
    page = (out_dir / "report.html").read_text()
    section = page[page.index('<section id="robustness">') :]
    section = section[: section.index("</section>")]
    for name in ("contrast", "pixelate"):
        for severity in ("1", "5"):
            value = payload["robustness"]["accuracy"][name][severity]
            assert f'data-key="robustness.accuracy.{name}.{severity}" data-value="{value!r}"' in section
    assert len(re.findall(r'<img class="grid" src="data:image/png;base64,', section)) == 2
    assert "frost" in section and "http" not in section


def test_example_grid_shows_the_images_as_scored(evaluated: tuple[dict[str, Any], Path], real_splits) -> None:
    from resnet_cifar.data.split import limit_split
    from resnet_cifar.evaluation.corruptions import corrupt
    from resnet_cifar.evaluation.robustness import EXAMPLES

    payload, out_dir = evaluated
    page = (out_dir / "report.html").read_text()
    encoded = re.search(r'<img class="grid" src="data:image/png;base64,([^"]+)" alt="contrast', page)
    assert encoded
    with Image.open(io.BytesIO(base64.b64decode(encoded.group(1)))) as decoded:
        grid = np.asarray(decoded.convert("RGB"))[::2, ::2]  # drawn at twice the size
    data = limit_split(real_splits.test, LIMIT, 0)
    clean = torch.from_numpy(data.images[:EXAMPLES].copy())
    columns = [clean] + [corrupt(clean, "contrast", s, torch.Generator()) for s in payload["robustness"]["severities"]]
    expected = np.concatenate([np.concatenate(list(column.numpy()), axis=0) for column in columns], axis=1)
    assert np.array_equal(grid, expected)


def test_gallery_has_gradcam_overlays_with_captum(evaluated: tuple[dict[str, Any], Path]) -> None:
    page = (evaluated[1] / "report.html").read_text()
    gallery = page[page.index('<section id="gallery">') :]
    shots = gallery.count('<figure class="shot"')
    assert shots > 0 and gallery.count('<img class="cam"') == 2 * shots


def test_gallery_says_how_to_get_overlays_without_captum(monkeypatch: pytest.MonkeyPatch) -> None:
    import resnet_cifar.report as report

    monkeypatch.setattr(report, "explain_available", lambda: False)
    overlays, note = report.explain_mistakes(None)  # type: ignore[arg-type]
    assert overlays is None and explain.EXPLAIN_HINT in note


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--corruptions", "rain"), "unknown 'rain'"),
        (("--corruptions", "noise", "--severities", "0"), "--severities must be within 1-5"),
        (("--severities", "1"), "--severities needs --corruptions"),
        (("--corruptions", "frost"), "none of these can be computed here"),
    ],
)
def test_bad_requests_are_one_line_usage_errors(
    capsys: pytest.CaptureFixture[str], checkpoint: Path, args: tuple[str, ...], message: str
) -> None:
    code, out, err = run_eval(capsys, str(checkpoint), "--device", "cpu", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and out == ""


def test_gradcam_equals_the_textbook_formula(real_splits) -> None:
    torch.manual_seed(1)
    model = resnet18(num_classes=10, stem="imagenet").eval()
    images = torch.from_numpy(real_splits.test.images[:3]).permute(0, 3, 1, 2).float() / 255
    images = (images - 0.5) / 0.25
    targets = [3, 0, 7]
    saved: dict[str, torch.Tensor] = {}

    def keep(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        output.retain_grad()
        saved["activations"] = output

    handle = model.layer4.register_forward_hook(keep)
    logits = model(images)
    handle.remove()
    logits[torch.arange(3), torch.tensor(targets)].sum().backward()
    activations = saved["activations"]
    weights = activations.grad.mean(dim=(2, 3), keepdim=True)  # alpha_k^c: mean gradient over the map
    by_hand = F.relu((weights * activations).sum(dim=1, keepdim=True))
    by_hand = F.interpolate(by_hand, size=(32, 32), mode="bilinear", align_corners=False)[:, 0].detach()
    model.zero_grad()
    maps = explain.gradcam(model, images, targets)
    assert maps.shape == (3, 32, 32) and by_hand.abs().max() > 0
    assert torch.allclose(maps, by_hand, rtol=1e-4, atol=1e-6)


def test_heat_overlay_blends_the_jet_colour_into_the_image() -> None:
    image = np.full((32, 32, 3), 100, dtype=np.uint8)
    heat = np.zeros((32, 32), dtype=np.float32)
    heat[0, 0] = 2.0
    out = explain.heat_overlay(image, heat)
    assert out.dtype == np.uint8 and out.shape == (32, 32, 3)
    # jet at 1.0 is dark red (0.5, 0, 0), at 0 dark blue (0, 0, 0.5).
    assert out[0, 0].tolist() == [math.floor(0.5 * 100 + 0.5 * 127.5 + 0.5), 50, 50]
    assert out[5, 5].tolist() == [50, 50, math.floor(0.5 * 100 + 0.5 * 127.5 + 0.5)]
