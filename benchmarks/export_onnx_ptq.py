"""ONNX export of post-training quantized EfficientNet-Lite0 (AdaRound 4-bit weights): agreement in onnxruntime.

The QAT-free ``{8,6,4}`` EfficientNet-Lite0 of ``export_onnx.py`` is broken at 4 bits (about 2 %
top-1), so its 4-bit agreement says little. Here the model comes out of the post-training
pipeline (BN folded, asymmetric activations, MSE ranges, AdaRound + bias correction on 4-bit
weights; calibration = the first 256 sample files) and is exported at uniform W8A8 and W4A8.

Next to onnxruntime's agreement with the PyTorch model it measures how well PyTorch agrees with
itself: the same model evaluated in float64 (near-exact arithmetic) and in channels-last float32
(another summation order). Those two columns are the floor a float runtime can be held to: an image
whose top-1 flips between two PyTorch evaluations can flip between PyTorch and onnxruntime too.

``--layerwise N`` adds, for the snap_bias files, where the codes differ: every quantized layer's input
codes in onnxruntime against float64 and float32 PyTorch on the first N evaluation images
(:func:`bitswitch.export.layerwise.compare_layer_codes`).

    python benchmarks/export_onnx_ptq.py [--threads 1] [--layerwise 100]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import md_table, publish
from export_onnx import agreement, imagenet_split

from bitswitch.export.layerwise import compare_layer_codes
from bitswitch.export.onnx import export_onnx, run_onnx
from bitswitch.models import build
from bitswitch.ptq import PTQConfig, start_session

SHAPE = (3, 224, 224)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    ap.add_argument("--test-subset", type=int, default=0, help="evaluation images (0 = all 744)")
    ap.add_argument("--adaround-iters", type=int, default=300)
    ap.add_argument("--layerwise", type=int, default=0, help="images for the per-layer code comparison of the snap_bias files (0 = none)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--name", default="export_onnx_ptq")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    calib, x, y = imagenet_split(args.test_subset or None)
    s = start_session(build("efficientnet_lite0", pretrained=True).eval(), [calib],
                      PTQConfig(adaround=True, bias_correct=True, adaround_iters=args.adaround_iters, progress=False))
    prep_s = time.perf_counter() - t0
    rows, layerwise = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for pair in ((8, 8), (4, 8)):
            for snap in (False, True):
                s.apply(s.uniform(pair)).to(memory_format=torch.contiguous_format)  # also restores the biases a previous snap moved
                path = Path(tmp) / f"w{pair[0]}a{pair[1]}.onnx"
                report = export_onnx(s.model, path, input_shape=SHAPE, snap_bias=snap)
                with torch.no_grad():
                    ref = torch.cat([s.model(c) for c in x.split(50)])
                    m64 = copy.deepcopy(s.model).double()
                    ref64 = torch.cat([m64(c.double()) for c in x.split(50)]).float()
                    mcl = copy.deepcopy(s.model).to(memory_format=torch.channels_last)
                    refcl = torch.cat([mcl(c.contiguous(memory_format=torch.channels_last)) for c in x.split(50)])
                    del m64, mcl
                got = torch.from_numpy(run_onnx(path, x))
                a = agreement(ref, got, y)
                same = lambda u, v: round(100 * agreement(u, v, y)["top1_agreement"], 2)  # top-1 of u vs v
                rows.append({"file": f"PTQ W{pair[0]}A{pair[1]}" + (", snap_bias" if snap else ""),
                             "top-1 agreement %": round(100 * a["top1_agreement"], 2),
                             "ORT vs float64 PyTorch %": same(got, ref64),
                             "PyTorch float32 vs float64 %": same(ref, ref64), "PyTorch contiguous vs channels-last %": same(ref, refcl),
                             "max |diff| (steps)": round(a["max_diff_steps"], 3), "mean |diff| (steps)": round(a["mean_diff_steps"], 4),
                             "PyTorch top-1 %": round(100 * a["pytorch_top1"], 2), "ORT top-1 %": round(100 * a["onnx_top1"], 2),
                             "bytes": path.stat().st_size})
                print(rows[-1], flush=True)
                if snap and args.layerwise:
                    xs = x[: args.layerwise].split(10)
                    per = {r: compare_layer_codes(s.model, path, report, xs, reference=r) for r in ("float64", "float32")}
                    layerwise[rows[-1]["file"]] = [{"layer (input codes)": a.name, "codes": a.codes, "differ vs float64 %": round(100 * a.fraction, 4),
                                                    "max |diff| vs float64": a.max_diff, "differ vs float32 %": round(100 * b.fraction, 4),
                                                    "max |diff| vs float32": b.max_diff} for a, b in zip(per["float64"], per["float32"])]
    md = ("# ONNX export of post-training quantized EfficientNet-Lite0\n\n"
          f"PTQ session (BN folded, asymmetric activations, MSE ranges, AdaRound {args.adaround_iters} it + bias correction "
          f"on 4-bit weights) calibrated on the first 256 sample files; agreement on the other {x.shape[0]} images; "
          f"{args.threads} thread(s); session preparation {prep_s:.0f} s. int8 containers, uint8 activations.\n\n" + md_table(rows) + "\n")
    for name, table in layerwise.items():
        md += (f"\n## {name}: where onnxruntime's codes differ (first {args.layerwise} evaluation images)\n\n"
               "Each quantized layer's input codes in onnxruntime against those of float64 (near-exact) and float32 PyTorch "
               "(`bitswitch.export.layerwise.compare_layer_codes`), in model order.\n\n" + md_table(table) + "\n")
    return publish(args, {"rows": rows, "layerwise": layerwise, "prepare_s": prep_s, "threads": args.threads}, md)


if __name__ == "__main__":
    sys.exit(main())
