"""Accuracy vs BOPs on a saved supernet: ILP sweeps, uniform precisions and random configurations.

The Pareto picture of ``search_pareto.py`` without its training phases: for a supernet that a
``bitswitch train`` run saved (e.g. ``runs/cifar10_resnet20_432_hasb``), solve the ILP at a sweep of
BOPs budgets for each objective, evaluate every subnet, every uniform precision and random
configurations of the same costs on the same test images, with BN re-estimated on the same
training images for every configuration. Writes a table, the JSON rows and a plot.

    python benchmarks/search_pareto_checkpoint.py runs/cifar10_resnet20_432_hasb/best.safetensors \
        --dataset cifar10 --traces runs/cifar10_resnet20_432.hessian.json --points 9 --random 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, md_table, saved_supernet, supernet_bits, write_results
from search_pareto import _plot

from bitswitch.cost import layer_costs
from bitswitch.search import SearchProblem, load_traces, random_at_cost, sensitivity, weight_noise
from bitswitch.search.baselines import uniform
from bitswitch.search.evaluate import correct_per_image
from bitswitch.search.ilp import candidate_pairs
from bitswitch.search.measured import loss_deltas


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--traces", required=True, help="Hessian trace JSON (`bitswitch hessian`)")
    ap.add_argument("--objectives", default="noise,loss", help="ILP objectives to sweep")
    ap.add_argument("--points", type=int, default=9, help="BOPs budgets, evenly spaced between the lowest and highest uniform precision")
    ap.add_argument("--random", type=int, default=3, help="random configurations per budget")
    ap.add_argument("--test-subset", type=int, default=10000)
    ap.add_argument("--recal-samples", type=int, default=256)
    ap.add_argument("--loss-samples", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--note", default=None, help="paragraph placed under the title of the results file")
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, test_b, shape, train_batches = saved_supernet(args.checkpoint, args.dataset, args.test_subset)
    recal_b = train_batches(args.recal_samples, 128, seed=2)
    bits = supernet_bits(model)
    pairs = candidate_pairs(bits, "tied")
    costs = layer_costs(model, shape)
    sens = sensitivity(load_traces(args.traces))
    objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
    problems = {}
    if "noise" in objectives:
        problems["noise"] = SearchProblem(costs, sens, bits, act=pairs, objective="noise", noise=weight_noise(model, bits))
    if "loss" in objectives:
        loss_b = train_batches(args.loss_samples, 256, seed=5)
        mid = bits[len(bits) // 2]
        deltas = loss_deltas(model, loss_b, pairs, reference=(mid, mid), recal_batches=recal_b)
        problems["loss"] = SearchProblem(costs, sens, bits, act=pairs, objective="loss", loss_delta=deltas)
    if "bits" in objectives:
        problems["bits"] = SearchProblem(costs, sens, bits, act=pairs)
    base = SearchProblem(costs, sens, bits, act=pairs)

    def acc(config) -> float:
        return 100 * float(correct_per_image(model, config, test_b, recal_b).float().mean())

    rows = []
    for b in bits:
        u = uniform(base, b)
        rows.append({"method": f"uniform W{b}A{b}", "budget": "", "rel_bops": u.summary["rel_bops_w8a8"], "recal": acc(u.config)})
        print(rows[-1], flush=True)
    lo, hi = min(r["rel_bops"] for r in rows), max(r["rel_bops"] for r in rows)
    budgets = [lo + (hi - lo) * k / (args.points - 1) for k in range(args.points)] if args.points > 1 else [hi]
    for v in budgets:
        budget = f"bops={v:.6f}x"
        for obj, p in problems.items():
            r = p.solve(budget)
            rows.append({"method": f"ilp-{obj}", "budget": budget, "rel_bops": r.summary["rel_bops_w8a8"], "recal": acc(r.config),
                         "config": {k: list(c) for k, c in r.config.items()}})
            print({k: x for k, x in rows[-1].items() if k != "config"}, flush=True)
        if args.random and v > lo:
            for r in random_at_cost(base, budget, args.random, seed=round(v * 1e6)):
                rows.append({"method": "random", "budget": budget, "rel_bops": r.summary["rel_bops_w8a8"], "recal": acc(r.config)})
    name = args.name or f"search_pareto_checkpoint_{args.dataset}"
    plot = RESULTS / f"{name}.png"
    _plot(rows, "recal", bits, plot, f"{Path(args.checkpoint).parent.name}: {args.test_subset} test images, BN re-estimated")
    by_budget = []
    for v in budgets:
        budget = f"bops={v:.6f}x"
        row = {"budget (x W8A8 BOPs)": round(v, 4)}
        for obj in problems:
            row[f"ilp-{obj}"] = next(r["recal"] for r in rows if r["method"] == f"ilp-{obj}" and r["budget"] == budget)
        rnd = [r["recal"] for r in rows if r["method"] == "random" and r["budget"] == budget]
        if rnd:
            row["random median"] = statistics.median(rnd)
        fits = [r for r in rows if r["method"].startswith("uniform") and r["rel_bops"] <= v + 1e-9]
        if fits:
            best = max(fits, key=lambda r: r["rel_bops"])
            row["best uniform that fits"] = f"{best['method']} {best['recal']:.2f}"
        by_budget.append(row)
    total = time.perf_counter() - t0
    fmt = [{k: round(x, 2) if isinstance(x, float) else x for k, x in r.items()} for r in by_budget]
    md = [
        f"# Accuracy vs BOPs on a saved supernet ({args.dataset}, no retraining)", "",
        f"`{args.checkpoint}` ({{{','.join(map(str, bits))}}}), Hessian traces from `{args.traces}`; every configuration BN "
        f"re-estimated on the same {args.recal_samples} training images and evaluated on the same {args.test_subset} test images "
        f"(SE of one accuracy about {100 * (0.78 * 0.22 / args.test_subset) ** 0.5:.1f} points). Activation bits follow weight bits. "
        f"{args.random} random configurations per budget within 5 % below it. {total:.0f} s in all.", "",
        "| uniform | rel. BOPs | top-1 % |", "|---|---|---|",
        *[f"| {r['method']} | {r['rel_bops']:.4f} | {r['recal']:.2f} |" for r in rows if r["method"].startswith("uniform")], "",
        md_table(fmt, list(dict.fromkeys(k for r in fmt for k in r))), "", f"![accuracy vs BOPs]({plot.name})", "",
    ]
    if args.note:
        md[1:1] = ["", args.note]
    write_results(name, {"args": vars(args), "rows": rows, "by_budget": by_budget, "seconds": total}, "\n".join(md))


if __name__ == "__main__":
    main()
