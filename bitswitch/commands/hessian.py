"""``bitswitch hessian CKPT --data NAME``: per-layer Hessian traces (Hutchinson) to a JSON file."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from ..progress import Progress
from ..search.hessian import convergence_warning, hessian_traces, save_traces, trace_table
from ._args import COUNT, THREADS, float_in
from ._data import labelled_batches, language_model, resolve_data, text_batches
from ._model import add_model_args, load_model


def default_trace_path(checkpoint: str | Path) -> Path:
    p = Path(checkpoint)
    return p.with_name(p.stem + ".hessian.json")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "hessian", help="estimate per-layer Hessian traces (for HASB and search)",
        description="Hutchinson estimate of each quantized layer's Hessian trace on training images, "
        "with the FP32 function of the checkpoint (top-precision weights, unquantized activations).",
    )
    p.add_argument("checkpoint", help="an integer checkpoint written by bitswitch")
    p.add_argument("--data", default=None, help="dataset name (fashion_mnist, cifar10, digits) or folder; default: the checkpoint's training data")
    p.add_argument("--dataset", default=None, help="dataset name when --data is a folder the checkpoint does not name")
    p.add_argument("--data-root", default=None, help="dataset folder when --data is a name (default: $BITSWITCH_DATA/<name>)")
    p.add_argument("--samples", type=COUNT, default=1024, help="training images (a language model: windows of its context) in the loss (default 1024)")
    p.add_argument("--batch-size", type=COUNT, default=128, help="images (windows) per forward/backward pass (default 128)")
    p.add_argument("--tol", type=float_in(0.0, lo_open=True), default=0.05, help="stop a layer when stderr/|mean| < tol (default 0.05)")
    p.add_argument("--max-iter", type=COUNT, default=100, help="iteration cap (default 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image subset and the Rademacher probes (default 0)")
    p.add_argument("--threads", type=THREADS, default=0, help="torch threads (0: torch default); on a shared CPU 1 is often much faster")
    p.add_argument("--out", default=None, help="output JSON (default: CKPT with .hessian.json)")
    add_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    model, meta = load_model(args, args.checkpoint)
    extra = meta.get("extra") or {}
    info = language_model(extra)
    if info is not None:  # a language model: windows of its training text
        name, shape = "shakespeare", (info.context,)
        batches = text_batches(args, info, "train", args.samples, args.batch_size, seed=args.seed)
        what = "windows"
    else:
        name, root = resolve_data(args, extra)
        batches, shape = labelled_batches(name, root, extra, "train", args.samples, args.batch_size, seed=args.seed)
        what = "images"
    samples = sum(int(x.shape[0]) for x, _ in batches)
    print(f"Hessian traces on {samples} {name} training {what} (--samples {args.samples}), "
          f"until each layer's relative standard error is below --tol {args.tol} or --max-iter {args.max_iter} iterations", flush=True)
    t0 = time.perf_counter()
    with Progress(args.max_iter, "hessian", unit="iteration", lines_every=10) as bar:
        traces = hessian_traces(model, batches, tol=args.tol, max_iter=args.max_iter, seed=args.seed,
                                progress=lambda it, left: bar.update({"layers left": left}))
    seconds = time.perf_counter() - t0
    out = Path(args.out) if args.out else default_trace_path(args.checkpoint)
    save_traces(
        out, traces, checkpoint=str(args.checkpoint), data=name, samples=samples,
        input_shape=list(shape), tol=args.tol, max_iter=args.max_iter, seed=args.seed, seconds=seconds,
        torch_threads=torch.get_num_threads(),
    )
    print(trace_table(traces))
    warning = convergence_warning(traces)
    if warning:
        print(f"warning: {warning}; raise --max-iter (now {args.max_iter}) or --samples, or accept a looser --tol", file=sys.stderr)
    print(f"{seconds:.1f} s; wrote {out}")
    return 0
