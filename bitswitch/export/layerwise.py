"""Layer-by-layer comparison of activation codes between an exported file and the PyTorch model.

Top-1 agreement says *whether* onnxruntime and PyTorch disagree, not *where*. This module reads,
for every quantized layer, the integer codes of its input in both: onnxruntime's from the file's
``QuantizeLinear`` (or integer ``Clip``) outputs, exposed as extra graph outputs, and PyTorch's
from the layer's activation quantizer. The two failure patterns look different:

* a real export fault (a wrong scale, zero point or weight) shows as a layer whose codes suddenly
  disagree in bulk (here: the layer *after* the faulty one, whose input it produces);
* rounding noise shows as codes that first differ at a rate of ~1e-5 (an activation exactly at a
  rounding tie, where the integer kernel's float32 requantization and PyTorch's arithmetic land on
  different sides) and then grow layer by layer as each flipped code perturbs the next layer.

Against a float64 copy of the model (``reference="float64"``, the default) the PyTorch side is
near-exact, so the counts measure the file's own rounding.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..table import format_table
from .onnx_graph import container_types, require_onnx
from .onnx_runtime import batch_size, model_input, onnx_feed, ort_session, reference_model, run_reference


@dataclass
class LayerCodes:
    """How one layer's input codes compare: ``mismatched`` of ``codes`` differ, by at most ``max_diff``."""

    name: str
    codes: int
    mismatched: int
    max_diff: int

    @property
    def fraction(self) -> float:
        return self.mismatched / self.codes if self.codes else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fraction": self.fraction}


def _with_code_outputs(path: str | os.PathLike, layers: Sequence[Any], out_dir: str) -> str:
    """A copy of the file at ``path`` with every layer's input-code tensor as an extra graph output."""
    onnx = require_onnx()
    proto = onnx.load(str(path))
    have = {o.name for o in proto.graph.output}
    for lt in layers:
        if lt.act_codes in have:
            continue
        elem = container_types()[lt.act_type][0]
        proto.graph.output.append(onnx.helper.make_tensor_value_info(lt.act_codes, elem, None))
        have.add(lt.act_codes)
    out = str(Path(out_dir) / "with_codes.onnx")
    onnx.save(proto, out)
    return out


def _crop(codes: torch.Tensor, pad: Sequence[int]) -> torch.Tensor:
    """Drop the zero padding PyTorch applied before the quantizer and the file folded into the conv."""
    top, left, bottom, right = pad
    return codes[..., top: codes.shape[-2] - bottom, left: codes.shape[-1] - right]


@torch.no_grad()
def compare_layer_codes(
    model: nn.Module,
    path: str | os.PathLike,
    report: Any,
    batches: Iterable[Any],
    *,
    reference: str = "float64",
) -> list[LayerCodes]:
    """Compare every quantized layer's input codes in onnxruntime and in PyTorch, in model order.

    ``report`` is the :class:`~bitswitch.export.onnx.ExportReport` that :func:`export_onnx` returned
    for ``path`` (it names each layer's code tensor in the file). ``reference="float64"`` (default)
    runs a float64 copy of the model (``model`` is left as it is), ``"float32"`` the model itself.
    """
    ref, dtype = reference_model(model, reference)
    layers = [lt for lt in report.layers if lt.act_codes is not None]
    if not layers:
        raise ValueError("the file has no quantized activations to compare (an --fp32 export?)")
    bad = sorted({lt.act_type for lt in layers if lt.act_type not in ("uint8", "int8", "uint16", "int16")})
    if bad:
        raise ValueError(f"layer-by-layer comparison reads codes from 8/16-bit containers only; the file has {', '.join(bad)} "
                         "(export with container='int8')")
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    for lt in layers:
        layer = ref.get_submodule(lt.name)
        scale = float(layer.act_quant.qparams(lt.a_bits)[0])

        def hook(module, args, out, lt=lt, scale=scale):
            captured[lt.name] = _crop(torch.round(out.double() / scale).to(torch.int64) + lt.act_zero_point, lt.act_pad)

        hooks.append(layer.act_quant.register_forward_hook(hook))
    counts = {lt.name: [0, 0, 0] for lt in layers}
    seen = 0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            sess = ort_session(_with_code_outputs(path, layers, tmp))
            names = [o.name for o in sess.get_outputs()]
            for batch in batches:
                x = model_input(batch)
                got = dict(zip(names, sess.run(None, onnx_feed(sess, x))))
                captured.clear()
                run_reference(ref, x, dtype)
                for lt in layers:
                    mine = captured[lt.name]
                    theirs = torch.from_numpy(got[lt.act_codes].astype(np.int64))
                    if theirs.shape != mine.shape:
                        raise ValueError(f"layer {lt.name!r}: the file's codes have shape {tuple(theirs.shape)}, the model's {tuple(mine.shape)}")
                    d = (theirs - mine).abs()
                    c = counts[lt.name]
                    c[0] += d.numel()
                    c[1] += int((d != 0).sum())
                    c[2] = max(c[2], int(d.max()) if d.numel() else 0)
                seen += batch_size(x)
    finally:
        for h in hooks:
            h.remove()
    if seen == 0:
        raise ValueError("layer-by-layer comparison needs at least one input batch")
    return [LayerCodes(lt.name, *counts[lt.name]) for lt in layers]


def format_layer_codes(rows: Sequence[LayerCodes]) -> str:
    """A plain-text table of the comparison, one layer per line."""
    return format_table(["layer (input codes)", "codes", "differ", "max |diff|"],
                        [(r.name, f"{r.codes:,}", f"{100 * r.fraction:.4f}%", r.max_diff) for r in rows])


__all__ = ["LayerCodes", "compare_layer_codes", "format_layer_codes"]
