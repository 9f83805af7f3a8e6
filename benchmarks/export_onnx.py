"""ONNX export benchmark: onnxruntime vs PyTorch agreement, file sizes, CPU latency and integer kernels.

For ResNet-20 (CIFAR-10, all 10,000 test images) and EfficientNet-Lite0 (the 744 ImageNet sample
images after the first 256 in sorted file order; the first 256 calibrate it):

* top-1 agreement of onnxruntime with PyTorch, the maximum |diff| of the logits in output steps
  (``max|y| / 127``) and both top-1 accuracies, at W8A8 and W4A4 (4-bit in int8 and in int4 containers);
  files with integer kernels are also compared with the model after ``snap_bias`` (its biases moved
  onto the file's int32 grid), which isolates the bias rounding;
* file sizes: FP32 ONNX (same network, BN folded, no Q/DQ), 8-bit, 4-bit in int8 containers and 4-bit
  packed in int4 containers;
* latency in onnxruntime (CPU) at batch 1 and 32 as a ratio to the FP32 file, every file measured in
  the same process, interleaved round by round, so the ratios share the machine's state;
* which kernels onnxruntime ran (its profiler), integer ones listed separately.

Run everything: ``python benchmarks/export_onnx.py``; timing only (skips the PyTorch reference
passes, a few minutes): ``python benchmarks/export_onnx.py --no-agreement``. Writes
``benchmarks/results/export_onnx.{json,md}`` (or ``export_onnx_<models>`` for a subset).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import md_table, write_results  # noqa: E402

import bitswitch  # noqa: E402
from bitswitch.export.onnx import (  # noqa: E402
    INTEGER_KERNELS,
    cpu_int8_path,
    executed_kernels,
    export_onnx,
    ort_session,
)
from bitswitch.models import build  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RESNET_JOINT = REPO / "runs" / "cifar10_resnet20_joint" / "best.safetensors"
RESNET_FP32 = REPO / "runs" / "cifar10_resnet20_fp32"

#: (label, weight/activation bits, container); the FP32 file is exported separately
FILES = (("w8a8", 8, "int8"), ("w4a4 int8", 4, "int8"), ("w4a4 int4", 4, "int4"))


def _is_bitswitch_checkpoint(path: Path) -> bool:
    """A quantized bitswitch checkpoint (as opposed to an FP32 run's weights)."""
    from bitswitch.export.checkpoint import CheckpointError, read_checkpoint

    if not path.is_file():
        return False
    try:
        read_checkpoint(path)
    except CheckpointError:
        return False
    return True


def cifar_resnet20(n_test: int | None, checkpoint: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, str, str]:
    """The trained joint {8,6,4,2} checkpoint if there is one, else the FP32 one calibrate-quantized."""
    from bitswitch.data import DATASET_STATS, TensorLoader, load_dataset

    stats = DATASET_STATS["cifar10"]
    test = load_dataset("cifar10", DATA / "cifar10", "test")
    path = Path(checkpoint) if checkpoint != "auto" else (RESNET_JOINT if RESNET_JOINT.is_file() else RESNET_FP32)
    if _is_bitswitch_checkpoint(path):
        q = bitswitch.load(path)
        extra = getattr(q, "bitswitch_extra", {}) or {}
        mean, std = extra.get("mean", stats["mean"]), extra.get("std", stats["std"])
        what = f"trained joint {{8,6,4,2}} ResNet-20 ({path.relative_to(REPO) if path.is_relative_to(REPO) else path})"
    else:
        from bitswitch.train.model import load_fp32_weights

        m = build("preact_resnet20", num_classes=10, in_channels=3)
        src = load_fp32_weights(m, path)
        mean, std = stats["mean"], stats["std"]
        train = load_dataset("cifar10", DATA / "cifar10", "train")
        calib = next(iter(TensorLoader(train, 256, shuffle=True, seed=0, mean=mean, std=std)))[0]
        q = bitswitch.quantize(m.eval(), bits=(8, 6, 4, 2))
        bitswitch.calibrate(q, calib.split(64))
        what = (f"trained FP32 ResNet-20 ({src.relative_to(REPO) if src.is_relative_to(REPO) else src}) quantized {{8,6,4,2}} and "
                "calibrated on 256 training images (no QAT: the joint checkpoint did not exist yet)")
    xs, ys = [], []
    for x, y in TensorLoader(test, 500, shuffle=False, mean=mean, std=std):
        xs.append(x)
        ys.append(y)
    x, y = torch.cat(xs), torch.cat(ys)
    if n_test:
        x, y = x[:n_test], y[:n_test]
    return q.eval(), x, y, what, f"CIFAR-10 test ({x.shape[0]} images)"


def imagenet_split(n_test: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(calibration images = first 256 sample files in sorted order, evaluation images, their labels)."""
    from bitswitch.data import (
        batches,
        efficientnet_lite_preprocess,
        load_imagenet_samples,
    )

    ds = load_imagenet_samples(DATA / "imagenet_samples", efficientnet_lite_preprocess())
    order = sorted(range(len(ds)), key=lambda i: Path(ds.samples[i][0]).name)
    calib_idx, eval_idx = order[:256], order[256:]
    if n_test:
        eval_idx = eval_idx[:n_test]
    calib = torch.cat([x for x, _ in batches(ds, 64, indices=calib_idx, num_threads=2)])
    pairs = list(batches(ds, 50, indices=eval_idx, num_threads=2))
    return calib, torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])


def effnet_lite0(n_test: int | None, checkpoint: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, str, str]:
    """Pretrained EfficientNet-Lite0, calibrated on the first 256 sample images, evaluated on the rest."""
    calib, x, y = imagenet_split(n_test)
    q = bitswitch.quantize(build("efficientnet_lite0", pretrained=True), bits=(8, 6, 4))
    bitswitch.calibrate(q, calib.split(32))
    what = "pretrained EfficientNet-Lite0 (package weights) quantized {8,6,4}, calibrated on the first 256 sample images (no QAT)"
    return q.eval(), x, y, what, f"ImageNet samples after the first 256 ({x.shape[0]} images)"


def agreement(ref: torch.Tensor, got: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    step = float(ref.abs().max()) / 127
    d = (got - ref).abs()
    return {"images": ref.shape[0], "top1_agreement": float((got.argmax(1) == ref.argmax(1)).float().mean()),
            "max_diff_steps": float(d.max()) / step, "mean_diff_steps": float(d.mean()) / step,
            "pytorch_top1": float((ref.argmax(1) == labels).float().mean()), "onnx_top1": float((got.argmax(1) == labels).float().mean())}


def session_variants(args: argparse.Namespace) -> list[tuple[str, bool]]:
    """The extra onnxruntime sessions the int8 files also run in: (row suffix, ``ort_session(exact=...)``)."""
    return [(suffix, exact) for suffix, exact, on in (("ORT default session", False, args.default_session),
                                                      ("exact option forced", True, args.exact_session)) if on]


def latency(files: dict[str, Path], x: torch.Tensor, batch: int, rounds: int, inner: int, warmup: int, threads: int,
            isolated: bool = False, forced: dict[str, bool] | None = None) -> dict[str, dict[str, float]]:
    """Median ms per run of every file, interleaved round by round; ratios use medians of the same process.

    ``isolated``: one session alive at a time, with onnxruntime's defaults (idle pool threads spin),
    as a deployment runs one model: each round opens every file's session in turn, warms it up,
    times it and releases it. Otherwise all sessions stay open and run in turn; with several threads
    their spinning must then be off (measured: FP32 ResNet-20 batch 32 at 2 threads took 18 ms with
    spinning vs 8.5 ms without), which handicaps the file with more, smaller kernels. ``forced`` maps
    keys to ``ort_session(exact=...)``: ``False`` runs without ``session.x64quantprecision`` (onnxruntime's
    default), ``True`` with it; other keys get bitswitch's choice for this CPU (the option without VNNI only).
    """
    xb = x[:batch].numpy()

    def opened(k: str, p: Path):
        s = ort_session(p, threads=threads, spinning=isolated or threads == 1, exact=(forced or {}).get(k))
        for _ in range(warmup):
            s.run(None, {"input": xb})
        return s

    sessions = {} if isolated else {k: opened(k, p) for k, p in files.items()}
    times: dict[str, list[float]] = {k: [] for k in files}
    for _ in range(rounds):
        for k, p in files.items():
            s = opened(k, p) if isolated else sessions[k]
            t0 = time.perf_counter()
            for _ in range(inner):
                s.run(None, {"input": xb})
            times[k].append((time.perf_counter() - t0) / inner * 1000)
            del s
    out = {}
    for k, v in times.items():
        q = statistics.quantiles(v, n=4) if len(v) >= 4 else [min(v), 0, max(v)]
        ratio = [a / b for a, b in zip(v, times["fp32"])]  # same round: shares the machine's state
        out[k] = {"median_ms": statistics.median(v), "p25_ms": q[0], "p75_ms": q[2], "min_ms": min(v), "rounds": len(v),
                  "ratio_vs_fp32": statistics.median(v) / statistics.median(times["fp32"]), "ratio_per_round_median": statistics.median(ratio)}
    return out


def run_model(name: str, loader: Callable, args: argparse.Namespace, n_test: int | None, lat_cfg: dict[int, tuple[int, int]], tmp: Path) -> dict:
    t0 = time.time()
    q, xs, ys, what, data = loader(n_test, args.resnet_checkpoint)
    shape = tuple(xs.shape[1:])
    files: dict[str, Path] = {}
    sizes, layers, agree = {}, {}, {}
    bitswitch.set_precision(q, 8)
    files["fp32"] = tmp / f"{name}_fp32.onnx"
    sizes["fp32"] = export_onnx(q, files["fp32"], input_shape=shape, fp32=True).file_bytes
    refs: dict[int, torch.Tensor] = {}
    for label, bits, container in FILES:
        bitswitch.set_precision(q, bits)
        path = tmp / f"{name}_{label.replace(' ', '_')}.onnx"
        rep = export_onnx(q, path, input_shape=shape, container=container)
        files[label], sizes[label] = path, rep.file_bytes
        layers[label] = {"layers": sum(lt.w_bits is not None for lt in rep.layers), "fusable": sum(lt.fusable for lt in rep.layers),
                         "kernels": dict(Counter(lt.kernel or "float" for lt in rep.layers if lt.w_bits is not None)),
                         "unfolded_bn": rep.unfolded_bn}
        if args.no_agreement:
            continue
        if bits not in refs:
            with torch.no_grad():
                refs[bits] = torch.cat([q(b) for b in xs.split(50)])

        def ort_outputs(exact: bool | None) -> torch.Tensor:
            sess = ort_session(path, threads=args.threads, exact=exact)
            return torch.cat([torch.from_numpy(sess.run(None, {"input": b.numpy()})[0]) for b in xs.split(50)])

        got = ort_outputs(exact=None)
        agree[label] = agreement(refs[bits], got, ys)
        for suffix, exact in session_variants(args):
            if container == "int8":  # onnxruntime's default: u8s8 may saturate without VNNI; the option forced: u8u8 kernels
                agree[f"{label}, {suffix}"] = agreement(refs[bits], ort_outputs(exact=exact), ys)
        if container == "int8":  # the same file against the model with its biases moved onto the file's int32 grid
            snapped = copy.deepcopy(q)
            export_onnx(snapped, tmp / "snapped.onnx", input_shape=shape, container=container, snap_bias=True)
            with torch.no_grad():
                ref_s = torch.cat([snapped(b) for b in xs.split(50)])
            agree[f"{label}, snap_bias"] = agreement(ref_s, got, ys)
        for k in (label, *(f"{label}, {suffix}" for suffix, _ in session_variants(args)), f"{label}, snap_bias"):
            if k in agree:
                a = agree[k]
                print(f"{name} {k}: agreement {100 * a['top1_agreement']:.2f} %, max diff {a['max_diff_steps']:.2f} steps, "
                      f"top-1 PyTorch {100 * a['pytorch_top1']:.2f} % / ORT {100 * a['onnx_top1']:.2f} %", flush=True)
    kernels = {k: executed_kernels(p, xs[:1], threads=args.threads) for k, p in files.items()}
    forced: dict[str, bool] = {}  # the same int8 files timed with session.x64quantprecision forced off / on
    for suffix, exact in session_variants(args):
        for label, _, c in FILES:
            if c == "int8":
                k = f"{label} ({suffix})"
                files[k], sizes[k], kernels[k] = files[label], sizes[label], kernels[label]
                forced[k] = exact
    lat = {}
    for batch, (rounds, inner) in lat_cfg.items():
        lat[str(batch)] = latency(files, xs, batch, rounds, inner, args.warmup, args.threads, args.isolated, forced)
        print(name, f"batch {batch}", {k: f"{v['median_ms']:.2f} ms ({v['ratio_vs_fp32']:.2f}x)" for k, v in lat[str(batch)].items()}, flush=True)
    return {"model": what, "data": data, "agreement": agree, "file_bytes": sizes, "export": layers, "kernels": kernels,
            "latency": lat, "seconds": time.time() - t0}


def markdown(results: dict) -> str:
    parts = ["# ONNX export: agreement with PyTorch, size and CPU latency in onnxruntime\n"]
    for name, r in results["models"].items():
        parts.append(f"## {name}\n\n{r['model']}; {r['data']}.\n")
        if r["agreement"]:
            rows = [{"file": k, "top-1 agreement %": 100 * a["top1_agreement"], "max |diff| (output steps)": a["max_diff_steps"],
                     "mean |diff| (steps)": a["mean_diff_steps"], "PyTorch top-1 %": 100 * a["pytorch_top1"], "ORT top-1 %": 100 * a["onnx_top1"],
                     "images": a["images"]} for k, a in r["agreement"].items()]
            parts.append(md_table(rows) + "\n")
        rows = []
        for k, size in r["file_bytes"].items():
            row = {"file": k, "bytes": size, "vs fp32": size / r["file_bytes"]["fp32"]}
            for b, lat in r["latency"].items():
                row[f"batch {b} ms (p25-p75)"] = f"{lat[k]['median_ms']:.2f} ({lat[k]['p25_ms']:.2f}-{lat[k]['p75_ms']:.2f})"
                row[f"batch {b} / fp32"] = lat[k]["ratio_vs_fp32"]
            ints = {op: n for op, n in r["kernels"][k].items() if op in INTEGER_KERNELS}
            row["integer kernels"] = ", ".join(f"{op} x{n}" for op, n in ints.items()) or "none"
            rows.append(row)
        parts.append(md_table(rows) + "\n")
        parts.append("Kernels run (onnxruntime profiler): \n" + "\n".join(f"- {k}: {v}" for k, v in r["kernels"].items()) + "\n")
        parts.append("Export: " + "; ".join(f"{k}: {v['fusable']}/{v['layers']} quantized layers in a fusable Conv->Q pattern"
                                            + (f" (kernels of the quantized layers: {v['kernels']})" if "kernels" in v else "")
                                            + f", BN kept as op: {len(v['unfolded_bn'])}" for k, v in r["export"].items()) + "\n")
    parts.append(results["notes"])
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet20,efficientnet_lite0")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (and torch threads) for everything (default 1)")
    ap.add_argument("--rounds", type=float, default=1.0, help="multiply the number of timing rounds (default per model/batch: "
                    "ResNet-20 b1 15x20 runs, b32 9x2; EfficientNet-Lite0 b1 9x3, b32 5x1)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs per file and batch size before timing (default 3)")
    ap.add_argument("--isolated", action="store_true", help="time one session at a time with onnxruntime's default thread "
                    "spinning, as a deployment runs one model (default: all sessions open, run in turn, spinning off when --threads > 1)")
    ap.add_argument("--default-session", action="store_true", help="also run the int8 files in onnxruntime's default session, without "
                    "session.x64quantprecision (agreement and latency): what that option prevents on x86 CPUs without VNNI")
    ap.add_argument("--exact-session", action="store_true", help="also run the int8 files with session.x64quantprecision=1 forced "
                    "(agreement and latency): what that option costs where bitswitch leaves it off (CPUs with VNNI)")
    ap.add_argument("--no-agreement", action="store_true", help="skip the PyTorch reference passes: sizes, kernels and latency only")
    ap.add_argument("--quick", action="store_true", help="smoke run: 200 CIFAR / 32 ImageNet images, few rounds")
    ap.add_argument("--resnet-checkpoint", default="auto", help="joint .safetensors checkpoint or FP32 run dir (default: the joint run if it exists, else the FP32 run)")
    ap.add_argument("--name", default=None, help="results file name (default: export_onnx[_<models>], plus _latency with --no-agreement)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    quick = args.quick

    def r(n: int) -> int:
        return max(2 if quick else 3, round(n * args.rounds * (0.34 if quick else 1)))

    todo = {
        "resnet20": (cifar_resnet20, 200 if quick else None, {1: (r(15), 20), 32: (r(9), 2)}),
        "efficientnet_lite0": (effnet_lite0, 32 if quick else None, {1: (r(9), 3), 32: (r(5), 1)}),
    }
    results: dict = {"models": {}, "cpu_int8_path": cpu_int8_path(), "quick": quick, "threads": args.threads, "warmup": args.warmup, "rounds_factor": args.rounds}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            loader, n, lat = todo[name]
            results["models"][name] = run_model(name, loader, args, n, lat, Path(tmp))
    results["notes"] = (
        f"Latency: onnxruntime CPU execution provider, {args.threads} intra-op thread(s)"
        + (" (thread spinning off for every file, so the session that just ran does not busy-wait on the next one's cores)"
           if args.threads > 1 and not args.isolated else "")
        + (f", ORT_ENABLE_ALL, one session alive at a time with onnxruntime's default thread spinning (as a deployment runs one model): "
           f"each round opens every file's session in turn, runs {args.warmup} warm-up runs, times (inner) runs and releases it"
           if args.isolated else f", ORT_ENABLE_ALL, {args.warmup} warm-up runs per file, then rounds of (inner) runs")
        + ", the files interleaved round by round in one process; the table gives the median ms per run "
        "(p25-p75 over rounds) and the ratio of medians to the FP32 file measured in the same process. FP32 = the same network "
        "with BN and zero Pads folded and dequantized weights, no Q/DQ.\n\n"
        "Integer kernels: onnxruntime fuses DQ(uint8) -> Conv(DQ(int8 W), DQ(int32 bias)) -> Q(uint8) into QLinearConv, "
        "for convolutions whose output the model quantizes. A 1x1 conv whose output stays float (it feeds a float residual "
        "addition or the float head) and whose input comes from an integer kernel is exported as Transpose -> "
        "MatMul(DQ, DQ) -> Add(bias) -> Transpose, which onnxruntime fuses into MatMulIntegerToFloat (exact int32 "
        "accumulation, float output) and keeps channels-last (EfficientNet's projections). Other convs with a float output "
        "(ResNet-20's 3x3 second convs into the residual addition, its shortcuts) stay float convs on dequantized inputs; "
        "there is no QLinearAdd or QLinearGlobalAveragePool (the model adds in float). 'w4a4 int8': 4-bit codes in int8/uint8 containers (integer Clip to the "
        "4-bit grid), run by the integer kernels; 'w4a4 int4': packed int4/uint4 (smallest file), which onnxruntime 1.32 "
        "runs in float.\n\n"
        f"Sessions: bitswitch's ort_session sets session.x64quantprecision=1 on x86 CPUs without VNNI only (this CPU's int8 path: "
        f"{cpu_int8_path()}: the option is {'off' if cpu_int8_path() == 'vnni' else 'on'}). Without VNNI, onnxruntime's u8s8 kernels "
        "add pairs of products in int16 with saturation, and that option makes it re-store weights with codes beyond +-64 as "
        "uint8 for its exact u8u8 kernels; with VNNI u8s8 is exact and the option only slows those layers. '(ORT default "
        "session)' rows run the same file without the option, '(exact option forced)' rows with it.\n\n"
        "Agreement: 'snap_bias' rows compare the same file with a copy of the model whose biases were moved onto the file's "
        "int32 bias grid (export_onnx(..., snap_bias=True)); the plain rows with the model as trained, which differs from the "
        "integer kernel by up to half a bias step (s_x*s_w) per channel.\n"
    )
    name = args.name or ("export_onnx" if args.models == "resnet20,efficientnet_lite0" else f"export_onnx_{args.models.replace(',', '_')}")
    if args.no_agreement and not args.name:
        name += "_latency"  # a timing-only run must not overwrite the agreement tables
    path = write_results(name, results, markdown(results))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
