"""``bitswitch train CONFIG [key=value ...]``: run (or ``--resume``) a training run described by a config file.

Runs under plain ``python``/``bitswitch`` or under ``torchrun --nproc_per_node N -m bitswitch.cli train ...``
with the same config (the global ``batch_size`` is split across processes).
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model (FP32, fixed-precision QAT or joint multi-precision) from a config file",
        description="Train from a YAML/TOML config. Any option can be overridden as key=value (e.g. epochs=5 bits=4,3,2). "
        "The run directory (out_dir) receives the config used, metrics.jsonl, last/best checkpoints (integer codes for QAT runs), "
        "the resumable state and accuracy.png (loss.png for language models: dataset shakespeare).",
    )
    p.add_argument("config", help="a .yaml/.yml/.toml config file (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, type-checked")
    p.add_argument("--out", default=None, help="run directory (same as out_dir=...)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in out_dir (same config required)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (same as progress=false)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..lm import perplexity
    from ..train import TrainConfig, train

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out_dir={args.out}")
    if args.no_progress:
        overrides.append("progress=false")
    cfg = TrainConfig.from_file(args.config).apply_overrides(overrides)
    result = train(cfg, resume=args.resume)
    if result.test_acc:
        print("test accuracy (%): " + ", ".join(f"{k.upper()} {v:.2f}" for k, v in result.test_acc.items()))
    if result.test_loss:
        print("test loss (nats/char): " + ", ".join(f"{k.upper()} {v:.4f} (perplexity {perplexity(v):.2f})" for k, v in result.test_loss.items()))
    print(f"run directory: {result.out_dir}")
    return 0
