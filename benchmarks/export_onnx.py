"""ONNX export benchmark: onnxruntime vs PyTorch agreement, file sizes and CPU latency.

For ResNet-20 (CIFAR-10 test set) and EfficientNet-Lite0 (the 1,000 ImageNet sample images):

* top-1 agreement and max |diff| (in output steps, max|y|/127) of the exported file vs PyTorch at
  8 and 4 bits, on every test image;
* file sizes of the FP32 ONNX, the 8-bit and 4-bit QDQ ONNX files (int4 storage and int8 storage);
* latency in onnxruntime (CPU, 2 intra-op threads) at batch 1 and 32, FP32 and quantized files
  interleaved round by round in one process (the cores are shared, so medians and spreads);
* which ops ran as integer kernels, from onnxruntime's profiler.

Run: ``python benchmarks/export_onnx.py [--quick]``; writes ``benchmarks/results/export_onnx.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import md_table, write_results  # noqa: E402

import bitswitch  # noqa: E402
from bitswitch.export.onnx import INTEGER_KERNELS, _session, executed_kernels, export_onnx, verify_onnx  # noqa: E402
from bitswitch.models import build  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def cifar_resnet20(n_test: int | None):
    from bitswitch.data import DATASET_STATS, TensorLoader, load_dataset

    stats = DATASET_STATS["cifar10"]
    train = load_dataset("cifar10", DATA / "cifar10", "train")
    test = load_dataset("cifar10", DATA / "cifar10", "test")
    calib = next(iter(TensorLoader(train, 256, shuffle=True, seed=0, mean=stats["mean"], std=stats["std"])))[0]
    xs = torch.cat([x for x, _ in TensorLoader(test, 500, shuffle=False, mean=stats["mean"], std=stats["std"])])
    if n_test:
        xs = xs[:n_test]
    m = build("preact_resnet20")
    # No trained ResNet-20 checkpoint exists yet: random init, BN statistics from one pass over 256
    # training images, then calibrated on them. Agreement is a property of the export, not accuracy.
    m.train()
    with torch.no_grad():
        m(calib)
    q = bitswitch.quantize(m.eval(), bits=(8, 6, 4, 2))
    bitswitch.calibrate(q, calib.split(64))
    return q.eval(), xs, "random-init ResNet-20 (BN stats + calibration on 256 CIFAR-10 train images)", f"CIFAR-10 test ({xs.shape[0]} images)"


def effnet_lite0(n_test: int | None):
    from bitswitch.data import batches, efficientnet_lite_preprocess, load_imagenet_samples

    ds = load_imagenet_samples(DATA / "imagenet_samples", efficientnet_lite_preprocess())
    n = min(n_test or len(ds), len(ds))
    xs = torch.cat([x for x, _ in batches(ds, 50, indices=range(n), num_threads=2)])
    q = bitswitch.quantize(build("efficientnet_lite0", pretrained=True), bits=(8, 6, 4))
    bitswitch.calibrate(q, xs[:64].split(16))
    return q.eval(), xs, "pretrained EfficientNet-Lite0 (package weights), calibrated on 64 of the sample images", f"ImageNet samples ({n} images)"


def latency(files: dict[str, Path], x: torch.Tensor, batch: int, rounds: int, inner: int) -> dict[str, dict[str, float]]:
    sessions = {k: _session(p, threads=2) for k, p in files.items()}
    xb = x[:batch].numpy()
    for s in sessions.values():  # warm-up
        s.run(None, {"input": xb})
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):  # interleaved: every round measures every file
        for k, s in sessions.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                s.run(None, {"input": xb})
            times[k].append((time.perf_counter() - t0) / inner * 1000)
    out = {}
    for k, v in times.items():
        q = statistics.quantiles(v, n=4) if len(v) >= 4 else [min(v), 0, max(v)]
        out[k] = {"median_ms": statistics.median(v), "p25_ms": q[0], "p75_ms": q[2], "min_ms": min(v), "rounds": len(v)}
    return out


def run_model(name: str, loader, n_test: int | None, lat_cfg: dict[int, tuple[int, int]], tmp: Path) -> dict:
    t0 = time.time()
    q, xs, what, data = loader(n_test)
    shape = tuple(xs.shape[1:])
    files: dict[str, Path] = {}
    agreement, sizes, layers = {}, {}, {}
    bitswitch.set_precision(q, 8)
    files["fp32"] = tmp / f"{name}_fp32.onnx"
    sizes["fp32"] = export_onnx(q, files["fp32"], input_shape=shape, fp32=True).file_bytes
    for label, bits, int4 in (("w8a8", 8, True), ("w4a4 int4", 4, True), ("w4a4 int8+clip", 4, False)):
        bitswitch.set_precision(q, bits)
        path = tmp / f"{name}_{label.replace(' ', '_').replace('+', '_')}.onnx"
        rep = export_onnx(q, path, input_shape=shape, int4=int4)
        files[label], sizes[label] = path, rep.file_bytes
        layers[label] = {"layers": len(rep.layers), "fusable_integer_conv": sum(lt.fusable for lt in rep.layers), "unfolded_bn": rep.unfolded_bn}
        if True:  # every file is verified on every image
            res = verify_onnx(q, path, xs.split(100), raise_on_failure=False)
            agreement[label] = res.as_dict()
            print(f"{name} {label}: {res.summary()}", flush=True)
    kernels = {k: executed_kernels(p, xs[:1], threads=2) for k, p in files.items()}
    lat = {}
    for batch, (rounds, inner) in lat_cfg.items():
        lat[str(batch)] = latency(files, xs, batch, rounds, inner)
        print(name, batch, {k: round(v["median_ms"], 2) for k, v in lat[str(batch)].items()}, flush=True)
    return {"model": what, "data": data, "agreement": agreement, "file_bytes": sizes, "export": layers, "kernels": kernels,
            "latency": lat, "seconds": time.time() - t0}


def markdown(results: dict) -> str:
    parts = ["# ONNX export: agreement with PyTorch, size and CPU latency in onnxruntime\n"]
    for name, r in results["models"].items():
        parts.append(f"## {name}\n\n{r['model']}; verified on {r['data']}.\n")
        rows = [{"file": k, "top-1 agreement %": 100 * a["top1_agreement"], "max |diff| (output steps)": a["max_diff_steps"],
                 "mean |diff| (steps)": a["mean_diff_steps"], "images": a["images"]} for k, a in r["agreement"].items()]
        parts.append(md_table(rows) + "\n")
        rows = []
        for k, size in r["file_bytes"].items():
            row = {"file": k, "bytes": size, "vs fp32": size / r["file_bytes"]["fp32"]}
            for b, lat in r["latency"].items():
                row[f"batch {b} median ms (p25-p75)"] = f"{lat[k]['median_ms']:.2f} ({lat[k]['p25_ms']:.2f}-{lat[k]['p75_ms']:.2f})"
                row[f"batch {b} / fp32"] = lat[k]["median_ms"] / lat["fp32"]["median_ms"]
            ints = {op: n for op, n in r["kernels"][k].items() if op in INTEGER_KERNELS}
            row["integer kernels"] = ", ".join(f"{op} x{n}" for op, n in ints.items()) or "none"
            rows.append(row)
        parts.append(md_table(rows) + "\n")
        parts.append("Kernels run (onnxruntime profiler, all files): \n" + "\n".join(f"- {k}: {v}" for k, v in r["kernels"].items()) + "\n")
        parts.append("Export: " + "; ".join(f"{k}: {v['fusable_integer_conv']}/{v['layers']} quantized layers in a fusable QDQ pattern, BN kept as op: {len(v['unfolded_bn'])}" for k, v in r["export"].items()) + "\n")
    parts.append(results["notes"])
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="few images and rounds (smoke run)")
    ap.add_argument("--models", default="resnet20,efficientnet_lite0")
    ap.add_argument("--effnet-images", type=int, default=1000, help="ImageNet sample images used for EfficientNet-Lite0 (max 1000)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    quick = args.quick
    todo = {
        "resnet20": (cifar_resnet20, 200 if quick else None, {1: (5 if quick else 15, 20), 32: (3 if quick else 9, 2)}),
        "efficientnet_lite0": (effnet_lite0, 64 if quick else args.effnet_images, {1: (3 if quick else 9, 3), 32: (2 if quick else 4, 1)}),
    }
    results = {"models": {}, "quick": quick, "effnet_images": args.effnet_images}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            loader, n, lat = todo[name]
            results["models"][name] = run_model(name, loader, n, lat, Path(tmp))
    results["notes"] = (
        "Latency: onnxruntime 1.32 CPU, 2 intra-op threads, ORT_ENABLE_ALL, FP32 and quantized sessions interleaved round by "
        "round in one process; the 2 cores are shared with 4 other engineers' jobs, so absolute times are noisy: compare the "
        "ratios within a table. FP32 = the same network with BN folded and dequantized weights, no activation Q/DQ.\n\n"
        "Integer kernels: onnxruntime fuses DQ->Conv->[Relu]->Q with int8 weights, int32 bias and equal 8-bit input/output types "
        "into QLinearConv. int4 grids are stored as int4 (half the bytes) but onnxruntime has no int4 conv kernel, so they run as "
        "float convs on dequantized values; 'int8+clip' stores 4-bit codes in int8 with a Clip before each QuantizeLinear.\n"
    )
    name = "export_onnx" if args.models == "resnet20,efficientnet_lite0" else f"export_onnx_{args.models.replace(',', '_')}"
    path = write_results(name, results, markdown(results))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
