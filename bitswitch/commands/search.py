"""``bitswitch search CKPT --budget avg-bits=3``: per-layer bit-widths by ILP, plus baselines."""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from ..cost import layer_costs
from ..export.checkpoint import atomic_write_bytes
from ..nn.convert import quantized_layers
from ..nn.precision_file import write_precision_file
from ..search.baselines import greedy, random_at_cost, uniform
from ..search.budget import parse_budget
from ..search.hessian import convergence_warning, load_traces, sensitivity
from ..search.ilp import SearchProblem, SearchResult, pareto_front
from ..search.objectives import OBJECTIVES, weight_noise
from ..search.plots import plot_sweep
from ..search.subnet import RECIPE_KEY, BNRecipe
from ..table import print_table
from ._args import BITS, COUNT, NON_NEGATIVE, THREADS
from ._data import labelled_batches, language_model, resolve_data, text_batches
from ._model import add_model_args, load_model
from .hessian import default_trace_path


def _calibration(args: argparse.Namespace, meta: dict[str, Any], why: str) -> tuple[str, Any, dict[str, Any]]:
    """(dataset name, root, checkpoint extra) for the measured objective and re-ranking."""
    extra = meta.get("extra") or {}
    try:
        name, root = resolve_data(args, extra)
    except ValueError:
        raise ValueError(f"{why} on labelled training images: pass --data NAME "
                         "(or --data FOLDER --dataset NAME), or use --objective noise for a data-free search") from None
    return name, root, extra


def _recal_batches(args: argparse.Namespace, name: str, root: Any, extra: dict[str, Any]) -> Any:
    if not args.recal_samples or language_model(extra) is not None:  # no BatchNorm to re-estimate in a language model
        return None
    return labelled_batches(name, root, extra, "train", args.recal_samples, 128, seed=2)[0]


