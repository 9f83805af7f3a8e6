"""Per-layer mixed precision on the bit-switchable character Llama: ILP vs uniform vs random at a byte budget.

    PYTHONPATH=. nice -n 5 python benchmarks/lm_mixed.py --checkpoint /work/runs/lm/.../best.safetensors

One joint checkpoint (every layer can run at any of its trained bit-widths). Sensitivities, both
computed with the library's search machinery:

* ``hessian``: Hutchinson traces of the next-character cross-entropy on training windows
  (:func:`bitswitch.search.hessian_traces`), objective ``noise`` (trace/param x each layer's real
  rounding error at each bit-width, the CLI default);
* ``measured``: each layer's loss increase on validation windows with only that layer moved from
  the uniform reference (:func:`bitswitch.search.loss_deltas`), objective ``loss``.

For each byte budget (the bytes of uniform ``B``-bit weights of the quantized q/k/v/o/gate/up/down
projections; embeddings and the tied head stay float, outside every budget) the ILP solves each
objective; the one with the lower loss on a second, disjoint part of the validation split is the
"chosen" configuration. On the test split (non-overlapping windows, as :func:`bitswitch.lm.lm_loss`)
it is compared with uniform at the largest trained bit-width within the budget and with random
configurations costing 95-100 % of the budget, by paired per-window differences
(:func:`bitswitch.search.evaluate.paired_loss_difference`).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, md_table, publish, supernet_bits  # noqa: E402

import bitswitch  # noqa: E402
from bitswitch.cost import layer_costs  # noqa: E402
from bitswitch.data.text import eval_windows, load_shakespeare, random_windows  # noqa: E402
from bitswitch.lm import read_lm_info, window_losses  # noqa: E402
from bitswitch.search import SearchProblem, hessian_traces, loss_deltas, random_at_cost, sensitivity, uniform, weight_noise  # noqa: E402
from bitswitch.search.budget import Budget  # noqa: E402
from bitswitch.search.evaluate import paired_loss_difference  # noqa: E402

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
OBJECTIVE = {"hessian": "noise", "measured": "loss"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a joint (multi-precision) language-model checkpoint")
    p.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "shakespeare"))
    p.add_argument("--budgets", default="3,4", help="budgets as bits per quantized weight (bytes of uniform B-bit weights)")
    p.add_argument("--random", type=int, default=20, help="random configurations per budget")
    p.add_argument("--hessian-windows", type=int, default=64, help="training windows in the Hessian loss")
    p.add_argument("--hessian-iters", type=int, default=30)
    p.add_argument("--delta-chars", type=int, default=8192, help="validation characters for the measured deltas (the first ones)")
    p.add_argument("--select-chars", type=int, default=16384, help="validation characters after those, to choose the objective")
    p.add_argument("--test-chars", type=int, default=0, help="test characters evaluated (the first ones; 0: the whole split)")
    p.add_argument("--reference", type=int, default=4, help="uniform bit-width the other layers keep while one is measured")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default="lm_mixed")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    model = bitswitch.load(args.checkpoint).eval()
    ctx = read_lm_info(args.checkpoint).context
    splits = load_shakespeare(args.data_root)
    bits = list(supernet_bits(model))
    costs = layer_costs(model, torch.zeros(1, ctx, dtype=torch.long))
    n_quant = sum(c.params for c in costs if c.quantized)
    weight_only = all(l.weight_only for l in bitswitch.quantized_layers(model).values())
    log = lambda *a: print(f"[{time.perf_counter() - t_start:7.1f} s]", *a, flush=True)  # noqa: E731

    # -- sensitivities ------------------------------------------------------------------------------
    gen = torch.Generator().manual_seed(0)
    hess_batches = [random_windows(splits.train, 16, ctx, gen) for _ in range(max(1, args.hessian_windows // 16))]
    t0 = time.perf_counter()
    traces = hessian_traces(model, hess_batches, max_iter=args.hessian_iters, seed=0)
    t_hessian = time.perf_counter() - t0
    log(f"Hessian traces: {t_hessian:.0f} s, {sum(t.converged for t in traces.values())}/{len(traces)} converged")
    val_a = splits.val[: args.delta_chars]
    val_b = splits.val[args.delta_chars: args.delta_chars + args.select_chars]
    t0 = time.perf_counter()
    deltas = loss_deltas(model, list(eval_windows(val_a, ctx, 64)), bits, reference=args.reference)
    t_deltas = time.perf_counter() - t0
    log(f"measured deltas: {t_deltas:.0f} s")
    problems = {
        "hessian": SearchProblem(costs, sensitivity(traces), bits, objective="noise", noise=weight_noise(model, bits)),
        "measured": SearchProblem(costs, sensitivity(traces), bits, objective="loss", loss_delta=deltas),
    }

    test = splits.test[: args.test_chars] if args.test_chars else splits.test
    cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def losses(config: dict[str, tuple[int, int]], ids: torch.Tensor, where: str) -> tuple[torch.Tensor, torch.Tensor]:
        key = (where, tuple(sorted((n, tuple(v)) for n, v in config.items())))
        if key not in cache:
            bitswitch.set_precision(model, config)
            cache[key] = window_losses(model, ids, ctx)
        return cache[key]

    def pooled(sc: tuple[torch.Tensor, torch.Tensor]) -> float:
        return float(sc[0].sum() / sc[1].sum())

    names = list(bitswitch.quantized_layers(model))
    uniform_test = {b: pooled(losses({n: (b, b) for n in names}, test, "test")) for b in bits}
    log("uniform on test:", {b: round(v, 4) for b, v in uniform_test.items()})

    # -- per budget ---------------------------------------------------------------------------------
    results, rows, chosen_configs = [], [], {}
    for value in [float(v) for v in args.budgets.split(",")]:
        budget = Budget("bytes", n_quant * value / 8)
        ilp = {k: pr.solve(budget) for k, pr in problems.items()}
        val = {k: pooled(losses(r.config, val_b, "val")) for k, r in ilp.items()}
        pick = min(val, key=lambda k: (val[k], k))
        best = ilp[pick]
        below = max((b for b in bits if b <= value), default=None)
        base = uniform(problems[pick], below) if below is not None else None
        randoms = random_at_cost(problems[pick], budget, args.random, seed=0)
        test_best = losses(best.config, test, "test")
        entry = {
            "budget_bits_per_weight": value, "budget_bytes": budget.value, "chosen_objective": pick,
            "val_select": val, "chars_test": int(test_best[1].sum()), "windows_test": int(test_best[1].numel()),
            "ilp": {k: {"test": pooled(losses(r.config, test, "test")), "val": val[k], **r.summary,
                        "layers": {n: p[0] for n, p in r.config.items()}} for k, r in ilp.items()},
        }
        other = next(k for k in ilp if k != pick)
        entry["other_vs_chosen"] = dict(zip(("diff", "se"), paired_loss_difference(losses(ilp[other].config, test, "test")[0], test_best[0], test_best[1])))
        if base is not None:
            ub = losses(base.config, test, "test")
            d, se = paired_loss_difference(test_best[0], ub[0], test_best[1])
            entry["uniform"] = {"bits": below, "test": pooled(ub), "quantized_bytes": base.summary["quantized_bytes"], "diff": d, "se": se}
        rand = []
        for r in randoms:
            rl = losses(r.config, test, "test")
            d, se = paired_loss_difference(test_best[0], rl[0], test_best[1])
            rand.append({"test": pooled(rl), "wavg_bits": r.summary["wavg_bits"], "diff": d, "se": se, "sums": rl[0]})
        mean_sums = torch.stack([r["sums"] for r in rand]).mean(0)
        d_mean, se_mean = paired_loss_difference(test_best[0], mean_sums, test_best[1])
        entry["random"] = {
            "n": len(rand), "mean": statistics.fmean(r["test"] for r in rand), "min": min(r["test"] for r in rand),
            "max": max(r["test"] for r in rand), "ilp_better_than": sum(r["diff"] < 0 for r in rand),
            "ilp_better_by_2se": sum(r["diff"] < -2 * r["se"] for r in rand),
            "diff_vs_mean": d_mean, "se_vs_mean": se_mean,
            "each": [{k: v for k, v in r.items() if k != "sums"} for r in rand],
        }
        results.append(entry)
        chosen_configs[value] = {n: p[0] for n, p in best.config.items()}
        log(f"budget {value} bits/weight: chosen {pick} test {pooled(test_best):.4f}; "
            f"uniform {entry.get('uniform', {}).get('test')}, random mean {entry['random']['mean']:.4f}")
        rows.append(_row(f"{value:g} bits/weight ({budget.value:,.0f} B)", f"ILP, {pick} (chosen on val)", best.summary["wavg_bits"],
                         pooled(test_best), None, None))
        rows.append(_row("", f"ILP, {other}", ilp[other].summary["wavg_bits"], entry["ilp"][other]["test"],
                         entry["other_vs_chosen"]["diff"], entry["other_vs_chosen"]["se"]))
        if base is not None:
            u = entry["uniform"]
            rows.append(_row("", f"uniform {below}-bit", float(below), u["test"], -u["diff"], u["se"]))
        rr = entry["random"]
        rows.append(_row("", f"random x{rr['n']} (mean; min..max {rr['min']:.4f}..{rr['max']:.4f})",
                         statistics.fmean(r["wavg_bits"] for r in rand), rr["mean"], -d_mean, se_mean))

    # -- bits per layer -----------------------------------------------------------------------------
    n_blocks = 1 + max(int(n.split(".")[2]) for n in names)
    bit_rows = []
    for value, cfg in chosen_configs.items():
        for blk in range(n_blocks):
            row = {"budget": f"{value:g}", "block": blk}
            for proj in PROJECTIONS:
                hit = [b for n, b in cfg.items() if n.endswith(f"layers.{blk}.self_attn.{proj}") or n.endswith(f"layers.{blk}.mlp.{proj}")]
                row[proj.removesuffix("_proj")] = hit[0] if hit else ""
            bit_rows.append(row)
    plot = _heatmap(chosen_configs, n_blocks, Path(args.out) if args.out else RESULTS, args.name)

    total = time.perf_counter() - t_start
    md = "\n".join([
        f"# Per-layer mixed precision on the character Llama ({'weight-only' if weight_only else 'weights + activations'} joint {bits})",
        "",
        f"Checkpoint `{args.checkpoint}`; {len(names)} quantized projections ({n_quant:,} weights; embeddings and the tied head stay float, "
        f"outside the budget). Test split: {results[0]['chars_test']:,} characters in {results[0]['windows_test']} windows of {ctx} "
        f"({'the whole split' if not args.test_chars else f'its first {args.test_chars:,} characters'}). Uniform on test: "
        + ", ".join(f"{b}-bit {v:.4f}" for b, v in uniform_test.items()) + " nats/char.",
        "",
        f"Sensitivities: Hessian traces on {len(hess_batches) * 16} training windows ({t_hessian:.0f} s; objective `noise`), "
        f"measured one-layer loss increases around uniform {args.reference}-bit on the first {args.delta_chars:,} validation characters "
        f"({t_deltas:.0f} s; objective `loss`). The ILP's objective was chosen on the next {args.select_chars:,} validation characters. "
        f"`vs ILP`: method minus the chosen ILP configuration in nats/char on the same test windows, `paired SE` its standard error "
        f"(per-window differences). Random configurations cost 95-100 % of the budget.",
        "",
        md_table(rows, ["budget", "method", "wavg bits", "test nats/char", "vs ILP", "paired SE"]),
        "",
        "Random configurations beaten by the ILP on test: " + "; ".join(
            f"{e['budget_bits_per_weight']:g} bits: {e['random']['ilp_better_than']} of {e['random']['n']} "
            f"({e['random']['ilp_better_by_2se']} by more than 2 paired SE)" for e in results) + ".",
        "",
        "## Bits per layer of the chosen configuration",
        "",
        md_table(bit_rows, ["budget", "block", *[p.removesuffix("_proj") for p in PROJECTIONS]]),
        "",
        f"![bits per layer]({plot.name})",
        "",
        f"Total wall time {total:.0f} s, {torch.get_num_threads()} torch thread(s).",
    ])
    data = {"checkpoint": args.checkpoint, "checkpoint_sha256": hashlib.sha256(Path(args.checkpoint).read_bytes()).hexdigest(), "bits": bits, "weight_only": weight_only, "context": ctx, "quantized_params": n_quant,
            "uniform_test": {str(b): v for b, v in uniform_test.items()}, "budgets": results,
            "hessian": {n: t.as_dict() for n, t in traces.items()}, "hessian_seconds": t_hessian,
            "measured_deltas": {n: {f"w{w}": v for (w, _), v in d.items()} for n, d in deltas.items()}, "deltas_seconds": t_deltas,
            "args": vars(args), "seconds": total}
    return publish(args, data, md)


def _row(budget: str, method: str, wavg: float, loss: float, diff: float | None, se: float | None) -> dict[str, str]:
    return {"budget": budget, "method": method, "wavg bits": f"{wavg:.3f}", "test nats/char": f"{loss:.4f}",
            "vs ILP": "" if diff is None else f"{diff:+.4f}", "paired SE": "" if se is None else f"{se:.4f}"}


def _heatmap(configs: dict[float, dict[str, int]], n_blocks: int, out: Path, name: str) -> Path:
    """Bits per (projection, block), one panel per budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(configs), figsize=(1.2 + 2.2 * len(configs) * max(n_blocks, 4) / 4, 3.2), squeeze=False)
    for ax, (value, cfg) in zip(axes[0], configs.items()):
        grid = torch.full((len(PROJECTIONS), n_blocks), float("nan"))
        for n, b in cfg.items():
            parts = n.split(".")
            grid[PROJECTIONS.index(parts[-1]), int(parts[2])] = b
        im = ax.imshow(grid.numpy(), cmap="viridis", vmin=2, vmax=8, aspect="auto")
        for i in range(len(PROJECTIONS)):
            for j in range(n_blocks):
                ax.text(j, i, f"{int(grid[i, j])}", ha="center", va="center", color="w" if grid[i, j] < 6 else "k", fontsize=8)
        ax.set_xticks(range(n_blocks), [str(j) for j in range(n_blocks)])
        ax.set_yticks(range(len(PROJECTIONS)), [p.removesuffix("_proj") for p in PROJECTIONS] if ax is axes[0][0] else [])
        ax.set_xlabel("block")
        ax.set_title(f"{value:g} bits/weight budget", fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), label="weight bits")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
