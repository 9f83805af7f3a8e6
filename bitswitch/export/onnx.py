"""ONNX export with QuantizeLinear/DequantizeLinear pairs, and verification in onnxruntime.

Why this module is ~800 lines: it is one translator over one ``torch.fx`` trace (tracing, folding,
code widening, bias snapping, fusion rules, report). The capture path is being replaced by a
``torch.export``-based one shared with post-training quantization (issue "Bring your own model");
it is split then, along the new capture, rather than twice.

The graph is built directly from a ``torch.fx`` trace with ``onnx.helper`` (no ``torch.onnx``), so
every scale and integer grid in the file is the one the model computes with, read only through
``layer.weight_qparams(bits)`` and ``layer.act_quant.qparams(bits)``:

* a quantized layer becomes ``Q(x) -> [integer Clip] -> DQ -> Conv/Gemm`` with its weight stored as
  integer codes in the file and dequantized per output channel (``DQ(codes, step, axis=0)``); where
  the conv's output is quantized next, its bias becomes an int32 initializer on the ``s_x · s_w`` grid
  and a ReLU/Clip in between becomes an integer Clip after the Q, which is the pattern onnxruntime
  fuses into an integer kernel (``QLinearConv``, uint8 activations x int8 weights);
* containers: 5-8 bit grids use int8 weights / uint8 activations (a signed activation grid is
  shifted by 128), <= 4 bit grids the same (``container="int8"``, default) or int4/uint4 (``"int4"``,
  opset 21, half the bytes but no integer kernels in onnxruntime), 9-16 bit int16/uint16; a grid
  narrower than its container (e.g. 6-bit codes in uint8) is clipped to exactly the model's codes;
* a zero ``Pad`` feeding only a convolution is folded into the conv's ``pads``;
* a BatchNorm that directly follows a convolution is folded into it: the integer codes stay, the
  per-channel step absorbs ``gamma/sigma`` (a negative factor flips the codes' sign, or the step's
  where a code is the container minimum). A BatchNorm that cannot be folded (pre-activation ResNets
  normalise the sum of a residual addition) is kept as a ``BatchNormalization`` op and listed in the report;
* anything the exporter does not know raises :class:`UnsupportedOpError` naming the op.

This module translates the traced model; writing ONNX (integer containers, Q/DQ pairs, nodes and
initializers, the integer-Clip and pruning passes) lives in :mod:`bitswitch.export.onnx_graph`, and
running and verifying a file in onnxruntime in :mod:`bitswitch.export.onnx_runtime` (its names are
re-exported here). ``onnx`` and ``onnxruntime`` are optional (``pip install 'bitswitch[export]'``)
and imported lazily.
"""

from __future__ import annotations

import math
import operator
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..nn.batchnorm import SwitchableBatchNorm
from ..nn.fold import check_running_stats, fold_bn
from ..nn.layers import QuantConv2d, QuantLayer, QuantLinear
from ..nn.transitional_bn import TransitionalBatchNorm
from .onnx_graph import OUTPUT_NAME, GraphBuilder, container_for, container_types, require_onnx
from .onnx_runtime import (
    EXACT_U8S8_OPTION,
    INPUT_NAME,
    INTEGER_KERNELS,
    Agreement,
    VerificationError,
    cpu_int8_path,
    executed_kernels,
    ort_session,
    run_onnx,
    verify_onnx,
)

DEFAULT_OPSET = 21
#: ``metadata_props`` key under which a file names the onnxruntime session option its 8-bit layers need
SESSION_CONFIG_KEY = "onnxruntime_session_config_x86_without_vnni"
#: integer containers for <= 4-bit grids (see :func:`export_onnx`)
CONTAINERS = ("int8", "int4")


class UnsupportedOpError(ValueError):
    """The model contains an op the ONNX exporter cannot translate (the message names it)."""


# --------------------------------------------------------------------------------------------------
# tracing


_PASSTHROUGH_MODULES = (nn.Dropout, nn.Identity)
_LEAF_TYPES = (QuantLayer, SwitchableBatchNorm, TransitionalBatchNorm)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        # Quantized layers, per-bit BNs and shape-dependent padding modules are translated whole.
        if isinstance(m, _LEAF_TYPES) or type(m).__name__ == "SamePad2d":
            return True
        return super().is_leaf_module(m, qualname)


