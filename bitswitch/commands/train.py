"""``bitswitch train CONFIG [key=value ...]``: run a training run described by a config file;
``bitswitch train --resume RUN_DIR``: continue an interrupted one from its folder alone.

Runs under plain ``python``/``bitswitch`` or under ``torchrun --nproc_per_node N -m bitswitch.cli train ...``
with the same config (the global ``batch_size`` is split across processes). Ctrl-C ends the current
step, saves the state there and prints the resume command (exit code 130).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..train import TrainConfig

INTERRUPTED = 130  # the shell's exit code for a process ended by SIGINT


def config_keys_help(width: int) -> str:
    """Every config key with its default and its comment, by section (generated from ``TrainConfig``)."""
    from ..train.config import field_default, field_docs

    lines, section = ["config keys with their defaults (in a config file, or key=value on the command line):"], None
    for sec, key, comment in field_docs():
        if sec != section:
            lines.append(f"  {sec}:")
            section = sec
        default = field_default(key)
        shown = default if isinstance(default, str) else json.dumps(default)
        lines += textwrap.wrap(f"{key}: {shown}  # {comment}", width, initial_indent="    ", subsequent_indent="        # ",
                               break_on_hyphens=False, break_long_words=False)
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    width = max(60, min(shutil.get_terminal_size().columns, 120) - 2)
    p = sub.add_parser(
        "train", help="train a model (FP32, fixed-precision QAT or joint multi-precision) from a config file",
        description=textwrap.fill("Train from a YAML/TOML config. Any option can be overridden as key=value (e.g. epochs=5 bits=4,3,2). "
        "The run directory (out_dir) receives the config used, metrics.jsonl, last/best checkpoints (integer codes for QAT runs), "
        "the resumable state and accuracy.png (loss.png for language models: dataset shakespeare). Ctrl-C ends the current step, "
        "saves the state there and prints the command that resumes it: bitswitch train --resume RUN_DIR.", width),
        epilog=config_keys_help(width),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", default=None, help="a .yaml/.yml/.toml config file (see configs/); not needed with --resume")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, type-checked (the keys are listed below)")
    p.add_argument("--out", default=None, help="run directory (same as out_dir=...; default: the config's out_dir)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue the interrupted run in RUN_DIR with the config it was started with (RUN_DIR/config.yaml); "
                   "only display and placement keys may be overridden (progress, device, num_threads, log_every, compile...)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (same as progress=false)")
    p.set_defaults(func=run)


def resume_config(run_dir: Path, config: str | None, overrides: list[str]) -> TrainConfig:
    """The config of the run in ``run_dir``: its ``config.yaml``, with only resume-free keys overridden.

    A config file given as well must describe the same run (it is refused otherwise, naming the keys).
    """
    from ..train.config import RESUME_FREE_KEYS, TrainConfig

    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"--resume {run_dir}: no config.yaml there; pass the folder of the interrupted run (its out_dir)")
    stored = TrainConfig.from_file(run_dir / "config.yaml").apply_overrides([f"out_dir={run_dir}"])
    if config is not None:
        given = TrainConfig.from_file(config).apply_overrides([*overrides, f"out_dir={run_dir}"])
        diff = stored.diff(given)
        if diff:
            keys = ", ".join(f"{k}: {then!r} (run) vs {now!r} ({config})" for k, (then, now) in diff.items())
            raise ValueError(f"cannot resume {run_dir} with {config}: the run was started with another config; differing keys: {keys}. "
                             f"To continue the run as it was started, pass only its folder: bitswitch train --resume {run_dir}")
        return given
    fixed = [o for o in overrides if o.partition("=")[0].strip().lstrip("-").replace("-", "_") not in RESUME_FREE_KEYS]
    if fixed:
        raise ValueError(f"--resume continues the run as it was configured; {', '.join(fixed)} would change what it computes "
                         f"(only {', '.join(RESUME_FREE_KEYS)} may change): start a new run instead")
    return stored.apply_overrides(overrides)


def run(args: argparse.Namespace) -> int:
    from ..lm import perplexity
    from ..train import TrainConfig, train
    from ..train.interrupt import TrainingInterrupted, resume_command
    from ..train.loop import STATE_FILE

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not Path(config).is_file():  # `train --resume RUN num_threads=1`
        config, overrides = None, [config, *overrides]
    if args.no_progress:
        overrides.append("progress=false")
    if args.resume is not None:
        if args.out is not None and Path(args.out) != Path(args.resume):
            raise ValueError(f"--out {args.out} and --resume {args.resume} name different run folders; pass just --resume RUN_DIR")
        cfg = resume_config(Path(args.resume), config, overrides)
    elif config is None:
        raise ValueError("give a config file (bitswitch train CONFIG [key=value ...]) or --resume RUN_DIR")
    else:
        cfg = TrainConfig.from_file(config).apply_overrides(overrides + ([f"out_dir={args.out}"] if args.out else []))
    try:
        result = train(cfg, resume=args.resume is not None)
    except TrainingInterrupted as e:
        print(f"bitswitch train: {e}", file=sys.stderr)
        return INTERRUPTED
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the first step: say what the folder holds
        state = Path(cfg.out_dir) / STATE_FILE
        saved = (f"the last saved training state is {state}; resume with: {resume_command(cfg.out_dir)}"
                 if state.is_file() else "nothing was saved")
        print(f"bitswitch train: interrupted; {saved}", file=sys.stderr)
        return INTERRUPTED
    if result.test_acc:
        print("test accuracy (%): " + ", ".join(f"{k.upper()} {v:.2f}" for k, v in result.test_acc.items()))
    if result.test_loss:
        print("test loss (nats/char): " + ", ".join(f"{k.upper()} {v:.4f} (perplexity {perplexity(v):.2f})" for k, v in result.test_loss.items()))
    print(f"run directory: {result.out_dir}")
    return 0
