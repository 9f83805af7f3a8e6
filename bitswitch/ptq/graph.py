"""Post-training quantization on the one ``torch.export`` capture (:mod:`bitswitch.capture`).

Three things PTQ needs from the graph, all read off the captured ATen graph, where every conv /
linear layer is one opaque ``bitswitch::layer`` node calling the live module:

* which ops only move data (an activation quantizer "sees through" them, so layers reading the
  same value through a reshape or a pooling form one quantizer group): :func:`source`;
* which BatchNorm reads a layer's output and nothing else does (foldable): :func:`fold_captured`,
  which folds them into the live layers, makes the BNs exact identities (:func:`neutralize_bn`) and
  removes them from the graph, so the graph and the model keep computing the same function;
* running the graph node by node, so that phase 1 re-runs only a suffix from cached values:
  :class:`GraphRunner`.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import fx, nn

from ..capture import Capture, capture
from ..nn.fold import fold_conv_bn

log = logging.getLogger(__name__)

LAYER_OP = torch.ops.bitswitch.layer.default

#: ATen ops that only move data (or pool it): an activation quantizer "sees through" them
PASSTHROUGH_OPS = frozenset({
    "view", "_unsafe_view", "reshape", "permute", "transpose", "t", "flatten", "unflatten", "clone", "contiguous",
    "unsqueeze", "squeeze", "expand", "alias", "detach", "dropout", "native_dropout", "feature_dropout",
    "max_pool1d", "max_pool2d", "max_pool2d_with_indices", "avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "adaptive_max_pool2d", "mean", "pad", "constant_pad_nd", "zero_pad2d",
})
#: layer types kept as single nodes in PTQ captures (quantized layers subclass them)
LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Linear)
BATCH_NORM_OPS = frozenset({"batch_norm", "_native_batch_norm_legit_no_training"})


def op_name(node: fx.Node) -> str | None:
    """The ATen op's base name (``view`` for ``aten.view.default``), ``None`` for other nodes."""
    if node.op != "call_function":
        return None
    packet = getattr(node.target, "overloadpacket", None)
    return getattr(packet, "__name__", None)


def capture_layers(model: nn.Module, example: Any) -> Capture:
    """Capture ``model`` with every conv/linear (quantized or not) as an opaque node."""
    return capture(model, example, opaque=lambda _n, m: isinstance(m, LAYER_TYPES))


def source(node: fx.Node) -> fx.Node:
    """Walk back from ``node`` through data-movement ops to the op that produced the value."""
    while True:
        if op_name(node) in PASSTHROUGH_OPS and node.args and isinstance(node.args[0], fx.Node):
            node = node.args[0]
        elif node.op == "call_function" and node.target is operator.getitem and node.args[1] == 0 \
                and op_name(node.args[0]) in PASSTHROUGH_OPS:  # max_pool2d_with_indices, native_dropout
            node = node.args[0]
        else:
            return node


def _module_of(gm: fx.GraphModule, node: Any) -> str | None:
    """``bn1`` for a ``get_attr`` of ``bn1.running_mean``."""
    if isinstance(node, fx.Node) and node.op == "get_attr":
        return node.target.rsplit(".", 1)[0] if "." in node.target else ""
    return None