def _trace(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # fx raises several types for data-dependent Python
        raise UnsupportedOpError(f"the model cannot be traced by torch.fx ({type(e).__name__}: {e}); ONNX export needs a static graph") from None
    gm = fx.GraphModule(model, graph)
    with torch.no_grad():
        ShapeProp(gm).propagate(example)
    return gm


# --------------------------------------------------------------------------------------------------
# report


@dataclass
class LayerExport:
    name: str
    op: str
    w_bits: int | None
    a_bits: int | None
    weight_type: str  # "int8", "int4", ... or "float"
    act_type: str | None
    act_clipped: bool  # grid narrower than the container: a Clip precedes the QuantizeLinear
    folded_bn: str | None
    #: the QDQ pattern around this layer is one onnxruntime fuses into an integer kernel (QLinearConv)
    fusable: bool = False
    #: the integer kernel onnxruntime runs this layer with ("QLinearConv", "MatMulIntegerToFloat"), or None (float)
    kernel: str | None = None
    #: integer kernel with 8-bit activations and weight codes beyond +-WIDE_CODE_LIMIT: exact on x86
    #: CPUs without VNNI only with onnxruntime's ``session.x64quantprecision`` option (see ``ort_session``)
    needs_exact_u8s8: bool = False
    #: the file's tensor of this layer's input codes (after any integer Clip), its zero point, and the
    #: ``(top, left, bottom, right)`` zero padding folded into the conv: what
    #: :func:`~bitswitch.export.layerwise.compare_layer_codes` compares with the model's own codes
    act_codes: str | None = None
    act_zero_point: int | None = None
    act_pad: list[int] = field(default_factory=lambda: [0, 0, 0, 0])


@dataclass
class ExportReport:
    path: str
    opset: int
    file_bytes: int
    fp32: bool
    input_shape: list[int]
    container: str = "int8"
    layers: list[LayerExport] = field(default_factory=list)
    unfolded_bn: list[str] = field(default_factory=list)
    op_counts: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# weight codes


#: largest weight code after :func:`_widen_codes`: ``255 * 64 * 2 < 2^15``, so even CPUs without VNNI
#: (whose u8s8 kernels add pairs of products in int16 with saturation) compute such layers exactly.
WIDE_CODE_LIMIT = 64


def _widen_codes(codes: torch.Tensor, step: torch.Tensor, bias: torch.Tensor | None, s_x: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-express each output channel's weights on a finer grid with the same values.

    An integer kernel adds the bias as an int32 on the ``s_x * s_w`` grid; the rounding error (up to
    half of it) can flip output codes when ``s_w`` is coarse, as for <= 4-bit weights in an int8
    container. Multiplying a channel's codes by a power of two ``k`` (as far as :data:`WIDE_CODE_LIMIT`
    allows) and dividing its step by ``k`` is exact in floating point and makes that grid ``k`` times
    finer. A channel whose codes are all zero (a dead filter) has a free step: it is chosen so its bias
    sits on a grid ``2^-24`` of its size (the model's step, often ~1e-12, would overflow int32).
    """
    flat = codes.reshape(codes.shape[0], -1).abs().amax(1).double()
    alive = flat > 0
    k = torch.ones_like(step)
    k[alive] = torch.floor(torch.log2(WIDE_CODE_LIMIT / flat[alive])).clamp(min=0).exp2()
    view = (-1,) + (1,) * (codes.dim() - 1)
    codes = codes * k.to(codes.dtype).reshape(view)
    step = step / k
    if s_x is not None and not bool(alive.all()):
        mag = bias.abs()[~alive] if bias is not None else torch.zeros(int((~alive).sum()), dtype=step.dtype)
        step[~alive] = torch.where(mag > 0, mag / (s_x * 2.0**24), torch.ones_like(mag))
    if s_x is not None and bias is not None:
        # A nearly dead filter (tiny step, large bias) would put its bias beyond int32 on the s_x*s_w
        # grid. Its weights are re-rounded onto the grid that fits (bias = 2^30 steps): each weight
        # moves by at most 2^-31 of the bias, below float32 resolution of the bias it is added to.
        limit = bias.abs() / (s_x * 2.0**30)
        over = alive & (step.abs() < limit)
        if bool(over.any()):
            new = torch.where(over, limit * torch.sign(step), step)
            codes = torch.where(over.reshape(view), torch.round(codes * (step / new).reshape(view)), codes)
            step = new
    return codes, step


# --------------------------------------------------------------------------------------------------
# translation


def _active_bn(m: nn.Module) -> nn.modules.batchnorm._BatchNorm:
    if isinstance(m, SwitchableBatchNorm):
        return m.bn[str(m.active_bits)]
    if isinstance(m, TransitionalBatchNorm):
        return m.bn[m.active]
    return m  # type: ignore[return-value]


def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, (SwitchableBatchNorm, TransitionalBatchNorm, nn.BatchNorm2d))


def _check_bn(bn: nn.modules.batchnorm._BatchNorm) -> None:
    try:
        check_running_stats(bn)
    except ValueError as e:
        raise UnsupportedOpError(f"{e}; it cannot be exported") from None


def _pair(v: Any) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(a) for a in v]


class _Translator:
    def __init__(self, gm: fx.GraphModule, builder: GraphBuilder, report: ExportReport, snap_bias: bool = False):
        self.gm, self.builder, self.report, self.snap_bias = gm, builder, report, snap_bias
        self.modules = dict(gm.named_modules())
        self.env: dict[fx.Node, str] = {}
        self.fold: dict[fx.Node, tuple[str, nn.modules.batchnorm._BatchNorm]] = {}
        self.folded_bn_nodes: set[fx.Node] = set()
        self.clip_bounds: dict[str, tuple[float, float]] = {}
        self.pads: dict[str, tuple[str, tuple[int, int, int, int]]] = {}  # Pad output -> (input, (top, left, bottom, right))

    def shape(self, node: fx.Node) -> list[int]:
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            raise UnsupportedOpError(f"node {node.name!r} ({node.op} {node.target}) does not produce a single tensor")
        return list(meta.shape)

    def plan_folds(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op != "call_module" or not _is_bn(self.modules[node.target]):
                continue
            src = node.args[0]
            if (
                isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1
                and isinstance(self.modules[src.target], nn.Conv2d)
            ):
                self.fold[src] = (node.target, _active_bn(self.modules[node.target]))
                self.folded_bn_nodes.add(node)

    def run(self) -> str:
        self.plan_folds()
        out_name = None
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                if self.env:
                    raise UnsupportedOpError("models with more than one input are not supported by the ONNX exporter")
                self.env[node] = INPUT_NAME
            elif node.op == "output":
                res = node.args[0]
                if not isinstance(res, fx.Node):
                    raise UnsupportedOpError("the model must return a single tensor to be exported")
                out_name = self.env[res]
            elif node.op == "call_module":
                self.env[node] = self.call_module(node, self.modules[node.target])
            elif node.op == "call_function":
                self.env[node] = self.call_function(node)
            elif node.op == "call_method":
                self.env[node] = self.call_method(node)
            else:
                raise UnsupportedOpError(f"unsupported graph node {node.op} {node.target!r}")
        assert out_name is not None
        # name the graph output
        self.builder.nodes.append(self.builder.onnx.helper.make_node("Identity", [out_name], [OUTPUT_NAME], name="output_identity"))
        return OUTPUT_NAME

    def arg(self, a: Any) -> str:
        if isinstance(a, fx.Node):
            return self.env[a]
        if isinstance(a, (int, float)):
            return self.builder.init("const", np.array(a, np.float32))
        raise UnsupportedOpError(f"unsupported argument {a!r}")

    # ---------------------------------------------------------------------------------------------
    def call_module(self, node: fx.Node, m: nn.Module) -> str:
        x = node.args[0]
        name = node.target
        if isinstance(m, (QuantConv2d, QuantLinear)) or type(m) in (nn.Conv2d, nn.Linear):
            return self.layer(node, name, m)
        if _is_bn(m):
            if node in self.folded_bn_nodes:
                return self.env[x]
            bn = _active_bn(m)
            _check_bn(bn)
            if len(self.shape(node)) != 4:
                raise UnsupportedOpError(f"BatchNorm {name!r} on a {len(self.shape(node))}-D tensor is not supported")
            self.report.unfolded_bn.append(name)
            builder = self.builder
            # kept as an op (its input is not a convolution's sole output, e.g. a residual sum)
            return builder.node("BatchNormalization", [self.env[x], builder.init(f"{name}.scale", bn.weight.detach().float().numpy() if bn.weight is not None else np.ones(bn.num_features, np.float32)),
                          builder.init(f"{name}.bias", bn.bias.detach().float().numpy() if bn.bias is not None else np.zeros(bn.num_features, np.float32)),
                          builder.init(f"{name}.mean", bn.running_mean.float().numpy()), builder.init(f"{name}.var", bn.running_var.float().numpy())], name, epsilon=float(bn.eps))
        if isinstance(m, nn.ReLU):
            return self.relu(self.env[x], name)
        if isinstance(m, (nn.ReLU6, nn.Hardtanh)):
            lo, hi = (0.0, 6.0) if isinstance(m, nn.ReLU6) else (float(m.min_val), float(m.max_val))
            return self.clip(self.env[x], lo, hi, name)
        if isinstance(m, _PASSTHROUGH_MODULES):
            return self.env[x]
        if isinstance(m, nn.AdaptiveAvgPool2d):
            if _pair(m.output_size) != [1, 1]:
                raise UnsupportedOpError(f"AdaptiveAvgPool2d({m.output_size}) at {name!r}: only output size 1 is supported")
            return self.builder.node("GlobalAveragePool", [self.env[x]], name)
        if isinstance(m, nn.Flatten):
            return self.flatten(self.env[x], m.start_dim, m.end_dim, node, name)
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            return self.pool(node, m, name)
        if type(m).__name__ == "SamePad2d":
            _, _, hgt, wid = self.shape(x)  # type: ignore[arg-type]
            top, bottom = m.amount(hgt, m.kernel_size, m.stride)
            left, right = m.amount(wid, m.kernel_size, m.stride)
            if top == bottom == left == right == 0:
                return self.env[x]
            return self.pad(self.env[x], [left, right, top, bottom], name)
        raise UnsupportedOpError(f"unsupported module {type(m).__module__}.{type(m).__name__} at {name!r}: the ONNX exporter has no translation for it")

    def call_function(self, node: fx.Node) -> str:
        f = node.target
        a, kw = node.args, node.kwargs
        nm = getattr(f, "__name__", str(f))
        if f in (operator.add, torch.add):
            return self.builder.node("Add", [self.arg(a[0]), self.arg(a[1])], "add")
        if f in (operator.mul, torch.mul):
            return self.builder.node("Mul", [self.arg(a[0]), self.arg(a[1])], "mul")
        if f in (F.relu, torch.relu):
            return self.relu(self.arg(a[0]), "relu")
        if f is F.relu6:
            return self.clip(self.arg(a[0]), 0.0, 6.0, "relu6")
        if f is F.hardtanh:
            return self.clip(self.arg(a[0]), float(kw.get("min_val", a[1] if len(a) > 1 else -1.0)), float(kw.get("max_val", a[2] if len(a) > 2 else 1.0)), "hardtanh")
        if f is torch.flatten:
            return self.flatten(self.arg(a[0]), kw.get("start_dim", a[1] if len(a) > 1 else 0), kw.get("end_dim", a[2] if len(a) > 2 else -1), node, "flatten")
        if f is F.adaptive_avg_pool2d:
            size = kw.get("output_size", a[1] if len(a) > 1 else None)
            if _pair(size) != [1, 1]:
                raise UnsupportedOpError(f"adaptive_avg_pool2d(output_size={size}): only output size 1 is supported")
            return self.builder.node("GlobalAveragePool", [self.arg(a[0])], "gap")
        if f is F.pad:
            pads = list(kw.get("pad", a[1]))
            mode = kw.get("mode", a[2] if len(a) > 2 else "constant")
            value = kw.get("value", a[3] if len(a) > 3 else None)
            if mode != "constant" or value not in (None, 0, 0.0) or len(pads) != 4:
                raise UnsupportedOpError(f"F.pad(pad={pads}, mode={mode!r}, value={value}): only 2-D zero padding is supported")
            return self.pad(self.arg(a[0]), pads, "pad")
        if f is torch.cat:
            tensors = kw.get("tensors", a[0])
            dim = kw.get("dim", a[1] if len(a) > 1 else 0)
            return self.builder.node("Concat", [self.arg(t) for t in tensors], "concat", axis=int(dim))
        raise UnsupportedOpError(f"unsupported function {getattr(f, '__module__', '')}.{nm} (node {node.name!r}): the ONNX exporter has no translation for it")

    def call_method(self, node: fx.Node) -> str:
        meth, a = node.target, node.args
        if meth == "relu":
            return self.relu(self.arg(a[0]), "relu")
        if meth == "flatten":
            return self.flatten(self.arg(a[0]), node.kwargs.get("start_dim", a[1] if len(a) > 1 else 0), node.kwargs.get("end_dim", a[2] if len(a) > 2 else -1), node, "flatten")
        if meth in ("view", "reshape"):
            shape = self.shape(node)
            target = [0] + [int(d) for d in shape[1:]]  # keep the batch dimension dynamic
            return self.builder.node("Reshape", [self.arg(a[0]), self.builder.init("shape", np.array(target, np.int64))], "reshape")
        raise UnsupportedOpError(f"unsupported tensor method .{meth}() (node {node.name!r}): the ONNX exporter has no translation for it")

    # ---------------------------------------------------------------------------------------------
    def relu(self, x: str, base: str) -> str:
        out = self.builder.node("Relu", [x], base)
        self.builder.act_bounds[out] = (0.0, math.inf)
        return out

    def clip(self, x: str, lo: float, hi: float, base: str) -> str:
        out = self.builder.node("Clip", [x, self.builder.init(f"{base}_min", np.array(lo, np.float32)), self.builder.init(f"{base}_max", np.array(hi, np.float32))], base)
        self.clip_bounds[out] = (lo, hi)
        self.builder.act_bounds[out] = (lo, hi)
        return out

    def pad(self, x: str, lrtb: Sequence[int], base: str) -> str:
        left, right, top, bottom = (int(v) for v in lrtb)
        pads = np.array([0, 0, top, left, 0, 0, bottom, right], np.int64)
        out = self.builder.node("Pad", [x, self.builder.init(f"{base}_pads", pads)], base, mode="constant")
        self.pads[out] = (x, (top, left, bottom, right))
        return out

    def fold_pad(self, node: fx.Node, m: nn.Module) -> tuple[str, tuple[int, int, int, int]]:
        """The conv's input and extra ``(top, left, bottom, right)`` padding, skipping a zero ``Pad`` in front.

        A constant-zero Pad whose only consumer is this convolution becomes part of the Conv's
        ``pads`` attribute (asymmetric pads are legal ONNX). Quantization commutes with it: the
        padded zeros quantize to the zero point, which is what a Conv pads a quantized input with.
        This keeps Pad out of the ``Q -> DQ -> Conv`` pattern onnxruntime fuses.
        """
        src = node.args[0]
        x = self.env[src]
        if isinstance(m, nn.Conv2d) and x in self.pads and isinstance(src, fx.Node) and len(src.users) == 1:
            return self.pads[x]
        return x, (0, 0, 0, 0)

    def flatten(self, x: str, start: int, end: int, node: fx.Node, base: str) -> str:
        if end != -1 and end != len(self.shape(node.args[0])) - 1:  # type: ignore[arg-type]
            raise UnsupportedOpError(f"flatten(start_dim={start}, end_dim={end}): only flattening to the last dimension is supported")
        return self.builder.node("Flatten", [x], base, axis=int(start))

    def pool(self, node: fx.Node, m: nn.Module, name: str) -> str:
        k, s, p = _pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding)
        attrs: dict[str, Any] = dict(kernel_shape=k, strides=s, pads=p + p, ceil_mode=int(m.ceil_mode))
        if isinstance(m, nn.MaxPool2d):
            if _pair(m.dilation) != [1, 1] or m.return_indices:
                raise UnsupportedOpError(f"MaxPool2d at {name!r} with dilation or return_indices is not supported")
            return self.builder.node("MaxPool", [self.env[node.args[0]]], name, **attrs)
        if m.divisor_override is not None:
            raise UnsupportedOpError(f"AvgPool2d at {name!r} with divisor_override is not supported")
        return self.builder.node("AveragePool", [self.env[node.args[0]]], name, count_include_pad=int(m.count_include_pad), **attrs)

    def layer(self, node: fx.Node, name: str, m: nn.Module) -> str:
        builder, fp32 = self.builder, self.builder.fp32
        x, extra = self.fold_pad(node, m)
        quant = isinstance(m, QuantLayer)
        w_bits = m.w_bits if quant else None
        a_bits = m.a_bits if quant else None
        if quant and w_bits is None and m.is_integer:
            raise ValueError(f"layer {name!r} has no precision set")
        act_type, clipped, s_x, act_q = None, False, None, None
        if a_bits is not None and not fp32:
            scale, zp, lo, hi = m.act_quant.qparams(a_bits)
            zp = int(zp.reshape(-1)[0]) if isinstance(zp, torch.Tensor) else int(zp)
            if isinstance(scale, torch.Tensor) and scale.numel() != 1:
                raise UnsupportedOpError(f"layer {name!r}: per-channel activation scales are not supported by the exporter")
            s_x = float(scale)
            x, act_type, clipped = builder.qdq(x, s_x, zp, lo, hi, a_bits, name)
            act_q = builder.q_of_dq[x]
        elif a_bits is not None:  # fp32 reference graph: the activation grid is dropped
            pass

        if w_bits is not None:
            codes, step = m.weight_qparams(w_bits)
            codes, step = codes.to(torch.int64), step.double()
        else:
            weight = m.weight.detach().double()
            codes, step = None, None
        bias = m.bias.detach().double() if m.bias is not None else None

        wtype = "float"
        if codes is not None:
            wtype = container_for(w_bits, -(2 ** (w_bits - 1)), 2 ** (w_bits - 1) - 1, builder.int4 and builder.opset >= 21)
        folded = None
        if node in self.fold:
            folded, bn = self.fold[node]
            _check_bn(bn)
            factor, bias = fold_bn(bn, bias, torch.float64)
            if codes is not None:
                # a negative factor negates the channel's codes; where a code is the container's minimum
                # (-128 in int8) that would overflow, so that channel's step carries the sign instead
                # (onnxruntime's DequantizeLinear and QLinearConv handle negative per-channel scales).
                stuck = (codes.reshape(codes.shape[0], -1) == container_types()[wtype][1]).any(1)
                flip = (factor < 0) & ~stuck
                codes = torch.where(flip.reshape(-1, *[1] * (codes.dim() - 1)), -codes, codes)
                step = step * torch.where(flip, -factor, factor)
            else:
                weight = weight * factor.reshape(-1, *[1] * (weight.dim() - 1))

        if codes is not None and not fp32:
            onnx_type = container_types()[wtype][0]
            if wtype == "int8":
                codes, step = _widen_codes(codes, step, bias, s_x)
            wq = builder.init(f"{name}.weight_int", codes.numpy(), onnx_type)
            ws = builder.init(f"{name}.weight_step", step.float().numpy())
            wz = builder.init(f"{name}.weight_zp", np.zeros(step.shape[0], np.int64), onnx_type)
            w = builder.node("DequantizeLinear", [wq, ws, wz], f"{name}_weight_dq", axis=0)
        else:
            wtype = "float"  # an fp32 reference graph stores dequantized weights
            wf = (codes.double() * step.reshape(-1, *[1] * (codes.dim() - 1))) if codes is not None else weight
            w = builder.init(f"{name}.weight", wf.float().numpy())

        inputs = [x, w]
        if bias is not None:  # float here; turned into int32 on the s_x*s_w grid where a kernel fuses
            inputs.append(builder.init(f"{name}.bias", bias.float().numpy()))
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            if isinstance(m.padding, str):
                raise UnsupportedOpError(f"Conv2d {name!r} with padding={m.padding!r} is not supported; use integer padding")
            ph, pw = m.padding
            top, left, bottom, right = extra
            out = builder.node("Conv", inputs, name, kernel_shape=[kh, kw], strides=list(m.stride), pads=[ph + top, pw + left, ph + bottom, pw + right],
                         dilations=list(m.dilation), group=int(m.groups))
            op = "Conv"
        else:
            if len(self.shape(node.args[0])) != 2:  # type: ignore[arg-type]
                raise UnsupportedOpError(f"Linear {name!r} on a {len(self.shape(node.args[0]))}-D input: only 2-D inputs are supported")  # type: ignore[arg-type]
            out = builder.node("Gemm", inputs, name, transB=1)
            op = "Gemm"
        entry = LayerExport(name, op, w_bits, a_bits, wtype, act_type, clipped, folded, act_pad=list(extra))
        if act_q is not None:  # the Q's output; export_onnx resolves it to the codes after any integer Clip
            entry.act_codes, entry.act_zero_point = act_q, builder.q_info[act_q][2]
        self.report.layers.append(entry)
        if wtype != "float":
            builder.pending.append({"entry": entry, "out": out, "dq": [inputs[1]], "ndim": codes.dim(), "s_x": s_x, "step": step.float().numpy(),
                              "max_code": int(codes.abs().max())})
        return out

    def finalize_weights(self) -> None:
        """Keep ``DequantizeLinear`` on weights only where onnxruntime fuses the layer into an integer kernel.

        Elsewhere the weight is dequantized by ``Cast`` and ``Mul``, which onnxruntime constant-folds
        once at load time (a ``DequantizeLinear`` on an initializer is deliberately *not* folded, and
        costs a full dequantization per inference). The file still holds the integer codes either way.
        """
        builder = self.builder
        builder.absorb_activations()
        _, consumers = builder.links()
        containers = container_types()
        integer_outputs: set[str] = set()  # outputs of layers onnxruntime runs as integer kernels
        for p in builder.pending:
            entry: LayerExport = p["entry"]
            q_after = self._q_after(p["out"], consumers)
            entry.fusable = q_after is not None and self._fusable(q_after, entry, containers)
            if entry.fusable and not self._int32_bias(p):
                entry.fusable = False
            entry.kernel = "QLinearConv" if entry.fusable else None
            if q_after is None and self._as_matmul(p, integer_outputs):
                entry.kernel = "MatMulIntegerToFloat"
            if entry.kernel is not None:
                integer_outputs.add(p["out"])
                entry.needs_exact_u8s8 = entry.a_bits is not None and entry.a_bits > 7 and p["max_code"] > WIDE_CODE_LIMIT
            if entry.kernel == "MatMulIntegerToFloat":
                continue
            if q_after is not None:
                if not entry.fusable:
                    self._bias_as_add(p)
                # In the DQ->Conv->Q pattern onnxruntime 1.32 fuses even a *float* constant weight into
                # a QLinearConv, re-quantizing it with its own grid (and fails for int4 inputs), so the
                # weight keeps its DequantizeLinear and thus the model's own codes and steps.
                continue
            T = builder.onnx.TensorProto
            for dq_name in p["dq"]:
                idx = next(i for i, n in enumerate(builder.nodes) if n.output[0] == dq_name)
                dq = builder.nodes[idx]
                scale = builder.array(dq.input[1])
                shape = [-1] + [1] * (p["ndim"] - 1) if dq_name.endswith("_weight_dq") else [-1]
                sname = builder.init(f"{dq.input[1]}_bcast", scale.reshape(shape).astype(np.float32))
                cast = builder.fresh(f"{dq_name}_cast")
                builder.nodes[idx: idx + 1] = [
                    builder.onnx.helper.make_node("Cast", [dq.input[0]], [cast], name=cast, to=T.FLOAT),
                    builder.onnx.helper.make_node("Mul", [cast, sname], [dq_name], name=dq_name),
                ]

    def _as_matmul(self, p: dict[str, Any], integer_outputs: set[str]) -> bool:
        """Write a 1x1 convolution whose output stays float as ``MatMul`` over channels-last codes.

        A conv feeding a float residual addition (or the float head) cannot be a ``QLinearConv``, and
        as a float ``Conv`` it sits between onnxruntime's channels-last integer kernels and its blocked
        float layout, paying layout conversions on both sides (EfficientNet's projections). As
        ``Transpose -> MatMul(DQ(x), DQ(W^T)) -> Add(bias) -> Transpose`` it is one matrix product over
        the channels, which onnxruntime fuses into ``MatMulIntegerToFloat`` (uint8 x int8 codes, exact
        int32 accumulation, one scale per output channel), and its transpose optimizer cancels the
        transposes against those of the integer kernel in front. Only 1x1, stride-1, ungrouped,
        unpadded convs with 8-bit activations and int8 weights qualify, and only when their input
        codes come from an integer kernel (``integer_outputs``): behind a float op the layout change
        costs more than it saves (measured on ResNet-20's strided shortcuts). Returns False to leave
        the conv as it is.
        """
        builder, entry = self.builder, p["entry"]
        if entry.op != "Conv" or entry.weight_type != "int8" or entry.act_type not in ("int8", "uint8"):
            return False
        producer, _ = builder.links()
        conv = producer[p["out"]]
        attrs = {a.name: builder.onnx.helper.get_attribute_value(a) for a in conv.attribute}
        if list(attrs["kernel_shape"]) != [1, 1] or attrs["group"] != 1 or any(attrs["pads"]) or list(attrs["strides"]) != [1, 1]:
            return False
        src = producer.get(conv.input[0])  # DQ <- [integer Clip <-] Q <- the producing layer
        while src is not None and src.op_type in ("DequantizeLinear", "Clip"):
            src = producer.get(src.input[0])
        if src is None or src.op_type != "QuantizeLinear" or src.input[0] not in integer_outputs:
            return False
        dq = producer[p["dq"][0]]
        codes, step = builder.array(dq.input[0]), builder.array(dq.input[1])
        name, h, T = entry.name, builder.onnx.helper, builder.onnx.TensorProto
        w = builder.node("DequantizeLinear", [builder.init(f"{name}.weight_int_t", codes.reshape(codes.shape[0], -1).T, T.INT8), builder.init(f"{name}.weight_step_t", step),
                                        builder.init(f"{name}.weight_zp_t", np.zeros(step.shape[0], np.int64), T.INT8)], f"{name}_weight_t_dq", axis=1)
        new = [builder.nodes.pop()]
        nhwc, mm = builder.fresh(f"{name}_nhwc"), builder.fresh(f"{name}_matmul")
        new += [h.make_node("Transpose", [conv.input[0]], [nhwc], name=nhwc, perm=[0, 2, 3, 1]), h.make_node("MatMul", [nhwc, w], [mm], name=mm)]
        if len(conv.input) > 2:
            biased = builder.fresh(f"{name}_bias")
            new.append(h.make_node("Add", [mm, conv.input[2]], [biased], name=biased))
            mm = biased
        new.append(h.make_node("Transpose", [mm], [p["out"]], name=p["out"], perm=[0, 3, 1, 2]))
        idx = builder.nodes.index(conv)
        builder.nodes[idx: idx + 1] = new
        return True

    def _conv_with_bias(self, p: dict[str, Any]) -> tuple[int, Any, Any] | None:
        """(node index, conv node, bias values) of the layer producing ``p["out"]``, or None without bias."""
        builder = self.builder
        idx = next(i for i, n in enumerate(builder.nodes) if n.output[0] == p["out"])
        conv = builder.nodes[idx]
        if len(conv.input) < 3:
            return None
        return idx, conv, builder.array(conv.input[2])

    def _int32_bias(self, p: dict[str, Any]) -> bool:
        """Re-store a fused layer's bias as int32 on the ``s_x * s_w`` grid (what QLinearConv takes).

        The rounding error is at most half of ``s_x * s_w`` (kept small by :func:`_widen_codes`). Only
        fused layers get it. Returns False when a channel's bias would overflow int32: such a layer
        must not be left in the fusable pattern with a float bias, because onnxruntime would then
        quantize the bias itself and saturate it.
        """
        builder = self.builder
        found = self._conv_with_bias(p)
        if found is None:
            return True
        idx, conv, bias = found
        bias = bias.astype(np.float64)
        bstep = (np.float32(p["s_x"]) * p["step"]).astype(np.float32)
        if not np.all(bstep != 0):
            return False
        bint = np.round(bias / bstep.astype(np.float64))
        if not np.all(np.abs(bint) < 2**31 - 1):
            return False
        if self.snap_bias:
            self._snap(p["entry"], bint * bstep.astype(np.float64) - bias)
        name = p["entry"].name
        dq = builder.fresh(f"{name}_bias_dq")
        node = builder.onnx.helper.make_node("DequantizeLinear", [builder.init(f"{name}.bias_int", bint.astype(np.int32)), builder.init(f"{name}.bias_step", bstep),
                                                            builder.init(f"{name}.bias_zp", np.zeros(bstep.shape[0], np.int32))], [dq], name=dq, axis=0)
        conv.input[2] = dq
        builder.nodes.insert(idx, node)
        return True

    @torch.no_grad()
    def _snap(self, entry: LayerExport, delta: np.ndarray) -> None:
        """Move the model's bias (the folded BN's shift, else the layer's own) by ``delta`` per channel.

        The folded bias depends on the BN shift with slope 1, so afterwards PyTorch adds exactly
        (up to float32) the int32 bias the file holds.
        """
        owner = _active_bn(self.modules[entry.folded_bn]) if entry.folded_bn else self.modules[entry.name]
        target = getattr(owner, "bias", None)
        if target is None:
            raise ValueError(f"snap_bias: {entry.name!r} has no bias parameter to move (a BatchNorm with affine=False)")
        target.add_(torch.as_tensor(delta, dtype=target.dtype, device=target.device))

    def _bias_as_add(self, p: dict[str, Any]) -> None:
        """Move the float bias of a non-fused DQ->Conv into an ``Add`` after it.

        onnxruntime's ``BiasQuantization`` pass re-stores a float bias next to DQ inputs as int32 on
        the ``s_x * s_w`` grid, which on int4 grids is coarse enough to flip output codes.
        """
        builder = self.builder
        found = self._conv_with_bias(p)
        if found is None:
            return
        idx, conv, bias = found
        bias = bias.astype(np.float32)
        shape = [-1] + [1] * (p["ndim"] - 2) if conv.op_type == "Conv" else [-1]
        bname = builder.init(f"{p['entry'].name}.bias_bcast", bias.reshape(shape))
        pre = builder.fresh(f"{p['out']}_nobias")
        del conv.input[2]
        conv.output[0] = pre
        conv.name = pre
        builder.nodes.insert(idx + 1, builder.onnx.helper.make_node("Add", [pre, bname], [p["out"]], name=p["out"]))

    def _q_after(self, out: str, consumers: dict[str, list]):
        """``(Relu/Clip node or None, QuantizeLinear node)`` if the layer's output goes straight to a Q."""
        users = consumers.get(out, [])
        if len(users) != 1:
            return None
        nxt = users[0]
        if nxt.op_type in ("Relu", "Clip"):
            after = consumers.get(nxt.output[0], [])
            return (nxt, after[0]) if len(after) == 1 and after[0].op_type == "QuantizeLinear" else None
        return (None, nxt) if nxt.op_type == "QuantizeLinear" else None

    def _fusable(self, q_after, entry: LayerExport, containers: dict) -> bool:
        # onnxruntime's QDQ Conv selector: 8-bit DQ(input), int8 DQ(weight), int32 DQ(bias), Conv,
        # then Q(output) of the same type as the input; a Relu (zero point at the container minimum)
        # or a Clip covering the Q range between Conv and Q is removed by the runtime.
        if entry.op != "Conv" or entry.weight_type != "int8" or entry.act_type not in ("int8", "uint8"):
            return False
        act, q = q_after
        info = self.builder.q_info.get(q.output[0])
        if info is None:
            return False
        container, scale, zp = info
        _, clo, chi = containers[container]
        if container != entry.act_type:
            return False
        if act is not None and act.op_type == "Relu":
            return zp == clo
        if act is not None and act.op_type == "Clip":
            lo, hi = self.clip_bounds.get(act.output[0], (None, None))
            return lo is not None and lo <= (clo - zp) * scale and (chi - zp) * scale <= hi
        return True


# --------------------------------------------------------------------------------------------------
# public API


def _example(input_shape: Sequence[int] | None, example: torch.Tensor | None, model: nn.Module) -> torch.Tensor:
    if example is not None:
        return example[:1].detach().float()
    if input_shape is None:
        shape = (getattr(model, "bitswitch_extra", {}) or {}).get("input_shape")
        if shape is None:
            raise ValueError("pass input_shape=(C, H, W) (one sample, no batch dimension) or an example input")
        input_shape = shape
    return torch.zeros((1, *[int(d) for d in input_shape]))


@torch.no_grad()
def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    input_shape: Sequence[int] | None = None,
    example: torch.Tensor | None = None,
    opset: int = DEFAULT_OPSET,
    container: str = "int8",
    int4: bool | None = None,
    fp32: bool = False,
    dynamic_batch: bool = True,
    snap_bias: bool = False,
) -> ExportReport:
    """Write ``model`` at its current precision (uniform or mixed) as a QDQ ONNX file.

    Args:
        input_shape: one sample's shape without the batch dimension (or give ``example``).
        container: integer type of <= 4-bit grids. ``"int8"`` (default) stores them in int8 (weights)
            and uint8 (activations) with the narrower grid kept by clipping the codes, so onnxruntime
            runs them with its integer kernels; ``"int4"`` stores int4/uint4 (opset 21): half the
            weight bytes, but onnxruntime 1.32 has no int4 convolution and runs those layers in float,
            slower than the FP32 file. 5-8 bit grids always use 8-bit, 9-16 bit 16-bit containers.
        int4: older spelling: ``True`` is ``container="int4"``, ``False`` is ``container="int8"``.
        fp32: write the same network without any quantization (weights dequantized, BN folded):
            the fair float baseline for latency and size comparisons.
        snap_bias: also move the *model's* bias of every layer that runs as an integer kernel onto
            the int32 grid the file stores (``s_x * s_w``; by at most half a step, through the folded
            BN's shift or the layer's bias, for the BN of the exported precision). The file is the
            same; PyTorch then computes what the integer kernel computes, instead of differing by
            up to half a bias step, which flips activation codes near rounding ties (it matters at
            <= 4-bit activations). It changes the model in place: use it on a deployment copy.
    Returns an :class:`ExportReport` (per-layer containers, folded/unfolded BNs, op counts).
    """
    onnx = require_onnx()
    if int4 is not None:
        container = "int4" if int4 else "int8"
    if container not in CONTAINERS:
        raise ValueError(f"unknown container {container!r}; valid: {', '.join(CONTAINERS)}")
    if opset < 13:
        raise ValueError(f"opset {opset} is too old: per-channel DequantizeLinear needs opset >= 13")
    if container == "int4" and opset < 21:
        raise ValueError(f"int4 containers need opset >= 21 (got opset {opset}); use container='int8'")
    int4 = container == "int4"
    was_training = model.training
    model.eval()
    try:
        x = _example(input_shape, example, model)
        gm = _trace(model, x)
        builder = GraphBuilder(opset, int4, fp32)
        report = ExportReport(str(path), opset, 0, fp32, list(x.shape[1:]), container)
        tr = _Translator(gm, builder, report, snap_bias)
        tr.run()
        tr.finalize_weights()
        for lt in report.layers:
            if lt.act_codes is not None:
                lt.act_codes = builder.codes_tensor(lt.act_codes)
        out_shape = list(next(n for n in gm.graph.nodes if n.op == "output").args[0].meta["tensor_meta"].shape)
        proto = builder.model(list(x.shape), out_shape, dynamic_batch)
    finally:
        model.train(was_training)
    if opset < 21 and any("16" in (lt.act_type or "") + lt.weight_type for lt in report.layers):
        raise ValueError("16-bit integer grids need opset >= 21")
    if any(lt.needs_exact_u8s8 for lt in report.layers):
        # said in the file too, for whoever deploys it: without the option x86 CPUs without VNNI saturate
        # (with VNNI the option is not needed and slows the 8-bit layers down)
        onnx.helper.set_model_props(proto, {SESSION_CONFIG_KEY: f"{EXACT_U8S8_OPTION}=1"})
    onnx.checker.check_model(proto, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    report.file_bytes = path.stat().st_size
    report.op_counts = dict(Counter(n.op_type for n in proto.graph.node))
    return report


__all__ = [
    "CONTAINERS", "Agreement", "ExportReport", "INTEGER_KERNELS", "LayerExport", "UnsupportedOpError", "VerificationError",
    "cpu_int8_path", "executed_kernels", "export_onnx", "ort_session", "run_onnx", "verify_onnx",
]
