"""Pretrained-weight loading (every file variant and failure) and the fine-tuning pieces.

Downloads are exercised against a local HTTP server on 127.0.0.1; nothing touches the internet.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import Tensor, nn

from resnet_cifar.config import ModelConfig, OptimConfig
from resnet_cifar.errors import DataError, UsageError
from resnet_cifar.models import (
    PRETRAINED_FILES,
    LoadReport,
    finetune_param_groups,
    freeze_backbone,
    load_pretrained,
    resize_batch,
    resnet18,
    resnet50,
    set_train_mode,
)

TOP_KEYS = ("fc.weight", "fc.bias")


def randomized_state(model: nn.Module, seed: int) -> dict[str, Tensor]:
    """The model's state dict with every floating tensor random, so a copy is recognisable."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            value = torch.rand(value.shape, generator=generator) + 0.5  # positive: valid running_var
        state[key] = value.clone()
    return state


def assert_model_holds(model: nn.Module, state: dict[str, Tensor], skip: tuple[str, ...] = ()) -> None:
    model_state = model.state_dict()
    for key, value in state.items():
        if key not in skip:
            assert torch.equal(model_state[key], value), key


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


@pytest.fixture(scope="module")
def imagenet_state() -> dict[str, Tensor]:
    """A state dict laid out like torchvision's ImageNet ResNet-50 file (made by torchvision itself)."""
    return randomized_state(torchvision.models.resnet50(), seed=0)


@pytest.fixture(scope="module")
def imagenet_file(imagenet_state: dict[str, Tensor], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "resnet50-imagenet.pth"
    torch.save(imagenet_state, path)
    return path


@pytest.fixture(scope="module")
def small_state() -> dict[str, Tensor]:
    """A ResNet-18 state dict (cifar stem, 10 classes): the file variants need no 100 MB files."""
    return randomized_state(resnet18(), seed=1)


# --- ImageNet weights into ResNet-50 -------------------------------------------------------------


def test_imagenet_file_loads_fully_into_an_imagenet_model(imagenet_file: Path, imagenet_state: dict) -> None:
    model = resnet50(num_classes=1000, stem="imagenet")
    report = load_pretrained(model, imagenet_file)
    assert report == LoadReport(
        source=str(imagenet_file),
        file=imagenet_file,
        loaded=len(imagenet_state),
        dropped=(),
        reinitialized=(),
        sha256=hashlib.sha256(imagenet_file.read_bytes()).hexdigest(),
    )
    assert report.provenance() == {"name": str(imagenet_file), "file": str(imagenet_file), "sha256": report.sha256}
    assert_model_holds(model, imagenet_state)


def test_imagenet_file_into_the_cifar_model_replaces_the_top_and_conv1_on_request(
    imagenet_file: Path, imagenet_state: dict
) -> None:
    model = resnet50()
    report = load_pretrained(model, imagenet_file, reinit_conv1=True)
    assert report.dropped == ("fc.weight", "fc.bias", "conv1.weight")
    assert report.reinitialized == ("fc.weight", "fc.bias", "conv1.weight")
    assert report.loaded == len(imagenet_state) - 3
    assert_model_holds(model, imagenet_state, skip=report.dropped)
    assert model.fc.weight.shape == (10, 2048) and model.conv1.weight.shape == (64, 3, 3, 3)
    # Fresh values (the file's are all in [0.5, 1.5)): He-initialised conv1 (fan-out 64 * 3 * 3)
    # and a default-initialised top.
    assert model.conv1.weight.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.2)
    assert model.conv1.weight.min().item() < 0
    assert model.fc.weight.abs().max().item() <= 1 / 2048**0.5


def test_imagenet_file_into_a_10_class_imagenet_model_replaces_only_the_top(imagenet_file: Path) -> None:
    report = load_pretrained(resnet50(stem="imagenet"), imagenet_file)
    assert report.dropped == TOP_KEYS and report.reinitialized == TOP_KEYS


def test_cifar_stem_without_the_flag_refuses_and_leaves_the_model_unchanged(imagenet_file: Path) -> None:
    model = resnet50()
    before = snapshot(model)
    with pytest.raises(UsageError) as caught:
        load_pretrained(model, imagenet_file)
    message = str(caught.value)
    assert "\n" not in message and str(imagenet_file) in message
    assert "7x7 conv1" in message and "3x3 conv1" in message and "reinit_conv1=True" in message
    assert_model_holds(model, before)


