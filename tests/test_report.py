"""The HTML report: what `eval` and `report` write, checked against metrics.json, for self-containment,
and rendered in a real headless Chromium (Debian's `chromium`, which .ci/run installs)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_cifar.data.types import CIFAR10_CLASSES
from resnet_cifar.report.gallery import select_mistakes, thumbnail_uri

from helpers import random_resnet18, run_cli_in_process, run_in_process, smoke_config, write_checkpoint

LIMIT = 300  # test images scored: 30 per class


HISTORY = [
    {"epoch": 1, "train_loss": 2.1, "train_acc": 0.22, "val_loss": 1.9, "val_acc": 0.3, "lr": 0.05,
     "images_per_sec": 400.0, "epoch_seconds": 10.0, "val_count": 300},
    {"epoch": 2, "train_loss": 1.7, "train_acc": 0.38, "val_loss": 1.6, "val_acc": 0.41, "lr": 0.03,
     "images_per_sec": 410.0, "epoch_seconds": 9.5, "val_count": 300},
    {"epoch": 3, "train_loss": 1.5, "train_acc": 0.45, "val_loss": 1.55, "val_acc": 0.44, "lr": 0.0,
     "images_per_sec": 405.0, "epoch_seconds": 9.7, "val_count": 300},
]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, real_data_root: Path, real_splits) -> Path:
    """A run folder as `train` leaves it, as far as the report reads it: best.pt (a ResNet-18 with
    random weights and batch-norm statistics, so predictions and confidences vary) and metrics.jsonl."""
    cfg = smoke_config(real_data_root, **{"model.depth": 18})
    folder = tmp_path_factory.mktemp("run")
    write_checkpoint(folder / "best.pt", cfg, random_resnet18(random_batch_norm=True), epoch=3)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in HISTORY))
    return folder


@pytest.fixture(scope="module")
def evaluated(run_dir: Path, decoded_cache_dir: Path) -> tuple[dict[str, Any], Path]:
    """`resnet-cifar eval --json` (in this process, helpers.run_cli_in_process): its JSON and its report folder."""
    out_dir = run_dir / "eval"
    result = run_cli_in_process(
        None, "eval", str(run_dir / "best.pt"), "--limit", str(LIMIT), "--device", "cpu", "--out", str(out_dir),
        "--json", env={"RESNET_CIFAR_CACHE": str(decoded_cache_dir)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), out_dir


class PageParser(HTMLParser):
    """Collects every tag with its attributes, the text of each data-key element, and style/script text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.keyed: list[tuple[str, str, str]] = []  # (data-key, data-value, shown text)
        self.ids: set[str] = set()
        self._open_key: list[Any] = []
        self.raw_text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        self.tags.append((tag, attributes))
        if "id" in attributes:
            self.ids.add(attributes["id"])
        if tag == "span" and "data-key" in attributes:
            self._open_key.append([attributes["data-key"], attributes.get("data-value", ""), ""])

    def handle_data(self, data: str) -> None:
        self.raw_text.append(data)
        if self._open_key:
            self._open_key[-1][2] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "span" and self._open_key:
            self.keyed.append(tuple(self._open_key.pop()))


