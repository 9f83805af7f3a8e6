"""``bitswitch generate CKPT --bits 8,4,2 --prompt "ROMEO:" --tokens 200``: text from a language-model checkpoint.

One load of the integer file, one sample per precision (each from the same seed, so the samples
differ by precision alone), switched with :func:`bitswitch.set_precision`; or one per-layer
configuration (``--config``, a precision file as ``bitswitch search`` writes). The sampling is
:func:`bitswitch.lm.generate`'s: seeded, reproducible, sliding the context window along unless
``--no-window``.

A bit-width the checkpoint was not trained for, up to its storage precision, is a slice of the same
codes (:func:`bitswitch.nn.convert.add_bit_width`); it takes ``--untrained-ok`` because nothing
measured it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._args import COUNT, NON_NEGATIVE, THREADS, bit_list, float_in
from ._model import add_model_args, load_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="sample text from a language-model checkpoint at one or more precisions",
                       description="Load a language-model checkpoint once and print a sample per bit-width (or for a per-layer configuration).")
    p.add_argument("checkpoint", help="a language-model .safetensors checkpoint (saved with bitswitch.lm.lm_metadata)")
    p.add_argument("--bits", default=None, help="comma-separated bit-widths, one sample each, e.g. 8,4,2 (default: every bit-width the checkpoint was trained for)")
    p.add_argument("--config", default=None, help="a per-layer precision JSON file (as bitswitch search writes): one sample of that configuration (default: none)")
    p.add_argument("--others-stay", action="store_true", help="with --config: layers the file does not list keep the precision the checkpoint was saved at (default: an error)")
    p.add_argument("--untrained-ok", action="store_true",
                   help="allow a bit-width the checkpoint was not trained for (in --bits or --config), up to its storage precision (untested: measure it first; default: an error)")
    p.add_argument("--prompt", default="\n", help="the text to continue; every character must be in the model's vocabulary (default: '\\n', a newline)")
    p.add_argument("--tokens", type=COUNT, default=200, help="characters to generate per sample (default: 200)")
    p.add_argument("--temperature", type=float_in(0.0, lo_open=True), default=0.8, help="divides the logits before sampling; lower is more conservative (default: 0.8)")
    p.add_argument("--top-k", type=COUNT, default=None, help="sample among the k likeliest characters only (default: all)")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="seed of the sampling; the same seed gives the same text (default: 0)")
    p.add_argument("--greedy", action="store_true", help="always take the likeliest character (ignores --temperature, --top-k, --seed; default: sample)")
    p.add_argument("--no-window", action="store_true",
                   help="refuse a prompt plus --tokens longer than the model's context (default: slide the window over the last context characters)")
    p.add_argument("--threads", type=THREADS, default=0, help="torch threads (0: torch's default); on a shared CPU 1 is often much faster (default: 0)")
    add_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..lm import generate_ids, read_lm_info
    from ..nn.convert import add_bit_width
    from ..nn.precision_file import apply_precision_file, read_precision_file

    path = Path(args.checkpoint)
    info = read_lm_info(path)  # refuses any other checkpoint before a model is built
    try:
        prompt = info.vocab.encode(args.prompt)
    except ValueError as e:
        raise ValueError(f"--prompt: {e}") from None
    if len(prompt) == 0:
        raise ValueError("--prompt must hold at least one character")
    if args.no_window and len(prompt) + args.tokens > info.context:
        raise ValueError(f"--tokens {args.tokens} after a prompt of {len(prompt)} characters exceeds the model's context of {info.context} "
                         f"(--no-window): ask for at most {max(info.context - len(prompt), 0)}, or drop --no-window to slide the window")
    if args.bits and args.config:
        raise ValueError("--bits and --config are alternatives: give one")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, meta = load_model(args, path)
    qc = meta["quant_config"]
    if qc is None and (args.bits or args.config):
        raise ValueError(f"{path} is an FP32 checkpoint: --bits and --config apply to quantized checkpoints only")
    if "ptq" in meta and args.bits:
        raise ValueError(f"{path} is a bitswitch ptq result: one mixed configuration, sampled as saved; --bits does not apply")

    trained = [] if qc is None else sorted({*qc["bits"], *qc["act_bits"]}, reverse=True)

    def allow(b: int) -> None:
        if b not in trained:
            if not args.untrained_ok:
                raise ValueError(f"bit-width {b} is not one this checkpoint was trained for (trained: {trained}); "
                                 f"pass --untrained-ok to switch to it anyway (up to the storage precision {qc['storage_bits']}, untested)")
            add_bit_width(model, b)

    samples: list[tuple[str, object]] = []  # (header, precision for generate_ids)
    if qc is None:
        samples.append(("FP32", None))
    elif args.config:
        for b in {b for wa in read_precision_file(args.config).values() for b in wa if b is not None}:
            allow(b)
        apply_precision_file(model, args.config, others_stay=args.others_stay)
        samples.append((f"mixed ({Path(args.config).name})", None))
    elif "ptq" in meta:
        samples.append(("PTQ (mixed, as saved)", None))
    else:
        weight_only = set(qc["weight_only"]) >= set(qc["quantized"])
        for b in bit_list(args.bits) if args.bits else list(qc["bits"]):
            allow(b)
            label = f"W{b} (weight-only)" if weight_only else f"W{b}A{b}"
            samples.append((label + ("" if b in trained else ", not trained"), b))

    if not args.no_window and len(prompt) + args.tokens > info.context:
        print(f"note: the prompt plus {args.tokens} tokens exceed the model's context of {info.context} characters: "
              f"each step reads the last {info.context} (a sliding window; --no-window refuses instead)", file=sys.stderr)
    for header, precision in samples:
        ids = generate_ids(model, prompt, args.tokens, context=info.context, precision=precision, temperature=args.temperature,
                           top_k=args.top_k, seed=args.seed, greedy=args.greedy, window=not args.no_window)
        print(f"=== {header} ===")
        print(info.vocab.decode(ids), flush=True)
    return 0
