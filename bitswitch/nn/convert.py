"""Model conversion (``quantize``), precision switching (``set_precision``) and calibration.

These three functions are the public entry points every workflow goes through: training,
switching, search, storage and export all see the same quantized layers.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import fnmatch
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import torch
from torch import nn

from ..quant.grid import check_bit_list, check_bits, check_rounding
from ..quant.ranges import ACT_INITS, WEIGHT_INITS
from .batchnorm import SwitchableBatchNorm
from .layers import QUANT_TYPES, QuantLayer

log = logging.getLogger(__name__)

Precision = Union[int, tuple[int, int], None]
PrecisionSpec = Union[Precision, Mapping[str, Precision]]

DEFAULT_FULL_PRECISION = "first_last"


@dataclass(frozen=True)
class QuantConfig:
    """Everything needed to redo a conversion; stored in every checkpoint."""

    bits: tuple[int, ...]
    act_bits: tuple[int, ...]
    storage_bits: int
    rounding: str = "half_even"
    variant: str = "shared"
    switchable_bn: bool = True
    full_precision: tuple[str, ...] = ()
    quantized: tuple[str, ...] = field(default=())
    act_asymmetric: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "QuantConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown quantization config keys {sorted(unknown)}; valid: {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _convertible(module: nn.Module) -> bool:
    return type(module) in QUANT_TYPES


def _resolve_full_precision(candidates: list[str], spec: str | Sequence[str] | None) -> tuple[str, ...]:
    if spec is None or spec == DEFAULT_FULL_PRECISION:
        return tuple(dict.fromkeys([candidates[0], candidates[-1]])) if candidates else ()
    if isinstance(spec, str):
        spec = [spec]
    chosen: list[str] = []
    for pattern in spec:
        hits = [n for n in candidates if n == pattern or fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ValueError(f"full_precision entry {pattern!r} matches no Conv2d/Linear layer; layers: {_short_list(candidates)}")
        chosen.extend(hits)
    return tuple(dict.fromkeys(chosen))


def _short_list(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def quantize(
    model: nn.Module,
    bits: Sequence[int] = (8, 6, 4, 2),
    *,
    act_bits: Sequence[int] | None = None,
    storage_bits: int | None = None,
    full_precision: str | Sequence[str] | None = DEFAULT_FULL_PRECISION,
    rounding: str = "half_even",
    variant: str = "shared",
    switchable_bn: bool = True,
    inplace: bool = False,
    act_asymmetric: bool = False,
) -> nn.Module:
    """Convert the Conv2d/Linear layers of ``model`` into bit-switchable quantized layers.

    Args:
        bits: weight bit-widths the model can switch between (any order; stored highest first).
        act_bits: activation bit-widths (default: the same as ``bits``).
        storage_bits: precision ``h`` of the stored integer codes (default: ``max(bits)``).
        full_precision: layers kept in FP32, by exact name or ``fnmatch`` pattern. The default
            ``"first_last"`` keeps the first and the last Conv2d/Linear (as in the paper); pass
            ``()`` to quantize every layer.
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
    if not inplace:
        model = copy.deepcopy(model)

    modules = list(model.named_modules())
    candidates = [n for n, m in modules if _convertible(m)]
    if not candidates:
        raise ValueError("model has no nn.Conv2d or nn.Linear layer to quantize")
    fp = _resolve_full_precision(candidates, full_precision)
    quantized = [n for n in candidates if n not in fp]
    if not quantized:
        raise ValueError(f"every Conv2d/Linear layer is kept in full precision ({_short_list(list(fp))}); nothing to quantize")

    # Each BatchNorm is tied to the closest preceding Conv2d/Linear in registration order: the layer
    # whose output it normalises in every architecture built the torchvision way.
    bn_source: dict[str, str | None] = {}
    last: str | None = None
    for name, m in modules:
        if _convertible(m):
            last = name
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            bn_source[name] = last

    for name in quantized:
        float_layer = model.get_submodule(name)
        qtype = QUANT_TYPES[type(float_layer)]
        model.set_submodule(name, qtype.from_float(float_layer, wbits, abits, h, rounding, variant, act_asymmetric))  # type: ignore[attr-defined]
    if switchable_bn:
        for name, src in bn_source.items():
            if src is not None and src in quantized:
                model.set_submodule(name, SwitchableBatchNorm(model.get_submodule(name), wbits, source=src))

    model.bitswitch_config = QuantConfig(wbits, abits, h, rounding, variant, switchable_bn, fp, tuple(quantized), act_asymmetric)
    log.info("quantized %d layers (%s), kept %d in full precision (%s)", len(quantized), _short_list(quantized, 4), len(fp), ", ".join(fp))
    return model


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
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return int(value[0]), int(value[1])
    raise ValueError(f"{where}: precision must be an int, a (weight_bits, act_bits) pair or None, got {value!r}")