def parse_page(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def lookup(metrics: dict[str, Any], key: str) -> Any:
    value: Any = metrics
    for part in key.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def shown_matches(text: str, value: float) -> bool:
    """Whether the displayed text is ``value`` rounded to the digits shown (a percentage or a plain number)."""
    text = text.strip().replace(",", "")
    scale = 100.0 if text.endswith("%") else 1.0
    number = text.rstrip("%")
    decimals = len(number.split(".")[1]) if "." in number else 0
    return abs(float(number) - value * scale) <= 0.5 * 10**-decimals + 1e-9


# ----------------------------------------------------------------------------- the gallery's choice


def test_select_mistakes_keeps_three_per_class_then_the_most_confident() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    predictions = labels.copy()
    confidences = rng.uniform(0.2, 1.0, size=labels.size)
    # Class 0: 40 mistakes, all very confident; class 1: 5; class 2: 2; class 3: none.
    for cls, count in ((0, 40), (1, 5), (2, 2)):
        where = np.flatnonzero(labels == cls)[:count]
        predictions[where] = (cls + 1) % 4
    confidences[labels == 0] += 1.0  # class 0's mistakes would fill the gallery alone
    chosen = select_mistakes(labels, predictions, confidences, 4, per_class=3, total=10)
    per_class = {cls: sum(1 for m in chosen if m.true == cls) for cls in range(4)}
    # max(10, 3 x 4 classes) = 12 places: 3 + 3 + 2 guaranteed, the 4 left to the most confident (class 0's).
    assert per_class == {0: 7, 1: 3, 2: 2, 3: 0}
    assert [m.confidence for m in chosen] == sorted((m.confidence for m in chosen), reverse=True)
    assert all(labels[m.index] == m.true != m.predicted == predictions[m.index] for m in chosen)
    # The class-1 picks are its three most confident mistakes.
    wrong_1 = np.flatnonzero((labels == 1) & (labels != predictions))
    best_1 = set(wrong_1[np.argsort(-confidences[wrong_1])][:3].tolist())
    assert {m.index for m in chosen if m.true == 1} == best_1


def test_thumbnail_is_an_exact_nearest_neighbour_upscale() -> None:
    image = np.random.default_rng(1).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    uri = thumbnail_uri(image)
    assert uri.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as decoded:
        pixels = np.asarray(decoded.convert("RGB"))
    assert pixels.shape == (96, 96, 3)
    assert np.array_equal(pixels[::3, ::3], image) and np.array_equal(pixels[2::3, 1::3], image)


# ----------------------------------------------------------------------------- the page


def test_eval_writes_report_and_its_numbers_are_metrics_json(evaluated: tuple[dict[str, Any], Path]) -> None:
    report, out_dir = evaluated
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics == {key: value for key, value in report.items() if key != "out_dir"}
    assert 0.0 <= metrics["ece"] <= 1.0 and 0.1 <= metrics["mean_confidence"] <= 1.0
    assert sum(metrics["calibration"]["count"]) == metrics["count"] == LIMIT
    page = parse_page(out_dir / "report.html")
    assert not list(out_dir.glob(".*.tmp"))

    keys = set()
    for key, value, text in page.keyed:
        expected = lookup(metrics, key)
        assert float(value) == expected, key  # the exact value, as in metrics.json
        assert shown_matches(text, expected), (key, text, expected)
        keys.add(key)
    # The headline, every per-class cell, every confusion cell and calibration are all on the page.
    assert {"accuracy", "ece", "mean_confidence", "loss", "macro.f1", "count"} <= keys
    for name in CIFAR10_CLASSES:
        assert {f"per_class.{name}.{m}" for m in ("precision", "recall", "f1", "support")} <= keys
    assert {f"confusion_matrix.{i}.{j}" for i in range(10) for j in range(10)} <= keys
    nonempty = [k for k, count in enumerate(metrics["calibration"]["count"]) if count]
    assert {f"calibration.accuracy.{k}" for k in nonempty} <= keys

    # The row-normalized cells are the counts divided by the row sums.
    matrix = np.array(metrics["confusion_matrix"])
    shares = [(t["data-share-of"], float(t["data-share"])) for tag, t in page.tags if "data-share-of" in t]
    assert len(shares) == 100
    for key, share in shares:
        i, j = (int(part) for part in key.split(".")[1:])
        assert share == matrix[i, j] / matrix[i].sum()


def test_page_sections_curves_and_gallery(evaluated: tuple[dict[str, Any], Path]) -> None:
    report, out_dir = evaluated
    html = (out_dir / "report.html").read_text(encoding="utf-8")
    page = parse_page(out_dir / "report.html")
    assert {"run", "headline", "curves", "classes", "confusion", "pairs", "gallery", "calibration"} <= page.ids
    text = " ".join(page.raw_text)
    for fact in ("ResNet-18", "ImageNet stem", "smoke", str(report["epoch"]), "resnet-cifar 0.1.0"):
        assert fact in text, fact
    # Curves from metrics.jsonl: three charts with one point per epoch and line.
    curves = html.split('id="curves"', 1)[1].split("</section>", 1)[0]
    assert curves.count("<svg") == 3 and curves.count("<polyline") == 5
    assert html.count("<svg") == 4  # and the reliability diagram

    shots = [attributes for tag, attributes in page.tags if tag == "figure" and "shot" in attributes.get("class", "")]
    images = [a for tag, a in page.tags if tag == "img" and a.get("class") != "cam"]  # Grad-CAM: test_robustness.py
    assert len(images) == len(shots) >= 30
    matrix = np.array(report["confusion_matrix"])
    for index, name in enumerate(CIFAR10_CLASSES):
        mistakes = int(matrix[index].sum() - matrix[index, index])
        assert sum(1 for shot in shots if shot["data-true"] == name) >= min(3, mistakes), name
    confidences = [float(c) for c in re.findall(r'<span class="conf">([0-9.]+)%</span>', html)]
    assert len(confidences) == len(shots) and confidences == sorted(confidences, reverse=True)


def test_gallery_images_and_captions_are_the_evaluated_images_and_predictions(
    run_dir: Path, evaluated: tuple[dict[str, Any], Path], real_splits
) -> None:
    from resnet_cifar.data.split import limit_split
    from resnet_cifar.data.types import CIFAR10_MEAN, CIFAR10_STD
    from resnet_cifar.inference import load_trained_model

    _, out_dir = evaluated
    html = (out_dir / "report.html").read_text(encoding="utf-8")
    shots = re.findall(
        r'<img src="data:image/png;base64,([^"]+)".*?<b>([a-z]+)</b> &rarr; ([a-z]+)<br><span class="conf">[0-9.]+%</span> '
        r'<span class="idx">#(\d+)</span>',
        html,
    )
    assert len(shots) >= 30
    trained = load_trained_model(run_dir / "best.pt", device="cpu")
    data = limit_split(real_splits.test, LIMIT, trained.config.data.seed)  # what eval --limit scores
    for encoded, true, predicted, index in shots[:5]:
        image = data.images[int(index)]
        with Image.open(io.BytesIO(base64.b64decode(encoded))) as decoded:
            assert np.array_equal(np.asarray(decoded.convert("RGB"))[::3, ::3], image)
        assert CIFAR10_CLASSES[int(data.labels[int(index)])] == true != predicted
        pixels = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).double() / 255.0
        mean = torch.tensor(CIFAR10_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR10_STD, dtype=torch.float64).view(1, 3, 1, 1)
        with torch.inference_mode():
            logits = trained.model(((pixels - mean) / std).float())
        assert CIFAR10_CLASSES[int(logits.argmax())] == predicted


