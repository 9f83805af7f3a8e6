"""Phase 1 on the captured ATen graph vs the former symbolic ``torch.fx`` graph, in one process.

The former implementation is imported from a copy of an older tree whose package folder was
renamed ``bitswitch_old`` (every import inside the package is relative), e.g.::

    mkdir -p /tmp/old && git archive c7e0892 bitswitch | tar -x -C /tmp/old && mv /tmp/old/bitswitch /tmp/old/bitswitch_old
    python benchmarks/ptq_phase1_capture.py --old /tmp/old

Models: the tests' PTQ models (``tiny_transformer`` dim 32 depth 1 of tests/test_ptq.py, the
conv-BN-ReLU net of tests/test_ptq_cli.py), with more calibration chunks so the time is measurable.
Old and new alternate ``--repeats`` times; the median phase-1 seconds of each are compared.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys

import torch
from torch import nn


def models() -> dict[str, tuple[nn.Module, torch.Tensor, int]]:
    from bitswitch.models import build

    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, bias=False),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    return {"tiny_transformer": (build("tiny_transformer", dim=32, depth=1).eval(), torch.randn(256, 8, 16), 8),
            "conv_bn_relu": (conv, torch.randn(512, 3, 8, 8), 16)}


def phase1_seconds(pkg: str, model: nn.Module, x: torch.Tensor, chunk: int) -> float:
    ptq = importlib.import_module(f"{pkg}.ptq")
    s = ptq.start_session(model, [x], ptq.PTQConfig([(8, 16), (8, 8), (4, 8)], progress=False, chunk_size=chunk))
    s.sensitivity()
    return s.timings["phase1_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", required=True, help="folder holding the bitswitch_old package")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    sys.path.insert(0, args.old)
    torch.set_num_threads(1)
    for name, (model, x, chunk) in models().items():
        old, new = [], []
        for _ in range(args.repeats):
            old.append(phase1_seconds("bitswitch_old", model, x, chunk))
            new.append(phase1_seconds("bitswitch", model, x, chunk))
        o, n = statistics.median(old), statistics.median(new)
        print(f"{name}: phase 1 median of {args.repeats}: fx {o * 1000:.1f} ms, capture {n * 1000:.1f} ms, ratio capture/fx {n / o:.2f}")


if __name__ == "__main__":
    main()
