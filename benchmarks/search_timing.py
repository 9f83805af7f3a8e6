"""Hessian-trace time (ResNet-20 on CIFAR-10, ResNet-18 on ImageNet samples) and ILP solve times.

Reduced budget (CPU shared by several people): the models are *random-init* (quantized to
{8,6,4,2} and calibrated, no training), with a small sample count and an iteration cap; the time
per iteration is what scales (linearly in samples). ILP timings use the real layer costs of each
architecture and log-normal random traces (solve time does not depend on trace values much).

    python benchmarks/search_timing.py [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import md_table, write_results

import bitswitch
from bitswitch.cost import layer_costs
from bitswitch.models import build
from bitswitch.search import SearchProblem, hessian_traces
from bitswitch.search.evaluate import dataset_batches

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def imagenet_batches(n: int, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from bitswitch.data import batches, load_imagenet_samples

    ds = load_imagenet_samples(DATA / "imagenet_samples")
    return list(batches(ds, batch, indices=list(range(n))))


def hessian_timing(name: str, model: torch.nn.Module, batches, max_iter: int, tol: float) -> dict:
    q = bitswitch.quantize(model, bits=(8, 6, 4, 2))
    bitswitch.calibrate(q, batches[:1])
    iters = []
    t0 = time.perf_counter()
    traces = hessian_traces(q, batches, tol=tol, max_iter=max_iter, progress=lambda it, left: iters.append((it, time.perf_counter() - t0)))
    total = time.perf_counter() - t0
    n = sum(int(x.shape[0]) for x, _ in batches)
    its = max(t.iterations for t in traces.values())
    return {
        "model": name, "samples": n, "layers": len(traces), "tol": tol, "max_iter": max_iter,
        "iterations_run": its, "converged_layers": sum(t.converged for t in traces.values()),
        "seconds": round(total, 2), "seconds_per_iteration": round(total / its, 3),
        "seconds_per_iteration_per_1k_samples": round(total / its / n * 1000, 2),
        "median_layer_iterations": statistics.median(t.iterations for t in traces.values()),
    }


def ilp_timing(name: str, shape: tuple[int, ...], bits=(8, 6, 4, 2)) -> dict:
    model = bitswitch.quantize(build(name), bits=bits)
    costs = layer_costs(model, shape)
    rng = np.random.default_rng(0)
    sens = {c.name: float(rng.lognormal(-8, 1.5)) for c in costs if c.quantized}
    problem = SearchProblem(costs, sens, bits)
    times = {}
    for budget in ("avg-bits=3", "avg-bits=5", "bops=0.25", "bops=0.5", "bytes=0.4", "bops=0.3@w8a16"):
        ts = []
        for _ in range(5):
            ts.append(problem.solve(budget).solve_seconds)
        times[budget] = statistics.median(ts) * 1e3
    t0 = time.perf_counter()
    sweep = problem.sweep("bops", list(np.linspace(0.0625, 1.0, 20)))
    sweep_s = time.perf_counter() - t0
    return {"model": name, "input": "x".join(map(str, shape)), "layers": len(problem.names), "variables": len(problem.var_pair),
            "max_solve_ms": round(max(times.values()), 2), "median_solve_ms": round(statistics.median(times.values()), 2),
            "sweep_20_points_s": round(sweep_s, 3), "sweep_points": len(sweep), "per_budget_ms": {k: round(v, 2) for k, v in times.items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--r20-samples", type=int, default=256)
    ap.add_argument("--r18-samples", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ilp = [ilp_timing("preact_resnet20", (3, 32, 32)), ilp_timing("resnet18", (3, 224, 224)),
           ilp_timing("resnet50", (3, 224, 224)), ilp_timing("mobilenet_v2", (3, 224, 224))]
    print(ilp, flush=True)
    cifar, _ = dataset_batches("cifar10", DATA / "cifar10", "train", args.r20_samples, 128)
    hess = [hessian_timing("preact_resnet20 (CIFAR-10, random init)", build("preact_resnet20"), cifar, max_iter=30, tol=0.05)]
    print(hess, flush=True)
    try:
        inet = imagenet_batches(args.r18_samples, 16)
    except (OSError, ValueError) as e:  # fall back to random images of the right shape, and say so
        print(f"imagenet samples unavailable ({e}); using random inputs", flush=True)
        inet = [(torch.randn(16, 3, 224, 224), torch.randint(0, 1000, (16,))) for _ in range(args.r18_samples // 16)]
    hess.append(hessian_timing("resnet18 (ImageNet samples 224px, random init)", build("resnet18"), inet, max_iter=5, tol=0.05))
    print(hess[-1], flush=True)
    md = ["# Search timing: Hessian traces and ILP solves", "",
          (f"Reduced budget: random-init models, {args.r20_samples} CIFAR-10 training images (ResNet-20, cap 30 iterations) "
          f"and {args.r18_samples} ImageNet sample images at 224 px (ResNet-18, cap 5 iterations); {args.threads} torch thread(s) "
          "on a CPU shared with other jobs. Time per iteration scales linearly with the sample count: the last column "
          "extrapolates to 1,000 samples."), "", "## Hessian traces (Hutchinson, double backprop)", "",
          md_table(hess, ["model", "samples", "layers", "iterations_run", "converged_layers", "seconds", "seconds_per_iteration", "seconds_per_iteration_per_1k_samples"]),
          "", "## ILP solve time (SciPy milp / HiGHS, {8,6,4,2}, activation bits tied)", "",
          md_table([{k: v for k, v in r.items() if k != "per_budget_ms"} for r in ilp])]
    write_results("search_timing", {"threads": args.threads, "hessian": hess, "ilp": ilp}, "\n".join(md))


if __name__ == "__main__":
    main()