@torch.no_grad()
def test_loaded_model_computes_what_torchvision_computes(imagenet_file: Path, imagenet_state: dict) -> None:
    theirs = torchvision.models.resnet50()
    theirs.load_state_dict(imagenet_state)
    ours = resnet50(num_classes=1000, stem="imagenet")
    load_pretrained(ours, imagenet_file)
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(ours.eval()(images), theirs.eval()(images), rtol=1e-5, atol=1e-5)


# --- file variants -------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module."])
def test_wrapper_prefixes_are_stripped(prefix: str, small_state: dict, tmp_path: Path) -> None:
    path = tmp_path / "wrapped.pth"
    torch.save({prefix + key: value for key, value in small_state.items()}, path)
    model = resnet18()
    report = load_pretrained(model, path)
    assert report.loaded == len(small_state) and report.dropped == ()
    assert_model_holds(model, small_state)


def test_state_dict_without_num_batches_tracked_loads(small_state: dict, tmp_path: Path) -> None:
    path = tmp_path / "no-counters.pt"
    trimmed = {key: value for key, value in small_state.items() if not key.endswith("num_batches_tracked")}
    assert len(trimmed) < len(small_state)
    torch.save(trimmed, path)
    model = resnet18()
    report = load_pretrained(model, path)
    assert report.loaded == len(trimmed)
    assert_model_holds(model, trimmed)
    assert model.bn1.num_batches_tracked.item() == 0