def neutralize_bn(bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Make a folded BN compute exactly ``x``: mean 0, variance 1, ``eps`` 0, scale 1, shift 0.

    The module stays (rather than becoming ``nn.Identity``) because subclasses such as timm's
    ``BatchNormAct2d`` also apply an activation after normalising. ``eps`` is not in the state dict,
    so a reloaded checkpoint redoes this for the pairs its metadata lists.
    """
    with torch.no_grad():
        bn.running_mean.zero_()  # type: ignore[union-attr]
        bn.running_var.fill_(1.0)  # type: ignore[union-attr]
        if bn.weight is not None:
            bn.weight.fill_(1.0)
            bn.bias.fill_(0.0)  # type: ignore[union-attr]
    bn.eps = 0.0


def fold_captured(model: nn.Module, cap: Capture) -> list[tuple[str, str]]:
    """Fold every BatchNorm that reads a captured layer's output (and is its only reader) into that
    layer; the BN becomes an exact identity in ``model`` and disappears from the graph. Returns the
    ``(layer, bn)`` pairs."""
    gm = cap.module
    pairs: list[tuple[str, str]] = []
    for node, layer_name in list(cap.layer_nodes()):
        users = list(node.users)
        if len(users) != 1 or op_name(users[0]) not in BATCH_NORM_OPS:
            continue
        bn_node = users[0]
        bn_name = _module_of(gm, bn_node.args[3])  # running_mean
        bn = model.get_submodule(bn_name) if bn_name is not None else None
        layer = model.get_submodule(layer_name)
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.num_features != layer.weight.shape[0] \
                or len(bn_node.args[3].users) > 1:  # a BN called twice cannot be folded into one layer
            continue
        out = bn_node
        if op_name(bn_node) == "_native_batch_norm_legit_no_training":  # returns (y, mean, var)
            (out,) = [u for u in bn_node.users if u.args[1] == 0]
        fold_conv_bn(layer, bn)
        neutralize_bn(bn)
        out.replace_all_uses_with(node)
        for n in (out, bn_node) if out is not bn_node else (bn_node,):
            gm.graph.erase_node(n)
        pairs.append((layer_name, bn_name))
    gm.graph.eliminate_dead_code()
    gm.recompile()
    log.info("folded %d BatchNorm layers into their convolutions", len(pairs))
    return pairs


def flat_inputs(example: Any) -> list[Any]:
    """The leaves a captured graph's placeholders take, in order."""
    if isinstance(example, torch.Tensor):
        example = (example,)
    args, kwargs = ((), dict(example)) if isinstance(example, Mapping) else (tuple(example), {})
    return torch.utils._pytree.tree_leaves((args, kwargs))


class GraphRunner:
    """Runs a captured graph node by node so that a suffix can start from cached values.

    Opaque layer nodes call their live module directly (same computation as the custom op,
    without the dispatcher and the output copy). The capture keeps in-place ops (``relu_``,
    ``add_``); their written arguments are copied first, so values cached for suffix re-runs are
    never changed (later readers in the graph already refer to the in-place op's result).
    """

    def __init__(self, cap: Capture, model: nn.Module):
        self.gm = cap.module
        # nodes without users (unused parameters, shape guards) are never run
        self.nodes = [n for n in self.gm.graph.nodes if n.users or n.op in ("output", "placeholder")]
        self.index = {n: i for i, n in enumerate(self.nodes)}
        self.placeholders = [n for n in self.nodes if n.op == "placeholder"]
        self.layer_index = {name: self.index[node] for node, name in cap.layer_nodes()}
        self.live = {node: model.get_submodule(name) for node, name in cap.layer_nodes()}
        self.written = {n: _written_args(n) for n in self.nodes if _written_args(n)}

    def _exec(self, node: fx.Node, lookup: Callable[[fx.Node], Any]) -> Any:
        args = fx.node.map_arg(node.args, lookup)
        if node.op == "call_function":
            if node in self.live:
                return self.live[node](args[0])
            if node in self.written:
                args = tuple(a.clone() if i in self.written[node] and isinstance(a, torch.Tensor) else a for i, a in enumerate(args))
            return node.target(*args, **fx.node.map_arg(node.kwargs, lookup))
        if node.op == "get_attr":
            return _attr(self.gm, node.target)
        if node.op == "call_module":
            return self.gm.get_submodule(node.target)(*args, **fx.node.map_arg(node.kwargs, lookup))
        if node.op == "output":
            return args[0]
        raise ValueError(f"unsupported graph node {node.op!r}")

    def run_all(self, example: Any) -> tuple[dict[fx.Node, Any], Any]:
        leaves = flat_inputs(example)
        if len(leaves) != len(self.placeholders):
            raise ValueError(f"the captured graph takes {len(self.placeholders)} inputs, got {len(leaves)}")
        env: dict[fx.Node, Any] = dict(zip(self.placeholders, leaves))
        out = None
        for n in self.nodes:
            if n.op == "placeholder":
                continue
            env[n] = self._exec(n, env.__getitem__)
            if n.op == "output":
                out = env[n]
        return env, out

    def run_from(self, start: int, env: Mapping[fx.Node, Any]) -> Any:
        """Re-run nodes ``start..end`` reading earlier values from ``env``; returns the output."""
        overlay: dict[fx.Node, Any] = {}
        lookup = lambda n: overlay[n] if n in overlay else env[n]  # noqa: E731
        for n in self.nodes[start:]:
            if n.op == "placeholder":
                continue
            overlay[n] = self._exec(n, lookup)
            if n.op == "output":
                return overlay[n]
        raise ValueError("graph has no output node")


def _written_args(node: fx.Node) -> tuple[int, ...]:
    """Positions of the arguments an in-place ATen op writes to."""
    schema = getattr(node.target, "_schema", None) if node.op == "call_function" else None
    if schema is None:
        return ()
    return tuple(i for i, a in enumerate(schema.arguments) if a.alias_info is not None and a.alias_info.is_write)


def _attr(obj: Any, target: str) -> Any:
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
