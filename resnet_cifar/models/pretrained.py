"""Load pretrained weights into a ResNet: torchvision's ImageNet files, or a local file.

Sources:
- ``"imagenet1k-v1"`` / ``"imagenet1k-v2"``: torchvision's published ResNet-50 files, downloaded
  once into ``<torch hub dir>/checkpoints`` and checked against the hash in their file name. That
  folder is torchvision's own download cache (``torch.hub.get_dir()``: ``$TORCH_HOME/hub``, with
  TORCH_HOME defaulting to ``$XDG_CACHE_HOME/torch`` or ``~/.cache/torch``), so a file torchvision
  already fetched is used offline, without any network access, once its hash prefix checks out;
  ``offline_weights`` says which named files are there;
- an ``http(s)://`` URL whose file name carries a hash the same way (``name-<sha256 prefix>.pth``);
- a local ``.pth``/``.pt`` file (a bare state dict, or this project's checkpoint: a dict whose
  ``"model"`` entry is the state dict) or a ``.safetensors`` file.

Files are read with ``torch.load(weights_only=True)``, so a pickle holding arbitrary objects is
refused and never executed. Loading is all or nothing: every key is checked before any weight is
copied, and the only keys allowed to differ are the ones the caller agreed to re-initialize.
"""

from __future__ import annotations

import functools
import os
import pickle
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from resnet_cifar.choices.weights import PRETRAINED_FILES
from resnet_cifar.errors import DataError, UsageError
from resnet_cifar.files import DownloadError, UnwritableFolder, download_verified, file_digest, first_line, weights_only_refusal
from resnet_cifar.models.resnet import init_conv_weight

DEFAULT_BASE_URL = "https://download.pytorch.org/models/"


# Wrappers that prefix every key: DataParallel/DistributedDataParallel ("module.") and
# torch.compile ("_orig_mod."); they can nest in either order.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# At least 8 hex digits, so a name like "resnet-50.pth" is not mistaken for one carrying a hash.
_HASH_IN_NAME = re.compile(r"[0-9a-f]{8,}")
_DOWNLOAD_CHUNK = 1 << 20
_DOWNLOAD_TIMEOUT_S = 60.0
_MAX_KEYS_IN_MESSAGE = 8


@dataclass(frozen=True)
class LoadReport:
    """What ``load_pretrained`` did.

    Attributes:
        source: the source as given (a name, URL or path).
        file: the file the weights were read from.
        loaded: number of the model's state-dict entries copied from the file.
        dropped: keys of the file that were not loaded (the replaced top layer, a 7x7 conv1).
        reinitialized: keys of the model given fresh values instead of the file's.
        sha256: the hex sha256 of the file read, so a run can say exactly which weights it started from.
    """

    source: str
    file: Path
    loaded: int
    dropped: tuple[str, ...]
    reinitialized: tuple[str, ...]
    sha256: str

    def provenance(self) -> dict[str, str]:
        """Plain strings for checkpoints and reports: the source as given (a name such as
        ``"imagenet1k-v2"``, a URL or a path), the file it resolved to, and that file's sha256."""
        return {"name": self.source, "file": str(self.file), "sha256": self.sha256}


@dataclass(frozen=True)
class CachedWeights:
    """One named weights file in the hub cache: ``status`` is ``"ok"`` (present, hash prefix
    matches: usable offline), ``"not cached"``, ``"hash mismatch"`` or ``"unreadable"``."""

    name: str
    file: Path
    status: str

    @property
    def available(self) -> bool:
        return self.status == "ok"


def load_pretrained(
    model: nn.Module,
    source: str | os.PathLike[str],
    *,
    reinit_conv1: bool = False,
    hub_dir: str | os.PathLike[str] | None = None,
    base_url: str = DEFAULT_BASE_URL,
) -> LoadReport:
    """Copy pretrained weights into ``model`` (a ResNet of this package), all or nothing.

    A top layer (``fc``) whose number of classes differs from the file's is re-initialized and its
    file entries reported as dropped. A 3x3 conv1 (cifar stem) facing a 7x7 one (ImageNet stem)
    is re-initialized only with ``reinit_conv1=True``; when the shapes agree the flag changes
    nothing. Batch-norm ``num_batches_tracked`` entries may be absent from the file.

    Args:
        model: the model to fill; its own state dict defines the expected keys.
        source: ``"imagenet1k-v1"``, ``"imagenet1k-v2"``, an http(s) URL, or a local file path.
        reinit_conv1: allow a fresh conv1 when the file's conv1 has another kernel size.
        hub_dir: torch hub folder holding the download cache (default ``torch.hub.get_dir()``).
        base_url: where the named files are downloaded from.

    Raises:
        UsageError: unknown source or missing file; a conv1 mismatch without ``reinit_conv1``.
        DataError: unreadable or hostile file, failed download or hash check, missing,
            unexpected or wrongly shaped keys.
    """
    source_text = os.fspath(source)
    path = resolve_weights_file(source_text, hub_dir=hub_dir, base_url=base_url)
    state = _strip_wrapper_prefixes(read_state_dict(path), path)
    plan = _plan_load(model, state, path, reinit_conv1=reinit_conv1)

    # Everything has been checked; only now does the model change.
    if "fc.weight" in plan.reinitialized:
        model.fc.reset_parameters()  # type: ignore[operator, union-attr]
    if "conv1.weight" in plan.reinitialized:
        init_conv_weight(model.conv1)  # type: ignore[arg-type]
    merged = dict(model.state_dict())
    merged.update(plan.tensors)
    model.load_state_dict(merged, strict=True)
    return LoadReport(
        source=source_text,
        file=path,
        loaded=len(plan.tensors),
        dropped=plan.dropped,
        reinitialized=plan.reinitialized,
        # Hashed again (a cached file was hashed by its check too): a fraction of a second for
        # 100 MB, and it covers local files, which no check hashes.
        sha256=_sha256(path),
    )