def test_page_references_nothing_outside_itself(evaluated: tuple[dict[str, Any], Path]) -> None:
    _, out_dir = evaluated
    html = (out_dir / "report.html").read_text(encoding="utf-8")
    page = parse_page(out_dir / "report.html")
    assert "://" not in html and "@import" not in html and "url(" not in html
    for tag, attributes in page.tags:
        assert tag not in ("link", "iframe", "object", "embed", "base"), tag
        for name in ("src", "href", "srcset", "poster", "action", "xlink:href", "data"):
            if name in attributes:
                value = attributes[name]
                assert value.startswith(("data:", "#")), (tag, name, value[:60])
        if tag == "script":
            assert "src" not in attributes


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium")
    assert binary, "Debian's chromium is needed (apt-get install chromium; .ci/run installs it)"
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
             f"--user-data-dir={profile}", "--hide-scrollbars", *args],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip


def test_page_renders_in_headless_chromium(evaluated: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    _, out_dir = evaluated
    page = out_dir / "report.html"
    html = page.read_text(encoding="utf-8")
    # A copy with a probe that records, once the page has loaded, how each gallery image decoded.
    probe = (
        "<script>window.addEventListener('load', function () {"
        "var shots = Array.from(document.querySelectorAll('#gallery img:not(.cam)'));"
        "document.body.setAttribute('data-probe', JSON.stringify(shots.map(function (i) {"
        "return [i.complete, i.naturalWidth, i.naturalHeight, i.getBoundingClientRect().width]; })));"
        "document.body.setAttribute('data-filter', String(!document.querySelector('#gallery .filter').hidden));"
        "});</script></body>"
    )
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("</body>", probe, 1), encoding="utf-8")
    dumped = chromium("--dump-dom", "--virtual-time-budget=5000", probed.as_uri())
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    match = re.search(r'data-probe="([^"]*)"', dumped.stdout)
    assert match, dumped.stdout[:500]
    decoded = json.loads(match.group(1).replace("&quot;", '"'))
    assert len(decoded) == html.count('<figure class="shot"') >= 30
    assert all(entry[:3] == [True, 96, 96] and entry[3] == 96 for entry in decoded), decoded[:3]
    assert 'data-filter="true"' in dumped.stdout  # the script ran and showed the class filter

    screenshot = tmp_path / "page.png"
    shot = chromium(f"--screenshot={screenshot}", "--window-size=1200,1600", page.as_uri())
    assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-2000:]
    with Image.open(screenshot) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (1600, 1200)
    gray = pixels.mean(axis=2)
    assert gray.std() > 15  # not a blank page
    # Text and cards in the top band, and more than a handful of colours (headline blue among them).
    assert (gray[:400] < 100).mean() > 0.005
    colours = np.unique(pixels.reshape(-1, 3).astype(np.uint8), axis=0)
    assert len(colours) > 50
    blue = (pixels[..., 2] > 180) & (pixels[..., 0] < 80)
    assert blue.sum() > 200


