"""Search on an existing multi-precision checkpoint (no HASB, no retraining): ILP objectives vs uniform
vs random configurations at the cost of one uniform precision, every configuration BN re-estimated.

For a jointly trained model that another run produced (e.g. ``runs/cifar10_resnet20_joint``) when
there is no CPU time for a HASB phase: it shows what the search objectives do on a supernet that
was trained on uniform configurations only.

    python benchmarks/search_checkpoint.py runs/cifar10_resnet20_joint/best.safetensors --dataset cifar10 --at 4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import md_table, write_results

import bitswitch
from bitswitch.cost import layer_costs
from bitswitch.search import (
    SearchProblem,
    hessian_traces,
    random_at_cost,
    sensitivity,
    uniform,
    weight_noise,
)
from bitswitch.search.evaluate import correct_per_image as correct
from bitswitch.search.evaluate import dataset_batches, paired_difference
from bitswitch.search.measured import loss_deltas

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--at", type=int, default=4, help="compare at the BOPs of this uniform bit-width")
    ap.add_argument("--test-subset", type=int, default=2000)
    ap.add_argument("--loss-samples", type=int, default=2048)
    ap.add_argument("--recal-samples", type=int, default=256)
    ap.add_argument("--hessian-samples", type=int, default=256)
    ap.add_argument("--random", type=int, default=6)
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model = bitswitch.load(args.checkpoint)
    extra = getattr(model, "bitswitch_extra", {}) or {}
    root = DATA / args.dataset
    mean, std = extra.get("mean"), extra.get("std")
    test_b, shape = dataset_batches(args.dataset, root, "test", args.test_subset, 500, seed=1, mean=mean, std=std)
    recal_b, _ = dataset_batches(args.dataset, root, "train", args.recal_samples, 128, seed=2, mean=mean, std=std)
    loss_b, _ = dataset_batches(args.dataset, root, "train", args.loss_samples, 256, seed=5, mean=mean, std=std)
    hess_b, _ = dataset_batches(args.dataset, root, "train", args.hessian_samples, 128, seed=3, mean=mean, std=std)
    bits = tuple(sorted({b for layer in bitswitch.quantized_layers(model).values() for b in layer.weight_quant.bits}, reverse=True))
    timings = {}
    t = time.perf_counter()
    sens = sensitivity(hessian_traces(model, hess_b, tol=0.1, max_iter=10))
    timings["hessian_s"] = time.perf_counter() - t
    costs = layer_costs(model, shape)
    t = time.perf_counter()
    deltas = loss_deltas(model, loss_b, bits, reference=args.at, recal_batches=recal_b)
    timings["loss_deltas_s"] = time.perf_counter() - t
    problems = {
        "bits": SearchProblem(costs, sens, bits),
        "noise": SearchProblem(costs, sens, bits, objective="noise", noise=weight_noise(model, bits)),
        "loss": SearchProblem(costs, sens, bits, objective="loss", loss_delta=deltas),
    }
    pb = problems["bits"]
    u = uniform(pb, args.at)
    budget = f"bops={round(u.summary['rel_bops_w8a8'], 6)}x"
    base = correct(model, u.config, test_b, recal_b)
    rows = [{"method": f"uniform W{args.at}A{args.at}", "rel_bops": u.summary["rel_bops_w8a8"], "acc": 100 * float(base.float().mean())}]
    for obj, p in problems.items():
        r = p.solve(budget)
        c = correct(model, r.config, test_b, recal_b)
        diff, se = paired_difference(c, base)
        rows.append({"method": f"ilp-{obj}", "rel_bops": r.summary["rel_bops_w8a8"], "avg_bits": r.summary["avg_bits"], "acc": 100 * float(c.float().mean()),
                     "diff_vs_uniform": diff, "paired_se": se,
                     "config": {k: v[0] for k, v in r.config.items()}})
        print(rows[-1], flush=True)
    rnd = []
    for r in random_at_cost(pb, budget, args.random, seed=0):
        rnd.append(100 * float(correct(model, r.config, test_b, recal_b).float().mean()))
        rows.append({"method": "random", "rel_bops": r.summary["rel_bops_w8a8"], "avg_bits": r.summary["avg_bits"], "acc": rnd[-1]})
    timings["total_s"] = time.perf_counter() - t0
    verdict = {"budget": budget, "uniform": rows[0]["acc"], "random_median": statistics.median(rnd), "random_max": max(rnd),
               **{r["method"]: r["acc"] for r in rows if r["method"].startswith("ilp")}}
    name = args.name or f"search_checkpoint_{args.dataset}"
    table = [{k: (round(v, 2) if isinstance(v, float) and k != "rel_bops" else (round(v, 4) if isinstance(v, float) else v)) for k, v in r.items() if k != "config"} for r in rows]
    md = [
        f"# Search on a jointly trained checkpoint ({args.dataset}, no HASB)", "",
        (f"`{args.checkpoint}` ({{{','.join(map(str, bits))}}}, trained by another session on uniform configurations only; no HASB phase, "
         f"no retraining). Every configuration BN re-estimated on {args.recal_samples} training images; accuracy on {args.test_subset} "
         f"test images (binomial SE of one accuracy ≈ {100 * (0.78 * 0.22 / args.test_subset) ** 0.5:.1f} points; `paired_se` is the "
         f"standard error of the difference to uniform on the same images). `loss` deltas on {args.loss_samples} training images "
         f"around uniform {args.at}-bit; Hessian traces on {args.hessian_samples} images (at most 10 iterations)."), "",
        f"## At the cost of uniform {args.at}-bit ({budget})", "", md_table(table, ["method", "rel_bops", "avg_bits", "acc", "diff_vs_uniform", "paired_se"]), "",
        f"Verdict: `{verdict}`", "", "## Times (s)", "", md_table([{k: round(v, 1) for k, v in timings.items()}]),
    ]
    write_results(name, {"args": vars(args), "verdict": verdict, "rows": rows, "timings": timings, "loss_deltas": {k: {f"{w},{a}": v for (w, a), v in d.items()} for k, d in deltas.items()}}, "\n".join(md))


if __name__ == "__main__":
    main()
