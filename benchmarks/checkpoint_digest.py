"""What the records of issue 29 cost on the CPU: the checkpoint digest (payload_digest) on a
ResNet-50's checkpoint (weights and SGD momentum), against torch.save and torch.load of the same
payload in memory, and the data fingerprint of a data folder when one is given. Ratios are measured
in one run, best of 5 each (docs/performance.md, "Issue 29").

    python benchmarks/checkpoint_digest.py [DATA_DIR]
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from resnet_cifar.engine.checkpoint import payload_digest
from resnet_cifar.models import resnet50


def best_of(run: Callable[[], object], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def resnet50_payload() -> dict[str, object]:
    torch.manual_seed(0)
    model = resnet50(num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()  # the momentum buffers exist, as in every checkpoint after the first step
    return {"format": 1, "model": model.state_dict(), "optimizer": optimizer.state_dict()}


def main(data_dir: Path | None) -> None:
    payload = resnet50_payload()
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    save = best_of(lambda: torch.save(payload, io.BytesIO()))
    load = best_of(lambda: torch.load(io.BytesIO(data), weights_only=True))
    digest = best_of(lambda: payload_digest(payload))
    print(f"ResNet-50 checkpoint (weights + momentum): {len(data) / 1e6:.0f} MB")
    print(f"torch.save {save * 1000:.0f} ms, torch.load {load * 1000:.0f} ms, payload_digest {digest * 1000:.0f} ms")
    print(f"digest / save {digest / save:.2f}, digest / load {digest / load:.2f}")
    if data_dir is not None:
        from resnet_cifar.data.load import load_cifar10

        from resnet_cifar.data.cache import default_cache_dir

        splits = load_cifar10(data_dir, cache_dir=default_cache_dir(os.environ))
        pixels = (splits.train.images.nbytes + splits.test.images.nbytes) / 1e6
        print(f"data fingerprint of {len(splits.train) + len(splits.test)} images ({pixels:.0f} MB): "
              f"{best_of(splits.fingerprint) * 1000:.0f} ms")  # fmt: skip


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
