"""`resnet-cifar info`: versions, devices, whether DALI is usable, and which named ImageNet
weights are in torchvision's cache (usable offline)."""

from __future__ import annotations

import platform
from resnet_cifar import __version__

from .options import JsonOption
from .render import Output


def info(json_output: JsonOption = False) -> None:
    """Print versions, devices, whether DALI is usable and which named weights work offline."""
    import numpy
    import torch

    from resnet_cifar.models import offline_weights

    cuda = torch.cuda.is_available()
    report = {
        "resnet_cifar": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cuda_available": cuda,
        "devices": ["cpu"] + [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())],
        "dali": _dali_status(),
        # Each cached file is hashed, so "ok" means a load would use it without the network.
        "pretrained_offline": {
            cached.name: {"available": cached.available, "status": cached.status, "file": str(cached.file)}
            for cached in offline_weights()
        },
    }
    out = Output(json_mode=json_output)
    if json_output:
        out.json(report)
        return
    for key, value in report.items():
        if key == "pretrained_offline":
            for name, entry in value.items():
                state = "available offline" if entry["available"] else entry["status"]
                out.line(f"weights {name}: {state} ({entry['file']})")
            continue
        shown = ", ".join(value) if isinstance(value, list) else ("not installed" if value is None else value)
        out.line(f"{key}: {shown}")


def _dali_status() -> str | None:
    """DALI's version when it imports, None when absent; an import failure is reported, not raised."""
    try:
        import nvidia.dali as dali
    except ImportError:
        return None
    except Exception as exc:  # a broken install must not take `info` down with it
        return f"unusable ({type(exc).__name__}: {exc})"
    return str(dali.__version__)
