"""Per-layer Hessian traces by Hutchinson's estimator (``E_v[vᵀHv]``, Rademacher ``v``).

Hessian-vector products come from double backprop: ``Hv = ∂(gᵀv)/∂W`` with ``g = ∂L/∂W`` built
with ``create_graph=True``. The loss is the mean cross-entropy over the given samples with the
model in eval mode (BatchNorm uses its running statistics, so the Hessian is that of one fixed
function). Within one iteration every batch draws its own ``v`` (the estimate
``Σ_b (n_b/N)·v_bᵀH_b v_b`` stays unbiased for ``tr H`` and averages independent draws), and one
``v`` spans all layers at once (cross-layer terms vanish in expectation), so an iteration costs one
forward and one double backward over the samples, for every layer together.

A layer stops when the standard error of its running mean falls below ``tol`` times the mean (after
``min_iter`` iterations) and is then dropped from later products; everything stops at
``max_iter``. Traces are of the FP32 function: a latent-weight model runs in full precision, an
integer model with its top-precision weights and unquantized activations.

Double backprop needs every op's backward to be differentiable again. Attention runs on the math
kernel of ``scaled_dot_product_attention`` (the fused kernels have no double backward);
``nn.Hardsigmoid`` modules (MobileNetV3's squeeze-excite gate) are replaced in the float copy by the
same function written as ``relu6(x + 3) / 6``; any other op without a double backward stops the
estimate with a :class:`ValueError` naming it.
"""

from __future__ import annotations

import copy
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..nn.convert import first_tensor, set_precision
from ..nn.dataflow import output_tensor, run_model
from ..nn.layers import QuantLayer
from ..table import format_table

FORMAT = "bitswitch-hessian"


@dataclass
class LayerTrace:
    """Hutchinson estimate of one layer's Hessian trace and how it was reached."""

    name: str
    trace: float
    n_params: int
    iterations: int
    converged: bool
    rel_stderr: float

    @property
    def trace_per_param(self) -> float:
        return self.trace / self.n_params

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "trace_per_param": self.trace_per_param}


def float_copy(model: nn.Module) -> nn.Module:
    """A deep copy that computes the FP32 function: quantizers off, integer weights dequantized.

    Integer (deployment) layers get their top-precision weight back as a trainable parameter, which
    is the closest FP32 function an integer checkpoint defines.
    """
    m = copy.deepcopy(model)
    layers = {n: l for n, l in m.named_modules() if isinstance(l, QuantLayer)}
    for layer in layers.values():
        if layer.is_integer:
            with torch.no_grad():
                w = layer.weight_quant.dequantize(layer.weight_int, layer.weight_quant.bits[0]).detach().clone()
            del layer._buffers["weight_int"]  # type: ignore[attr-defined]
            layer.weight = nn.Parameter(w)  # type: ignore[attr-defined]
    if layers:
        set_precision(m, None)
    for name, sub in list(m.named_modules()):
        if isinstance(sub, nn.Hardsigmoid):
            m.set_submodule(name, TwiceDifferentiableHardsigmoid())
    return m


class TwiceDifferentiableHardsigmoid(nn.Module):
    """``hardsigmoid`` as ``relu6(x + 3) / 6``: the same function, but PyTorch's fused
    ``hardsigmoid_backward`` has no derivative of its own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + 3.0) / 6.0


def default_loss(output: Any, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the model's logits (a Hugging Face output's ``.logits``; a sequence
    model's ``[batch, tokens, classes]`` logits against ``[batch, tokens]`` targets, per token)."""
    logits = output_tensor(output)
    if logits.dim() > 2:
        return F.cross_entropy(logits.flatten(0, -2), target.flatten(), reduction=reduction)
    return F.cross_entropy(logits, target, reduction=reduction)


