"""Checkpoint size vs the FP32 state dict, and the time to switch precision on a loaded model.

    python benchmarks/core_storage_switch.py

Size: the integer checkpoint (int8 codes + per-channel scales + per-bit activation scales and
BatchNorms + FP32 first/last layers) over the bytes of the FP32 state dict, for {8,6,4,2}.
Switching: ``set_precision`` alone, and ``set_precision`` plus materialising every effective
weight at the new precision (what a deployment that caches dequantized weights pays), both
against one forward pass of the same model, all in the same process.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

import bitswitch
from bitswitch.models import build

from _common import md_table, timeit, write_results

MODELS = {
    "preact_resnet20": ({}, (3, 32, 32)),
    "resnet18/fc-quantized": ({}, (3, 224, 224)),
    "mobilenet_v2/fc-quantized": ({}, (3, 224, 224)),
    "resnet18": ({}, (3, 224, 224)),
    "mobilenet_v2": ({}, (3, 224, 224)),
    "resnet50": ({}, (3, 224, 224)),
}


def storage_row(name: str, tmp: Path) -> tuple[dict, torch.nn.Module]:
    kwargs, shape = MODELS[name]
    arch, _, variant = name.partition("/")
    fp = build(arch, **kwargs).eval()
    # default: first conv and last linear stay FP32; "fc-quantized" keeps only the first conv FP32
    first_conv = next(n for n, m in fp.named_modules() if isinstance(m, torch.nn.Conv2d))
    full_precision = [first_conv] if variant == "fc-quantized" else "first_last"
    q = bitswitch.quantize(fp, bits=(8, 6, 4, 2), full_precision=full_precision)
    bitswitch.calibrate(q, [torch.randn(2, *shape)])
    path = bitswitch.save(q, tmp / f"{arch}-{variant or 'default'}.safetensors")
    fp_bytes = sum(v.numel() * v.element_size() for v in fp.state_dict().values())
    ck = path.stat().st_size
    return {
        "model": name,
        "fp32_state_dict_bytes": fp_bytes,
        "checkpoint_bytes": ck,
        "ratio": ck / fp_bytes,
    }, bitswitch.load(path)


def switch_row(name: str, model: torch.nn.Module, repeat: int) -> dict:
    _, shape = MODELS[name]
    x = torch.randn(1, *shape)
    layers = list(bitswitch.quantized_layers(model).values())
    state = {"b": 8}

    def switch() -> None:
        state["b"] = 4 if state["b"] == 8 else 8
        bitswitch.set_precision(model, state["b"])

    @torch.no_grad()
    def switch_and_materialise() -> None:
        switch()
        for m in layers:
            m.effective_weight()

    @torch.no_grad()
    def forward() -> None:
        model(x)

    t_switch = statistics.median(timeit(switch, repeat=repeat * 10))
    t_mat = statistics.median(timeit(switch_and_materialise, repeat=repeat))
    t_fwd = statistics.median(timeit(forward, repeat=repeat))
    return {
        "model": name,
        "set_precision_ms": t_switch * 1e3,
        "switch_plus_weights_ms": t_mat * 1e3,
        "forward_batch1_ms": t_fwd * 1e3,
        "switch_over_forward": t_switch / t_fwd,
        "switch_plus_weights_over_forward": t_mat / t_fwd,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    ap.add_argument("--repeat", type=int, default=10, help="timed repetitions (median reported)")
    args = ap.parse_args()
    torch.manual_seed(0)
    storage, switching = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            row, loaded = storage_row(name, Path(tmp))
            storage.append(row)
            switching.append(switch_row(name, loaded, args.repeat))
            print(row, switching[-1], flush=True)
    md = "### Integer checkpoint size ({8,6,4,2}, h=8)\n\n" + md_table(storage)
    md += "\n\n### Precision switching on a loaded model (batch-1 forward as the yardstick)\n\n" + md_table(switching)
    write_results("core_storage_switch", {"storage": storage, "switching": switching}, md)


if __name__ == "__main__":
    main()
