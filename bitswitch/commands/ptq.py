"""``bitswitch ptq``: post-training mixed precision for a built-in or custom model and built-in data.

The result, ``model.safetensors``, holds integer codes at each layer's chosen bits and reopens with
``bitswitch.load``, ``eval``, ``export`` and ``info`` (a custom model with ``--model``).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ._args import COUNT, NON_NEGATIVE, float_in

if TYPE_CHECKING:
    from ..ptq import PTQResult, PTQSession

log = logging.getLogger(__name__)


def _pairs(text: str) -> list[tuple[int, int]]:
    """``W8A16,W8A8,W4A8`` -> [(8, 16), (8, 8), (4, 8)]."""
    out = []
    for item in text.split(","):
        item = item.strip().upper()
        if not item.startswith("W") or "A" not in item:
            raise ValueError(f"candidate {item!r} must look like W8A8")
        w, a = item[1:].split("A", 1)
        out.append((int(w), int(a)))
    return out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ptq", help="post-training mixed precision (SQNR sensitivity + greedy Pareto)",
                       description="Fold BN, quantize with MSE ranges, rank quantizer groups by output SQNR on unlabelled "
                                   "calibration data, and flip groups greedily to a relative-BOPs budget or accuracy target.")
    p.add_argument("--model", required=True, help="built-in model name, e.g. efficientnet_lite0, resnet18, mobilenet_v2; or a custom "
                   "model's factory, package.module:function (imports and runs that code)")
    w = p.add_mutually_exclusive_group()
    w.add_argument("--weights", default=None, help="state dict file (.pt/.safetensors) to load strictly (default: the model's packaged "
                   "pretrained weights, e.g. efficientnet_lite0's; a built-in model without them needs --weights or --random-init)")
    w.add_argument("--random-init", action="store_true", help="quantize the model as built, with random weights where it has no others "
                   "(a smoke test: its accuracy means nothing; warns)")
    p.add_argument("--data", required=True, help="data root: ImageNet-style folder (imagenet_samples) or cifar10 root")
    p.add_argument("--dataset", default="imagenet", choices=["imagenet", "cifar10"], help="what --data holds (default: imagenet)")
    p.add_argument("--num-calib", type=COUNT, default=256, help="calibration images, the first N in sorted order (default 256)")
    p.add_argument("--num-eval", type=NON_NEGATIVE, default=None,
                   help="held-out evaluation images after the calibration ones (default: all of them; 0: no accuracy)")
    p.add_argument("--candidates", default="W8A16,W8A8,W4A8",
                   help="comma-separated precisions a quantizer group may take, WnAm = n-bit weights, m-bit activations (default: W8A16,W8A8,W4A8)")
    p.add_argument("--budget", type=float_in(0.0, lo_open=True), default=None,
                   help="relative BOPs budget, all-W8A16 = 1 (e.g. 0.5; default: none, every group keeps its costliest candidate "
                        "unless --accuracy-target lowers them)")
    p.add_argument("--accuracy-target", type=float_in(0.0, 100.0), default=None, help="top-1 %% to keep (needs held-out images; default: none)")
    p.add_argument("--pareto", action="store_true", help="evaluate the full Pareto curve")
    p.add_argument("--pareto-every", type=COUNT, default=1,
                   help="with --pareto or --accuracy-target: evaluate every K-th step of the greedy flip sequence (default 1: every step)")
    p.add_argument("--priority", default="sqnr", choices=["sqnr", "noise_per_bops"],
                   help="order in which groups are lowered: sqnr (least sensitive first, Qualcomm's) or noise_per_bops "
                        "(least added noise per BOPs saved) (default: sqnr)")
    p.add_argument("--adaround", action="store_true", help="AdaRound the <8-bit weights (once per layer and bit-width, reused in both phases)")
    p.add_argument("--adaround-iters", type=NON_NEGATIVE, default=300, help="--adaround: optimisation steps per layer (default 300)")
    p.add_argument("--bias-correct", action="store_true", help="empirical bias correction of the quantized weights")
    p.add_argument("--weight-ranges", default="mse", choices=["mse", "output"],
                   help="per-channel weight clipping by weight MSE or layer-output MSE (default: mse)")
    p.add_argument("--phase1-samples", type=COUNT, default=None, help="calibration samples for phase 1 (default: all)")
    p.add_argument("--out", default="ptq_out", help="output folder: JSON, plots, cache, checkpoint (default: ptq_out)")
    p.set_defaults(func=run)


def _model(args: argparse.Namespace) -> torch.nn.Module:
    """The FP32 model to quantize: ``--weights``, else the packaged pretrained weights where the built-in
    model has them; random weights only when asked (``--random-init``), never by accident. A custom
    factory's model is taken as its code builds it."""
    from ..models import accepted_kwargs, build, load_weights
    from ..models.factory import is_factory

    packaged = not is_factory(args.model) and "pretrained" in (accepted_kwargs(args.model) or [])
    if not (is_factory(args.model) or packaged or args.weights or args.random_init):
        raise ValueError(f"model {args.model!r} has no packaged weights: pass --weights FILE (a state dict), "
                         "or --random-init to quantize random weights (a smoke test)")
    if args.random_init and not is_factory(args.model):
        log.warning("--random-init: quantizing random weights; the accuracy of the result means nothing")
    model = build(args.model, **({"pretrained": True} if packaged and not (args.weights or args.random_init) else {}))
    if args.weights:
        load_weights(model, args.weights)
    return model.eval()  # a factory string records itself


def _num_images(args: argparse.Namespace) -> int | None:
    """Calibration plus evaluation images to load (``None``: every image)."""
    return None if args.num_eval is None else args.num_calib + args.num_eval