def _double_backward_error(e: RuntimeError) -> Exception:
    """A clear error for an op without double backward (``e`` itself for anything else)."""
    found = re.search(r"derivative for (\S+) is not implemented", str(e))
    if found is None:
        return e
    op = found.group(1)
    forward = op.split("::")[-1].removesuffix("_backward")
    return ValueError(
        f"Hessian traces need the second derivative of every op, and PyTorch implements none for {op} "
        f"(the backward of {forward!r}): replace {forward!r} in the model by a twice-differentiable equivalent "
        f"(as bitswitch does for nn.Hardsigmoid), or compute traces on a model without it")


def _targets(model: nn.Module, layers: Iterable[str] | None) -> dict[str, nn.Parameter]:
    quant = [n for n, l in model.named_modules() if isinstance(l, QuantLayer)]
    names = quant or [n for n, l in model.named_modules() if isinstance(l, (nn.Conv2d, nn.Linear))]
    if layers is not None:
        wanted = list(layers)
        every = {n for n, l in model.named_modules() if isinstance(l, (nn.Conv2d, nn.Linear))}
        unknown = [n for n in wanted if n not in every]
        if unknown:
            raise ValueError(f"unknown layer(s) {unknown}; Conv2d/Linear layers: {sorted(every)[:10]}...")
        names = wanted
    if not names:
        raise ValueError("model has no Conv2d or Linear layer to take Hessian traces of")
    return {n: model.get_submodule(n).weight for n in names}  # type: ignore[misc]


def hessian_traces(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    tol: float = 0.05,
    max_iter: int = 100,
    min_iter: int = 3,
    layers: Iterable[str] | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, LayerTrace]:
    """Hutchinson trace of each layer's weight Hessian (quantized layers by default).

    Args:
        batches: ``(inputs, targets)`` pairs (inputs: a tensor, a tuple of positional arguments or a
            dict of keyword arguments, as :func:`~bitswitch.nn.dataflow.run_model` takes them); all of them form the loss
            (materialised once).
        loss_fn: ``loss_fn(model output, targets)``, the mean loss of one batch (default:
            :func:`default_loss`, cross-entropy of the logits).
        tol: stop a layer when ``stderr(mean) / |mean| < tol``.
        max_iter: iteration cap; layers still above ``tol`` then report ``converged=False``.
        layers: restrict to these layer names (default: every quantized layer, or every
            Conv2d/Linear of an unquantized model).
        progress: called as ``progress(iteration, layers_still_running)``.
    """
    if tol <= 0 or max_iter < 1 or min_iter < 2:
        raise ValueError(f"need tol > 0, max_iter >= 1 and min_iter >= 2, got tol={tol}, max_iter={max_iter}, min_iter={min_iter}")
    data = [(x, y) for x, y in batches]
    if not data:
        raise ValueError("no data for the Hessian: pass at least one (inputs, targets) batch")
    total = sum(int(first_tensor(x).shape[0]) for x, _ in data)
    loss_fn = loss_fn or default_loss
    m = float_copy(model).eval()
    params = _targets(m, layers)
    for p in m.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    gen = torch.Generator().manual_seed(seed)
    samples: dict[str, list[float]] = {n: [] for n in params}
    active = list(params)
    done: dict[str, tuple[int, bool, float]] = {}
    for it in range(1, max_iter + 1):
        est = {n: 0.0 for n in active}
        plist = [params[n] for n in active]
        for x, y in data:
            vs = [torch.randint(0, 2, p.shape, generator=gen).to(p.dtype).mul_(2).sub_(1) for p in plist]
            try:
                with sdpa_kernel(SDPBackend.MATH):
                    loss = loss_fn(run_model(m, x), y)
                    grads = torch.autograd.grad(loss, plist, create_graph=True)
                    hv = torch.autograd.grad(grads, plist, grad_outputs=vs)
            except RuntimeError as e:
                clear = _double_backward_error(e)
                if clear is e:
                    raise
                raise clear from e
            w = first_tensor(x).shape[0] / total
            for n, v, h in zip(active, vs, hv):
                est[n] += w * float((v * h).sum())
        still = []
        for n in active:
            s = samples[n]
            s.append(est[n])
            rel = _rel_stderr(s)
            if len(s) >= min_iter and rel < tol:
                done[n] = (len(s), True, rel)
            else:
                still.append(n)
        active = still
        if progress is not None:
            progress(it, len(active))
        if not active:
            break
    for n in active:
        done[n] = (len(samples[n]), False, _rel_stderr(samples[n]))
    return {
        n: LayerTrace(n, sum(samples[n]) / len(samples[n]), params[n].numel(), done[n][0], done[n][1], done[n][2])
        for n in params
    }


