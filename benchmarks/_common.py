"""Shared helpers for benchmark scripts: machine description and result files.

Every result file records the exact command, the machine, the torch version and the date, so a
number in the README can always be traced to the run that produced it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def header() -> dict[str, Any]:
    return {
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
    }


def write_results(name: str, data: dict[str, Any], markdown: str, out_dir: Path | None = None) -> Path:
    """Write ``<name>.json`` and ``<name>.md`` (a table plus the provenance lines)."""
    from bitswitch.export.checkpoint import atomic_write_bytes

    out = out_dir or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    doc = {**header(), **data}
    text = json.dumps(doc, indent=2) + "\n"
    atomic_write_bytes(out / f"{name}.json", lambda tmp: Path(tmp).write_text(text))
    m = doc["machine"]
    prov = (
        f"\n\nCommand: `{doc['command']}`  \n"
        f"Machine: {m['cpu']}, {m['cpu_count']} cores, torch {m['torch']} ({m.get('gpu', 'CPU')}); {doc['date']}\n"
    )
    atomic_write_bytes(out / f"{name}.md", lambda tmp: Path(tmp).write_text(markdown.rstrip() + prov))
    return out / f"{name}.md"


def publish(args: Any, data: dict[str, Any], markdown: str) -> int:
    """Write the results named ``args.name`` (into ``args.out`` if set), echo the table; exit code 0."""
    path = write_results(args.name, data, markdown, Path(args.out) if args.out else None)
    print(markdown)
    print(f"wrote {path}")
    return 0


def timeit(fn, repeat: int = 10, warmup: int = 2) -> list[float]:
    """Wall-clock seconds of ``repeat`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def round_robin(fns: dict[str, Any], rounds: int) -> dict[str, list[float]]:
    """Wall-clock seconds of each call, ``rounds`` times over ``fns`` in turn (load from other jobs hits all alike)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def md_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    # every key of every row, in first-seen order: a key only later rows have (a separate model at some bit-widths) is a column too
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def saved_supernet(checkpoint: str, dataset: str, test_subset: int | None):
    """A supernet saved by bitswitch, its test batches and a sampler of its training images.

    Returns ``(model, test_batches, image_shape, train_batches)``. Test batches are the seeded subset
    every search benchmark evaluates on (seed 1, 500 per batch); ``train_batches(n, batch_size, seed,
    skip=0)`` draws seeded training images (disjoint for disjoint ``skip`` ranges of one seed). Both
    use the normalisation the checkpoint was trained with.
    """
    import bitswitch
    from bitswitch.search.evaluate import dataset_batches

    model = bitswitch.load(checkpoint)
    extra = getattr(model, "bitswitch_extra", {}) or {}
    mean, std = extra.get("mean"), extra.get("std")
    root = Path(__file__).resolve().parents[2] / "shared" / "data" / dataset
    test_b, shape = dataset_batches(dataset, root, "test", test_subset, 500, seed=1, mean=mean, std=std)

    def train_batches(n: int, batch_size: int, seed: int, skip: int = 0) -> list:
        return dataset_batches(dataset, root, "train", n, batch_size, seed=seed, skip=skip, mean=mean, std=std)[0]

    return model, test_b, shape, train_batches


def supernet_bits(model) -> tuple[int, ...]:
    """Every weight bit-width the supernet's quantized layers were built for, highest first."""
    import bitswitch

    return tuple(sorted({b for layer in bitswitch.quantized_layers(model).values() for b in layer.weight_quant.bits}, reverse=True))
