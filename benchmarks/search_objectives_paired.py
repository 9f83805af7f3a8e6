"""Paired comparison of two ILP objectives on the configurations a ``search_checkpoint.py`` run chose.

Re-evaluates, image by image on the same test images, the subnets that two objectives picked at each
budget of a ``search_checkpoint`` results file (same checkpoint, same BN re-estimation) and reports
their difference with its McNemar standard error: the evidence behind the CLI's default objective.

    python benchmarks/search_objectives_paired.py \\
        search_checkpoint_fashion_mnist_v3_tied=/tmp/s4/fm_v3b.safetensors \\
        search_checkpoint_cifar10_hasb_10k=runs/cifar10_resnet20_hasb/best.safetensors
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, md_table, publish

import bitswitch
from bitswitch.search.evaluate import correct_per_image, dataset_batches, paired_difference

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="RESULTS_NAME=CHECKPOINT pairs (a search_checkpoint results file and its checkpoint)")
    ap.add_argument("--a", default="ilp-noise", help="first method (default ilp-noise)")
    ap.add_argument("--b", default="ilp-loss", help="second method (default ilp-loss)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--name", default="search_objectives_paired")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for spec in args.runs:
        name, _, ckpt = spec.partition("=")
        if not ckpt:
            ap.error(f"expected RESULTS_NAME=CHECKPOINT, got {spec!r}")
        doc = json.loads((RESULTS / f"{name}.json").read_text())
        run = doc["args"]
        model = bitswitch.load(ckpt)
        extra = getattr(model, "bitswitch_extra", {}) or {}
        ds, root = run["dataset"], DATA / run["dataset"]
        kw = {"mean": extra.get("mean"), "std": extra.get("std")}
        test, _ = dataset_batches(ds, root, "test", run["test_subset"], 500, seed=1, **kw)  # as search_checkpoint.py draws them
        recal, _ = dataset_batches(ds, root, "train", run["recal_samples"], 128, seed=2, **kw)
        for budget in sorted({r["budget"] for r in doc["rows"] if r.get("budget")}):
            picked = {r["method"]: r for r in doc["rows"] if r.get("budget") == budget and r["method"] in (args.a, args.b)}
            if len(picked) < 2:
                continue
            correct = {k: correct_per_image(model, {n: tuple(v) for n, v in r["config"].items()}, test, recal) for k, r in picked.items()}
            diff, se = paired_difference(correct[args.a], correct[args.b])
            rows.append({"results": name, "budget": budget, args.a: round(100 * float(correct[args.a].float().mean()), 2),
                         args.b: round(100 * float(correct[args.b].float().mean()), 2), "difference": round(diff, 2), "paired_se": round(se, 2)})
            print(rows[-1], flush=True)
    if not rows:
        ap.error(f"no budget of those files has both {args.a} and {args.b}")
    mean = statistics.mean(r["difference"] for r in rows)
    md = (f"# Paired comparison: {args.a} vs {args.b}\n\nEach row re-evaluates, on the same test images and with the same BN "
          f"re-estimation as the `search_checkpoint` file it names, the two subnets those objectives chose at one cost kind; "
          f"`difference` = {args.a} minus {args.b} in points, `paired_se` its McNemar standard error.\n\n" + md_table(rows)
          + f"\n\nMean difference {mean:+.2f} points; {args.a} ahead in {sum(r['difference'] > 0 for r in rows)} of {len(rows)}.\n")
    return publish(args, {"rows": rows, "mean_difference": mean}, md)


if __name__ == "__main__":
    sys.exit(main())