# ----------------------------------------------------------------------------- the report command


def test_report_command_is_the_same_page_for_the_run_folder(
    run_dir: Path, evaluated: tuple[dict[str, Any], Path], capsys: pytest.CaptureFixture[str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, decoded_cache_dir: Path,
) -> None:  # fmt: skip
    monkeypatch.setenv("RESNET_CIFAR_CACHE", str(decoded_cache_dir))
    out_dir = tmp_path / "report"
    code, out, err = run_in_process(
        capsys, "report", str(run_dir), "--limit", str(LIMIT), "--device", "cpu", "--out", str(out_dir), "--json"
    )
    assert code == 0, err
    payload = json.loads(out)
    assert payload["report"] == str(out_dir / "report.html")
    eval_metrics = json.loads((evaluated[1] / "metrics.json").read_text())
    assert json.loads((out_dir / "metrics.json").read_text()) == eval_metrics  # best.pt, test split, same numbers
    assert (payload["split"], payload["checkpoint"]) == ("test", str(run_dir / "best.pt"))

    def without_dates(path: Path) -> str:
        return re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d", "DATE", path.read_text(encoding="utf-8"))

    assert without_dates(out_dir / "report.html") == without_dates(evaluated[1] / "report.html")


@pytest.mark.parametrize("case", ["missing", "no-best"])
def test_report_command_bad_folder_exits_2(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "nothing" if case == "missing" else tmp_path
    code, out, err = run_in_process(capsys, "report", str(folder))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and out == "" and len(lines) == 1 and lines[0].startswith("error: "), err
    assert ("no such run folder" if case == "missing" else "no best.pt") in lines[0]
    assert not list(tmp_path.rglob("report.html"))
