"""Rewriting ONNX graphs: integer containers, Q/DQ pairs, and the node list the exporter edits.

:class:`GraphBuilder` holds the nodes and initializers of the file ``torch.onnx`` wrote (from
:mod:`bitswitch.export.onnx`) while the exporter replaces each quantized layer's placeholder by its
Q/DQ nodes; it is the only place that creates nodes and initializers. It owns the graph-level passes
that do not depend on the model: folding a zero ``Pad`` into the conv after it, moving a
``QuantizeLinear`` in front of a ``MaxPool`` and a ReLU/Clip behind it as an integer ``Clip`` (so
onnxruntime fuses the producing Conv with the model's own weight codes), and pruning what the
outputs do not need. ``onnx`` is imported lazily (optional extra ``bitswitch[export]``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from .onnx_runtime import require_module


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

#: ops through which the codes of a ``QuantizeLinear`` pass unchanged (``Q(maxpool(x)) == maxpool(Q(x))``
#: since ``Q`` is monotone); onnxruntime moves Q/DQ pairs across them itself (QDQ propagation)
ORDER_PRESERVING = ("MaxPool",)


class GraphBuilder:
    """The nodes and initializers of one export, with unique names, and the passes over them.

    Built from the ``torch.onnx`` graph (``nodes``, ``inits``, graph ``outputs``); the exporter
    appends nodes in graph order while it replaces placeholders. ``fp32=True`` marks the float
    reference graph of the same network (no Q/DQ is written); ``int4`` allows int4/uint4 containers
    (opset >= 21) for <= 4-bit grids.
    """

    def __init__(self, opset: int, int4: bool, fp32: bool, inits: Sequence[Any] = (), outputs: Sequence[str] = ()):
        self.onnx = require_onnx()
        self.opset, self.int4, self.fp32 = opset, int4, fp32
        self.q_clip: dict[str, tuple[str, int, int]] = {}  # Q output -> (integer Clip output, lo, hi) after it
        self.act_bounds: dict[str, tuple[float, float]] = {}  # ReLU/Clip output -> its (lo, hi), for absorption
        self.nodes: list = []
        self.inits: list = list(inits)
        self.outputs = list(outputs)
        self.used: set[str] = {t.name for t in self.inits}
        self.qdq_cache: dict[tuple, str] = {}
        self.q_info: dict[str, tuple[str, float, int]] = {}  # Q node output -> (container, scale, zero point)
        self.q_of_dq: dict[str, str] = {}  # activation DequantizeLinear output -> its QuantizeLinear output
        self.pending: list[dict[str, Any]] = []  # quantized layers whose weight dequantization is decided last

    def reserve(self, names: Sequence[str]) -> None:
        """Mark tensor/node names of the imported graph as taken."""
        self.used.update(n for n in names if n)

    def fresh(self, base: str) -> str:
        base = base.replace(".", "_").replace(":", "_") or "t"
        name, n = base, 1
        while name in self.used:
            n += 1
            name = f"{base}_{n}"
        self.used.add(name)
        return name

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

    def node(self, op: str, inputs: Sequence[str], base: str, out: str | None = None, **attrs: Any) -> str:
        """Append a node named after ``base``; its output is ``out`` (a name the graph already uses)
        or the node's name."""
        name = self.fresh(base)
        out = out or name
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [out], name=name, **attrs))
        return out

    def qdq(self, x: str, scale: float, zero_point: int, lo: int, hi: int, bits: int, base: str) -> tuple[str, str, bool]:
        """``x`` through the model's activation grid; returns (dequantized name, container, clipped).

        A grid narrower than its 8-bit container is an integer ``Clip`` on the codes after the
        ``QuantizeLinear`` (``Q -> Clip -> DQ``), which keeps the producing Conv directly in front of
        the Q so onnxruntime can still fuse it into an integer kernel. Other containers (int4, 16 bit:
        onnxruntime has no integer ``Clip`` for them) get a float ``Clip`` after the DQ, at the
        grid's end values: exactly the clipped codes dequantized (a Clip in front of the Q is merged
        by onnxruntime's Clip/Q fusion as if the container were 8-bit, which moved 2-bit grids).
        """
        container, shift = act_container(bits, lo, hi, self.int4 and self.opset >= 21)
        onnx_type, clo, chi = container_types()[container]
        lo, hi, zero_point = lo + shift, hi + shift, zero_point + shift
        clipped = (lo, hi) != (clo, chi)
        key = (x, scale, zero_point, lo, hi, container)
        if key in self.qdq_cache:
            return self.qdq_cache[key], container, clipped
        integer_clip = container in ("uint8", "int8")
        s = self.init(f"{base}_act_scale", np.array(scale, np.float32))
        z = self.init(f"{base}_act_zp", np.array(zero_point), onnx_type)
        q = self.node("QuantizeLinear", [x, s, z], f"{base}_act_q")
        self.q_info[q] = (container, float(scale), int(zero_point))
        codes = self.code_clip(q, lo, hi) if integer_clip and clipped else q
        dq = self.node("DequantizeLinear", [codes, s, z], f"{base}_act_dq")
        self.q_of_dq[dq] = q
        if clipped and not integer_clip:  # the runtime saturates at the container's range; the model's grid is narrower
            cmin = np.float32(np.float32(lo - zero_point) * np.float32(scale))
            cmax = np.float32(np.float32(hi - zero_point) * np.float32(scale))
            dq = self.node("Clip", [dq, self.init(f"{base}_clip_min", np.array(cmin, np.float32)), self.init(f"{base}_clip_max", np.array(cmax, np.float32))], f"{base}_clip")
            self.q_of_dq[dq] = q
        self.qdq_cache[key] = dq
        return dq, container, clipped

    def constant(self, name: str) -> np.ndarray | None:
        """The value of the initializer ``name``, or None when it is computed."""
        t = next((t for t in self.inits if t.name == name), None)
        return None if t is None else self.onnx.numpy_helper.to_array(t)

    def array(self, name: str) -> np.ndarray:
        """The value of the initializer ``name``."""
        value = self.constant(name)
        if value is None:
            raise KeyError(name)
        return value

    def codes_tensor(self, q: str) -> str:
        """The tensor holding the final codes of the QuantizeLinear output ``q``: after its integer
        Clip and any ``MaxPool`` on the codes, i.e. the input of the DequantizeLinear."""
        _, consumers = self.links()
        t = q
        while True:
            users = consumers.get(t, [])
            if len(users) != 1 or users[0].op_type == "DequantizeLinear":
                return t
            t = users[0].output[0]

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

    def activation_bounds(self) -> None:
        """Record the output range of every ``Relu`` and every ``Clip`` with constant bounds."""
        for n in self.nodes:
            if n.op_type == "Relu":
                self.act_bounds[n.output[0]] = (0.0, math.inf)
            elif n.op_type == "Clip" and n.output[0] not in self.act_bounds:
                lo = self.constant(n.input[1]) if len(n.input) > 1 and n.input[1] else np.array(-math.inf)
                hi = self.constant(n.input[2]) if len(n.input) > 2 and n.input[2] else np.array(math.inf)
                if lo is not None and hi is not None and lo.size == 1 and hi.size == 1 and np.issubdtype(lo.dtype, np.floating):
                    self.act_bounds[n.output[0]] = (float(lo.reshape(-1)[0]), float(hi.reshape(-1)[0]))

    def hoist_quantize(self) -> None:
        """Turn ``X -> MaxPool -> QuantizeLinear`` into ``X -> QuantizeLinear -> MaxPool`` on the codes.

        Exact (``Q`` is monotone and max pooling picks an element). Without it onnxruntime moves the
        Q across the pool itself and then fuses the conv in front, re-quantizing that conv's float
        weight with a grid of its own: the VGG pattern conv-BN-ReLU-MaxPool disagreed with the model
        on 12 % of the next layer's input codes. Moved this way, the conv's weight keeps its
        ``DequantizeLinear`` (the model's codes) and the pool runs on uint8.
        """
        changed = True
        while changed:
            changed = False
            producer, consumers = self.links()
            for q in [n for n in self.nodes if n.op_type == "QuantizeLinear" and n.output[0] in self.q_info]:
                pool = producer.get(q.input[0])
                if pool is None or pool.op_type not in ORDER_PRESERVING or len(consumers.get(pool.output[0], [])) != 1:
                    continue
                if self.q_info[q.output[0]][0] not in ("uint8", "int8"):
                    continue  # onnxruntime's MaxPool takes 8-bit integers, not int4/16-bit
                x, codes = pool.input[0], q.output[0]
                moved = self.fresh(f"{codes}_before_pool")
                q.input[0], q.output[0] = x, moved
                pool.input[0], pool.output[0] = moved, codes
                self.q_info[moved] = self.q_info.pop(codes)
                for d, src in list(self.q_of_dq.items()):
                    if src == codes:
                        self.q_of_dq[d] = moved
                i, j = self.nodes.index(pool), self.nodes.index(q)
                self.nodes[i], self.nodes[j] = q, pool
                changed = True
                break

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
        """Drop nodes and initializers the graph outputs do not depend on (folded Pads, absorbed activations)."""
        producer, _ = self.links()
        needed: set[int] = set()
        todo = list(self.outputs)
        while todo:
            t = todo.pop()
            n = producer.get(t)
            if n is None or id(n) in needed:
                continue
            needed.add(id(n))
            todo.extend(i for i in n.input if i)
        self.nodes = [n for n in self.nodes if id(n) in needed]
        used = {i for n in self.nodes for i in n.input}
        self.inits = [t for t in self.inits if t.name in used]