def _data_extra(args: argparse.Namespace) -> dict[str, Any]:
    """What eval/export need to read the same data the same way (stored in the checkpoint's extra)."""
    if args.dataset == "imagenet":
        return {"dataset": "imagenet", "preprocess": "efficientnet_lite" if args.model.startswith("efficientnet") else "imagenet"}
    return {"dataset": args.dataset}


def _load_data(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    if args.dataset == "imagenet":
        from ._data import labelled_batches

        xs, ys = zip(*labelled_batches("imagenet", args.data, _data_extra(args), "test", _num_images(args), 64)[0])
        return torch.cat(xs), torch.cat(ys)
    from ..data import DATASET_STATS, load_dataset

    ds = load_dataset("cifar10", args.data, split="test")
    n = _num_images(args)
    x = ds.images[:n].float() / 255.0
    mean, std = DATASET_STATS["cifar10"]["mean"], DATASET_STATS["cifar10"]["std"]
    x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    return x, ds.labels[:n]


def run(args: argparse.Namespace) -> int:
    from ..export.checkpoint import atomic_write_json, save
    from ..ptq import PTQConfig, start_session
    from ..ptq.plots import plot_pareto, plot_sensitivity

    if args.accuracy_target is not None and args.num_eval == 0:
        raise ValueError("--accuracy-target needs held-out evaluation images (--num-eval > 0)")
    model = _model(args)
    x, y = _load_data(args)
    xc, xe, ye = x[: args.num_calib], x[args.num_calib:], y[args.num_calib:]
    if args.accuracy_target is not None and not len(xe):
        raise ValueError(f"--accuracy-target needs held-out evaluation images, but {args.data} has none after the {args.num_calib} calibration images")

    def top1(m: torch.nn.Module) -> float:
        with torch.inference_mode():
            return 100.0 * sum(int((m(xe[i:i + 64]).argmax(1) == ye[i:i + 64]).sum()) for i in range(0, len(xe), 64)) / len(xe)

    eval_fn = top1 if len(xe) else None
    config = PTQConfig(candidates=_pairs(args.candidates), adaround=args.adaround, adaround_iters=args.adaround_iters,
                       bias_correct=args.bias_correct, weight_ranges=args.weight_ranges)
    session = start_session(model, [xc], config)
    out = Path(args.out)  # created only once the model is captured and quantized: a failure leaves nothing behind
    out.mkdir(parents=True, exist_ok=True)
    session.sensitivity(cache_path=out / "phase1_cache.json", max_samples=args.phase1_samples)
    res = session.search(args.budget, accuracy_target=args.accuracy_target, eval_fn=eval_fn, pareto=args.pareto,
                         pareto_every=args.pareto_every, priority=args.priority)
    atomic_write_json(out / "result.json", res.as_dict(), indent=1)
    plot_sensitivity(res.sensitivity, out / "sensitivity.png")
    if any("metric" in p for p in res.pareto):
        plot_pareto(res.pareto, out / "pareto.png", html=out / "pareto.html",
                    metric_name="top-1 (%)" if eval_fn else "output SQNR (dB)")
    chosen = session.chosen_model(res.group_config)
    # integer codes at the chosen bits; the metadata says which BNs were folded and biases added
    save(chosen, out / "model.safetensors", extra={"input_shape": list(session.input_shape), **_data_extra(args)})
    print(f"relative BOPs {res.relative_bops:.4f}, metric {res.metric}, {len(session.groups)} groups; results in {out}/")
    print_summary(_summary_rows(session, res, eval_fn), len(xe))
    return 0


def _summary_rows(session: PTQSession, res: PTQResult,
                  eval_fn: Callable[[torch.nn.Module], float] | None) -> list[tuple[str, float | None, float, float]]:
    """``(name, top-1 or None, model bytes, relative BOPs)`` of FP32, uniform W8A8 (where every group
    supports it), the costliest other uniform precision within the chosen configuration's BOPs (what
    mixed precision must beat at its cost) and the chosen configuration."""
    from ..cost import model_bytes, relative_bops
    from ..ptq.sensitivity import pair_key

    costs = session.costs
    configs: list[tuple[str, dict[str, tuple[int, int]] | None]] = [("FP32", None)]
    shared = sorted(set.intersection(*(set(g.candidates) for g in session.groups)), key=lambda p: session.relative_bops(session.uniform(p)))
    if (8, 8) in shared:
        configs.append(("uniform W8A8", session.uniform((8, 8))))
    within = [p for p in shared if p != (8, 8) and session.relative_bops(session.uniform(p)) <= res.relative_bops + 1e-12]
    if within:
        configs.append((f"uniform {pair_key(within[-1])}", session.uniform(within[-1])))
    configs.append(("chosen", res.group_config))
    fp32 = {c.name: (32, 32) for c in costs if c.quantized}
    rows = []
    for name, group_config in configs:
        layers = fp32 if group_config is None else session.layer_config(group_config)
        if eval_fn is None:
            top1 = None
        elif name == "chosen":
            top1 = res.metric  # the search evaluated it
        else:
            top1 = eval_fn(session.apply(group_config))
        rows.append((name, top1, model_bytes(costs, layers), relative_bops(costs, layers, "w8a16")))
    return rows


def print_summary(rows: list[tuple[str, float | None, float, float]], num_eval: int) -> None:
    """The closing table: accuracy and size of each configuration."""
    from ..table import print_table

    print(f"bitswitch ptq: top-1 on {num_eval} held-out images" if num_eval else "bitswitch ptq (no held-out images: no accuracy)")
    print_table(["configuration", "top-1 (%)", "size (bytes)", "relative BOPs (W8A16 = 1)"],
                [(name, "-" if top1 is None else f"{top1:.2f}", f"{size:,.0f}", f"{bops:.4f}") for name, top1, size, bops in rows])
