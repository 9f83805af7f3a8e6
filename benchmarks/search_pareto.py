"""Accuracy vs relative BOPs: ILP-searched subnets, uniform precision, random and greedy configurations,
all evaluated on one HASB supernet without retraining; plus the BatchNorm comparison (switchable BN,
switchable BN re-estimated per configuration, transitional BN).

Reduced CPU budget (2 shared cores, one torch thread, < 15 min): a small model trained briefly on a
subset, in four short phases (FP32 -> joint multi-precision -> Hessian traces -> HASB), with a
minimal loop built on :func:`bitswitch.train.hasb.supernet_step` (plain Adam, no ALRS); accuracies
on a fixed random subset of the test set. Absolute accuracies are far below a full run; the
comparison between methods on the same supernet is the point.

    python benchmarks/search_pareto.py --dataset fashion_mnist --model preact_resnet20 --width 8

v3 (results/search_pareto_fashion_mnist_v3.md, ~45 min on one shared thread; add --save-joint/--load-joint
to re-run HASB and search on the same joint model):

    python benchmarks/search_pareto.py --train-subset 30000 --test-subset 5000 --fp-epochs 4 --joint-epochs 2 \
        --hasb-epochs 2 --hasb-warmup 0 --hasb-ramp 0.25 --hasb-pmax 0.8 --hessian-samples 512 \
        --loss-samples 4096 --random 10 --bn-modes recal --name search_pareto_fashion_mnist_v3
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, md_table, write_results

import bitswitch
from bitswitch.cost import layer_costs
from bitswitch.data import DATASET_STATS, ArrayDataset, TensorLoader, load_dataset
from bitswitch.models import build
from bitswitch.nn import to_transitional
from bitswitch.search import (
    SearchProblem,
    greedy,
    hessian_traces,
    random_at_cost,
    sensitivity,
    uniform,
    weight_noise,
)
from bitswitch.search.evaluate import accuracy, evaluate_config
from bitswitch.search.measured import loss_deltas
from bitswitch.train.hasb import (
    RouletteSampler,
    SwitchSchedule,
    supernet_plan,
    supernet_step,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LOG: list[str] = []


def log(msg: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    LOG.append(line)
    print(line, flush=True)


def subset(ds: ArrayDataset, n: int, seed: int) -> ArrayDataset:
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[: min(n, len(ds))]
    return ArrayDataset(ds.images[idx], ds.labels[idx], ds.classes)


def run_epochs(model, loader, epochs: int, lr: float, plan_fn, tag: str) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * len(loader)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    step, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        for x, y in loader:
            plan = plan_fn(step)
            if plan is None:
                model.train()
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
            else:
                supernet_step(model, x, y, opt, plan)
            sched.step()
            step += 1
    secs = time.perf_counter() - t0
    log(f"{tag}: {steps} steps in {secs:.0f} s")
    return secs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--model", default="preact_resnet20")
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--bits", default="4,3,2")
    ap.add_argument("--train-subset", type=int, default=12000)
    ap.add_argument("--test-subset", type=int, default=2000)
    ap.add_argument("--fp-epochs", type=int, default=2)
    ap.add_argument("--joint-epochs", type=int, default=1)
    ap.add_argument("--hasb-epochs", type=int, default=1)
    ap.add_argument("--hessian-samples", type=int, default=256)
    ap.add_argument("--recal-samples", type=int, default=256)
    ap.add_argument("--loss-samples", type=int, default=4096, help="labelled training images for the measured `loss` objective")
    ap.add_argument("--hasb-warmup", type=float, default=0.2, help="HASB warm-up (fraction of HASB steps at switch probability 0)")
    ap.add_argument("--hasb-ramp", type=float, default=0.3, help="HASB ramp (fraction of HASB steps to reach --hasb-pmax)")
    ap.add_argument("--hasb-pmax", type=float, default=0.5, help="final per-layer switch probability")
    ap.add_argument("--note", default=None, help="paragraph placed at the top of the results file")
    ap.add_argument("--objectives", default="bits,noise,loss", help="ILP objectives to compare")
    ap.add_argument("--save-joint", default=None, help="pickle the joint model (phases 1-2) here, to re-run HASB on it with --load-joint")
    ap.add_argument("--load-joint", default=None, help="skip phases 1-2: load a model pickled by --save-joint")
    ap.add_argument("--random", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default=None)
    ap.add_argument("--save", default=None, help="also save the supernet (integer checkpoint) and its traces under this prefix")
    ap.add_argument("--bn-modes", default="native,recal,transitional", help="BN treatments to compare (subset of native,recal,transitional)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    bits = tuple(int(b) for b in args.bits.split(","))
    name = args.name or f"search_pareto_{args.dataset}"
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    root = DATA / args.dataset
    train = subset(load_dataset(args.dataset, root, "train"), args.train_subset, args.seed)
    test = subset(load_dataset(args.dataset, root, "test"), args.test_subset, args.seed + 1)
    stats = DATASET_STATS[args.dataset]
    loader = TensorLoader(train, 128, shuffle=True, seed=args.seed, mean=stats["mean"], std=stats["std"])
    test_b = list(TensorLoader(test, 500, shuffle=False, mean=stats["mean"], std=stats["std"]))
    recal_ds = subset(load_dataset(args.dataset, root, "train"), args.recal_samples, args.seed + 2)
    recal_b = list(TensorLoader(recal_ds, 128, shuffle=False, mean=stats["mean"], std=stats["std"]))
    hess_b = list(TensorLoader(subset(train, args.hessian_samples, args.seed + 3), 128, shuffle=False, mean=stats["mean"], std=stats["std"]))
    shape = tuple(train.images.shape[1:])

    if args.load_joint:
        saved = torch.load(args.load_joint, weights_only=False)
        model, fp_acc = saved["model"], saved["fp_acc"]
        timings.update(saved["timings"])
        log(f"loaded joint model from {args.load_joint} (phases 1-2 skipped; their times are from the run that saved it)")
    else:
        # 1. FP32
        fp = build(args.model, in_channels=shape[0], width=args.width, num_classes=10)
        timings["fp32_train_s"] = run_epochs(fp, loader, args.fp_epochs, 2e-3, lambda s: None, "fp32")
        fp_acc = accuracy(fp, test_b)
        log(f"fp32 test acc {fp_acc:.2f}")

        # 2. joint multi-precision (every bit-width each step, uniform configurations)
        model = bitswitch.quantize(fp, bits=bits)
        bitswitch.calibrate(model, list(loader)[:4])
        no_switch = SwitchSchedule(warmup_steps=10**9)
        timings["joint_train_s"] = run_epochs(model, loader, args.joint_epochs, 1e-3, lambda s: supernet_plan(_dummy(model, bits), no_switch, s, bits), "joint")
        if args.save_joint:
            torch.save({"model": model, "fp_acc": fp_acc, "timings": dict(timings)}, args.save_joint)
    joint_acc = {b: evaluate_config(model, b, test_b, bn="native") for b in bits}
    joint_recal = {b: evaluate_config(model, b, test_b, bn="recal", recal_batches=recal_b) for b in bits}
    log(f"joint test acc {joint_acc}, with BN re-estimation {joint_recal}")

    # 3. Hessian traces of the joint model (FP32 function)
    t0 = time.perf_counter()
    traces = hessian_traces(model, hess_b, tol=0.05, max_iter=40)
    timings["hessian_s"] = time.perf_counter() - t0
    sens = sensitivity(traces)
    log(f"hessian: {timings['hessian_s']:.0f} s, iterations {[t.iterations for t in traces.values()]}")

    # 4. HASB from the joint model: switchable BN, and transitional BN
    sampler = RouletteSampler(sens, bits)
    steps = args.hasb_epochs * len(loader)
    sch = SwitchSchedule(warmup_steps=int(args.hasb_warmup * steps), ramp_steps=max(1, int(args.hasb_ramp * steps)), p_max=args.hasb_pmax)
    coverage = _coverage(sampler, sch, steps, bits, layer_costs(model, shape), args.seed)
    log(f"HASB sampling coverage: {coverage}")
    supernet = copy.deepcopy(model)
    bn_modes = tuple(args.bn_modes.split(","))
    transitional = to_transitional(copy.deepcopy(model)) if "transitional" in bn_modes else None
    loader.set_epoch(100)
    timings["hasb_switchable_s"] = run_epochs(supernet, loader, args.hasb_epochs, 5e-4, lambda s: supernet_plan(sampler, sch, s, bits, seed=args.seed), "hasb (switchable BN)")
    loader.set_epoch(100)
    if transitional is not None:
        timings["hasb_transitional_s"] = run_epochs(transitional, loader, args.hasb_epochs, 5e-4, lambda s: supernet_plan(sampler, sch, s, bits, seed=args.seed), "hasb (transitional BN)")

    if args.save:
        from bitswitch.search import save_traces

        bitswitch.save(supernet, f"{args.save}.safetensors", extra={"input_shape": list(shape), "dataset": args.dataset, "mean": list(stats["mean"]), "std": list(stats["std"])})
        save_traces(f"{args.save}.hessian.json", traces, input_shape=list(shape))

    # 5. search
    costs = layer_costs(supernet, shape)
    objectives = args.objectives.split(",")
    pb = SearchProblem(costs, sens, bits)
    problems: dict[str, SearchProblem] = {}
    if "bits" in objectives:
        problems["bits"] = pb
    if "noise" in objectives:
        problems["noise"] = SearchProblem(costs, sens, bits, objective="noise", noise=weight_noise(supernet))
    if "loss" in objectives:
        loss_b = list(TensorLoader(subset(train, args.loss_samples, args.seed + 5), 128, shuffle=False, mean=stats["mean"], std=stats["std"]))
        t0 = time.perf_counter()
        deltas = loss_deltas(supernet, loss_b, bits, reference=bits[len(bits) // 2], recal_batches=recal_b)
        timings["loss_deltas_s"] = time.perf_counter() - t0
        log(f"loss deltas ({timings['loss_deltas_s']:.0f} s): " + json.dumps({n: {f"{w}": round(v, 4) for (w, _), v in d.items()} for n, d in deltas.items()}))
        problems["loss"] = SearchProblem(costs, sens, bits, objective="loss", loss_delta=deltas)
    lo, hi = uniform(pb, bits[-1]).summary["rel_bops_w8a8"], uniform(pb, bits[0]).summary["rel_bops_w8a8"]
    grid = [lo + (hi - lo) * i / 6 for i in range(7)]
    u_mid = uniform(pb, bits[1]).summary["rel_bops_w8a8"]
    targets = sorted({round(v, 6) for v in grid[1:-1]} | {round(u_mid, 6)})
    t0 = time.perf_counter()
    found = {obj: [p.solve(f"bops={v}x") for v in targets] for obj, p in problems.items()}
    timings["ilp_total_s"] = time.perf_counter() - t0

    def evaluate_all(cfg, modes=bn_modes) -> dict[str, float]:
        out = {}
        if "native" in modes:
            out["native"] = evaluate_config(supernet, cfg, test_b, bn="native")
        if "recal" in modes:
            out["recal"] = evaluate_config(supernet, cfg, test_b, bn="recal", recal_batches=recal_b)
        if "transitional" in modes:
            out["transitional"] = evaluate_config(transitional, cfg, test_b, bn="native")
        return out

    rows = []
    t0 = time.perf_counter()
    for b in bits:
        r = uniform(pb, b)
        rows.append({"method": f"uniform W{b}A{b}", "rel_bops": r.summary["rel_bops_w8a8"], "avg_bits": r.summary["avg_bits"], **evaluate_all(r.config)})
        log(str(rows[-1]))
    for obj, results in found.items():
        for r in results:
            rows.append({"method": f"ilp-{obj}", "budget": r.budgets[0], "rel_bops": r.summary["rel_bops_w8a8"], "avg_bits": r.summary["avg_bits"], **evaluate_all(r.config), "config": {k: v[0] for k, v in r.config.items()}})
            log(str({k: v for k, v in rows[-1].items() if k != "config"}))
    modes = list(bn_modes)
    mode_mean = {m: statistics.mean(r[m] for r in rows) for m in modes}
    best_mode = max(mode_mean, key=mode_mean.get)
    log(f"BN mode means over uniform+ILP configs: {mode_mean}; using {best_mode} for random/greedy")

    for v in sorted({round(u_mid, 6), round(grid[2], 6), round(grid[4], 6)}):
        g = greedy(pb, f"bops={v}x")
        rows.append({"method": "greedy", "budget": f"bops={v}x", "rel_bops": g.summary["rel_bops_w8a8"], "avg_bits": g.summary["avg_bits"], **evaluate_all(g.config, (best_mode,))})
        for r in random_at_cost(pb, f"bops={v}x", args.random, seed=args.seed):
            rows.append({"method": "random", "budget": f"bops={v}x", "rel_bops": r.summary["rel_bops_w8a8"], "avg_bits": r.summary["avg_bits"], **evaluate_all(r.config, (best_mode,))})
        log(f"greedy/random at bops={v}x done")
    timings["evaluation_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start

    # 6. verdict at the cost of uniform mid-bit
    at = f"bops={round(u_mid, 6)}x"
    uni = next(r for r in rows if r["method"] == f"uniform W{bits[1]}A{bits[1]}")
    rnd = [r[best_mode] for r in rows if r["method"] == "random" and r.get("budget") == at]
    ilps = {r["method"]: r[best_mode] for r in rows if r["method"].startswith("ilp") and r.get("budget") == at}
    verdict = {
        "budget": at, "bn_mode": best_mode, "uniform": uni[best_mode], "random_median": statistics.median(rnd) if rnd else None,
        "random_max": max(rnd) if rnd else None, **{k: v for k, v in ilps.items()},
        "greedy": next((r[best_mode] for r in rows if r["method"] == "greedy" and r.get("budget") == at), None),
    }
    verdict["goal_met"] = {k: (v > verdict["uniform"] and (verdict["random_median"] is None or v > verdict["random_median"])) for k, v in ilps.items()}
    log(f"verdict {verdict}")

    plot_path = RESULTS / f"{name}.png"
    _plot(rows, best_mode, bits, plot_path, f"{args.dataset} {args.model} (width {args.width}), supernet {{{args.bits}}}")
    table_rows = [{k: (round(v, 2) if isinstance(v, float) and k not in ("rel_bops",) else (round(v, 4) if isinstance(v, float) else v)) for k, v in r.items() if k != "config"} for r in rows]
    md = [
        f"# Mixed-precision search on {args.dataset}: accuracy vs relative BOPs", "", *([args.note, ""] if args.note else []),
        (f"Reduced budget: {args.model} width {args.width}, {args.train_subset} training images, FP32 {args.fp_epochs} epoch(s) "
        f"-> joint {{{args.bits}}} {args.joint_epochs} epoch(s) -> Hessian ({args.hessian_samples} images) -> HASB {args.hasb_epochs} "
        f"epoch(s) (switch probability 0 for {args.hasb_warmup:.0%} of its steps, then a linear ramp over {args.hasb_ramp:.0%} to {args.hasb_pmax}); accuracy on {args.test_subset} test images "
        f"(one seed, so differences below ~1 point are noise: SE ≈ {100 * (0.85 * 0.15 / args.test_subset) ** 0.5:.1f} points); "
        f"BN re-estimation on {args.recal_samples} training images. Relative BOPs are vs all-W8A8 of the quantized layers "
        "(first conv and last linear are FP32 and outside the budget)."), "",
        (f"FP32 accuracy {fp_acc:.2f} %; joint model (before HASB) {json.dumps({f'W{k}A{k}': round(v, 2) for k, v in joint_acc.items()})}, "
         f"with BN re-estimation {json.dumps({f'W{k}A{k}': round(v, 2) for k, v in joint_recal.items()})}."), "",
        f"HASB sampling (replayed, no training): {json.dumps(coverage)}.", "",
        "## BatchNorm for mixed configurations (mean accuracy over the uniform and ILP configurations)", "",
        md_table([{"bn": m, "mean_acc": round(v, 2)} for m, v in mode_mean.items()]), "",
        f"Default for evaluation: **{best_mode}**.", "",
        f"## Verdict at the cost of uniform {bits[1]}-bit ({at})", "", "```", json.dumps(verdict, indent=2), "```", "",
        "## All configurations", "", md_table(table_rows, ["method", "budget", "rel_bops", "avg_bits", "native", "recal", "transitional"]), "",
        "## Stage times (s)", "", md_table([{k: round(v, 1) for k, v in timings.items()}]), "",
        f"![pareto]({plot_path.name})",
    ]
    write_results(name, {"args": vars(args), "fp32_acc": fp_acc, "joint_acc": joint_acc, "bn_mode_means": mode_mean, "bn_default": best_mode,
                         "verdict": verdict, "rows": rows, "joint_recal": joint_recal, "hasb_coverage": coverage, "timings": timings, "traces": {k: v.as_dict() for k, v in traces.items()}, "log": LOG},
                  "\n".join(md))


def _coverage(sampler: RouletteSampler, sch: SwitchSchedule, steps: int, bits, costs, seed: int) -> dict[str, float]:
    """What HASB actually trains: share of mixed configurations, layers off the iteration's uniform
    bit-width, and how many mixed configurations land near the cost of uniform mid-bit (the budget
    the goal is judged at). Pure RNG replay of :func:`supernet_plan`, no training."""
    from bitswitch.cost import relative_bops

    q = [c for c in costs if c.quantized]
    mid = relative_bops(q, {c.name: (bits[len(bits) // 2],) * 2 for c in q}, "w8a8")
    n_cfg = mixed = near = off = 0
    for step in range(steps):
        for b, cfg in zip(sorted(bits, reverse=True), supernet_plan(sampler, sch, step, bits, seed=seed)):
            n_cfg += 1
            ws = {w for w, _ in cfg.values()}
            off += sum(w != b for w, _ in cfg.values())
            if len(ws) > 1:
                mixed += 1
                if abs(relative_bops(q, cfg, "w8a8") / mid - 1) <= 0.1:
                    near += 1
    return {"configs": n_cfg, "mixed_share": round(mixed / n_cfg, 3), "layers_off_uniform_share": round(off / (n_cfg * len(sampler.probs)), 3),
            "mixed_within_10pct_of_uniform_mid_cost_share": round(near / n_cfg, 3)}


def _dummy(model, bits):
    """A sampler that is never drawn from (switch probability 0): joint training of uniform configurations."""
    names = list(bitswitch.quantized_layers(model))
    return RouletteSampler({n: 1.0 for n in names}, bits)


def _plot(rows, mode, bits, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    style = {"random": {"c": "0.6", "marker": ".", "ls": "none", "label": "random (same cost)"},
             "greedy": {"c": "tab:orange", "marker": "s", "ls": "none", "label": "greedy flip"},
             "ilp-bits": {"c": "tab:blue", "marker": "o", "ls": "-", "label": "ILP, O=Σ(t/n)·b"},
             "ilp-noise": {"c": "tab:green", "marker": "^", "ls": "-", "label": "ILP, min Σ(t/n)·‖ΔW‖²"},
             "ilp-loss": {"c": "tab:purple", "marker": "v", "ls": "-", "label": "ILP, min Σ measured Δloss (W and A)"}}
    for method, st in style.items():
        pts = sorted((r["rel_bops"], r[mode]) for r in rows if r["method"] == method)
        if pts:
            ax.plot(*zip(*pts), **st)
    uni = sorted((r["rel_bops"], r[mode]) for r in rows if r["method"].startswith("uniform"))
    ax.plot(*zip(*uni), c="tab:red", marker="D", ls="--", label="uniform")
    ax.set_xlabel("BOPs relative to W8A8 (quantized layers)")
    ax.set_ylabel(f"test accuracy (%), BN: {mode}")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
