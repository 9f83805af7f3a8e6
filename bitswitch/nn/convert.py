"""Model conversion (``quantize``), precision switching (``set_precision``) and calibration.

These three functions are the public entry points every workflow goes through: training,
switching, search, storage and export all see the same quantized layers.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import torch
from torch import nn

from ..quant.grid import check_bit_list, check_bits, check_rounding
from ..quant.ranges import ACT_INITS, WEIGHT_INITS
from ..quant.weight import WEIGHT_QUANTIZERS
from ..table import format_table
from .attention import split_attention
from .batchnorm import SwitchableBatchNorm, batchnorm_sources, bind_batchnorms
from .dataflow import record_dataflow, run_model
from .layers import QuantLayer, quant_type, to_quantized
from .plan import SUPPORTED, FilterFn, make_plan

log = logging.getLogger(__name__)

Precision = Union[int, tuple[int, int], None]
PrecisionSpec = Union[Precision, Mapping[str, Precision]]


@dataclass(frozen=True)
class QuantConfig:
    """Everything needed to redo a conversion by name; stored in every checkpoint.

    ``quantized`` lists every converted layer (weight-only ones included), ``weight_only`` the
    subset whose inputs stay unquantized, ``full_precision`` the layers kept FP32 on purpose, and
    ``batchnorms`` maps each switchable BatchNorm to the layer that feeds it.
    """

    bits: tuple[int, ...]
    act_bits: tuple[int, ...]
    storage_bits: int
    rounding: str = "half_even"
    variant: str = "shared"
    switchable_bn: bool = True
    full_precision: tuple[str, ...] = ()
    quantized: tuple[str, ...] = field(default=())
    act_asymmetric: bool = False
    weight_only: tuple[str, ...] = ()
    batchnorms: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "QuantConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown quantization config keys {sorted(unknown)}; valid: {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def quantize(
    model: nn.Module,
    bits: Sequence[int] = (8, 6, 4, 2),
    *,
    act_bits: Sequence[int] | None = None,
    storage_bits: int | None = None,
    full_precision: str | Sequence[str] = "auto",
    filter_fn: FilterFn | None = None,
    weight_only: Sequence[str] = (),
    example_inputs: Any = None,
    rounding: str = "half_even",
    variant: str = "shared",
    switchable_bn: bool = True,
    inplace: bool = False,
    act_asymmetric: bool = False,
) -> nn.Module:
    """Convert the layers of ``model`` into bit-switchable quantized layers.

    Converted: ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` and their subclasses, Hugging Face
    ``Conv1D``, the four projections of every ``nn.MultiheadAttention`` (rebuilt as
    :class:`~bitswitch.nn.attention.QuantMultiheadAttention`), and ``nn.Embedding`` weight-only
    when ``weight_only`` names it. :func:`conversion_report` says what happened to every layer; the
    same table is logged.

    Args:
        bits: weight bit-widths the model can switch between (any order; stored highest first).
        act_bits: activation bit-widths (default: the same as ``bits``).
        storage_bits: precision ``h`` of the stored integer codes (default: ``max(bits)``).
        full_precision: layers kept in FP32. ``"auto"``: for a model with an ``nn.Embedding``
            (a transformer) the embeddings and the head (the last layer, and any layer whose weight
            is tied to an embedding); otherwise the first and the last layer, in call order when
            ``example_inputs`` are given. ``"first_last"``: the first and last layer. Or exact
            names / ``fnmatch`` patterns; ``()`` quantizes every layer.
        filter_fn: ``filter_fn(module, name) -> bool``; layers it refuses stay float. Asking for a
            weight-bearing module bitswitch cannot quantize is a ``ValueError``.
        weight_only: names/patterns of layers whose weights are quantized but inputs are not
            (embeddings, or a Linear); they override the ``"auto"`` choice.
        example_inputs: a tensor, a tuple of positional inputs or a dict of keyword inputs; one
            forward pass records which layer feeds each BatchNorm (and the call order). Without
            them, a BatchNorm follows the layer registered before it, and :func:`calibrate` checks.
        rounding: second-rounding mode (``half_even``, ``half_up`` = hardware shift, ``floor``).
        variant: ``"shared"`` (Double Rounding) or ``"unshared"`` (per-bit scales, FP32 storage).
        switchable_bn: give every BatchNorm fed by a quantized layer one copy per bit-width.
        act_asymmetric: activation grids with a zero point (post-training quantization, see
            :mod:`bitswitch.ptq`); ranges are then set by the PTQ range search, not LSQ training.

    Returns the converted model (a deep copy unless ``inplace``), at its highest precision and not
    yet calibrated: call :func:`calibrate` next.
    """
    if getattr(model, "bitswitch_config", None) is not None:
        raise ValueError("model is already quantized (it has a bitswitch_config); convert the FP32 model instead")
    wbits = check_bit_list(tuple(bits))
    abits = check_bit_list(tuple(act_bits)) if act_bits is not None else wbits
    h = check_bits(storage_bits if storage_bits is not None else wbits[0], what="storage_bits")
    if wbits[0] > h:
        raise ValueError(f"bits {list(wbits)} contain a bit-width above the storage precision storage_bits={h}")
    check_rounding(rounding)
    if variant not in WEIGHT_QUANTIZERS:
        raise ValueError(f"unknown weight quantizer variant {variant!r}; valid: {', '.join(WEIGHT_QUANTIZERS)}")
    if full_precision is None or (not isinstance(full_precision, str) and not isinstance(full_precision, Sequence)):
        raise ValueError(f"full_precision must be 'auto', 'first_last' or a list of layer names/patterns, got {full_precision!r}")
    if isinstance(weight_only, str):
        weight_only = [weight_only]
    if not inplace:
        model = copy.deepcopy(model)

    # Plan on a view with every MultiheadAttention split into its projections, then put them back:
    # convert() splits exactly those whose projections are quantized, and a refused plan changes nothing.
    split = split_attention(model)
    try:
        flow = record_dataflow(model, example_inputs) if example_inputs is not None else None
        plan = make_plan(model, full_precision, weight_only, filter_fn, flow)
        bns = batchnorm_sources(model, set(plan.quantized), flow) if switchable_bn else {}
    finally:
        for name, mha in split.items():
            model.set_submodule(name, mha)
    skipped = [r for r in plan.skipped() if r["reason"] != "filter_fn returned False"]
    if skipped:
        warnings.warn("weight-bearing modules left in float: " + "; ".join(f"{r['name']} ({r['type']}: {r['reason']})" for r in skipped),
                      stacklevel=2)
    if not plan.quantized:
        raise ValueError(f"nothing to quantize: {_short_list([r['name'] + ' ' + r['action'] for r in plan.rows])}")
    config = QuantConfig(wbits, abits, h, rounding, variant, switchable_bn, tuple(plan.full_precision), tuple(plan.quantized),
                         act_asymmetric, tuple(plan.weight_only), bns)
    convert(model, config)
    model.bitswitch_report = plan.rows
    if log.isEnabledFor(logging.INFO):
        log.info("conversion (%d quantized, %d weight-only):\n%s", len(plan.quantized) - len(plan.weight_only), len(plan.weight_only),
                 format_table(["layer", "type", "action", "reason"], [[r["name"], r["type"], r["action"], r["reason"]] for r in plan.rows]))
    return model


def convert(model: nn.Module, config: QuantConfig) -> nn.Module:
    """Apply a :class:`QuantConfig` by name, in place: what :func:`quantize` decided, or what a
    checkpoint says (loading never re-runs a filter). Layers that share one weight Parameter (a tied
    head and embedding) share one weight quantizer: one set of codes."""
    quantized = set(config.quantized)
    named = quantized | set(config.full_precision)  # an attention whose projections are named is split, even if all FP32
    split_attention(model, sorted({n.rsplit(".", 1)[0] for n in named if n.endswith((".q_proj", ".k_proj", ".v_proj", ".out_proj"))}))
    by_weight: dict[int, QuantLayer] = {}
    try:
        rows = [{"name": n, "type": type(model.get_submodule(n)).__name__, "action": "fp32", "reason": "quant_config.full_precision"}
                for n in config.full_precision]
    except AttributeError as e:
        raise ValueError(f"quant_config.full_precision names a layer the model does not have ({e})") from None
    for name in config.quantized:
        try:
            float_layer = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"the model has no layer {name!r}") from None
        if quant_type(float_layer) is None:
            raise ValueError(f"layer {name!r} is a {type(float_layer).__name__}, which cannot be quantized; supported: {SUPPORTED}")
        q = to_quantized(float_layer, config.bits, config.act_bits, config.storage_bits, config.rounding, config.variant,
                         config.act_asymmetric, name in config.weight_only)
        rows.append({"name": name, "type": type(float_layer).__name__, "action": "weight-only" if q.weight_only else "quantized",
                     "reason": "quant_config.weight_only" if q.weight_only else "quant_config.quantized"})
        first = by_weight.setdefault(id(q.weight), q)
        if first is not q:
            q.weight_quant = first.weight_quant
        model.set_submodule(name, q)
    for name, src in config.batchnorms.items():
        if src not in quantized:
            raise ValueError(f"BatchNorm {name!r} follows {src!r}, which is not a quantized layer")
        try:
            bn = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"the model has no BatchNorm {name!r}") from None
        if not isinstance(bn, (nn.modules.batchnorm._BatchNorm, SwitchableBatchNorm)):
            raise ValueError(f"{name!r} is a {type(bn).__name__}, not a BatchNorm")
    bind_batchnorms(model, dict(config.batchnorms), config.bits)
    model.bitswitch_config = config
    model.bitswitch_report = rows  # quantize replaces it with the full report and its reasons
    return model


def to_integer(model: nn.Module) -> nn.Module:
    """Every quantized layer in integer form (:meth:`QuantLayer.to_integer`), tied layers sharing one codes buffer."""
    codes: dict[int, torch.Tensor] = {}
    for layer in quantized_layers(model).values():
        key = id(layer.weight_quant)
        layer.to_integer(codes.get(key))
        codes.setdefault(key, layer.weight_int)
    return model


def conversion_report(model: nn.Module) -> list[dict[str, str]]:
    """What :func:`quantize` did with every weight-bearing module: rows of ``name``, ``type``,
    ``action`` (``quantized``, ``weight-only``, ``fp32`` or ``skipped``) and ``reason``. A model
    rebuilt from a checkpoint lists the layers its ``quant_config`` names (reason: that key)."""
    rows = getattr(model, "bitswitch_report", None)
    if rows is None:
        raise ValueError("model has no conversion report: convert it with bitswitch.quantize (or load a quantized checkpoint)")
    return [dict(r) for r in rows]


def _short_list(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def quantized_layers(model: nn.Module) -> dict[str, QuantLayer]:
    """Name -> quantized layer, in registration order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)}


def _require_quantized(model: nn.Module) -> dict[str, QuantLayer]:
    layers = quantized_layers(model)
    if not layers:
        raise ValueError("model has no quantized layers: convert it with bitswitch.quantize(model, bits=...) first")
    return layers


def _parse_precision(value: Precision, where: str) -> tuple[int | None, int | None]:
    if value is None:
        return None, None
    if isinstance(value, bool):
        raise ValueError(f"{where}: precision must be an int, a (weight_bits, act_bits) pair or None, got {value!r}")
    if isinstance(value, int):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[0], int) and not isinstance(value[0], bool):
        if value[1] is None:  # (w, None): weight-only layers
            return int(value[0]), None
        if isinstance(value[1], int) and not isinstance(value[1], bool):
            return int(value[0]), int(value[1])
    raise ValueError(f"{where}: precision must be an int, a (weight_bits, act_bits) pair or None, got {value!r}")


def set_precision(model: nn.Module, spec: PrecisionSpec) -> None:
    """Switch the precision of quantized layers.

    ``spec`` is one of:

    * an int ``b``: every quantized layer to W``b``A``b``;
    * a pair ``(w, a)``: every layer to W``w``A``a`` (weight-only layers take ``w`` and keep FP inputs);
    * ``None``: full precision (latent FP32 weights; not possible after :meth:`to_integer`);
    * a mapping ``{layer_name: b or (w, a) or None}``: those layers only (mixed precision); the
      others keep their current precision.

    Everything is validated before anything changes, so a bad spec leaves the model as it was.
    """
    layers = _require_quantized(model)
    if isinstance(spec, Mapping):
        plan: dict[str, tuple[int | None, int | None]] = {}
        for name, value in spec.items():
            if name not in layers:
                plan_error_names = list(layers)
                fp = getattr(getattr(model, "bitswitch_config", None), "full_precision", ())
                if name in fp:
                    raise ValueError(f"layer {name!r} is kept in full precision and has no bit-width to set")
                close = difflib.get_close_matches(name, plan_error_names, n=3)
                hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
                raise ValueError(f"unknown quantized layer {name!r}{hint} valid layers: {_short_list(plan_error_names)}")
            plan[name] = _parse_precision(value, f"layer {name!r}")
    else:
        wa = _parse_precision(spec, "precision")  # type: ignore[arg-type]
        plan = {name: wa for name in layers}

    for name, (w, a) in plan.items():
        layer = layers[name]
        if layer.weight_only and w is not None:  # inputs stay unquantized whatever the spec says for activations
            a = None
            plan[name] = (w, a)
        try:
            if layer.weight_only and w is not None:
                layer.weight_quant.check(w)
            elif w is None or a is None:
                if (w is None) != (a is None):
                    raise ValueError("weight and activation must both be None (full precision) or both set")
                if layer.is_integer:
                    raise ValueError("full precision is not available: the model stores integer codes only")
            else:
                layer.weight_quant.check(w)
                layer.act_quant.check(a)
        except ValueError as e:
            raise ValueError(f"layer {name!r}: {e}") from None

    for name, (w, a) in plan.items():
        layers[name].w_bits, layers[name].a_bits = w, a
    _sync_batchnorms(model, layers)


def add_bit_width(model: nn.Module, bits: int | Sequence[int]) -> None:
    """Let a quantized model switch to bit-width(s) it was not trained for (at most its storage precision).

    Double Rounding makes the weights of any ``bits`` <= ``h`` a slice of the stored codes, so
    switching is possible; activations take the nearest trained bit-width's range on the finer or
    coarser grid (:meth:`~bitswitch.quant.activation.ActivationQuantizer.add_bits`). Nothing trained
    that precision: measure it before trusting it. Afterwards :func:`set_precision` accepts ``bits``
    and :func:`~bitswitch.train.optim.model_bits` lists it; the checkpoint's recorded bit list does not
    change (a reloaded file needs this call again). Per-bit BatchNorms have no statistics for it, so
    such models refuse. Uses: interpolation (5 and 3 bits of an {8,6,4,2} model), the
    Matryoshka-style slice of a post-training int8 model, ``bitswitch generate --untrained-ok``.
    """
    if isinstance(bits, (list, tuple)):
        for b in bits:
            add_bit_width(model, b)
        return
    layers = _require_quantized(model)
    if any(isinstance(m, SwitchableBatchNorm) for m in model.modules()):
        raise ValueError(f"the model has per-bit-width BatchNorms with no statistics for {bits} bits; it cannot switch to an untrained bit-width")
    unshared = [n for n, m in layers.items() if not getattr(m.weight_quant, "shared_scale", False)]
    if unshared:
        raise ValueError(f"layer {unshared[0]!r} has a separate weight scale per trained bit-width (variant 'unshared'): none for {bits} bits")
    h = min(m.weight_quant.storage_bits for m in layers.values())
    if check_bits(bits) > h:  # checked before anything changes
        raise ValueError(f"bit-width {bits} is above the storage precision h={h}: the stored codes hold at most {h} bits")
    for m in layers.values():
        m.weight_quant.add_bits(bits)
        if not m.weight_only:
            m.act_quant.add_bits(bits)


def _sync_batchnorms(model: nn.Module, layers: Mapping[str, QuantLayer]) -> None:
    for m in model.modules():
        if isinstance(m, SwitchableBatchNorm):
            src = layers.get(m.source)
            m.activate(None if src is None else src.w_bits)
        elif hasattr(type(m), "sync_precision"):  # e.g. TransitionalBatchNorm: picks from several layers' bits
            m.sync_precision(layers)  # type: ignore[operator]


def get_precision(model: nn.Module) -> dict[str, tuple[int | None, int | None]]:
    """Current ``{layer: (weight_bits, act_bits)}`` of every quantized layer."""
    return {n: (m.w_bits, m.a_bits) for n, m in _require_quantized(model).items()}


def first_tensor(batch: Any) -> torch.Tensor:
    """The input tensor of one batch: the batch itself, its first element, or its first mapping value."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, Mapping) and batch:
        first = next(iter(batch.values()))
        if isinstance(first, torch.Tensor):
            return first
    raise ValueError(f"calibration batches must be tensors or (inputs, labels) pairs, got {type(batch).__name__}")


def iter_inputs(batches: Iterable[Any], num_batches: int | None = None) -> Iterator[torch.Tensor]:
    """The input tensor of each batch (tensors or ``(inputs, labels)`` pairs), at most ``num_batches``."""
    for i, batch in enumerate(batches):
        if num_batches is not None and i >= num_batches:
            return
        yield first_tensor(batch)


class Reservoir:
    """Keeps a bounded random sample of the values a layer sees, plus the sign information."""

    def __init__(self, capacity: int, generator: torch.Generator):
        self.capacity, self.gen = capacity, generator
        self.chunks: list[torch.Tensor] = []
        self.negative = False
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().float().flatten()
        if not torch.isfinite(x).all():
            raise ValueError("calibration produced non-finite activations (NaN or Inf); check the inputs and the model")
        self.negative |= bool((x < 0).any())
        self.count += x.numel()
        keep = min(x.numel(), self.capacity // 4)
        idx = torch.randint(0, x.numel(), (keep,), generator=self.gen)
        self.chunks.append(x[idx])
        if sum(c.numel() for c in self.chunks) > 2 * self.capacity:
            merged = torch.cat(self.chunks)
            perm = torch.randperm(merged.numel(), generator=self.gen)[: self.capacity]
            self.chunks = [merged[perm]]

    def sample(self) -> torch.Tensor:
        return torch.cat(self.chunks)


def _model_inputs(batch: Any) -> Any:
    """What the model is called with for one calibration batch: a mapping as keyword arguments (a
    tokenizer's output), otherwise the input tensor of a tensor or ``(inputs, labels)`` batch."""
    inputs = dict(batch) if isinstance(batch, Mapping) else first_tensor(batch)
    for t in inputs.values() if isinstance(inputs, dict) else [inputs]:
        if isinstance(t, torch.Tensor) and t.numel() == 0:
            raise ValueError("calibration batch is empty")
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError("calibration inputs contain NaN or Inf")
    return inputs


def _rebind_batchnorms(model: nn.Module, inputs: Any) -> None:
    """Check which layer really feeds each BatchNorm on one batch and fix the bindings (a model
    quantized without ``example_inputs`` may have followed registration order)."""
    config: QuantConfig | None = getattr(model, "bitswitch_config", None)
    if config is None or not config.switchable_bn or not any(isinstance(m, (nn.modules.batchnorm._BatchNorm, SwitchableBatchNorm)) for m in model.modules()):
        return
    sources = batchnorm_sources(model, set(quantized_layers(model)), record_dataflow(model, inputs))
    if sources == config.batchnorms:
        return
    changes = bind_batchnorms(model, sources, config.bits)
    model.bitswitch_config = dataclasses.replace(config, batchnorms=sources)
    log.info("BatchNorm bindings corrected from the data flow: %s", "; ".join(changes))


@torch.no_grad()
def calibrate(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    num_batches: int | None = None,
    weight_init: str = "mse",
    act_init: str = "mse",
    sample_size: int = 1 << 18,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Initialise every quantizer scale from the weights and from data.

    Runs ``batches`` (tensors, ``(inputs, labels)`` pairs or mappings of keyword inputs; at most
    ``num_batches`` of them) through the model in full precision and eval mode, collecting a random sample of each quantized layer's
    input. Weight scales come from the weights (``weight_init``: ``mse`` searches the scale that
    minimises the error over all bit-widths, ``std3`` is the paper's 3-sigma rule, ``max`` never
    clips); each activation bit-width gets its own scale (``act_init``: ``mse``, ``lsq`` or ``max``),
    and the grid is unsigned when every calibration value was non-negative.

    The first batch also checks, from the data flow, which layer feeds each BatchNorm and corrects
    the switchable BatchNorms (:func:`~bitswitch.nn.batchnorm.bind_batchnorms`).

    Returns per-layer statistics (sign, sample size, chosen scales) for logging.
    """
    if weight_init not in WEIGHT_INITS:
        raise ValueError(f"unknown weight_init {weight_init!r}; valid: {', '.join(WEIGHT_INITS)}")
    if act_init not in ACT_INITS:
        raise ValueError(f"unknown act_init {act_init!r}; valid: {', '.join(ACT_INITS)}")
    layers = _require_quantized(model)
    gen = torch.Generator().manual_seed(seed)
    reservoirs = {name: Reservoir(sample_size, gen) for name, m in layers.items() if not m.weight_only}
    previous = get_precision(model)
    integer = any(m.is_integer for m in layers.values())
    was_training = model.training
    model.eval()
    # Integer models cannot run in FP32: calibrate their activations behind the top weight precision.
    for m in layers.values():
        m.a_bits = None
        m.w_bits = m.weight_quant.bits[0] if m.is_integer else None
    _sync_batchnorms(model, layers)
    hooks = []
    seen = 0
    try:
        for i, batch in enumerate(batches):
            if num_batches is not None and i >= num_batches:
                break
            inputs = _model_inputs(batch)
            if seen == 0:
                _rebind_batchnorms(model, inputs)  # its own pass, before the reservoirs listen
                hooks = [layers[n].register_forward_pre_hook(lambda _m, args, n=n: reservoirs[n].add(args[0])) for n in reservoirs]  # type: ignore[union-attr]
            run_model(model, inputs)
            seen += 1
    finally:
        for h in hooks:
            h.remove()
        for name, m in layers.items():
            m.w_bits, m.a_bits = previous[name]
        _sync_batchnorms(model, layers)
        model.train(was_training)
    if seen == 0:
        raise ValueError("calibration data is empty: pass at least one batch")

    report: dict[str, dict[str, Any]] = {}
    for name, m in layers.items():
        if not integer:
            m.weight_quant.init_scale(m.weight, weight_init)
        if m.weight_only:
            report[name] = {"weight_only": True}
            continue
        res = reservoirs[name]
        if res.count == 0:
            raise ValueError(f"layer {name!r} was never called during calibration; is it used in forward()?")
        m.act_quant.init_scales(res.sample(), act_init, signed=res.negative)
        report[name] = {
            "signed": res.negative,
            "values_seen": res.count,
            "act_scales": {b: float(m.act_quant.scales[str(b)]) for b in m.act_quant.bits},
        }
    log.info("calibrated %d quantized layers on %d batches", len(layers), seen)
    return report


__all__ = ["QuantConfig", "add_bit_width", "calibrate", "conversion_report", "convert", "get_precision", "quantize", "quantized_layers", "set_precision", "to_integer"]
