"""Writing ONNX graphs: integer containers, Q/DQ pairs and the node/initializer builder.

:class:`GraphBuilder` is the only place that creates ONNX nodes and initializers for the exporter
(:mod:`bitswitch.export.onnx`, which translates a traced model into calls on it). It owns the
graph-level passes that do not depend on the model: moving ReLU/Clip behind the ``QuantizeLinear``
as an integer ``Clip`` (so onnxruntime fuses the producing Conv) and pruning what the output does
not need. ``onnx`` is imported lazily (optional extra ``bitswitch[export]``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from .onnx_runtime import INPUT_NAME, require_module

OUTPUT_NAME = "output"


def require_onnx():
    """Import ``onnx`` or explain how to get it."""
    return require_module("onnx", "ONNX export")


# --------------------------------------------------------------------------------------------------
# containers


def container_types():
    from onnx import TensorProto as T

    # name -> (onnx type, lo, hi)
    return {
        "int4": (T.INT4, -8, 7), "uint4": (T.UINT4, 0, 15),
        "int8": (T.INT8, -128, 127), "uint8": (T.UINT8, 0, 255),
        "int16": (T.INT16, -32768, 32767), "uint16": (T.UINT16, 0, 65535),
    }


def container_for(bits: int, lo: int, hi: int, int4: bool) -> str:
    """Narrowest container holding the ``[lo, hi]`` grid (int4 only when allowed)."""
    signed = lo < 0
    width = 4 if (bits <= 4 and int4) else 8 if bits <= 8 else 16
    for w in (width, 8, 16) if width <= 8 else (16,):
        name = f"{'' if signed else 'u'}int{w}"
        _, clo, chi = container_types()[name]
        if clo <= lo and hi <= chi:
            return name
    raise ValueError(f"a {bits}-bit grid [{lo}, {hi}] fits no ONNX integer container")


def act_container(bits: int, lo: int, hi: int, int4: bool) -> tuple[str, int]:
    """``(container, code shift)`` of an activation grid ``[lo, hi]``.

    8-bit containers are always ``uint8``: a signed grid with zero point ``z`` is the same set of
    values as the unsigned grid shifted by 128 with zero point ``z + 128`` (``Q_u8(x) = Q_s8(x) + 128``
    exactly, saturation included). onnxruntime's integer convolution needs input and output of the
    same type and its fast path is uint8 activations with int8 weights (u8s8), so one activation type
    everywhere lets every Conv -> Q pattern fuse.
    """
    name = container_for(bits, lo, hi, int4)
    if name in ("int8", "uint8"):
        return "uint8", (128 if lo < 0 else 0)
    return name, 0


def q_code(value: float, scale: float, zero_point: int, clo: int, chi: int) -> int:
    """The code ``QuantizeLinear`` gives ``value`` (float32 division, half-to-even, saturation)."""
    v = np.float32(value) / np.float32(scale) if math.isfinite(value) else value
    if not math.isfinite(float(v)):
        return clo if v < 0 else chi
    return int(min(max(int(np.round(np.float32(v))) + zero_point, clo), chi))


# --------------------------------------------------------------------------------------------------
# graph builder


class GraphBuilder:
    """The nodes and initializers of one export, with unique names, and the passes over them.

    ``fp32=True`` marks the float reference graph of the same network (the translator writes no Q/DQ); ``int4`` allows
    int4/uint4 containers (opset >= 21) for <= 4-bit grids.
    """

    def __init__(self, opset: int, int4: bool, fp32: bool):
        self.onnx = require_onnx()
        self.opset, self.int4, self.fp32 = opset, int4, fp32
        self.q_clip: dict[str, tuple[str, int, int]] = {}  # Q output -> (integer Clip output, lo, hi) after it
        self.act_bounds: dict[str, tuple[float, float]] = {}  # ReLU/Clip output -> its (lo, hi), for absorption
        self.nodes: list = []
        self.inits: list = []
        self.counter = Counter()
        self.qdq_cache: dict[tuple, str] = {}
        self.q_info: dict[str, tuple[str, float, int]] = {}  # Q node output -> (container, scale, zero point)
        self.q_of_dq: dict[str, str] = {}  # activation DequantizeLinear output -> its QuantizeLinear output
        self.pending: list[dict[str, Any]] = []  # quantized layers whose weight dequantization is decided last

    def fresh(self, base: str) -> str:
        base = base.replace(".", "_") or "t"
        self.counter[base] += 1
        n = self.counter[base]
        return base if n == 1 else f"{base}_{n}"

    def init(self, base: str, array: np.ndarray, onnx_type: int | None = None) -> str:
        name = self.fresh(base)
        h = self.onnx.helper
        T = self.onnx.TensorProto
        if onnx_type is None:
            self.inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        elif onnx_type in (T.INT4, T.UINT4):  # two codes per byte, low nibble first (ONNX packing)
            flat = (array.astype(np.int64).reshape(-1) & 0xF).astype(np.uint8)
            if flat.size % 2:
                flat = np.concatenate([flat, np.zeros(1, np.uint8)])
            packed = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)
            self.inits.append(h.make_tensor(name, onnx_type, list(array.shape), packed.tobytes(), raw=True))
        else:  # raw little-endian bytes: one byte per int8 code in the file
            np_type = {T.INT8: np.int8, T.UINT8: np.uint8, T.INT16: np.int16, T.UINT16: np.uint16, T.INT32: np.int32}[onnx_type]
            self.inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array.astype(np_type)), name))
        return name

    def node(self, op: str, inputs: Sequence[str], base: str, **attrs: Any) -> str:
        out = self.fresh(base)
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def qdq(self, x: str, scale: float, zero_point: int, lo: int, hi: int, bits: int, base: str) -> tuple[str, str, bool]:
        """``x`` through the model's activation grid; returns (dequantized name, container, clipped).

        A grid narrower than its 8-bit container is an integer ``Clip`` on the codes after the
        ``QuantizeLinear`` (``Q -> Clip -> DQ``), which keeps the producing Conv directly in front of
        the Q so onnxruntime can still fuse it into an integer kernel. Other containers (int4, 16 bit:
        onnxruntime has no integer ``Clip`` for them) get a float ``Clip`` before the Q instead.
        """
        container, shift = act_container(bits, lo, hi, self.int4 and self.opset >= 21)
        onnx_type, clo, chi = container_types()[container]
        lo, hi, zero_point = lo + shift, hi + shift, zero_point + shift
        clipped = (lo, hi) != (clo, chi)
        key = (x, scale, zero_point, lo, hi, container)
        if key in self.qdq_cache:
            return self.qdq_cache[key], container, clipped
        integer_clip = container in ("uint8", "int8")
        if clipped and not integer_clip:  # the runtime saturates at the container's range; the model's grid is narrower
            cmin = np.float32(np.float32(lo - zero_point) * np.float32(scale))
            cmax = np.float32(np.float32(hi - zero_point) * np.float32(scale))
            x = self.node("Clip", [x, self.init(f"{base}_clip_min", np.array(cmin, np.float32)), self.init(f"{base}_clip_max", np.array(cmax, np.float32))], f"{base}_clip")
        s = self.init(f"{base}_act_scale", np.array(scale, np.float32))
        z = self.init(f"{base}_act_zp", np.array(zero_point), onnx_type)
        q = self.node("QuantizeLinear", [x, s, z], f"{base}_act_q")
        self.q_info[q] = (container, float(scale), int(zero_point))
        codes = self.code_clip(q, lo, hi) if integer_clip and clipped else q
        dq = self.node("DequantizeLinear", [codes, s, z], f"{base}_act_dq")
        self.qdq_cache[key] = dq
        self.q_of_dq[dq] = q
        return dq, container, clipped

    def array(self, name: str) -> np.ndarray:
        """The value of the initializer ``name``."""
        return self.onnx.numpy_helper.to_array(next(t for t in self.inits if t.name == name))

    def codes_tensor(self, q: str) -> str:
        """The tensor holding the final codes of the QuantizeLinear output ``q`` (after its integer Clip, if any)."""
        return self.q_clip[q][0] if q in self.q_clip else q

    def code_clip(self, q: str, lo: int, hi: int) -> str:
        """An integer ``Clip`` of the codes ``q`` to ``[lo, hi]`` (recorded so its bounds can narrow later)."""
        container = self.q_info[q][0]
        onnx_type = container_types()[container][0]
        out = self.node("Clip", [q, self.init(f"{q}_code_min", np.array(lo), onnx_type), self.init(f"{q}_code_max", np.array(hi), onnx_type)], f"{q}_code_clip")
        self.q_clip[q] = (out, lo, hi)
        return out

    def links(self) -> tuple[dict[str, Any], dict[str, list]]:
        """``(producer, consumers)`` of every tensor name in the current node list (rebuilt per pass:
        each pass rewires the graph)."""
        producer = {o: n for n in self.nodes for o in n.output}
        consumers: dict[str, list] = {}
        for n in self.nodes:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        return producer, consumers

    def absorb_activations(self) -> None:
        """Turn ``ReLU/Clip -> QuantizeLinear`` into ``QuantizeLinear -> integer Clip`` (8-bit containers).

        ``Q(clip(x, a, b)) == clip(Q(x), Q(a), Q(b))`` because ``Q`` is monotone, so this is exact; it
        puts the producing Conv directly in front of the Q, which is the pattern onnxruntime fuses into
        ``QLinearConv`` whatever the activation range (its own Clip/Relu removal needs the Q range to
        lie inside the clip range). Only activations whose sole consumer is the Q are moved.
        """
        self.prune()
        producer, consumers = self.links()
        for q in [n for n in self.nodes if n.op_type == "QuantizeLinear"]:
            container, scale, zp = self.q_info.get(q.output[0], ("", 0.0, 0))
            act = producer.get(q.input[0])
            if container not in ("uint8", "int8") or act is None or act.output[0] not in self.act_bounds or len(consumers.get(act.output[0], [])) != 1:
                continue
            _, clo, chi = container_types()[container]
            alo, ahi = self.act_bounds[act.output[0]]
            prev = self.q_clip.get(q.output[0])
            lo = max(prev[1] if prev else clo, q_code(alo, scale, zp, clo, chi))
            hi = min(prev[2] if prev else chi, q_code(ahi, scale, zp, clo, chi))
            q.input[0] = act.input[0]
            if prev is not None:  # narrow the existing integer Clip
                clip = producer[prev[0]]
                onnx_type = container_types()[container][0]
                clip.input[1] = self.init(f"{q.output[0]}_code_min", np.array(lo), onnx_type)
                clip.input[2] = self.init(f"{q.output[0]}_code_max", np.array(hi), onnx_type)
                self.q_clip[q.output[0]] = (prev[0], lo, hi)
            elif (lo, hi) != (clo, chi):
                users = consumers.get(q.output[0], [])  # earlier rewiring never touches this Q's users
                out = self.code_clip(q.output[0], lo, hi)
                clip_node = self.nodes.pop()
                self.nodes.insert(self.nodes.index(q) + 1, clip_node)
                for n in users:
                    for k, i in enumerate(n.input):
                        if i == q.output[0]:
                            n.input[k] = out
        self.prune()

    def prune(self) -> None:
        """Drop nodes and initializers the graph output does not depend on (folded Pads, absorbed activations)."""
        producer, _ = self.links()
        needed: set[str] = set()
        todo = [OUTPUT_NAME]
        while todo:
            t = todo.pop()
            n = producer.get(t)
            if n is None or n.name in needed:
                continue
            needed.add(n.name)
            todo.extend(i for i in n.input if i)
        self.nodes = [n for n in self.nodes if n.name in needed]
        used = {i for n in self.nodes for i in n.input}
        self.inits = [t for t in self.inits if t.name in used]

    def model(self, input_shape: Sequence[int], output_shape: Sequence[int], dynamic_batch: bool):
        h, T = self.onnx.helper, self.onnx.TensorProto
        self.prune()
        batch = "N" if dynamic_batch else input_shape[0]
        inp = h.make_tensor_value_info(INPUT_NAME, T.FLOAT, [batch, *input_shape[1:]])
        out = h.make_tensor_value_info(OUTPUT_NAME, T.FLOAT, [batch, *output_shape[1:]])
        graph = h.make_graph(self.nodes, "bitswitch", [inp], [out], self.inits)
        m = h.make_model(graph, opset_imports=[h.make_opsetid("", self.opset)], producer_name="bitswitch")
        m.ir_version = 10 if self.opset >= 21 else 8
        return m