def _loss_deltas(args: argparse.Namespace, model: Any, meta: dict[str, Any], bits: list[int], act: Any) -> dict[str, Any]:
    """Measured per-(layer, candidate) loss increases for ``--objective loss`` (why: sees activation bits)."""
    from ..search.ilp import candidate_pairs
    from ..search.measured import loss_deltas

    batches = _text_batches(args, meta, args.samples, skip=0)
    if batches is None:
        name, root, extra = _calibration(args, meta, "--objective loss measures each layer's loss increase")
        batches, _ = labelled_batches(name, root, extra, "train", args.samples, 128, seed=1)
    else:
        name, root, extra = "shakespeare", None, meta["extra"]
    recal = _recal_batches(args, name, root, extra)
    pairs = candidate_pairs(bits, act)
    weights = sorted({w for w, _ in pairs}, reverse=True)
    ref = args.reference if args.reference is not None else weights[len(weights) // 2]
    ref_pair = next((p for p in pairs if p[0] == ref), None)
    if ref_pair is None:
        raise ValueError(f"--reference {ref} is not a candidate weight bit-width ({weights})")
    n_img = sum(int(x.shape[0]) for x, _ in batches)
    print(f"measuring loss increases: {len(pairs) - 1} candidate(s) x {len(quantized_layers(model))} layers on {n_img} images of {name} around uniform {ref_pair}", flush=True)
    return loss_deltas(model, batches, pairs, reference=ref_pair, recal_batches=recal)


def _rerank(args: argparse.Namespace, model: Any, meta: dict[str, Any], problem: SearchProblem, budgets: list[Any]) -> tuple[SearchResult, float]:
    """``--rerank K``: the K best ILP configurations, each measured as a whole; the lowest loss wins."""
    from ..search.measured import config_losses, rerank

    # the same seeded permutation as the loss deltas, after their images: disjoint from them
    skip = args.samples if args.objective == "loss" else 0
    batches = _text_batches(args, meta, args.rerank_samples, skip=skip)
    if batches is None:
        name, root, extra = _calibration(args, meta, "--rerank measures each proposal's loss")
        batches, _ = labelled_batches(name, root, extra, "train", args.rerank_samples, 128, seed=1, skip=skip)
    else:
        name, root, extra = "shakespeare", None, meta["extra"]
    recal = _recal_batches(args, name, root, extra)
    props = problem.solve_k_best(budgets, args.rerank)
    n_img = sum(int(x.shape[0]) for x, _ in batches)
    print(f"re-ranking {len(props)} ILP proposal(s) by measured loss on {n_img} held-out images of {name}"
          f"{' (BN re-estimated for each)' if recal else ''}:", flush=True)
    chosen, losses = rerank(model, props, batches, recal_batches=recal)
    for rank, (r, loss) in enumerate(zip(props, losses), 1):
        print(f"  #{rank:<3} objective {r.objective:>11.5g}  measured loss {loss:.5f}  BOPs/W8A8 {r.summary['rel_bops_w8a8']:.4f}", flush=True)
    for u in _uniforms(problem):  # for reference: would uniform do better?
        if all(problem.fits(u.config, b) for b in budgets):
            print(f"  {u.method.replace('uniform-', 'uniform W')} (reference, not a proposal): measured loss {config_losses(model, [u.config], batches, recal_batches=recal)[0]:.5f}", flush=True)
            break
    best = next(i for i, r in enumerate(props) if r is chosen)
    chosen.method = f"ilp-rerank{len(props)}"
    print(f"chose proposal #{best + 1} (measured loss {losses[best]:.5f}; ILP optimum {losses[0]:.5f})", flush=True)
    return chosen, losses[best]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search", help="choose per-layer bit-widths for a budget (ILP)",
        description="Optimise a per-layer sensitivity objective (Hessian-weighted rounding error by default, or measured loss increases) "
        "under a budget with an integer linear program "
        "(SciPy milp / HiGHS). Budgets: avg-bits=B, wavg-bits=B, bytes=X, bops=X; bytes/bops values <= 1 "
        "(or with an x or % suffix) are relative to all-8-bit / all-W8A8 (bops=0.5@w8a16 for W8A16). "
        "Full-precision layers are outside every budget.",
    )
    p.add_argument("checkpoint", help="an integer checkpoint written by bitswitch (a multi-precision supernet)")
    p.add_argument("--hessian", default=None, help="trace JSON from `bitswitch hessian` (default: CKPT with .hessian.json)")
    p.add_argument("--budget", action="append", default=[], help="a budget; repeat for several at once")
    p.add_argument("--sweep", default=None, help="Pareto sweep: KIND=V1,V2,... or KIND=LO:HI:N (e.g. bops=0.1:1:10)")
    p.add_argument("--bits", default=None, help="candidate weight bit-widths, e.g. 4,3,2 (default: the checkpoint's)")
    p.add_argument("--act", default="tied", type=_act, help="activation bits: tied (= weight bits, default) or a fixed bit-width")
    p.add_argument(
        "--objective", default="noise", choices=OBJECTIVES,
        help="noise (default): min Σ(t/n)·‖ΔW‖², Hessian trace times each layer's real rounding error (data-free, instant). "
        "loss: min Σ_l Δloss_l, each layer's loss increase measured on labelled training images with only that layer at the "
        "candidate (weights and activations), around the uniform middle precision; needs data (--data, or the dataset the "
        "checkpoint names) and minutes. bits: max Σ(t/n)·b (the paper's objective). Measured on 10,000 test images of three "
        "supernets: noise ahead of loss in 7 of 8 paired comparisons (+0.22 points on average), both far above bits; docs/search.md",
    )
    p.add_argument("--data", default=None, help="--objective loss: dataset name (fashion_mnist, cifar10, digits) or folder; default: the checkpoint's")
    p.add_argument("--dataset", default=None, help="--objective loss: dataset name when --data is a folder the checkpoint does not name")
    p.add_argument("--data-root", default=None, help="--objective loss: dataset folder when --data is a name")
    p.add_argument("--samples", type=COUNT, default=4096, help="--objective loss: labelled training images per measurement (default 4096: "
                   "one-layer differences are small, and 1,024 images measured worse)")
    p.add_argument("--recal-samples", type=NON_NEGATIVE, default=256, help="--objective loss: images for BN re-estimation of every measured configuration (0: off; default 256)")
    p.add_argument("--reference", type=BITS, default=None, help="--objective loss: the uniform bit-width the other layers keep while one is measured (default: the middle candidate)")
    p.add_argument(
        "--rerank", type=NON_NEGATIVE, default=0, metavar="K",
        help="take the K best distinct ILP configurations (no-good cuts) and return the one whose measured loss, as a whole "
        "configuration with BN re-estimated, is lowest: the objectives add per-layer effects, which do not add up exactly. "
        "Needs data like --objective loss; uses training images disjoint from the loss deltas' (0: off, the default; "
        "a single --budget only). Try 8-16",
    )
    p.add_argument("--rerank-samples", type=COUNT, default=4096, help="--rerank: labelled training images to measure each proposal on (default 4096)")
    p.add_argument("--threads", type=THREADS, default=0, help="torch threads (0: torch default)")
    p.add_argument("--pin", action="append", default=[], help="fix a layer: NAME=B or NAME=W,A (repeatable)")
    p.add_argument("--input-shape", default=None, help="one sample's shape for MACs, e.g. 3,32,32 (default: from the checkpoint or trace file)")
    p.add_argument("--baselines", action="store_true", help="also report uniform, greedy and random configurations at the same budget")
    p.add_argument("--random", type=NON_NEGATIVE, default=20, help="random configurations per budget for --baselines (default 20)")
    p.add_argument("--out", default=None, help="precision file for a single budget (default: subnet.json); JSON of all points for --sweep "
                   "(default: pareto.json in --out-dir, or in the current folder)")
    p.add_argument("--out-dir", default=None, help="--sweep: write pareto.json, the Pareto plot pareto.png and one precision file per "
                   "Pareto point here (default: pareto.json and pareto.png in the current folder, no precision files)")
    add_model_args(p)
    p.set_defaults(func=run)