def test_project_checkpoint_loads_its_model_entry(small_state: dict, tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": small_state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 3}, path)
    model = resnet18()
    assert load_pretrained(model, path).loaded == len(small_state)
    assert_model_holds(model, small_state)


def test_safetensors_file_loads(small_state: dict, tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    save_file({f"_orig_mod.{key}": value for key, value in small_state.items()}, str(path))
    model = resnet18()
    assert load_pretrained(model, path).loaded == len(small_state)
    assert_model_holds(model, small_state)


# --- failures ------------------------------------------------------------------------------------


def expect_data_error(model: nn.Module, path: Path, *fragments: str) -> str:
    """Load must fail with a one-line DataError naming the file, and leave the model untouched."""
    before = snapshot(model)
    with pytest.raises(DataError) as caught:
        load_pretrained(model, path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    for fragment in fragments:
        assert fragment in message
    assert_model_holds(model, before)
    return message


def test_missing_keys_are_listed(small_state: dict, tmp_path: Path) -> None:
    path = tmp_path / "missing.pth"
    torch.save({k: v for k, v in small_state.items() if not k.startswith("layer4.1.bn2.")}, path)
    expect_data_error(resnet18(), path, "missing keys", "layer4.1.bn2.weight", "layer4.1.bn2.running_var")


def test_unexpected_keys_are_listed(small_state: dict, tmp_path: Path) -> None:
    path = tmp_path / "unexpected.pth"
    torch.save({**small_state, "head.weight": torch.zeros(3)}, path)
    message = expect_data_error(resnet18(), path, "unexpected keys [head.weight]")
    assert "missing" not in message


def test_wrong_shapes_are_listed(small_state: dict, tmp_path: Path) -> None:
    path = tmp_path / "shapes.pth"
    torch.save({**small_state, "layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)}, path)
    expect_data_error(resnet18(), path, "wrong shapes", "layer1.0.conv1.weight (64, 64, 1, 1) vs (64, 64, 3, 3)")


def test_resnet50_weights_do_not_fit_a_resnet18(imagenet_file: Path) -> None:
    # ResNet-18's keys are a subset of ResNet-50's, with other shapes: nothing is missing.
    model = resnet18(num_classes=1000, stem="imagenet")
    message = expect_data_error(model, imagenet_file, "unexpected keys [layer1.0.conv3.weight", "wrong shapes")
    assert "layer1.0.conv1.weight (64, 64, 1, 1) vs (64, 64, 3, 3)" in message and "more]" in message
    assert "missing" not in message


def test_a_top_on_other_features_is_a_shape_error(small_state: dict, tmp_path: Path) -> None:
    path = tmp_path / "top.pth"
    torch.save({**small_state, "fc.weight": torch.zeros(10, 256)}, path)
    expect_data_error(resnet18(), path, "fc.weight (10, 256) vs (10, 512)")


class Payload:
    """A pickle that would create a file when unpickled, if the loader ever executed it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_a_pickle_with_arbitrary_objects_is_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "hostile.pth"
    torch.save({"conv1.weight": Payload(marker)}, path)
    expect_data_error(resnet18(), path, "refusing to load", "it holds arbitrary objects (")
    assert not marker.exists()


def test_a_corrupt_file_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.pth"
    path.write_bytes(b"not a checkpoint at all" * 10)
    expect_data_error(resnet18(), path, "cannot read weights from")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    expect_data_error(resnet18(), empty, "cannot read weights from")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json")
    expect_data_error(resnet18(), broken, "cannot read weights from")


def test_a_file_that_is_no_state_dict_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    expect_data_error(resnet18(), path, "holds a Tensor, not a state dict")
    listing = tmp_path / "numbers.pth"
    torch.save({"conv1.weight": 3}, listing)
    expect_data_error(resnet18(), listing, "not a state dict", "conv1.weight")


def test_unknown_source_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="imagenet1k-v3.*imagenet1k-v1, imagenet1k-v2"):
        load_pretrained(resnet18(), "imagenet1k-v3")
    with pytest.raises(UsageError, match="nowhere.pth"):
        load_pretrained(resnet18(), tmp_path / "nowhere.pth")


# --- downloads from a local server ---------------------------------------------------------------


class WeightsServer:
    """A ThreadingHTTPServer on 127.0.0.1 serving a folder and recording the paths requested."""

    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        server_self = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                server_self.requests.append(self.path)
                super().do_GET()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[WeightsServer, Path]]:
    root = tmp_path / "served"
    root.mkdir()
    server = WeightsServer(root)
    try:
        yield server, root
    finally:
        server.close()


def named_with_hash(folder: Path, state: dict[str, Tensor], stem: str) -> Path:
    """Save ``state`` as ``<stem>-<first 10 hex digits of its sha256>.pth``, as torchvision names files."""
    temp = folder / "unnamed.bin"
    torch.save(state, temp)
    digest = hashlib.sha256(temp.read_bytes()).hexdigest()
    return temp.rename(folder / f"{stem}-{digest[:10]}.pth")


def test_download_with_the_right_hash_is_cached_and_reused(served: tuple, small_state: dict, tmp_path: Path) -> None:
    server, root = served
    file = named_with_hash(root, small_state, "resnet18")
    hub_dir = tmp_path / "hub"
    url = f"{server.url}/{file.name}"

    model = resnet18()
    report = load_pretrained(model, url, hub_dir=hub_dir)
    cached = hub_dir / "checkpoints" / file.name
    assert report.file == cached and report.loaded == len(small_state)
    assert cached.read_bytes() == file.read_bytes()
    assert sorted(p.name for p in cached.parent.iterdir()) == [file.name]
    assert_model_holds(model, small_state)

    second = resnet18()
    load_pretrained(second, url, hub_dir=hub_dir)
    assert server.requests == [f"/{file.name}"]  # the second load read the cache
    assert_model_holds(second, small_state)


def test_download_with_a_wrong_hash_is_refused_and_not_cached(served: tuple, small_state: dict, tmp_path: Path) -> None:
    server, root = served
    file = named_with_hash(root, small_state, "resnet18")
    liar = file.rename(root / "resnet18-0123456789.pth")
    hub_dir = tmp_path / "hub"
    with pytest.raises(DataError, match=r"sha256 .* expected 0123456789") as caught:
        load_pretrained(resnet18(), f"{server.url}/{liar.name}", hub_dir=hub_dir)
    assert "\n" not in str(caught.value) and liar.name in str(caught.value)
    assert list((hub_dir / "checkpoints").iterdir()) == []


def test_named_sources_fetch_torchvisions_file_names_from_the_base_url(served: tuple, tmp_path: Path) -> None:
    server, root = served
    # Not torchvision's bytes, so the hash in the real file name cannot match: refused, not cached.
    (root / PRETRAINED_FILES["imagenet1k-v2"]).write_bytes(b"not the published weights")
    hub_dir = tmp_path / "hub"
    with pytest.raises(DataError, match="expected 11ad3fa6"):
        load_pretrained(resnet50(), "imagenet1k-v2", hub_dir=hub_dir, base_url=server.url + "/")
    assert server.requests == ["/resnet50-11ad3fa6.pth"]
    assert list((hub_dir / "checkpoints").iterdir()) == []
    with pytest.raises(DataError, match=r"could not download .*resnet50-0676ba61\.pth: HTTP 404"):
        load_pretrained(resnet50(), "imagenet1k-v1", hub_dir=hub_dir, base_url=server.url)
    assert list((hub_dir / "checkpoints").iterdir()) == []


def test_a_corrupted_cache_file_is_reported(small_state: dict, tmp_path: Path) -> None:
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    file = named_with_hash(checkpoints, small_state, "resnet18")
    file.write_bytes(file.read_bytes()[:-1] + b"x")
    # The cache is checked before any connection: this URL could not be reached.
    with pytest.raises(DataError, match="cached weights .* delete the file"):
        load_pretrained(resnet18(), f"http://127.0.0.1:9/{file.name}", hub_dir=tmp_path / "hub")


def test_a_url_without_a_hash_in_its_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no sha256 prefix"):
        load_pretrained(resnet18(), "http://127.0.0.1:9/resnet-50.pth", hub_dir=tmp_path)


def test_the_default_cache_is_the_torch_hub_folder(
    served: tuple, small_state: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, root = served
    file = named_with_hash(root, small_state, "resnet18")
    # What torch.hub.set_dir sets, restored afterwards to "unset" (set_dir(previous) would pin the
    # old value, and later tests that set $TORCH_HOME would no longer move the folder).
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch-hub"))
    report = load_pretrained(resnet18(), f"{server.url}/{file.name}")
    assert report.file == tmp_path / "torch-hub" / "checkpoints" / file.name


# --- fine-tuning pieces --------------------------------------------------------------------------


def test_resize_batch_upsamples_bilinearly() -> None:
    images = torch.rand(2, 3, 32, 32)
    resized = resize_batch(images, 64)
    assert resized.shape == (2, 3, 64, 64)
    expected = nn.functional.interpolate(images, size=(64, 64), mode="bilinear", align_corners=False)
    assert torch.equal(resized, expected)
    # A constant image stays constant; the batch at its own size or with no size is untouched.
    assert torch.allclose(resize_batch(torch.full((1, 3, 32, 32), 0.25), 224), torch.tensor(0.25))
    assert resize_batch(images, 32) is images and resize_batch(images, None) is images
    with pytest.raises(UsageError, match="positive integer"):
        resize_batch(images, 0)
    with pytest.raises(UsageError, match=r"\[N, C, H, W\]"):
        resize_batch(images[0], 64)


def test_freeze_backbone_trains_only_the_top_and_keeps_batch_norm_statistics() -> None:
    model = resnet18()
    trainable = freeze_backbone(model)
    assert trainable == ["fc.weight", "fc.bias"]
    assert [name for name, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    before = snapshot(model)
    optimizer = torch.optim.SGD(finetune_param_groups(model, lr=0.1), lr=0.1)
    set_train_mode(model, frozen_backbone=True)
    assert model.training and not model.bn1.training and not model.layer4[1].bn2.training
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    changed = [key for key in after if not torch.equal(after[key], before[key])]
    assert changed == ["fc.weight", "fc.bias"]  # running statistics and counters included
    # A plain train() would switch the batch norms back to training mode; set_train_mode does not.
    assert set_train_mode(model, frozen_backbone=False).bn1.training


def test_param_groups_scale_the_backbone_learning_rate() -> None:
    model = resnet18()
    groups = finetune_param_groups(model, lr=0.2, backbone_lr_mult=0.1)
    assert [group["lr"] for group in groups] == [pytest.approx(0.02), 0.2]
    assert [id(p) for p in groups[1]["params"]] == [id(model.fc.weight), id(model.fc.bias)]
    assert len(groups[0]["params"]) == len(list(model.parameters())) - 2
    optimizer = torch.optim.SGD(groups, lr=0.2, momentum=0.9)
    assert [group["lr"] for group in optimizer.param_groups] == [pytest.approx(0.02), 0.2]
    freeze_backbone(model)
    assert [group["lr"] for group in finetune_param_groups(model, lr=0.2, backbone_lr_mult=0.1)] == [0.2]
    # Both rates are checked once, by the config, naming the flag; the builder only asserts.
    with pytest.raises(UsageError, match="^--backbone-lr-mult must be positive, got -1$"):
        ModelConfig(backbone_lr_mult=-1.0)
    with pytest.raises(AssertionError, match="backbone_lr_mult -1.0"):
        finetune_param_groups(model, lr=0.2, backbone_lr_mult=-1.0)
    with pytest.raises(UsageError, match="^--lr must be a finite number, got nan$"):
        OptimConfig(lr=float("nan"))
    with pytest.raises(AssertionError, match="learning rate nan"):
        finetune_param_groups(model, lr=float("nan"))


def test_fine_tuning_keeps_the_model_state_dict_plain(imagenet_file: Path) -> None:
    model = resnet50()
    load_pretrained(model, imagenet_file, reinit_conv1=True)
    keys = list(model.state_dict())
    freeze_backbone(model)
    logits = model.eval()(resize_batch(torch.rand(1, 3, 32, 32), 40))
    assert logits.shape == (1, 10)
    assert list(model.state_dict()) == keys == list(torchvision.models.resnet50().state_dict())

