"""``bitswitch quickstart``: the main job end to end in about a minute on a laptop CPU, no download.

On scikit-learn's bundled 8x8 digits it trains an FP32 CNN, then trains it jointly for {8,6,4,2}
bits (Double Rounding, ALRS, per-bit BatchNorm), prints the per-bit accuracy table, saves ONE
integer checkpoint, reloads it and switches its precision at run time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ._args import COUNT, NON_NEGATIVE, THREADS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="train FP32 then joint {8,6,4,2} on bundled digits, save integers, reload and switch",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/quickstart", help="folder for the two runs and the final checkpoint (runs in it are restarted)")
    p.add_argument("--bits", default="8,6,4,2", help="bit-widths to train jointly, highest first")
    p.add_argument("--fp32-epochs", type=NON_NEGATIVE, default=15)
    p.add_argument("--joint-epochs", type=COUNT, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=THREADS, default=1, help="torch threads (1 is fastest for this tiny model, and robust on a busy machine)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    import bitswitch
    from ..train import TrainConfig, train
    from ..train.loop import evaluate, format_table, load_data, make_loader

    t_start = time.perf_counter()
    out = Path(args.out)
    bits = [int(b) for b in args.bits.split(",") if b.strip()]
    common = {"dataset": "digits", "model": "digits_cnn", "batch_size": 64, "seed": args.seed, "progress": not args.no_progress,
              "val_fraction": 0.1, "optimizer": "adam",
              "num_threads": args.threads}
    fp32_cfg = TrainConfig.from_dict({**common, "mode": "fp32", "epochs": args.fp32_epochs, "lr": 3e-3, "out_dir": str(out / "fp32")})
    joint_cfg = TrainConfig.from_dict({**common, "mode": "joint", "bits": bits, "epochs": args.joint_epochs, "lr": 1e-3,
                                       "init_from": str(out / "fp32"), "out_dir": str(out / "joint")})  # validates bits up front
    for run_dir in (out / "fp32", out / "joint"):
        (run_dir / "state.safetensors").unlink(missing_ok=True)

    print(f"[1/4] FP32 training: digits_cnn on scikit-learn digits, {fp32_cfg.epochs} epochs")
    fp32 = train(fp32_cfg)
    print(f"[2/4] joint training for {bits} bits from the FP32 weights (ALRS, per-bit BatchNorm), {joint_cfg.epochs} epochs")
    joint = train(joint_cfg)

    labels = ["fp32"] + [f"w{b}a{b}" for b in bits]
    test = {**fp32.test_acc, **joint.test_acc}
    val = {**fp32.best_val, **joint.best_val}
    rows = [{"precision": lab.upper(), "val %": val[lab], "test %": test[lab]} for lab in labels]
    print("\nper-bit accuracy (checkpoints chosen on the validation split; test evaluated once):")
    print(format_table(rows, list(rows[0])))

    ckpt = out / "digits_cnn_w8.safetensors"
    print(f"\n[3/4] saving ONE integer checkpoint: {ckpt}")
    model = bitswitch.load(joint.out_dir / "best.safetensors")
    bitswitch.save(model, ckpt, extra=model.bitswitch_extra)
    fp32_bytes = (out / "fp32" / "best.safetensors").stat().st_size
    print(f"      {ckpt.stat().st_size:,} bytes (int8 codes + scales) vs {fp32_bytes:,} bytes for the FP32 model")

    print("[4/4] reloading it and switching precision at run time:")
    reloaded = bitswitch.load(ckpt)
    data = load_data(joint_cfg)
    loader = make_loader(data, "test", joint_cfg, "cpu")
    rows = []
    for b in bits:
        bitswitch.set_precision(reloaded, b)
        acc = evaluate(reloaded, loader, [b])[f"w{b}a{b}"]
        rows.append({"set_precision": b, "test %": acc, "same as trained": "yes" if abs(acc - test[f"w{b}a{b}"]) < 1e-9 else "NO"})
    print(format_table(rows, list(rows[0])))
    x = next(iter(loader))[0][:1]
    with torch.no_grad():
        bitswitch.set_precision(reloaded, bits[0])
        bitswitch.set_precision(reloaded, {n: bits[-1] for n in list(bitswitch.quantized_layers(reloaded))[:1]})
        mixed = reloaded(x).argmax(1).item()
    print(f"      per-layer switching works too: {bitswitch.get_precision(reloaded)} -> class {mixed}")
    print(f"\ndone in {time.perf_counter() - t_start:.0f} s. Evaluate again with: bitswitch eval {ckpt} --bits {','.join(map(str, bits))}")
    return 0