def _text_batches(args: argparse.Namespace, meta: dict[str, Any], samples: int, skip: int) -> Any:
    """A language model's training windows (seeded, disjoint for disjoint ``skip``), or None for other models."""
    info = language_model(meta.get("extra") or {})
    return None if info is None else text_batches(args, info, "train", samples, 64, seed=1, skip=skip)


def _example(args: argparse.Namespace, meta: dict[str, Any], trace_doc: dict[str, Any]) -> Any:
    """What the model runs on to count MACs: a window of token ids for a language model, else an input shape."""
    info = language_model(meta.get("extra") or {})
    if info is not None:
        import torch

        return torch.zeros(1, info.context, dtype=torch.long)
    return _shape(args, meta, trace_doc)


def _shape(args: argparse.Namespace, meta: dict[str, Any], trace_doc: dict[str, Any]) -> list[int]:
    raw = args.input_shape or meta["extra"].get("input_shape") or trace_doc.get("input_shape")
    if not raw:
        raise ValueError("unknown input shape: pass --input-shape C,H,W (needed to count MACs)")
    from ..export.schema import input_shape

    return input_shape(raw, "--input-shape" if args.input_shape else "the input shape of the checkpoint or trace file")


MAX_SWEEP_POINTS = 1000  # each point is one ILP solve


