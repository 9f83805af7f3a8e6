"""Search on an existing multi-precision checkpoint or supernet (no retraining): ILP objectives vs uniform
vs random configurations at the cost of one uniform precision, every configuration BN re-estimated.

For a jointly trained model that another run produced (e.g. ``runs/cifar10_resnet20_joint``) when
there is no CPU time for a HASB phase: it shows what the search objectives do on a supernet that
was trained on uniform configurations only.

    python benchmarks/search_checkpoint.py runs/cifar10_resnet20_joint/best.safetensors --dataset cifar10 --at 4

It also runs on a HASB supernet saved by ``search_pareto.py --save PREFIX`` (``--traces
PREFIX.hessian.json`` reuses its Hessian traces), and compares budget kinds: at the BOPs, the
model size (``bytes``), the plain average bit-width, or all of them at once (``bytes+bops``) of the
uniform configuration, with activations tied to weights (``--act tied``), fixed (``--act 3``) or
searched independently (``--act untied``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import md_table, saved_supernet, supernet_bits, write_results

from bitswitch.cost import layer_costs
from bitswitch.search import (
    SearchProblem,
    hessian_traces,
    load_traces,
    random_at_cost,
    sensitivity,
    weight_noise,
)
from bitswitch.search.evaluate import correct_per_image as correct
from bitswitch.search.evaluate import paired_difference
from bitswitch.search.ilp import candidate_pairs
from bitswitch.search.measured import loss_deltas, rerank


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--at", type=int, default=4, help="compare at the cost of this uniform bit-width")
    ap.add_argument("--test-subset", type=int, default=2000)
    ap.add_argument("--loss-samples", type=int, default=2048)
    ap.add_argument("--recal-samples", type=int, default=256)
    ap.add_argument("--hessian-samples", type=int, default=256)
    ap.add_argument("--random", type=int, default=6)
    ap.add_argument("--traces", default=None, help="Hessian trace JSON to reuse (default: estimate on --hessian-samples images)")
    ap.add_argument("--budgets", default="bops", help="comma-separated budget kinds at the uniform cost: bops, bytes, avg-bits, or a '+' combination")
    ap.add_argument("--act", default="tied", help="activation bits: tied (a = w), a fixed bit-width, or untied (every (w, a) pair)")
    ap.add_argument("--objectives", default="bits,noise,loss", help="ILP objectives to compare")
    ap.add_argument("--rerank", type=int, default=0, help="also re-rank each objective's K best ILP configurations by the measured "
                    "loss of the whole configuration on held-out training images (as `bitswitch search --rerank K`); 0: off")
    ap.add_argument("--rerank-samples", type=int, default=4096, help="--rerank: labelled training images, disjoint from the loss deltas'")
    ap.add_argument("--note", default=None, help="paragraph placed under the title of the results file")
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model, test_b, shape, train_batches = saved_supernet(args.checkpoint, args.dataset, args.test_subset)
    recal_b = train_batches(args.recal_samples, 128, seed=2)
    loss_b = train_batches(args.loss_samples, 256, seed=5)
    rerank_b = train_batches(args.rerank_samples, 256, seed=5, skip=args.loss_samples) if args.rerank else None
    hess_b = train_batches(args.hessian_samples, 128, seed=3)
    bits = supernet_bits(model)
    timings = {}
    t = time.perf_counter()
    sens = sensitivity(load_traces(args.traces) if args.traces else hessian_traces(model, hess_b, tol=0.1, max_iter=10))
    timings["hessian_s"] = time.perf_counter() - t
    costs = layer_costs(model, shape)
    t = time.perf_counter()
    act = args.act if args.act in ("tied", "untied") else int(args.act)
    pairs = [(w, a) for w in bits for a in bits] if act == "untied" else candidate_pairs(bits, act)
    objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
    deltas = loss_deltas(model, loss_b, pairs, reference=(args.at, args.at), recal_batches=recal_b) if "loss" in objectives else None
    timings["loss_deltas_s"] = time.perf_counter() - t
    make = {
        "bits": lambda: SearchProblem(costs, sens, bits, act=pairs),
        "noise": lambda: SearchProblem(costs, sens, bits, act=pairs, objective="noise", noise=weight_noise(model, bits)),
        "loss": lambda: SearchProblem(costs, sens, bits, act=pairs, objective="loss", loss_delta=deltas),
    }
    problems = {o: make[o]() for o in objectives}
    pb = SearchProblem(costs, sens, bits, act=pairs)
    u = pb.result({n: (args.at, args.at) for n in pb.names}, f"uniform-{args.at}")
    at_uniform = {"bops": f"bops={round(u.summary['rel_bops_w8a8'], 6)}x", "bytes": f"bytes={u.summary['quantized_bytes']:g}",
                  "avg-bits": f"avg-bits={args.at}", "wavg-bits": f"wavg-bits={args.at}"}
    base = correct(model, u.config, test_b, recal_b)
    rows = [{"method": f"uniform W{args.at}A{args.at}", "budget": "", **_costs(u), "acc": 100 * float(base.float().mean())}]
    verdict: dict = {"uniform": rows[0]["acc"]}
    for kind in [k.strip() for k in args.budgets.split(",") if k.strip()]:
        budget = [at_uniform[k] for k in kind.split("+")]
        def add(method: str, r) -> None:
            """Evaluate ``r`` against uniform on the same images; one table row and one verdict entry."""
            c = correct(model, r.config, test_b, recal_b)
            diff, se = paired_difference(c, base)
            rows.append({"method": method, "budget": kind, **_costs(r), "acc": 100 * float(c.float().mean()),
                         "diff_vs_uniform": diff, "paired_se": se, "config": {k: list(v) for k, v in r.config.items()}})
            verdict[f"{kind} {method}"] = [round(rows[-1]["acc"], 2), round(diff, 2), round(se, 2)]
            print(rows[-1], flush=True)

        for obj, p in problems.items():
            add(f"ilp-{obj}", p.solve(budget))
            if args.rerank:
                t = time.perf_counter()
                chosen, _ = rerank(model, p.solve_k_best(budget, args.rerank), rerank_b, recal_batches=recal_b)
                timings[f"rerank_{kind}_{obj}_s"] = time.perf_counter() - t
                add(f"ilp-{obj}-rerank{args.rerank}", chosen)
        if len(budget) == 1 and args.random:
            rnd = []
            for r in random_at_cost(pb, budget[0], args.random, seed=0):
                rnd.append(100 * float(correct(model, r.config, test_b, recal_b).float().mean()))
                rows.append({"method": "random", "budget": kind, **_costs(r), "acc": rnd[-1]})
            verdict[f"{kind} random median/max"] = [round(statistics.median(rnd), 2), round(max(rnd), 2)]
    timings["total_s"] = time.perf_counter() - t0
    name = args.name or f"search_checkpoint_{args.dataset}"
    table = [{k: (round(v, 4) if k.startswith("rel_") else round(v, 2)) if isinstance(v, float) else v for k, v in r.items() if k != "config"} for r in rows]
    md = [
        f"# Search on a saved checkpoint ({args.dataset}, no retraining)", "",
        (f"`{args.checkpoint}` ({{{','.join(map(str, bits))}}}; "
         f"no retraining). Every configuration BN re-estimated on {args.recal_samples} training images; accuracy on {args.test_subset} "
         f"test images (binomial SE of one accuracy ≈ {100 * (0.78 * 0.22 / args.test_subset) ** 0.5:.1f} points; `paired_se` is the "
         f"standard error of the difference to uniform on the same images). `loss` deltas on {args.loss_samples} training images "
         f"around uniform {args.at}-bit; Hessian traces " + (f"from `{args.traces}`." if args.traces else f"on {args.hessian_samples} images (at most 10 iterations).")
         + f" Activation bits: {args.act}."
         + (f" `-rerank{args.rerank}` rows: the objective's {args.rerank} best ILP configurations re-ranked by the measured loss of "
            f"each whole configuration on {args.rerank_samples} other training images (BN re-estimated as above)." if args.rerank else "")), "",
        f"## At the cost of uniform {args.at}-bit", "",
        "Each ILP row is solved under the named budget set to uniform's value of it (`bytes` counts quantized weights only).", "",
        md_table(table, ["method", "budget", "rel_bops", "rel_bytes", "avg_bits", "acc", "diff_vs_uniform", "paired_se"]), "",
        f"Verdict: `{verdict}`", "", "## Times (s)", "", md_table([{k: round(v, 1) for k, v in timings.items()}]),
    ]
    if args.note:
        md[1:1] = ["", args.note]
    write_results(name, {"args": vars(args), "verdict": verdict, "rows": rows, "timings": timings,
                         "loss_deltas": {k: {f"{w},{a}": v for (w, a), v in d.items()} for k, d in (deltas or {}).items()}}, "\n".join(md))


def _costs(r) -> dict:
    return {"rel_bops": r.summary["rel_bops_w8a8"], "rel_bytes": r.summary["rel_bytes_w8"], "avg_bits": r.summary["avg_bits"]}


if __name__ == "__main__":
    main()
