"""Which weight-scale init serves all bit-widths best: MSE search over all bits vs 3-sigma vs max.

    python benchmarks/core_weight_init.py --images 64

On the pretrained EfficientNet-Lite0 (real trained weights, no training needed) the shared
per-channel scale is initialised three ways; activations are calibrated identically (MSE, per
bit) on ImageNet samples; the table gives the SQNR (dB) of the logits against FP32 and the top-1
agreement with FP32 at every weight bit-width (activations at 8 bits, so the weight grid is what
differs). Weight-only relative MSE is reported too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import bitswitch
from bitswitch.data import ImageFolderDataset, batches, efficientnet_lite_preprocess
from bitswitch.models import build

from _common import md_table, write_results

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet_samples"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--images", type=int, default=64, help="images: half calibrate, half evaluate")
    args = ap.parse_args()
    ds = ImageFolderDataset(args.data, preprocess=efficientnet_lite_preprocess())
    xs = torch.cat([x for x, _ in batches(ds, 32, indices=list(range(args.images)))])
    calib, evalx = xs[: args.images // 2], xs[args.images // 2 :]
    fp = build("efficientnet_lite0", pretrained=True).eval()
    with torch.no_grad():
        ref = fp(evalx)
    bits = (8, 6, 4)
    rows = []
    for init in ("mse", "std3", "max"):
        q = bitswitch.quantize(fp, bits=bits)
        bitswitch.calibrate(q, [calib], weight_init=init)
        q.eval()
        row: dict = {"weight_init": init}
        with torch.no_grad():
            for b in bits:
                bitswitch.set_precision(q, (b, 8))
                out = q(evalx)
                row[f"SQNR W{b}A8 (dB)"] = float(10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean()))
                row[f"top1 agree W{b}A8"] = float((out.argmax(1) == ref.argmax(1)).float().mean())
                werr = [float((m.effective_weight() - m.weight).pow(2).sum() / m.weight.pow(2).sum()) for m in bitswitch.quantized_layers(q).values()]
                row[f"weight rel. MSE W{b}"] = sum(werr) / len(werr)
        rows.append(row)
        print(row, flush=True)
    md = (
        "### Weight-scale init for a shared scale (EfficientNet-Lite0 pretrained, {8,6,4}, activations 8-bit)\n\n"
        + md_table(rows)
        + f"\n\n{args.images // 2} calibration and {args.images - args.images // 2} evaluation images from imagenet_samples; no training."
    )
    write_results("core_weight_init", {"rows": rows, "images": args.images}, md)


if __name__ == "__main__":
    main()
