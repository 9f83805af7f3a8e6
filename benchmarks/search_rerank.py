"""ILP proposals re-ranked by the measured loss of the whole configuration, on the saved v3 supernet.

The `loss` objective adds one-layer loss increases; they do not add up exactly, so the ILP's single
optimum of the additive model need not be the best real configuration. Here the ILP returns its K
best distinct configurations at the cost of uniform 3-bit (`SearchProblem.solve_k_best`), each
one's mean cross-entropy is measured as a whole configuration (BN re-estimated, as in evaluation)
on training-split images that neither trained the supernet nor measured the deltas
(`bitswitch.search.rerank`), and the lowest wins. Test accuracy of every proposal is reported for
the reader only; the choice never sees test images.

Data, exactly as `benchmarks/search_pareto.py` v3 (seed 0): supernet trained on a 30,000-image
subset of the training split; loss deltas on 4,096 of those (around uniform 3-bit); BN
re-estimation on 256 training images; 5,000 test images. Re-ranking images: the training-split
images *outside* the 30,000 (never trained on), two disjoint sets (A selects, B checks).

    python benchmarks/search_rerank.py /tmp/s4/fm_v3b.safetensors --k 16
    python benchmarks/search_rerank.py --render benchmarks/results/search_rerank_fashion_mnist.json --note reading.md  # re-render only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import md_table, write_results

import bitswitch
from bitswitch.cost import layer_costs
from bitswitch.data import DATASET_STATS, ArrayDataset, TensorLoader, load_dataset
from bitswitch.search import (
    SearchProblem,
    load_traces,
    random_at_cost,
    sensitivity,
    uniform,
    weight_noise,
)
from bitswitch.search.evaluate import correct_per_image as correct
from bitswitch.search.evaluate import paired_difference as paired
from bitswitch.search.measured import config_losses, loss_deltas

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def perm(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def take(ds: ArrayDataset, idx: torch.Tensor) -> ArrayDataset:
    return ArrayDataset(ds.images[idx], ds.labels[idx], ds.classes)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--hessian", default=None)
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--train-subset", type=int, default=30000, help="the subset the supernet was trained on (search_pareto seed 0)")
    ap.add_argument("--test-subset", type=int, default=5000)
    ap.add_argument("--loss-samples", type=int, default=4096)
    ap.add_argument("--recal-samples", type=int, default=256)
    ap.add_argument("--rerank-samples", type=int, default=4096, help="per re-ranking set (A selects, B checks)")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--objectives", default="loss,noise", help="ILP objectives whose K best are proposed")
    ap.add_argument("--random", type=int, default=10)
    ap.add_argument("--at", type=int, default=3)
    ap.add_argument("--name", default="search_rerank_fashion_mnist")
    ap.add_argument("--note", default=None, help="paragraph placed at the top of the results file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    ds, seed = args.dataset, 0
    st = DATASET_STATS[ds]
    full_train, full_test = load_dataset(ds, DATA / ds, "train"), load_dataset(ds, DATA / ds, "test")
    loader = lambda d, bs: list(TensorLoader(d, bs, shuffle=False, mean=st["mean"], std=st["std"]))
    p_train = perm(len(full_train), seed)
    train = take(full_train, p_train[: args.train_subset])
    held = p_train[args.train_subset:]  # never trained on
    test_b = loader(take(full_test, perm(len(full_test), seed + 1)[: args.test_subset]), 500)
    recal_b = loader(take(full_train, perm(len(full_train), seed + 2)[: args.recal_samples]), 128)
    loss_b = loader(take(train, perm(len(train), seed + 5)[: args.loss_samples]), 128)
    ph = held[perm(len(held), seed + 7)]
    rr_a = loader(take(full_train, ph[: args.rerank_samples]), 256)
    rr_b = loader(take(full_train, ph[args.rerank_samples: 2 * args.rerank_samples]), 256)

    model = bitswitch.load(args.checkpoint)
    traces = load_traces(args.hessian or args.checkpoint.replace(".safetensors", ".hessian.json"))
    sens = sensitivity(traces)
    bits = (4, 3, 2)
    costs = layer_costs(model, tuple(train.images.shape[1:]))
    pb = SearchProblem(costs, sens, bits)
    u = uniform(pb, args.at)
    budget = f"bops={round(u.summary['rel_bops_w8a8'], 6)}x"
    t = time.perf_counter()
    deltas = loss_deltas(model, loss_b, bits, reference=args.at, recal_batches=recal_b)
    timings["loss_deltas_s"] = time.perf_counter() - t
    problems = {"loss": SearchProblem(costs, sens, bits, objective="loss", loss_delta=deltas),
                "noise": SearchProblem(costs, sens, bits, objective="noise", noise=weight_noise(model, bits))}
    pl = problems["loss"]

    base = correct(model, u.config, test_b, recal_b)
    la, lb = (config_losses(model, [u.config], r, recal_batches=recal_b)[0] for r in (rr_a, rr_b))
    rows = [{"method": f"uniform W{args.at}A{args.at}", "rank": "", "rel_bops": u.summary["rel_bops_w8a8"], "avg_bits": u.summary["avg_bits"],
             "pred_dloss": 0.0, "loss_A": la, "loss_B": lb, "acc": 100 * float(base.float().mean()), "diff": 0.0, "paired_se": 0.0,
             "config": {k: v[0] for k, v in u.config.items()}}]
    print(rows[-1], flush=True)
    t = time.perf_counter()
    for obj in args.objectives.split(","):
        props = problems[obj].solve_k_best(budget, args.k)
        for i, r in enumerate(props):
            la, lb = (config_losses(model, [r.config], rr, recal_batches=recal_b)[0] for rr in (rr_a, rr_b))
            c = correct(model, r.config, test_b, recal_b)
            d, se = paired(c, base)
            rows.append({"method": f"ilp-{obj}", "rank": i + 1, "rel_bops": r.summary["rel_bops_w8a8"], "avg_bits": r.summary["avg_bits"],
                         "pred_dloss": -pl.objective_of(r.config), "loss_A": la, "loss_B": lb, "acc": 100 * float(c.float().mean()), "diff": d, "paired_se": se,
                         "config": {k: v[0] for k, v in r.config.items()}})
            print({k: v for k, v in rows[-1].items() if k != "config"}, flush=True)
    timings["proposals_s"] = time.perf_counter() - t
    t = time.perf_counter()
    rnd = []
    for r in random_at_cost(pb, budget, args.random, seed=seed):
        la = config_losses(model, [r.config], rr_a, recal_batches=recal_b)[0]
        c = correct(model, r.config, test_b, recal_b)
        d, se = paired(c, base)
        rnd.append(100 * float(c.float().mean()))
        rows.append({"method": "random", "rank": "", "rel_bops": r.summary["rel_bops_w8a8"], "avg_bits": r.summary["avg_bits"], "pred_dloss": -pl.objective_of(r.config),
                     "loss_A": la, "acc": rnd[-1], "diff": d, "paired_se": se, "config": {k: v[0] for k, v in r.config.items()}})
    timings["random_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_start

    doc = {"args": vars(args), "rows": rows, "timings": timings, "loss_deltas": {k: {f"{w},{a}": v for (w, a), v in d.items()} for k, d in deltas.items()}}
    render(doc, args.name, args.note)


def _spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b)[0])


def render(doc: dict, name: str, note: str | None) -> None:
    """Selections, verdict and markdown from the measured rows (no model evaluation)."""
    args, rows, timings = doc["args"], doc["rows"], doc["timings"]
    objectives = args["objectives"].split(",")
    for r in rows:
        if "loss_B" in r:
            r["loss_AB"] = (r["loss_A"] + r["loss_B"]) / 2  # equal-sized disjoint sets: the loss on both
    uni = rows[0]
    sel = []
    for obj in objectives + ["+".join(objectives)]:
        methods = [f"ilp-{o}" for o in (objectives if "+" in obj else [obj])]
        pool_all = [r for r in rows if r["method"] in methods]
        for kk in sorted({1, 4, 8, args["k"]}):
            pool = [r for r in pool_all if r["rank"] <= kk]
            if not pool:
                continue
            pick = {s: min(pool, key=lambda r: r[f"loss_{s}"]) for s in ("A", "B", "AB")}
            best = pick["A"]
            sel.append({"pool": obj, "K": kk, "chosen (A)": f"{best['method']} #{best['rank']}", "loss_A": round(best["loss_A"], 4),
                        "uniform_loss_A": round(uni["loss_A"], 4), "acc": round(best["acc"], 2), "diff": round(best["diff"], 2),
                        "paired_se": round(best["paired_se"], 2), "chosen (B)": f"{pick['B']['method']} #{pick['B']['rank']}", "acc (B)": round(pick["B"]["acc"], 2),
                        "chosen (A+B)": f"{pick['AB']['method']} #{pick['AB']['rank']}", "acc (A+B)": round(pick["AB"]["acc"], 2),
                        "uniform lower (A, B, A+B)": ", ".join("yes" if uni[f"loss_{s}"] < pick[s][f"loss_{s}"] else "no" for s in ("A", "B", "AB"))})
    rnd = [r["acc"] for r in rows if r["method"] == "random"]
    main_sel = next(s for s in sel if s["pool"] == objectives[0] and s["K"] == args["k"])
    props = [r for r in rows if r["method"].startswith("ilp")]
    agreement = {}
    for label, pool in [*((m, [r for r in props if r["method"] == f"ilp-{m}"]) for m in objectives), ("all proposals", props)]:
        agreement[label] = {"spearman_lossA_lossB": round(_spearman([r["loss_A"] for r in pool], [r["loss_B"] for r in pool]), 2),
                            "spearman_lossAB_acc": round(_spearman([r["loss_AB"] for r in pool], [r["acc"] for r in pool]), 2),
                            "spearman_pred_lossAB": round(_spearman([r["pred_dloss"] for r in pool], [r["loss_AB"] for r in pool]), 2)}
    verdict = {"budget": f"bops={round(uni['rel_bops'], 6)}x", "uniform": round(uni["acc"], 2), "random_median": round(statistics.median(rnd), 2),
               "random_max": round(max(rnd), 2), "ilp_loss_optimum": round(next(r["acc"] for r in rows if r["method"] == f"ilp-{objectives[0]}" and r["rank"] == 1), 2),
               f"rerank_{objectives[0]}_K{args['k']}": {k: main_sel[k] for k in ("chosen (A)", "acc", "diff", "paired_se", "loss_A", "uniform_loss_A")},
               "goal_met": main_sel["acc"] > uni["acc"] and main_sel["acc"] > statistics.median(rnd)}
    print(json.dumps(verdict, indent=1), flush=True)
    r2 = lambda v: round(v, 2) if isinstance(v, float) else v
    table = [{k: (round(v, 4) if k in ("rel_bops", "pred_dloss", "loss_A", "loss_B", "loss_AB") and isinstance(v, float) else r2(v)) for k, v in r.items() if k != "config"} for r in rows]
    md = [
        "# ILP proposals re-ranked by measured whole-configuration loss (Fashion-MNIST v3 supernet)", "", *([note, ""] if note else []),
        (f"Supernet `{args['checkpoint']}` (the v3 run of `search_pareto_fashion_mnist_v3.md`); budget {verdict['budget']} (uniform W{args['at']}A{args['at']}). "
         f"`loss` deltas on {args['loss_samples']} training images (around uniform {args['at']}-bit, monotone), BN re-estimated on {args['recal_samples']} "
         f"training images for every configuration; K = {args['k']} best distinct ILP solutions per objective (no-good cuts, exact solves). "
         f"`loss_A`/`loss_B`: mean cross-entropy of the whole configuration on two disjoint sets of {args['rerank_samples']} training-split images "
         f"outside the {args['train_subset']} the supernet was trained on (A selects, B checks the choice; A+B: both); `pred_dloss`: the additive model's "
         f"predicted loss increase over uniform {args['at']}-bit. Accuracy on {args['test_subset']} test images (SE of one accuracy ≈ 0.45 points); `diff` "
         "and `paired_se`: difference to uniform on the same images and its standard error. One seed."), "",
        "## Verdict", "", "```", json.dumps(verdict, indent=2), "```", "",
        "## Selections (re-rank the first K proposals of a pool by measured loss)", "", md_table(sel), "",
        "## Does the measurement rank reproducibly? (Spearman rank correlations)", "", md_table([{"pool": k, **v} for k, v in agreement.items()]), "",
        "## Every configuration", "", md_table(table, ["method", "rank", "rel_bops", "avg_bits", "pred_dloss", "loss_A", "loss_B", "loss_AB", "acc", "diff", "paired_se"]), "",
        "## Times (s, one shared CPU thread)", "", md_table([{k: round(v, 1) for k, v in timings.items()}]),
    ]
    doc = {**doc, "verdict": verdict, "selections": sel, "rank_agreement": agreement}
    write_results(name, doc, "\n".join(md))


def main_or_render() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--render":
        # re-render a results JSON (e.g. with a --note written after the run); keeps its command, date and machine
        ap = argparse.ArgumentParser()
        ap.add_argument("--render", required=True)
        ap.add_argument("--note", default=None, help="file whose text goes at the top")
        a = ap.parse_args()
        doc = json.loads(Path(a.render).read_text())
        note = Path(a.note).read_text().strip() if a.note else doc["args"].get("note")
        doc["args"]["note"] = note
        render(doc, Path(a.render).stem, note)
    else:
        main()


if __name__ == "__main__":
    main_or_render()
