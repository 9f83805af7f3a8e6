"""``bitswitch quickstart``: the whole product in about a minute on a laptop CPU, no download.

On scikit-learn's bundled 8x8 digits, with a six-convolution CNN (five quantized layers):

1. train it in FP32;
2. train it jointly for {8,6,4,2} bits (Double Rounding, ALRS, per-bit BatchNorm);
3. save ONE integer file for every bit-width and compare its size with the FP32 weights;
4. reload that file and switch its precision at run time (same accuracy as after training);
5. choose a per-layer (mixed) configuration for an average bit-width budget (Hessian x rounding
   noise objective + ILP, the default of ``bitswitch search``);
6. export that configuration as a QDQ ONNX file and verify it in onnxruntime.

One summary table at the end; the numbers are also written to ``<out>/summary.json``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ._args import COUNT, NON_NEGATIVE, THREADS

WIDTHS = [16, 32, 32, 64, 64, 64]
STRIDES = [1, 1, 2, 1, 2, 1]
SAMPLE_SHAPE = (1, 8, 8)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="FP32 -> joint {8,6,4,2} -> one integer file -> switch -> mixed search -> ONNX, on bundled digits",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/quickstart", help="folder for the runs, the integer file, the subnet and the ONNX file (runs in it are restarted; default: runs/quickstart)")
    p.add_argument("--bits", default="8,6,4,2", help="bit-widths to train jointly, highest first (default: 8,6,4,2)")
    p.add_argument("--fp32-epochs", type=NON_NEGATIVE, default=10, help="epochs of the FP32 run the joint run starts from (default 10; 0: from scratch)")
    p.add_argument("--joint-epochs", type=COUNT, default=3, help="epochs of the joint multi-precision run (default 3)")
    p.add_argument("--budget", type=float, default=5.0, help="average weight/activation bits of the mixed configuration (between the lowest and highest of --bits; default 5)")
    p.add_argument("--seed", type=int, default=0, help="random seed of both runs (default 0)")
    p.add_argument("--threads", type=THREADS, default=1, help="torch threads (default 1: fastest for this tiny model, and robust on a busy machine)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (one line per epoch)")
    p.set_defaults(func=run)


@dataclass
class Summary:
    """What the quickstart measured (test accuracies in %, sizes in bytes)."""

    fp32_acc: float
    trained_acc: dict[str, float]    # "w8a8" -> test accuracy of the joint run's best checkpoint
    reloaded_acc: dict[str, float]   # the same, from the reloaded integer file after set_precision
    fp32_bytes: int                  # FP32 state dict (weights + BN)
    int_bytes: int                   # the one integer file, every bit-width
    mixed_layers: dict[str, list[int]]
    mixed_avg_bits: float
    mixed_rel_bops: float            # BOPs relative to all-W8A8
    mixed_acc: float
    onnx_bytes: int
    exported_acc: float              # PyTorch, the exported model: mixed with its biases snapped to the int32 grid
    onnx_acc: float                  # test accuracy computed by onnxruntime
    onnx_agreement: float            # top-1 agreement with PyTorch (the exported model), %
    seconds: float


def run(args: argparse.Namespace) -> int:
    bits = [int(b) for b in args.bits.split(",") if b.strip()]
    if not min(bits) <= args.budget <= max(bits):
        raise ValueError(f"--budget must lie between the lowest and highest of --bits ({min(bits)}..{max(bits)}), got {args.budget}")
    summary = quickstart(Path(args.out), bits, args)
    print_summary(summary, bits, Path(args.out))
    return 0


def quickstart(out: Path, bits: list[int], args: argparse.Namespace) -> Summary:
    import torch

    import bitswitch
    from ..export import export_onnx, verify_onnx
    from ..export.atomic import atomic_write_json
    from ..nn.precision_file import write_precision_file
    from ..search import SearchProblem, hessian_traces, sensitivity, weight_noise
    from ..search.evaluate import accuracy, at_config, dataset_batches
    from ..search.subnet import RECIPE_KEY, BNRecipe
    from ..train import TrainConfig, train
    from ..train.step import label

    t_start = time.perf_counter()
    common = {"dataset": "digits", "model": "digits_cnn", "model_kwargs": {"widths": WIDTHS, "strides": STRIDES},
              "batch_size": 64, "seed": args.seed, "progress": not args.no_progress, "val_fraction": 0.1, "optimizer": "adam",
              "num_threads": args.threads}
    fp32_cfg = TrainConfig.from_dict({**common, "mode": "fp32", "epochs": args.fp32_epochs, "lr": 3e-3, "out_dir": str(out / "fp32")})
    joint_cfg = TrainConfig.from_dict({**common, "mode": "joint", "bits": bits, "epochs": args.joint_epochs, "lr": 1e-3,
                                       "init_from": str(out / "fp32"), "out_dir": str(out / "joint")})  # validates bits up front
    for run_dir in (out / "fp32", out / "joint"):
        (run_dir / "state.safetensors").unlink(missing_ok=True)
    torch.set_num_threads(args.threads)

    def say(step: int, what: str) -> None:
        print(f"[{step}/6, {time.perf_counter() - t_start:.0f} s] {what}", flush=True)

    say(1, f"FP32 training: a 6-conv CNN on scikit-learn digits, {fp32_cfg.epochs} epochs")
    fp32 = train(fp32_cfg)
    say(2, f"joint training for {bits} bits from the FP32 weights (ALRS, per-bit BatchNorm), {joint_cfg.epochs} epochs")
    joint = train(joint_cfg)

    ckpt = out / "model.safetensors"
    say(3, f"saving ONE integer file for every bit-width: {ckpt}")
    best = bitswitch.load(joint.out_dir / "best.safetensors")
    bitswitch.save(best, ckpt, extra=best.bitswitch_extra)  # keeps the dataset and input shape: eval/export need no flags
    fp32_bytes = sum(t.numel() * t.element_size() for t in fp32.model.state_dict().values())

    say(4, "reloading it and switching its precision at run time")
    test, _ = dataset_batches("digits", None, "test", None, 512)
    recipe = BNRecipe(seed=args.seed)  # subnet.json carries it: eval/export --config rebuild this very subnet
    calib, _ = dataset_batches("digits", None, recipe.split, recipe.images, recipe.batch_size, seed=recipe.seed)
    model = bitswitch.load(ckpt)
    reloaded = {}
    for b in bits:
        bitswitch.set_precision(model, b)
        reloaded[label(b)] = accuracy(model, test)

    say(5, f"mixed precision for an average of {args.budget:g} bits: Hessian traces x rounding noise, ILP")
    traces = hessian_traces(model, calib, max_iter=10, seed=args.seed)
    problem = SearchProblem(bitswitch.layer_costs(model, SAMPLE_SHAPE), sensitivity(traces), bits, objective="noise",
                            noise=weight_noise(model, bits))
    chosen = problem.solve(f"avg-bits={args.budget:g}")
    mixed = at_config(model, chosen.config, calib)  # a copy, BatchNorm statistics re-estimated on 256 training images
    mixed_acc = accuracy(mixed, test)
    write_precision_file(out / "subnet.json", chosen.config, budget=chosen.budgets, objective="noise", test_acc=mixed_acc,
                         **{RECIPE_KEY: recipe.as_dict()})

    onnx_path = out / "mixed.onnx"
    say(6, f"exporting the mixed configuration to {onnx_path} and verifying it in onnxruntime")
    # snap_bias: ``mixed`` is a copy; PyTorch then adds the int32 biases the integer kernels add, so the
    # 2-step verification measures the file, not the bias rounding (3.5 steps on this model without)
    report = export_onnx(mixed, onnx_path, input_shape=SAMPLE_SHAPE, snap_bias=True)
    # one pass of both over the labelled test images: agreement, and each one's accuracy (PyTorch's is
    # the exported model's: the snapped biases can move a decision at a tie, 1 of 359 images on an AVX-512 CPU)
    agreement = verify_onnx(mixed, onnx_path, test)

    summary = Summary(
        fp32_acc=fp32.test_acc["fp32"], trained_acc={k: joint.test_acc[k] for k in reloaded}, reloaded_acc=reloaded,
        fp32_bytes=fp32_bytes, int_bytes=ckpt.stat().st_size,
        mixed_layers={k: list(v) for k, v in chosen.config.items()}, mixed_avg_bits=chosen.summary["avg_bits"],
        mixed_rel_bops=chosen.summary["rel_bops_w8a8"], mixed_acc=mixed_acc,
        onnx_bytes=report.file_bytes, exported_acc=agreement.model_accuracy, onnx_acc=agreement.file_accuracy,
        onnx_agreement=100.0 * agreement.top1_agreement, seconds=time.perf_counter() - t_start,
    )
    atomic_write_json(out / "summary.json", asdict(summary))
    return summary


def print_summary(s: Summary, bits: list[int], out: Path) -> None:
    """One table: every stage's result next to the check that shows it worked (fits 80 columns)."""
    from ..table import print_table

    rows = [("train", "FP32 model", f"{s.fp32_acc:.2f}", f"{s.fp32_bytes / 1e3:.1f} kB", "")]
    for b in bits:
        key = f"w{b}a{b}"
        same = "= trained" if s.reloaded_acc[key] == s.trained_acc[key] else f"DIFFERS ({s.trained_acc[key]:.2f})"
        rows.append(("joint, switch" if b == bits[0] else "", f"W{b}A{b} (file)", f"{s.reloaded_acc[key]:.2f}", "", same))
    rows.append(("save", "model.safetensors", "", f"{s.int_bytes / 1e3:.1f} kB", f"{s.int_bytes / s.fp32_bytes:.2f}x FP32"))
    layers = ",".join(str(w) for w, _ in s.mixed_layers.values())
    rows.append(("search", f"mixed {s.mixed_avg_bits:.1f} bits", f"{s.mixed_acc:.2f}", f"{s.mixed_rel_bops:.2f}x BOPs",
                 f"bits {layers}"))
    rows.append(("export", "mixed.onnx", f"{s.onnx_acc:.2f}", f"{s.onnx_bytes / 1e3:.1f} kB", f"{s.onnx_agreement:.1f} % agree"))
    print(f"\nbitswitch quickstart: digits test set, {s.seconds:.0f} s")
    print_table(["step", "model / file", "top-1 %", "size", "check"], rows)
    print(f"BOPs relative to all-W8A8; bits = weight (= activation) bits of {', '.join(s.mixed_layers)}.\n"
          f"Files in {out}/. Next: bitswitch eval {out / 'model.safetensors'} --config {out / 'subnet.json'}")
