"""ONNX export with QuantizeLinear/DequantizeLinear pairs, and verification in onnxruntime.

The model is captured once with :func:`bitswitch.capture.capture` (``torch.export``; the capture
post-training quantization uses too), every quantized layer and BatchNorm kept as one opaque node.
``torch.onnx`` translates everything else with its own ATen translations (LayerNorm, GELU/SiLU,
softmax attention, permutes, pooling, hard-swish, ...) and writes each opaque node as a placeholder
``bitswitch.Layer(x, key)``. This module then replaces every placeholder by the layer as the model
computes it, reading scales and grids only through ``layer.weight_qparams(bits)`` and
``layer.act_quant.qparams(bits)``:

* a quantized layer becomes ``Q(x) -> [integer Clip] -> DQ -> Conv/Gemm/MatMul`` with its weight
  stored as integer codes in the file and dequantized per output channel (``DQ(codes, step)``);
  where the conv's output is quantized next, its bias becomes an int32 initializer on the
  ``s_x · s_w`` grid and a ReLU/Clip in between becomes an integer Clip after the Q, which is the
  pattern onnxruntime fuses into an integer kernel (``QLinearConv``, uint8 activations x int8 weights);
* containers: 5-8 bit grids use int8 weights / uint8 activations (a signed activation grid is
  shifted by 128), <= 4 bit grids the same (``container="int8"``, default) or int4/uint4 (``"int4"``,
  opset 21, half the bytes but no integer kernels in onnxruntime), 9-16 bit int16/uint16; a grid
  narrower than its container (e.g. 6-bit codes in uint8) is clipped to exactly the model's codes;
* a zero ``Pad`` feeding only a quantized convolution is folded into the conv's ``pads``; a
  ``MaxPool`` between a layer and the next Q runs on the codes;
* a BatchNorm whose input is only a convolution's output (found in the captured graph's data flow,
  not from registration order) is folded into it: the integer codes stay, the per-channel step
  absorbs ``gamma/sigma`` (a negative factor flips the codes' sign, or the step's where a code is the
  container minimum). Any other BatchNorm is kept as a ``BatchNormalization`` op and listed in the report;
* a model ``torch.export`` cannot capture raises :class:`~bitswitch.capture.CaptureError` naming the
  op and the user's line; a quantized layer type without a translation raises :class:`UnsupportedOpError`.

Writing ONNX (integer containers, Q/DQ pairs, nodes and initializers, the graph passes) lives in
:mod:`bitswitch.export.onnx_graph`, running and verifying a file in onnxruntime in
:mod:`bitswitch.export.onnx_runtime` (its names are re-exported here). ``onnx``, ``onnxruntime``,
``onnxscript`` and ``onnx-ir`` are optional (``pip install 'bitswitch[export]'``) and imported lazily.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import io
import logging
import os
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..capture import Capture, capture
from ..nn.batchnorm import SwitchableBatchNorm
from ..nn.fold import check_running_stats, fold_bn
from ..nn.layers import QuantLayer
from ..nn.transitional_bn import TransitionalBatchNorm
from .atomic import atomic_write_bytes
from .nbits import DEFAULT_ACCURACY_LEVEL, DEFAULT_BLOCK_SIZE, LAYER_KEY, NBITS_DOMAIN, NBITS_OP, check_nbits_options, nbits_attrs, nbits_weight
from .onnx_graph import GraphBuilder, container_for, container_types, require_onnx
from .onnx_runtime import (
    EXACT_U8S8_OPTION,
    INPUT_NAME,
    INTEGER_KERNELS,
    OUTPUT_NAME,
    Agreement,
    VerificationError,
    cpu_int8_path,
    executed_kernels,
    ort_session,
    require_module,
    run_onnx,
    verify_onnx,
)

DEFAULT_OPSET = 21
#: ``metadata_props`` key under which a file names the onnxruntime session option its 8-bit layers need
SESSION_CONFIG_KEY = "onnxruntime_session_config_x86_without_vnni"
#: integer containers for <= 4-bit grids (see :func:`export_onnx`)
CONTAINERS = ("int8", "int4")
#: the placeholder ``torch.onnx`` writes for every opaque node (replaced before the file is written)
PLACEHOLDER_DOMAIN, PLACEHOLDER_OP = "bitswitch", "Layer"


class UnsupportedOpError(ValueError):
    """The model contains a layer the ONNX exporter cannot translate (the message names it)."""


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
    act_clipped: bool  # grid narrower than the container: a Clip keeps the codes on the model's grid
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
    #: the graph's inputs: name -> shape (``"N"`` for the dynamic batch dimension)
    inputs: dict[str, list[int | str]]
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
# capture and torch.onnx

_PLAIN_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _plain_bn(m: nn.Module) -> nn.modules.batchnorm._BatchNorm | None:
    """The plain BatchNorm ``m`` normalises with now (a per-bit BN's active one), or None when ``m``
    is not one (subclasses such as timm's ``BatchNormAct2d`` do more and are left to ``torch.onnx``)."""
    if isinstance(m, SwitchableBatchNorm):
        m = m.bn[str(m.active_bits)]
    elif isinstance(m, TransitionalBatchNorm):
        m = m.bn[m.active]
    return m if type(m) in _PLAIN_BN else None  # type: ignore[return-value]


def _opaque(_name: str, m: nn.Module) -> bool:
    """Captured as one node: quantized layers (the exporter writes them) and BatchNorms (so they can
    be folded into the layer that feeds them, and a per-bit BN exports its active statistics)."""
    return isinstance(m, QuantLayer) or _plain_bn(m) is not None


def _conv_like(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.conv._ConvNd) and not m.transposed


@functools.cache
def _registry(opset: int):
    """``torch.onnx``'s translation registry with the placeholder for ``bitswitch::layer``.

    Built once per process: ``torch.onnx.export`` rebuilds it from onnxscript's torchlib on every
    call (3.6 s of a 9 s ResNet-8 export here), so the exporter calls the function it wraps,
    ``torch.onnx._internal.exporter._core.export``, with this one (torch 2.13's internals)."""
    onnxscript = require_module("onnxscript", "ONNX export")
    require_module("onnx_ir", "ONNX export")
    from onnx.defs import OpSchema
    from torch.onnx._internal.exporter import _constants, _registration

    schema = OpSchema(PLACEHOLDER_OP, PLACEHOLDER_DOMAIN, 1, inputs=[OpSchema.FormalParameter("x", "T")], outputs=[OpSchema.FormalParameter("y", "T")],
                      type_constraints=[("T", ["tensor(float)", "tensor(double)", "tensor(float16)", "tensor(bfloat16)"], "")],
                      attributes=[OpSchema.Attribute("key", OpSchema.AttrType.STRING, ""), OpSchema.Attribute("rank", OpSchema.AttrType.INT, "")])
    op = onnxscript.values.Op(onnxscript.values.Opset(PLACEHOLDER_DOMAIN, 1), PLACEHOLDER_OP, schema)

    def placeholder(x, key: str):
        return op(x, key=key, rank=len(x.shape) if x.shape is not None else -1)

    registry = _registration.ONNXRegistry.from_torchlib(opset_version=max(opset, _constants.TORCHLIB_OPSET))
    registry.register_op(torch.ops.bitswitch.layer.default, placeholder, is_complex=False)
    return registry


def _to_onnx(cap: Capture, opset: int):
    """The captured program as an ONNX ``ModelProto`` with placeholders for the opaque nodes."""
    from torch.onnx._internal.exporter import _core

    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)  # "torchvision is not installed", the optimizer's constant-folding notes
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = _core.export(cap.program, registry=_registry(opset), opset_version=opset, optimize=True, verbose=False)
    except Exception as e:  # torch.onnx raises its own error types; all mean "no translation"
        lines = [ln for ln in str(e).splitlines() if ln.startswith("<class")] or str(e).strip().splitlines()[:1]
        raise UnsupportedOpError(f"torch.onnx cannot translate the captured model: {lines[-1] if lines else type(e).__name__}") from e
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    return program.model_proto


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _check_bn(bn: nn.modules.batchnorm._BatchNorm) -> None:
    try:
        check_running_stats(bn)
    except ValueError as e:
        raise UnsupportedOpError(f"{e}; it cannot be exported") from None


# --------------------------------------------------------------------------------------------------
# translation of the placeholders


class _Translator:
    """Replaces the placeholders of one ``torch.onnx`` graph by the layers' Q/DQ nodes, then decides
    per layer how onnxruntime will run it (:meth:`finalize_weights`)."""

    def __init__(self, cap: Capture, model: nn.Module, builder: GraphBuilder, report: ExportReport, snap_bias: bool = False,
                 accuracy_level: int = DEFAULT_ACCURACY_LEVEL, block_size: int = DEFAULT_BLOCK_SIZE):
        self.cap, self.builder, self.report, self.snap_bias = cap, builder, report, snap_bias
        self.accuracy_level, self.block_size = accuracy_level, block_size
        self.modules = dict(model.named_modules())

    def placeholder(self, node: Any) -> tuple[str, nn.Module] | None:
        """``(module name, module)`` of a placeholder node, None for any other node."""
        if node.domain != PLACEHOLDER_DOMAIN:
            return None
        key = _attrs(node)["key"].decode()
        return self.cap.layers[key], self.cap.live_module(key)

    def run(self, nodes: Sequence[Any]) -> None:
        builder = self.builder
        producer = {o: n for n in nodes for o in n.output}
        consumers: dict[str, list] = {}
        for n in nodes:
            for i in n.input:
                consumers.setdefault(i, []).append(n)

        def sole(t: str) -> bool:
            return len(consumers.get(t, [])) == 1 and t not in builder.outputs

        # BatchNorms to fold: their input is only a conv's (or a 2-D linear's) output
        fold: dict[int, tuple[str, nn.modules.batchnorm._BatchNorm, str]] = {}  # id(layer node) -> (BN name, BN, output)
        skip: set[int] = set()
        for n in nodes:
            found = self.placeholder(n)
            if n.op_type == "BatchNormalization" and sole(n.input[0]) and n.input[0] in producer:
                # a BatchNorm subclass torch.onnx translated (timm's BatchNormAct2d: BN, then its activation)
                layer = self.placeholder(producer[n.input[0]])
                bn = self._graph_bn(n)
                if layer is not None and isinstance(layer[1], QuantLayer) and _conv_like(layer[1]) and bn is not None:
                    fold[id(producer[n.input[0]])] = (self._scope(n), bn, n.output[0])
                    skip.add(id(n))
                continue
            if found is None or _plain_bn(found[1]) is None:
                continue
            src = producer.get(n.input[0])
            if src is None or not sole(n.input[0]):
                continue
            layer = self.placeholder(src)
            if layer is not None and isinstance(layer[1], QuantLayer) and (_conv_like(layer[1]) or _attrs(src).get("rank") == 2):
                fold[id(src)] = (found[0], _plain_bn(found[1]), n.output[0])  # type: ignore[assignment]
                skip.add(id(n))
            elif src.op_type == "Conv" and self._fold_float_conv(src, _plain_bn(found[1]), n.output[0], nodes):  # type: ignore[arg-type]
                skip.add(id(n))
        # zero Pads feeding only a quantized 2-D conv
        pads: dict[int, tuple[str, tuple[int, int, int, int]]] = {}
        for n in nodes:
            found = self.placeholder(n)
            if found is None or not isinstance(found[1], nn.Conv2d) or not isinstance(found[1], QuantLayer):
                continue
            src = producer.get(n.input[0])
            amount = self._zero_pad(src) if src is not None and sole(n.input[0]) else None
            if amount is not None:
                pads[id(n)] = (src.input[0], amount)
                skip.add(id(src))
        for n in nodes:
            if id(n) in skip:
                continue
            found = self.placeholder(n)
            if found is None:
                builder.nodes.append(n)
                continue
            name, m = found
            if isinstance(m, QuantLayer):
                x, extra = pads.get(id(n), (n.input[0], (0, 0, 0, 0)))
                bn_name, bn, out = fold.get(id(n), (None, None, n.output[0]))
                self.layer(name, m, x, extra, out, _attrs(n).get("rank", -1), bn_name, bn)
            else:
                self.batchnorm(name, _plain_bn(m), n.input[0], n.output[0])  # type: ignore[arg-type]

    @staticmethod
    def _scope(node: Any) -> str:
        """The qualified name of the module a ``torch.onnx`` node comes from (its name scopes).

        Not the name of its parameters: ``torch.onnx``'s optimizer shares equal initializers, so a
        BatchNorm's all-ones weight may carry another BatchNorm's name, and ``snap_bias`` would move
        that one's shift."""
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
        if scopes is None:
            raise UnsupportedOpError(f"torch.onnx node {node.name!r} has no name scopes: cannot tell which BatchNorm it is")
        return ast.literal_eval(scopes)[-2]

    def _graph_bn(self, node: Any) -> nn.modules.batchnorm._BatchNorm | None:
        """An inference ``BatchNormalization`` node with constant parameters, as a module to fold."""
        values = [self.builder.constant(i) for i in node.input[1:5]]
        if len(values) != 4 or any(v is None for v in values) or _attrs(node).get("training_mode", 0):
            return None
        scale, shift, mean, var = (torch.from_numpy(np.array(v, np.float32)) for v in values)  # type: ignore[arg-type]
        bn = nn.BatchNorm1d(scale.numel(), eps=float(_attrs(node).get("epsilon", 1e-5)))
        with torch.no_grad():
            bn.weight.copy_(scale), bn.bias.copy_(shift), bn.running_mean.copy_(mean), bn.running_var.copy_(var)  # type: ignore[union-attr]
        return bn.eval()

    def _zero_pad(self, node: Any) -> tuple[int, int, int, int] | None:
        """``(top, left, bottom, right)`` of a constant zero ``Pad`` of the last two dims of a 4-D
        tensor (what TF "same" padding writes), else None."""
        if node.op_type != "Pad" or _attrs(node).get("mode", b"constant") != b"constant" or len(node.input) > 3:
            return None
        pads = self.builder.constant(node.input[1])
        value = self.builder.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(())
        if pads is None or value is None or pads.shape != (8,) or np.any(value != 0) or np.any(pads < 0) or np.any(pads[[0, 1, 4, 5]] != 0):
            return None
        return int(pads[2]), int(pads[3]), int(pads[6]), int(pads[7])

    def _fold_float_conv(self, conv: Any, bn: nn.modules.batchnorm._BatchNorm, out: str, nodes: Sequence[Any]) -> bool:
        """Fold a BN into the float ``Conv`` of an FP32 layer in place (its weight an initializer used
        only there); the conv then writes the BN's output."""
        builder = self.builder
        w = builder.constant(conv.input[1])
        b = builder.constant(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        shared = sum(i == conv.input[1] for n in nodes for i in n.input) > 1
        if w is None or (len(conv.input) > 2 and conv.input[2] and b is None) or shared or w.shape[0] != bn.num_features:
            return False
        _check_bn(bn)
        factor, bias = fold_bn(bn, torch.from_numpy(b.copy()).double() if b is not None else None, torch.float64)
        weight = torch.from_numpy(w.copy()).double() * factor.reshape(-1, *[1] * (w.ndim - 1))
        del conv.input[1:]
        conv.input.extend([builder.init(f"{conv.name}.weight_bn", weight.float().numpy()), builder.init(f"{conv.name}.bias_bn", bias.float().numpy())])
        conv.output[0] = out
        return True

    def batchnorm(self, name: str, bn: nn.modules.batchnorm._BatchNorm, x: str, out: str) -> None:
        """A BatchNorm that cannot be folded (pre-activation ResNets normalise a residual sum)."""
        _check_bn(bn)
        builder = self.builder
        c = bn.num_features
        scale = bn.weight.detach().float().numpy() if bn.weight is not None else np.ones(c, np.float32)
        shift = bn.bias.detach().float().numpy() if bn.bias is not None else np.zeros(c, np.float32)
        builder.node("BatchNormalization", [x, builder.init(f"{name}.scale", scale), builder.init(f"{name}.bias", shift),
                                            builder.init(f"{name}.mean", bn.running_mean.float().numpy()),  # type: ignore[union-attr]
                                            builder.init(f"{name}.var", bn.running_var.float().numpy())],  # type: ignore[union-attr]
                     name, out=out, epsilon=float(bn.eps))
        self.report.unfolded_bn.append(name)

    def layer(self, name: str, m: nn.Module, x: str, extra: tuple[int, int, int, int], out: str, rank: int,
              folded: str | None, bn: nn.modules.batchnorm._BatchNorm | None) -> None:
        builder, fp32 = self.builder, self.builder.fp32
        if not (_conv_like(m) or isinstance(m, nn.Linear)):
            raise UnsupportedOpError(f"quantized layer {name!r} of type {type(m).__module__}.{type(m).__name__}: the ONNX exporter translates "
                                     "convolutions and linear layers only")
        w_bits, a_bits = m.w_bits, m.a_bits  # type: ignore[attr-defined]
        if w_bits is None and m.is_integer:  # type: ignore[attr-defined]
            raise ValueError(f"layer {name!r} has no precision set")
        if w_bits is not None and a_bits is None and isinstance(m, nn.Linear) and not fp32:
            self.nbits_layer(name, m, x, out, w_bits, folded, bn)
            return
        act_type, clipped, s_x, act_q = None, False, None, None
        if a_bits is not None and not fp32:
            scale, zp, lo, hi = m.act_quant.qparams(a_bits)  # type: ignore[attr-defined]
            zp = int(zp.reshape(-1)[0]) if isinstance(zp, torch.Tensor) else int(zp)
            if isinstance(scale, torch.Tensor) and scale.numel() != 1:
                raise UnsupportedOpError(f"layer {name!r}: per-channel activation scales are not supported by the exporter")
            s_x = float(scale)
            x, act_type, clipped = builder.qdq(x, s_x, zp, lo, hi, a_bits, name)
            act_q = builder.q_of_dq[x]

        if w_bits is not None:
            codes, step = m.weight_qparams(w_bits)  # type: ignore[attr-defined]
            codes, step = codes.to(torch.int64), step.double()
        else:
            weight = m.weight.detach().double()
            codes, step = None, None
        bias = m.bias.detach().double() if m.bias is not None else None

        wtype = "float"
        if codes is not None:
            wtype = container_for(w_bits, -(2 ** (w_bits - 1)), 2 ** (w_bits - 1) - 1, builder.int4 and builder.opset >= 21)
        if bn is not None:
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

        matmul = isinstance(m, nn.Linear) and rank != 2  # (..., in) inputs: MatMul with the weight transposed
        if codes is not None and not fp32:
            onnx_type = container_types()[wtype][0]
            if wtype == "int8":
                codes, step = _widen_codes(codes, step, bias, s_x)
            stored = codes.T.contiguous() if matmul else codes
            suffix = "_t" if matmul else ""
            wq = builder.init(f"{name}.weight_int{suffix}", stored.numpy(), onnx_type)
            ws = builder.init(f"{name}.weight_step{suffix}", step.float().numpy())
            wz = builder.init(f"{name}.weight_zp{suffix}", np.zeros(step.shape[0], np.int64), onnx_type)
            w = builder.node("DequantizeLinear", [wq, ws, wz], f"{name}_weight{suffix}_dq", axis=1 if matmul else 0)
        else:
            wtype = "float"  # an fp32 reference graph stores dequantized weights
            wf = (codes.double() * step.reshape(-1, *[1] * (codes.dim() - 1))) if codes is not None else weight
            w = builder.init(f"{name}.weight", (wf.T if matmul else wf).float().contiguous().numpy())

        if matmul:
            op = "MatMul"
            if bias is not None:
                mm = builder.node("MatMul", [x, w], f"{name}_matmul")
                builder.node("Add", [mm, builder.init(f"{name}.bias", bias.float().numpy())], name, out=out)
            else:
                builder.node("MatMul", [x, w], name, out=out)
        else:
            inputs = [x, w]
            if bias is not None:  # float here; turned into int32 on the s_x*s_w grid where a kernel fuses
                inputs.append(builder.init(f"{name}.bias", bias.float().numpy()))
            if _conv_like(m):
                if isinstance(m.padding, str) or m.padding_mode != "zeros":  # type: ignore[attr-defined]
                    raise UnsupportedOpError(f"convolution {name!r} with padding={m.padding!r}, padding_mode={m.padding_mode!r}: "  # type: ignore[attr-defined]
                                             "only integer zero padding is supported")
                pad = [int(p) for p in m.padding]  # type: ignore[attr-defined]
                begin, end = list(pad), list(pad)
                if len(pad) == 2:
                    top, left, bottom, right = extra
                    begin, end = [pad[0] + top, pad[1] + left], [pad[0] + bottom, pad[1] + right]
                builder.node("Conv", inputs, name, out=out, kernel_shape=list(m.kernel_size), strides=list(m.stride), pads=begin + end,  # type: ignore[attr-defined]
                             dilations=list(m.dilation), group=int(m.groups))  # type: ignore[attr-defined]
                op = "Conv"
            else:
                builder.node("Gemm", inputs, name, out=out, transB=1)
                op = "Gemm"
        entry = LayerExport(name, op, w_bits, a_bits, wtype, act_type, clipped, folded, act_pad=list(extra))
        if act_q is not None:  # the Q's output; export_onnx resolves it to the codes after any integer Clip
            entry.act_codes, entry.act_zero_point = act_q, builder.q_info[act_q][2]
        self.report.layers.append(entry)
        if wtype != "float":
            builder.pending.append({"entry": entry, "out": out, "dq": [w], "ndim": codes.dim(), "s_x": s_x, "step": step.float().numpy(),
                                    "max_code": int(codes.abs().max())})

    def nbits_layer(self, name: str, m: nn.Module, x: str, out: str, bits: int, folded: str | None,
                    bn: nn.modules.batchnorm._BatchNorm | None) -> None:
        """A weight-only linear layer as one ``MatMulNBits`` node: onnxruntime's 2/4/8-bit kernels on the
        model's own codes and per-channel steps (:mod:`bitswitch.export.nbits`); a folded BN scales the steps."""
        builder = self.builder
        codes, step = m.weight_qparams(bits)  # type: ignore[attr-defined]
        bias = m.bias.detach().double() if m.bias is not None else None
        if bn is not None:
            _check_bn(bn)
            factor, bias = fold_bn(bn, bias, torch.float64)
            step = step.double() * factor
        w = nbits_weight(codes, step, bits, self.block_size)
        inputs = [x, builder.init(f"{name}.weight_nbits", w.packed), builder.init(f"{name}.weight_scales", w.scales)]
        if bias is not None:  # after the optional zero_points and g_idx inputs
            inputs += ["", "", builder.init(f"{name}.bias", bias.float().numpy())]
        builder.node(NBITS_OP, inputs, name, out=out, domain=NBITS_DOMAIN, **nbits_attrs(w, self.accuracy_level))
        builder.nodes[-1].metadata_props.add(key=LAYER_KEY, value=name)  # what rewrite_nbits re-writes it from
        self.report.layers.append(LayerExport(name, NBITS_OP, bits, None, f"uint{w.bits}", None, False, folded, kernel=NBITS_OP))

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
            if q_after is None and (self._integer_matmul(entry) or self._as_matmul(p, integer_outputs)):
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
                # per output channel: axis 0 of a Conv/Gemm weight, the last axis of a transposed MatMul weight
                # (read from the node: a layer called twice has its second DQ named ``..._weight_dq_2``)
                shape = [-1] + [1] * (p["ndim"] - 1) if _attrs(dq).get("axis", 1) == 0 else [-1]
                sname = builder.init(f"{dq.input[1]}_bcast", scale.reshape(shape).astype(np.float32))
                cast = builder.fresh(f"{dq_name}_cast")
                builder.nodes[idx: idx + 1] = [
                    builder.onnx.helper.make_node("Cast", [dq.input[0]], [cast], name=cast, to=T.FLOAT),
                    builder.onnx.helper.make_node("Mul", [cast, sname], [dq_name], name=dq_name),
                ]

    @staticmethod
    def _integer_matmul(entry: LayerExport) -> bool:
        """A linear layer on (..., in) inputs (transformer projections) with 8-bit codes: ``DQ(x) ->
        MatMul(DQ(W^T))``, which onnxruntime runs as ``MatMulIntegerToFloat`` (exact int32 products)."""
        return entry.op == "MatMul" and entry.weight_type == "int8" and entry.act_type in ("int8", "uint8")

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
        owner = self.modules.get(entry.folded_bn or entry.name)
        if owner is None:
            raise ValueError(f"snap_bias: the BatchNorm folded into {entry.name!r} ({entry.folded_bn!r}) is not a module of the model")
        if isinstance(owner, SwitchableBatchNorm):
            owner = owner.bn[str(owner.active_bits)]
        elif isinstance(owner, TransitionalBatchNorm):
            owner = owner.bn[owner.active]
        target = getattr(owner, "bias", None)
        if target is None:
            raise ValueError(f"snap_bias: {entry.name!r} has no bias parameter to move (a BatchNorm with affine=False)")
        target.add_(torch.as_tensor(delta, dtype=target.dtype, device=target.device))

    def _bias_as_add(self, p: dict[str, Any]) -> None:
        """Move the float bias of a non-fused DQ->Conv into an ``Add`` after it.

        onnxruntime's ``BiasQuantization`` pass re-stores a float bias next to DQ inputs as int32 on
        the ``s_x * s_w`` grid, which on int4 grids is coarse enough to flip output codes. A layer
        without bias whose input is in a 4-bit container gets a zero ``Add``: in a bare
        ``DQ(int4) -> Conv -> Q(int4)`` onnxruntime would fuse a ``QLinearConv`` on int4 codes,
        which it then refuses to load (it has no such kernel).
        """
        builder = self.builder
        found = self._conv_with_bias(p)
        if found is None:
            if p["entry"].act_type not in ("int4", "uint4"):
                return
            idx = next(i for i, n in enumerate(builder.nodes) if n.output[0] == p["out"])
            conv, bias = builder.nodes[idx], np.zeros(p["step"].shape[0], np.float32)
        else:
            idx, conv, bias = found
            del conv.input[2]
        shape = [-1] + [1] * (p["ndim"] - 2) if conv.op_type == "Conv" else [-1]
        bname = builder.init(f"{p['entry'].name}.bias_bcast", bias.astype(np.float32).reshape(shape))
        pre = builder.fresh(f"{p['out']}_nobias")
        conv.output[0] = pre
        builder.nodes.insert(idx + 1, builder.onnx.helper.make_node("Add", [pre, bname], [p["out"]], name=builder.fresh(f"{p['entry'].name}_bias")))

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
            lo, hi = self.builder.act_bounds.get(act.output[0], (None, None))
            return lo is not None and lo <= (clo - zp) * scale and (chi - zp) * scale <= hi
        return True


# --------------------------------------------------------------------------------------------------
# public API


def _example_inputs(model: nn.Module, example_inputs: Any, input_shape: Sequence[int] | None) -> Any:
    """Two samples of the model's input (a size-1 batch would be fixed at 1 by ``torch.export``)."""

    def two(v: Any) -> Any:
        if not isinstance(v, torch.Tensor) or v.dim() == 0:
            return v
        v = v.detach()[:2]
        return torch.cat([v, v]) if v.shape[0] == 1 else v

    if example_inputs is not None:
        if isinstance(example_inputs, Mapping):
            return {k: two(v) for k, v in example_inputs.items()}
        if isinstance(example_inputs, (tuple, list)):
            return tuple(two(v) for v in example_inputs)
        return two(example_inputs)
    if input_shape is None:
        input_shape = (getattr(model, "bitswitch_extra", {}) or {}).get("input_shape")
        if input_shape is None:
            raise ValueError("pass input_shape=(C, H, W) (one sample, no batch dimension) or example_inputs")
    return torch.zeros((2, *[int(d) for d in input_shape]))


def _batch_dims(inputs: Any, length: bool = False) -> Any:
    """``dynamic_shapes`` for ``torch.export``: dimension 0 of every tensor input may vary, and
    dimension 1 too with ``length`` (the token count of a language model)."""
    auto = torch.export.Dim.AUTO

    def spec(v: Any) -> Any:
        if not isinstance(v, torch.Tensor) or v.dim() == 0:
            return None
        return {0: auto, 1: auto} if length and v.dim() > 1 else {0: auto}

    if isinstance(inputs, Mapping):
        return {k: spec(v) for k, v in inputs.items()}
    if isinstance(inputs, tuple):
        return tuple(spec(v) for v in inputs)
    return (spec(inputs),)


def _shape(value_info: Any) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _rename(proto: Any, old: str, new: str) -> None:
    for n in proto.graph.node:
        n.input[:] = [new if i == old else i for i in n.input]
        n.output[:] = [new if o == old else o for o in n.output]
    for v in list(proto.graph.input) + list(proto.graph.output):
        if v.name == old:
            v.name = new


@torch.no_grad()
def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    input_shape: Sequence[int] | None = None,
    example_inputs: Any = None,
    opset: int = DEFAULT_OPSET,
    container: str = "int8",
    fp32: bool = False,
    dynamic_batch: bool = True,
    dynamic_length: bool = False,
    snap_bias: bool = False,
    accuracy_level: int = DEFAULT_ACCURACY_LEVEL,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> ExportReport:
    """Write ``model`` at its current precision (uniform or mixed) as a QDQ ONNX file.

    Args:
        input_shape: one sample's shape without the batch dimension, for a model with one float input.
        example_inputs: instead, an example input: a tensor, a tuple of positional inputs, or a dict of
            keyword inputs (``{"input_ids": ids}``); the file's inputs take their names (a single
            tensor input is named ``input``, the first output ``output``). Only the batch dimension
            stays dynamic (``dynamic_batch``), and dimension 1 with ``dynamic_length`` (a language model's
            token count); other dimensions are those of the example.
        container: integer type of <= 4-bit grids. ``"int8"`` (default) stores them in int8 (weights)
            and uint8 (activations) with the narrower grid kept by clipping the codes, so onnxruntime
            runs them with its integer kernels; ``"int4"`` stores int4/uint4 (opset 21): half the
            weight bytes, but onnxruntime 1.32 has no int4 convolution and runs those layers in float,
            slower than the FP32 file. 5-8 bit grids always use 8-bit, 9-16 bit 16-bit containers.
        fp32: write the same network without any quantization (weights dequantized, BN folded):
            the fair float baseline for latency and size comparisons.
        snap_bias: also move the *model's* bias of every layer that runs as an integer kernel onto
            the int32 grid the file stores (``s_x * s_w``; by at most half a step, through the folded
            BN's shift or the layer's bias, for the BN of the exported precision). The file is the
            same; PyTorch then computes what the integer kernel computes, instead of differing by
            up to half a bias step, which flips activation codes near rounding ties (it matters at
            <= 4-bit activations). It changes the model in place: use it on a deployment copy.
        accuracy_level, block_size: of the ``com.microsoft::MatMulNBits`` nodes weight-only linear layers
            become (:mod:`bitswitch.export.nbits`): 4 computes with int8 inputs (fast), 0 in float32.
    Returns an :class:`ExportReport` (per-layer containers, folded/unfolded BNs, op counts). Raises
    :class:`~bitswitch.capture.CaptureError` for a model ``torch.export`` cannot capture and
    :class:`UnsupportedOpError` for a layer or op without a translation; nothing is written then.
    """
    onnx = require_onnx()
    if container not in CONTAINERS:
        raise ValueError(f"unknown container {container!r}; valid: {', '.join(CONTAINERS)}")
    if opset < 18:
        raise ValueError(f"opset {opset} is too old: torch.onnx writes opset >= 18 (per-channel DequantizeLinear needs >= 13)")
    if container == "int4" and opset < 21:
        raise ValueError(f"int4 containers need opset >= 21 (got opset {opset}); use container='int8'")
    int4 = container == "int4"
    check_nbits_options(accuracy_level, block_size)
    was_training = model.training
    model.eval()
    try:
        inputs = _example_inputs(model, example_inputs, input_shape)
        cap = capture(model, inputs, opaque=_opaque, dynamic_shapes=_batch_dims(inputs, dynamic_length) if dynamic_batch else None)
        proto = _to_onnx(cap, opset)
        if isinstance(inputs, torch.Tensor):  # keyword inputs keep their names (input_ids, ...)
            _rename(proto, proto.graph.input[0].name, INPUT_NAME)
        _rename(proto, proto.graph.output[0].name, OUTPUT_NAME)
        graph = proto.graph
        builder = GraphBuilder(opset, int4, fp32, inits=list(graph.initializer), outputs=[o.name for o in graph.output])
        builder.reserve([t for n in graph.node for t in (*n.input, *n.output, n.name)] + [i.name for i in graph.input])
        report = ExportReport(str(path), opset, 0, fp32, {i.name: _shape(i) for i in graph.input}, container)
        tr = _Translator(cap, model, builder, report, snap_bias, accuracy_level, block_size)
        tr.run(list(graph.node))
        builder.activation_bounds()
        builder.hoist_quantize()
        tr.finalize_weights()
        builder.prune()
        for lt in report.layers:
            if lt.act_codes is not None:
                lt.act_codes = builder.codes_tensor(lt.act_codes)
    finally:
        model.train(was_training)
    if dynamic_batch and any(isinstance(s[0], int) for s in report.inputs.values() if s):
        raise UnsupportedOpError("the model's code fixes the batch size (torch.export specialised it); export with dynamic_batch=False")
    if opset < 21 and any("16" in (lt.act_type or "") + lt.weight_type for lt in report.layers):
        raise ValueError("16-bit integer grids need opset >= 21")
    del graph.node[:], graph.initializer[:], graph.value_info[:]
    graph.node.extend(builder.nodes)
    for n in graph.node:  # torch.onnx's per-node stack traces and FX names: bytes nobody deploys
        n.doc_string = ""
        kept_props = [(p.key, p.value) for p in n.metadata_props if p.key == LAYER_KEY]
        del n.metadata_props[:]
        for key, value in kept_props:
            n.metadata_props.add(key=key, value=value)
    graph.initializer.extend(builder.inits)
    kept = [o for o in proto.opset_import if o.domain not in (PLACEHOLDER_DOMAIN, NBITS_DOMAIN)]
    if any(n.domain == NBITS_DOMAIN for n in graph.node):
        kept.append(onnx.helper.make_opsetid(NBITS_DOMAIN, 1))
    del proto.opset_import[:]
    proto.opset_import.extend(kept)
    proto.producer_name = "bitswitch"
    if any(lt.needs_exact_u8s8 for lt in report.layers):
        # said in the file too, for whoever deploys it: without the option x86 CPUs without VNNI saturate
        # (with VNNI the option is not needed and slows the 8-bit layers down)
        onnx.helper.set_model_props(proto, {SESSION_CONFIG_KEY: f"{EXACT_U8S8_OPTION}=1"})
    onnx.checker.check_model(proto, full_check=True)
    atomic_write_bytes(path, lambda tmp: onnx.save(proto, tmp))
    report.file_bytes = Path(path).stat().st_size
    report.op_counts = dict(Counter(n.op_type for n in proto.graph.node))
    return report


__all__ = [
    "CONTAINERS", "Agreement", "ExportReport", "INTEGER_KERNELS", "LayerExport", "UnsupportedOpError", "VerificationError",
    "cpu_int8_path", "executed_kernels", "export_onnx", "ort_session", "run_onnx", "verify_onnx",
]