def set_precision(model: nn.Module, spec: PrecisionSpec) -> None:
    """Switch the precision of quantized layers.

    ``spec`` is one of:

    * an int ``b``: every quantized layer to W``b``A``b``;
    * a pair ``(w, a)``: every layer to W``w``A``a``;
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
        try:
            if w is None or a is None:
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

    Runs ``batches`` (tensors or ``(inputs, labels)`` pairs; at most ``num_batches`` of them) through
    the model in full precision and eval mode, collecting a random sample of each quantized layer's
    input. Weight scales come from the weights (``weight_init``: ``mse`` searches the scale that
    minimises the error over all bit-widths, ``std3`` is the paper's 3-sigma rule, ``max`` never
    clips); each activation bit-width gets its own scale (``act_init``: ``mse``, ``lsq`` or ``max``),
    and the grid is unsigned when every calibration value was non-negative.

    Returns per-layer statistics (sign, sample size, chosen scales) for logging.
    """
    if weight_init not in WEIGHT_INITS:
        raise ValueError(f"unknown weight_init {weight_init!r}; valid: {', '.join(WEIGHT_INITS)}")
    if act_init not in ACT_INITS:
        raise ValueError(f"unknown act_init {act_init!r}; valid: {', '.join(ACT_INITS)}")
    layers = _require_quantized(model)
    gen = torch.Generator().manual_seed(seed)
    reservoirs = {name: Reservoir(sample_size, gen) for name in layers}
    previous = get_precision(model)
    integer = any(m.is_integer for m in layers.values())
    was_training = model.training
    model.eval()
    # Integer models cannot run in FP32: calibrate their activations behind the top weight precision.
    for m in layers.values():
        m.a_bits = None
        m.w_bits = m.weight_quant.bits[0] if m.is_integer else None
    _sync_batchnorms(model, layers)
    hooks = [m.register_forward_pre_hook(lambda _m, args, n=name: reservoirs[n].add(args[0])) for name, m in layers.items()]  # type: ignore[union-attr]
    seen = 0
    try:
        for x in iter_inputs(batches, num_batches):
            if x.numel() == 0:
                raise ValueError("calibration batch is empty")
            if x.is_floating_point() and not torch.isfinite(x).all():
                raise ValueError("calibration inputs contain NaN or Inf")
            model(x)
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
        res = reservoirs[name]
        if res.count == 0:
            raise ValueError(f"layer {name!r} was never called during calibration; is it used in forward()?")
        if not integer:
            m.weight_quant.init_scale(m.weight, weight_init)
        m.act_quant.init_scales(res.sample(), act_init, signed=res.negative)
        report[name] = {
            "signed": res.negative,
            "values_seen": res.count,
            "act_scales": {b: float(m.act_quant.scales[str(b)]) for b in m.act_quant.bits},
        }
    log.info("calibrated %d quantized layers on %d batches", len(layers), seen)
    return report


__all__ = ["QuantConfig", "quantize", "set_precision", "get_precision", "calibrate", "quantized_layers"]