def _sha256(path: Path) -> str:
    """The file's sha256, computed once per version of the file: a load checks a cached file's
    hash prefix and then records its full hash, and `info` hashes the same files."""
    stat = Path(path).stat()
    return _sha256_of_version(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _sha256_of_version(path: str, mtime_ns: int, size: int) -> str:
    return file_digest(Path(path), "sha256")


def weights_cache_dir(hub_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where named and URL weights are cached: ``<hub_dir>/checkpoints``, by default
    ``torch.hub.get_dir()/checkpoints``, the folder torchvision downloads its weights into."""
    return Path(hub_dir if hub_dir is not None else torch.hub.get_dir()) / "checkpoints"


def offline_weights(hub_dir: str | os.PathLike[str] | None = None) -> tuple[CachedWeights, ...]:
    """For each named source, whether its file is in the cache with a matching hash prefix (so
    loading it needs no network). Each present file is hashed: the answer is what a load would meet."""
    folder = weights_cache_dir(hub_dir)
    found = []
    for name, file_name in PRETRAINED_FILES.items():
        path = folder / file_name
        if not path.is_file():
            status = "not cached"
        else:
            try:
                matches = _sha256(path).startswith(_hash_prefix(file_name, file_name))
                status = "ok" if matches else "hash mismatch"
            except OSError:
                status = "unreadable"
        found.append(CachedWeights(name=name, file=path, status=status))
    return tuple(found)


def resolve_weights_file(
    source: str, *, hub_dir: str | os.PathLike[str] | None = None, base_url: str = DEFAULT_BASE_URL
) -> Path:
    """The local file behind ``source``: a named pretrained file or URL (downloaded), or a path."""
    if source in PRETRAINED_FILES:
        return download_checked(_join_url(base_url, PRETRAINED_FILES[source]), hub_dir=hub_dir)
    if source.startswith(("http://", "https://")):
        return download_checked(source, hub_dir=hub_dir)
    path = Path(source).expanduser()
    if not path.is_file():
        names = ", ".join(PRETRAINED_FILES)
        raise UsageError(f"pretrained source {source!r} is neither one of {names}, a URL, nor an existing file")
    return path


def download_checked(url: str, *, hub_dir: str | os.PathLike[str] | None = None) -> Path:
    """Download ``url`` into ``<hub_dir>/checkpoints`` once, checking the hash in its file name.

    As torch.hub does, the hex after the file name's last ``-`` must be a prefix of the file's
    sha256. The download goes to a temporary file renamed into place only after the check, so a
    failed or interrupted download never leaves a file in the cache. A cached file is checked
    again on every use (hashing 100 MB takes a fraction of a second), so a corrupt cache is
    reported rather than loaded.
    """
    file_name = Path(urllib.parse.urlparse(url).path).name
    expected = _hash_prefix(file_name, url)
    cache_dir = weights_cache_dir(hub_dir)
    cached = cache_dir / file_name
    if cached.is_file():
        actual = _sha256(cached)
        if not actual.startswith(expected):
            raise DataError(
                f"cached weights {cached} have sha256 {actual[:len(expected)]}..., expected {expected}...; "
                "delete the file to download it again"
            )
        return cached

    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create the weights cache folder {cache_dir}: {error.strerror}") from error

    def verify(actual: str) -> None:
        if not actual.startswith(expected):
            raise DataError(
                f"downloaded {url} has sha256 {actual[:len(expected)]}..., expected {expected}... "
                "(named in the file name); nothing was cached"
            )

    try:
        download_verified(
            url, cached, algorithm="sha256", verify=verify, timeout=_DOWNLOAD_TIMEOUT_S, chunk_size=_DOWNLOAD_CHUNK
        )
    except DownloadError as error:
        raise DataError(f"could not download {url}: {error.reason}") from error
    except UnwritableFolder as error:
        raise UsageError(f"cannot write into the weights cache folder {cache_dir}: {error.strerror}") from error
    return cached


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read a state dict from a ``.safetensors`` file or a (weights-only) torch pickle.

    A project checkpoint (a dict with a ``"model"`` state dict) yields that state dict.
    """
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # weights_only=True raises this both for a pickle naming a forbidden callable or class
        # (a hostile or non-weights file, never executed) and for bytes that are no pickle at all.
        forbidden = weights_only_refusal(error)
        if forbidden:
            raise DataError(
                f"refusing to load {path}: it holds arbitrary objects ({forbidden}), not only tensors"
            ) from error
        raise DataError(f"cannot read weights from {path}: not a PyTorch weights file or corrupt") from error
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        raise DataError(f"cannot read weights from {path}: {first_line(error)}") from error
    if isinstance(loaded, Mapping) and isinstance(loaded.get("model"), Mapping):
        loaded = loaded["model"]
    if not isinstance(loaded, Mapping):
        raise DataError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    not_tensors = [
        str(key) for key, value in loaded.items() if not isinstance(key, str) or not isinstance(value, Tensor)
    ]
    if not_tensors:
        raise DataError(f"{path} is not a state dict: entries {_key_list(not_tensors)} are not named tensors")
    return dict(loaded)


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError as error:  # pragma: no cover - safetensors is a dependency
        raise UsageError(f"reading {path} needs the safetensors package: pip install safetensors") from error
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise DataError(f"cannot read weights from {path}: {first_line(error)}") from error


def _strip_wrapper_prefixes(state: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    """Remove DataParallel/compile prefixes, however nested (``module._orig_mod.layer1...``)."""
    stripped: dict[str, Tensor] = {}
    for key, value in state.items():
        name = key
        while name.startswith(_WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        if name in stripped:
            raise DataError(f"{path} holds {name!r} twice (under different wrapper prefixes)")
        stripped[name] = value
    return stripped


@dataclass(frozen=True)
class _LoadPlan:
    tensors: dict[str, Tensor]
    dropped: tuple[str, ...]
    reinitialized: tuple[str, ...]


def _plan_load(model: nn.Module, state: dict[str, Tensor], path: Path, *, reinit_conv1: bool) -> _LoadPlan:
    """Decide, without touching the model, which tensors to copy and which keys to re-initialize."""
    expected = model.state_dict()
    dropped: list[str] = []
    reinitialized: list[str] = []

    def shape_differs(key: str) -> bool:
        return key in state and key in expected and state[key].shape != expected[key].shape

    # A different number of classes: the top layer is replaced, as long as it sits on the same features.
    if shape_differs("fc.weight") and state["fc.weight"].shape[1:] == expected["fc.weight"].shape[1:]:
        top_keys = [key for key in ("fc.weight", "fc.bias") if key in state]
        dropped += top_keys
        reinitialized += ["fc.weight", "fc.bias"]

    # Same channels, other kernel: weights made for the other stem (e.g. ImageNet's 7x7 into cifar's 3x3).
    if shape_differs("conv1.weight") and state["conv1.weight"].shape[:2] == expected["conv1.weight"].shape[:2]:
        file_kernel = "x".join(str(size) for size in state["conv1.weight"].shape[2:])
        model_kernel = "x".join(str(size) for size in expected["conv1.weight"].shape[2:])
        if not reinit_conv1:
            raise UsageError(
                f"{path} has a {file_kernel} conv1 but the model's stem ({_stem_name(model)}) has a "
                f"{model_kernel} conv1, so it cannot load: ImageNet weights fit stem='imagenet'; to keep "
                "this stem, re-initialize conv1 (reinit_conv1=True)"
            )
        dropped.append("conv1.weight")
        reinitialized.append("conv1.weight")

    # num_batches_tracked only counts training steps; files saved without it keep the model's.
    optional = {key for key in expected if key.endswith(".num_batches_tracked")}
    missing = [key for key in expected if key not in state and key not in optional and key not in reinitialized]
    unexpected = [key for key in state if key not in expected and key not in dropped]
    wrong_shape = [
        f"{key} {tuple(state[key].shape)} vs {tuple(expected[key].shape)}"
        for key in expected
        if shape_differs(key) and key not in dropped
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_key_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_key_list(unexpected)}")
    if wrong_shape:
        problems.append(f"wrong shapes (file vs model) {_key_list(wrong_shape)}")
    if problems:
        raise DataError(f"{path} does not fit the model: {'; '.join(problems)}")

    tensors = {key: state[key] for key in expected if key in state and key not in dropped}
    return _LoadPlan(tensors=tensors, dropped=tuple(dropped), reinitialized=tuple(reinitialized))


def _stem_name(model: nn.Module) -> str:
    return str(getattr(model, "stem", "unknown"))


def _hash_prefix(file_name: str, url: str) -> str:
    stem = Path(file_name).stem
    prefix = stem.rsplit("-", 1)[1] if "-" in stem else ""
    if not _HASH_IN_NAME.fullmatch(prefix):
        raise UsageError(
            f"cannot check {url}: its file name carries no sha256 prefix of at least 8 hex digits "
            "after its last '-' (name-<hash>.pth)"
        )
    return prefix


def _join_url(base_url: str, file_name: str) -> str:
    return base_url.rstrip("/") + "/" + file_name


def _key_list(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_KEYS_IN_MESSAGE])
    more = len(keys) - _MAX_KEYS_IN_MESSAGE
    return f"[{shown}{f', ... {more} more' if more > 0 else ''}]"