def _rel_stderr(s: list[float]) -> float:
    if len(s) < 2:
        return math.inf
    mean = sum(s) / len(s)
    var = sum((v - mean) ** 2 for v in s) / (len(s) - 1)
    return math.sqrt(var / len(s)) / max(abs(mean), 1e-30)


def save_traces(path: str | os.PathLike, traces: Mapping[str, LayerTrace], **meta: Any) -> Path:
    """Write traces as JSON (what ``bitswitch search`` and HASB training read)."""
    from ..export.checkpoint import atomic_write_json

    doc = {"format": FORMAT, "version": 1, **meta, "layers": {n: t.as_dict() for n, t in traces.items()}}
    return atomic_write_json(path, doc)


def load_traces(path: str | os.PathLike) -> dict[str, LayerTrace]:
    """Read a trace file written by :func:`save_traces` (``ValueError`` if it is not one)."""
    from ..export.checkpoint import read_tagged_json

    path = Path(path)
    doc = read_tagged_json(
        path, FORMAT,
        missing=f"Hessian trace file not found: {path}; compute it first with `bitswitch hessian CKPT --data ... --out {path}`",
        wrong=f"{path}: not a bitswitch Hessian trace file (expected format={FORMAT!r}; write it with `bitswitch hessian`)",
    )
    out = {}
    for n, d in doc["layers"].items():
        try:
            out[n] = LayerTrace(n, float(d["trace"]), int(d["n_params"]), int(d["iterations"]), bool(d["converged"]), float(d["rel_stderr"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: layer {n!r} entry is malformed ({e})") from None
    return out


def sensitivity(traces: Mapping[str, LayerTrace]) -> dict[str, float]:
    """``t_l / n_l`` per layer: the quantity the roulette sampler and the ILP objective use."""
    return {n: t.trace_per_param for n, t in traces.items()}


def convergence_warning(traces: Mapping[str, LayerTrace], shown: int = 8) -> str | None:
    """Which layers' traces did not converge (their relative standard error, worst first), or None.

    Their estimates still enter the search and the HASB roulette as they are, only less certain.
    """
    bad = sorted((t for t in traces.values() if not t.converged), key=lambda t: -t.rel_stderr)
    if not bad:
        return None
    listed = ", ".join(f"{t.name} ({t.rel_stderr:.3f})" for t in bad[:shown]) + (f" and {len(bad) - shown} more" if len(bad) > shown else "")
    return f"{len(bad)} of {len(traces)} layers did not converge (relative standard error of the trace): {listed}"


def trace_table(traces: Mapping[str, LayerTrace]) -> str:
    """A plain-text table of the traces, one layer per line."""
    rows = [(t.name, f"{t.n_params:,}", f"{t.trace:.4g}", f"{t.trace_per_param:.4g}", t.iterations, f"{t.rel_stderr:.3f}", "yes" if t.converged else "NO")
            for t in traces.values()]
    return format_table(["layer", "params", "trace", "trace/param", "iters", "rel.stderr", "converged"], rows)


__all__ = ["FORMAT", "LayerTrace", "convergence_warning", "default_loss", "float_copy", "hessian_traces", "load_traces", "save_traces", "sensitivity", "trace_table"]


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:  # used by the benchmark and the CLI
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0
