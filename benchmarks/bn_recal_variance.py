"""How much does BN re-estimation on a few hundred images move a subnet's accuracy?

Every search evaluation re-estimates the BatchNorm statistics of a configuration on N training
images (`bitswitch eval --config`, `search_checkpoint.py`: N = 256). This measures the spread that
choice of images adds: each configuration is evaluated on the same test images after re-estimation
on several disjoint seeded sets of N images, for several N. A spread comparable to the
differences between searched subnets and uniform precision means the comparison needs more
re-estimation images (or the same ones for every configuration, as the benchmarks do).

    python benchmarks/bn_recal_variance.py runs/cifar10_resnet20_hasb5/best.safetensors --dataset cifar10 \
        --uniform 4 --config subnet.json --sizes 256,1024,4096 --sets 4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import md_table, saved_supernet, write_results

from bitswitch.nn.precision_file import read_precision_file
from bitswitch.search.evaluate import correct_per_image, paired_difference


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--uniform", default="4", help="comma-separated uniform bit-widths to evaluate")
    ap.add_argument("--config", action="append", default=[], help="a precision JSON file to evaluate (repeatable)")
    ap.add_argument("--sizes", default="256,1024,4096", help="comma-separated numbers of re-estimation images")
    ap.add_argument("--sets", type=int, default=4, help="disjoint image sets per size")
    ap.add_argument("--test-subset", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, test_b, _, train_batches = saved_supernet(args.checkpoint, args.dataset, args.test_subset)
    configs: dict[str, object] = {f"uniform W{b}A{b}": int(b) for b in args.uniform.split(",") if b.strip()}
    configs.update({Path(p).name: read_precision_file(p) for p in args.config})
    sizes = [int(s) for s in args.sizes.split(",")]
    rows, per_image = [], {}
    for n in sizes:
        for k in range(args.sets):
            # one seeded permutation of the training split, cut into disjoint sets of n images
            recal_b = train_batches(n, 256, seed=2, skip=k * n)
            for label, cfg in configs.items():
                c = correct_per_image(model, cfg, test_b, recal_b)
                per_image[(label, n, k)] = c
                rows.append({"config": label, "recal_images": n, "set": k, "acc": 100 * float(c.float().mean())})
                print(rows[-1], flush=True)
    summary = []
    labels = list(configs)
    for n in sizes:
        for label in labels:
            accs = [r["acc"] for r in rows if r["config"] == label and r["recal_images"] == n]
            row = {"config": label, "recal_images": n, "sets": len(accs), "mean": statistics.mean(accs),
                   "sd": statistics.stdev(accs) if len(accs) > 1 else 0.0, "min": min(accs), "max": max(accs)}
            if label != labels[0]:  # difference to the first configuration on the same re-estimation images
                diffs = [paired_difference(per_image[(label, n, k)], per_image[(labels[0], n, k)])[0] for k in range(args.sets)]
                row.update({"diff_vs_first_mean": statistics.mean(diffs), "diff_sd": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
                            "diff_min": min(diffs), "diff_max": max(diffs)})
            summary.append(row)
    total = time.perf_counter() - t0
    table = [{k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()} for r in summary]
    cols = ["config", "recal_images", "sets", "mean", "sd", "min", "max", "diff_vs_first_mean", "diff_sd", "diff_min", "diff_max"]
    md = [
        f"# BN re-estimation: spread of accuracy over the choice of images ({args.dataset})", "",
        f"`{args.checkpoint}`; accuracy on {args.test_subset} test images after re-estimating BN statistics on "
        f"{args.sets} disjoint sets of N training images (one seeded permutation). `diff_*`: the configuration minus "
        f"`{labels[0]}`, both re-estimated on the same set. {total:.0f} s in all.", "",
        md_table(table, cols), "",
    ]
    write_results(args.name or f"bn_recal_variance_{args.dataset}", {"args": vars(args), "summary": summary, "rows": rows,
                                                                    "seconds": total}, "\n".join(md))


if __name__ == "__main__":
    main()
