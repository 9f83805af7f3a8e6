"""Do the bit-widths of a joint run pull the shared weights the same way?

In a joint step every bit-width takes its own optimizer step on the same latent weights. This
measures, on the same training batches, each bit-width's gradient of its task loss (cross-entropy,
no distillation) with respect to the quantized layers' weights: its norm, and the cosine between
every pair of bit-widths. Two points of a run: its calibrated start (rebuilt from its
``config.yaml``: same FP32 weights, calibration batches and seed) and the end of its training (``state.safetensors``,
the latent weights the last step left).

    python benchmarks/grad_alignment.py runs/paper_cifar10_89_30ep_cutout/joint_distill_neighbour \\
        --batches 8 --name grad_alignment_cifar10_89_30ep
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import md_table, publish  # noqa: E402
from scale_drift import run_config  # noqa: E402

from bitswitch.nn.convert import set_precision  # noqa: E402
from bitswitch.train import TrainConfig  # noqa: E402
from bitswitch.train.data import load_data, make_loader  # noqa: E402
from bitswitch.train.loop import build_run_model  # noqa: E402
from bitswitch.train.state import read_state  # noqa: E402


def quantized_weights(model: nn.Module) -> list[nn.Parameter]:
    """The latent weights of the layers that have a weight quantizer (the ones the bit-widths share)."""
    return [m.weight for m in model.modules() if hasattr(m, "weight_quant") and isinstance(getattr(m, "weight", None), nn.Parameter)]


def bit_gradients(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], bits: list[int]) -> dict[int, torch.Tensor]:
    """``{b: [batches, n] gradients}``: each bit-width's cross-entropy gradient on each batch."""
    model.train()  # the training forward: batch statistics, as in the step
    weights = quantized_weights(model)
    if not weights:
        raise SystemExit("the model has no quantized layers with a weight parameter")
    out: dict[int, list[torch.Tensor]] = {b: [] for b in bits}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for x, y in batches:
        for b in bits:
            set_precision(model, b)
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            out[b].append(torch.cat([w.grad.flatten() for w in weights]))
    model.load_state_dict(state)  # the forwards moved BatchNorm running statistics: leave the model as found
    return {b: torch.stack(g) for b, g in out.items()}


def rows_for(point: str, grads: dict[int, torch.Tensor]) -> list[dict[str, Any]]:
    """Per bit-width: mean gradient norm; per pair: mean cosine over the batches (and its range)."""
    rows = [{"point": point, "quantity": f"|grad| w{b}a{b}", "mean": float(g.norm(dim=1).mean()), "min": float(g.norm(dim=1).min()),
             "max": float(g.norm(dim=1).max())} for b, g in grads.items()]
    for a, b in itertools.combinations(grads, 2):
        cos = F.cosine_similarity(grads[a], grads[b], dim=1)
        rows.append({"point": point, "quantity": f"cos(w{a}a{a}, w{b}a{b})", "mean": float(cos.mean()), "min": float(cos.min()), "max": float(cos.max())})
    return rows


def trained_model(run: Path, cfg: TrainConfig, data: Any) -> nn.Module | None:
    """The model with the latent weights of the run's last saved training state (None without one)."""
    path = run / "state.safetensors"
    if not path.exists():
        return None
    tensors, _ = read_state(path)
    model = build_run_model(cfg, data, resume=True)
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    return model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("run", help="a joint run folder (its config.yaml; state.safetensors for the trained point)")
    p.add_argument("--batches", type=int, default=8, help="training batches the gradients are measured on (same ones at both points)")
    p.add_argument("--data-root", help="the dataset folder, when it moved since the run")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--name", default="grad_alignment", help="results name")
    p.add_argument("--out", help="results folder (default: benchmarks/results)")
    args = p.parse_args(argv)
    if args.batches < 1:
        p.error("--batches must be >= 1")
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    cfg = run_config(run, args.data_root)
    if cfg.mode != "joint" or len(cfg.bits) < 2:
        raise SystemExit(f"{run}: a joint run of two or more bit-widths is needed, this one is mode {cfg.mode!r} bits {cfg.bits}")
    data = load_data(cfg)
    torch.manual_seed(cfg.seed)
    batches = list(itertools.islice(iter(make_loader(data, "train", cfg, "cpu", train=True)), args.batches))
    start = build_run_model(cfg, data, resume=False)  # the run's own start: same FP32 weights, calibration batches and seed
    rows = rows_for("calibrated start", bit_gradients(start, batches, cfg.bits))
    end = trained_model(run, cfg, data)
    if end is not None:
        rows += rows_for("end of training", bit_gradients(end, batches, cfg.bits))
    md = (f"# Per-bit gradients of the shared weights: {cfg.model}, {cfg.dataset}\n\n"
          f"Run `{run}` (bits {cfg.bits}); {args.batches} training batches of {cfg.batch_size} (augmented, the run's seed), "
          "the same batches at both points; cross-entropy gradient of each bit-width w.r.t. the quantized layers' latent weights; "
          "mean (min, max) over the batches.\n\n" + md_table(rows))
    return publish(args, {"run": str(run), "bits": cfg.bits, "batches": args.batches, "rows": rows}, md)


if __name__ == "__main__":
    raise SystemExit(main())