def _act(text: str) -> str | int:
    if text == "tied":
        return text
    try:
        return BITS(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be 'tied' or a bit-width in [2, 16], got {text!r}") from None


def _sweep_values(text: str) -> tuple[str, list[float]]:
    kind, values = _parse_sweep(text)
    if not values or len(values) > MAX_SWEEP_POINTS or not all(math.isfinite(v) for v in values):
        raise ValueError(f"--sweep {text!r}: needs 1 to {MAX_SWEEP_POINTS} finite values, got {len(values)}")
    return kind, values


def _parse_sweep(text: str) -> tuple[str, list[float]]:
    kind, sep, vals = text.partition("=")
    if not sep:
        raise ValueError(f"malformed --sweep {text!r}; expected KIND=V1,V2,... or KIND=LO:HI:N")
    kind = parse_budget(f"{kind}=1").kind
    if ":" in vals:
        try:
            lo, hi, n = vals.split(":")
            lo_f, hi_f, n_i = float(lo), float(hi), int(n)
        except ValueError:
            raise ValueError(f"malformed --sweep range {vals!r}; expected LO:HI:N") from None
        if not 1 <= n_i <= MAX_SWEEP_POINTS:
            raise ValueError(f"--sweep {text!r}: N must be 1 to {MAX_SWEEP_POINTS} points, got {n_i}")
        if n_i < 2:
            return kind, [lo_f]
        return kind, [lo_f + (hi_f - lo_f) * i / (n_i - 1) for i in range(n_i)]
    try:
        return kind, [float(v) for v in vals.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"malformed --sweep values {vals!r}") from None


def _pins(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        name, sep, val = item.rpartition("=")
        if not sep or not name:
            raise ValueError(f"malformed --pin {item!r}; expected NAME=B or NAME=W,A")
        parts = [int(v) for v in val.split(",")]
        out[name] = parts[0] if len(parts) == 1 else (parts[0], parts[1])
    return out


def _uniforms(problem: SearchProblem) -> list[SearchResult]:
    """Every uniform precision all layers support, from the highest weight bits down."""
    out = []
    for w in sorted({p[0] for c in problem.candidates for p in c}, reverse=True):
        try:
            out.append(uniform(problem, w))
        except ValueError:
            continue
    return out


COLUMNS = ["method", "objective", "avg-bits", "wavg-bits", "bytes", "BOPs/W8A8", "BOPs/W8A16", "note"]


def _row(r: SearchResult, note: str = "") -> list[str]:
    s = r.summary
    return [r.method, f"{r.objective:.5g}", f"{s['avg_bits']:.3f}", f"{s['wavg_bits']:.3f}", f"{s['quantized_bytes']:,.0f}",
            f"{s['rel_bops_w8a8']:.4f}", f"{s['rel_bops_w8a16']:.4f}", note]


def run(args: argparse.Namespace) -> int:
    if not args.budget and not args.sweep:
        raise ValueError("give --budget KIND=VALUE (e.g. --budget avg-bits=3) or --sweep KIND=LO:HI:N")
    sweep = _sweep_values(args.sweep) if args.sweep else None  # bad values fail before any work
    if args.rerank and args.sweep:
        raise ValueError("--rerank applies to a --budget search, not to --sweep (it measures K configurations per budget)")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    trace_path = Path(args.hessian) if args.hessian else default_trace_path(args.checkpoint)
    traces = load_traces(trace_path)
    trace_doc = json.loads(trace_path.read_text())
    warning = convergence_warning(traces)
    if warning:
        print(f"warning: {trace_path}: {warning}; the search uses these estimates as they are "
              "(for firmer ones rerun bitswitch hessian with a higher --max-iter)", file=sys.stderr)
    model, meta = load_model(args, args.checkpoint)
    costs = layer_costs(model, _example(args, meta, trace_doc))
    bits = [int(b) for b in args.bits.split(",")] if args.bits else list(meta["quant_config"]["bits"])
    problem = SearchProblem(
        costs, sensitivity(traces), bits, act=args.act, objective=args.objective,
        noise=weight_noise(model, bits) if args.objective == "noise" else None, pinned=_pins(args.pin),
        loss_delta=_loss_deltas(args, model, meta, bits, args.act) if args.objective == "loss" else None,
    )
    # the recipe eval --config and export --config follow to re-estimate the subnet's BatchNorms
    extra = {"checkpoint": str(args.checkpoint), "hessian": str(trace_path), "objective": args.objective, RECIPE_KEY: BNRecipe().as_dict()}
    if args.sweep:
        kind, values = sweep
        results = problem.sweep(kind, values)
        if not results:
            raise ValueError(f"no value of the sweep {args.sweep} is feasible; the smallest feasible is "
                             f"{parse_budget(f'{kind}={values[0]}').describe(problem.smallest_feasible(parse_budget(f'{kind}={values[0]}')))}")
        front = pareto_front(results)
        uniforms = _uniforms(problem)
        print_table(COLUMNS, [_row(r, f"{r.budgets[0]}  ({r.solve_seconds * 1e3:.1f} ms)") for r in front]
                    + [_row(u, "reference") for u in uniforms])
        folder = Path(args.out_dir or ".")
        folder.mkdir(parents=True, exist_ok=True)
        out = Path(args.out) if args.out else folder / "pareto.json"
        doc = {**extra, "sweep": args.sweep, "points": [r.as_dict() for r in front], "uniform": [u.as_dict() for u in uniforms]}
        atomic_write_bytes(out, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=2)))
        plot = plot_sweep(front, uniforms, out.with_suffix(".png"), args.objective)
        if args.out_dir:
            for i, r in enumerate(front):
                write_precision_file(folder / f"subnet_{i:02d}.json", r.config, budget=r.budgets, **extra, **r.summary)
        print(f"wrote {out}, {plot}" + (f" and {len(front)} precision files in {args.out_dir}" if args.out_dir else ""))
        return 0
    budgets = [parse_budget(b) for b in args.budget]
    if args.rerank:
        best, measured = _rerank(args, model, meta, problem, budgets)
        extra["rerank"] = {"k": args.rerank, "samples": args.rerank_samples, "measured_loss": measured}
    else:
        best = problem.solve(budgets)
    rows = [_row(best, f"({best.solve_seconds * 1e3:.1f} ms)")]
    if args.baselines:
        rows += [_row(u) for u in _uniforms(problem) if all(problem.fits(u.config, b) for b in budgets)]
        for b in budgets:
            rows.append(_row(greedy(problem, b), f"({b})"))
            rs = random_at_cost(problem, b, args.random)
            med = statistics.median(r.objective for r in rs)
            rows.append(["random-median", f"{med:.5g}", "", "", "", "", "", f"over {len(rs)} configurations within 5% below {b}"])
    print_table(COLUMNS, rows)
    out = Path(args.out or "subnet.json")
    write_precision_file(out, best.config, budget=[str(b) for b in budgets], **extra, **best.summary)
    print(f"wrote {out}; evaluate it with: bitswitch eval {args.checkpoint} --config {out}")
    return 0
