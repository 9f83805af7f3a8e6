"""Python API of post-training mixed precision: ``prepare`` then ``search``.

    session = bitswitch.ptq.prepare(model, calib_batches, candidates=[(8, 16), (8, 8), (4, 8)])
    result = session.search(budget=0.375)              # relative BOPs (all-W8A16 = 1)
    result = session.search(accuracy_target=0.87, eval_fn=my_metric)
    session.model                                     # a normal bitswitch model at result.layer_config
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..cost import layer_costs
from ..nn.convert import _first_tensor, _Reservoir, quantize, quantized_layers, set_precision
from .adaround import InputStats, conv_geometry, adaround_layers, bias_correction, sample_rows, weight_scale_output_mse
from .fold import fold_batchnorms
from .groups import QuantizerGroup, assign_candidates, find_groups, parse_candidates
from .pareto import Flip, config_at, greedy_sequence, group_bops, steps_for_budget
from .ranges import act_range_mse
from .sensitivity import GraphRunner, _output_tensor, pair_key, phase1, sqnr_db
from .trace import trace

log = logging.getLogger(__name__)

Pair = tuple[int, int]
DEFAULT_CANDIDATES: tuple[Pair, ...] = ((8, 16), (8, 8), (4, 8))
REFERENCE: Pair = (8, 16)


@dataclass
class PTQResult:
    """What a search chose, and everything needed to explain it."""

    group_config: dict[str, Pair]
    layer_config: dict[str, Pair]
    relative_bops: float
    metric: float | None
    sensitivity: list[dict[str, Any]]
    pareto: list[dict[str, Any]]
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "group_config": {g: pair_key(c) for g, c in self.group_config.items()},
            "layer_config": {n: list(c) for n, c in self.layer_config.items()},
            "relative_bops": self.relative_bops,
            "metric": self.metric,
            "sensitivity": self.sensitivity,
            "pareto": self.pareto,
            "timings": self.timings,
        }


def _digest(tensors: Iterable[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().contiguous().cpu()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _calibration_tensor(calibration: Iterable[Any]) -> torch.Tensor:
    """All calibration inputs as one float tensor; refuses empty or non-finite data."""
    xs = [_first_tensor(b) for b in calibration]
    if not xs:
        raise ValueError("calibration data is empty: pass at least one batch")
    data = torch.cat([x.float() for x in xs])
    if not torch.isfinite(data).all():
        raise ValueError("calibration inputs contain NaN or Inf")
    return data


class PTQSession:
    """A folded, quantized copy of ``model`` with ranges set, quantizer groups and a phase-1 cache."""

    def __init__(
        self,
        model: nn.Module,
        calibration: Iterable[Any],
        candidates: Sequence[Sequence[int]] | Mapping[str, Sequence[Sequence[int]]] = DEFAULT_CANDIDATES,
        *,
        fold_bn: bool = True,
        full_precision: Sequence[str] = (),
        adaround: bool = False,
        adaround_bits: Sequence[int] | None = None,
        adaround_iters: int = 300,
        adaround_rows: int = 256,
        bias_correct: bool = False,
        weight_ranges: str = "mse",
        channels_last: bool = True,
        sample_size: int = 1 << 16,
        chunk_size: int = 32,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        t0 = time.perf_counter()
        if adaround_iters < 1 or adaround_rows < 1:
            raise ValueError(f"adaround_iters and adaround_rows must be positive, got {adaround_iters}, {adaround_rows}")
        if weight_ranges not in ("mse", "output"):
            raise ValueError(f"weight_ranges must be 'mse' (weight error) or 'output' (layer output error), got {weight_ranges!r}")
        self.timings: dict[str, float] = {}
        self.progress = progress
        self.table = parse_candidates(candidates)
        data = _calibration_tensor(calibration)
        # channels-last is ~3x faster for depthwise-heavy CNNs on CPU (oneDNN); results are the same
        self.memory_format = torch.channels_last if channels_last and data.dim() == 4 else torch.contiguous_format
        self.chunks = [c.contiguous(memory_format=self.memory_format) for c in data.split(chunk_size)]
        self.input_shape = tuple(data.shape[1:])
        self.bias_correct = bias_correct
        self._plain = False
        wbits = self._build_model(model, fold_bn, full_precision)

        need_stats = adaround or bias_correct or weight_ranges == "output"
        stats = self._set_ranges(sample_size, seed, adaround_rows if need_stats else 0)
        if weight_ranges == "output":
            self._output_weight_ranges(stats)
        self.timings["ranges_s"] = time.perf_counter() - t0

        self._find_groups()
        # Per-layer, per-bit effective weights: FP32 latent by default, AdaRound-ed where asked
        # (computed once per (layer, bits) and reused by phase 1, phase 2 and the final model).
        self.fp_weights = {n: l.weight.detach().clone() for n, l in self.layers.items()}
        self.fp_biases = {n: None if l.bias is None else l.bias.detach().clone() for n, l in self.layers.items()}
        self.rounded: dict[tuple[str, int], torch.Tensor] = {}
        self.biases: dict[tuple[str, int], torch.Tensor] = {}
        self.adaround_bits = tuple(adaround_bits) if adaround_bits is not None else tuple(b for b in wbits if b < 8)
        if adaround:
            t1 = time.perf_counter()
            adaround_layers(self.layers, stats, self.adaround_bits, iters=adaround_iters, cache=self.rounded,
                            weights=self.fp_weights, progress=progress)
            self.timings["adaround_s"] = time.perf_counter() - t1
        if bias_correct:
            self._correct_biases(stats)
        del stats  # frees the Gram matrices
        for k, w in self.rounded.items():
            self.rounded[k] = w.contiguous(memory_format=self.memory_format) if w.dim() == 4 else w
        self.fingerprint = self._fingerprint(data)
        self.sqnr: dict[str, dict[Pair, float]] | None = None
        set_precision(self.model, None)
        log.info("PTQ session: %d layers in %d quantizer groups, %d calibration samples, BN folded into %d layers",
                 len(self.layers), len(self.groups), data.shape[0], len(self.folded_pairs))

    # -- construction steps ----------------------------------------------------------------------
    def _build_model(self, model: nn.Module, fold_bn: bool, full_precision: Sequence[str]) -> list[int]:
        """A BN-folded, quantized copy (unshared weights, asymmetric activations); returns its weight bits."""
        fp = copy.deepcopy(model).eval()
        for m in fp.modules():  # in-place ops would overwrite cached FP32 values in suffix re-runs
            if hasattr(m, "inplace"):
                m.inplace = False
        self.folded_pairs: list[tuple[str, str]] = []
        if fold_bn:
            fp, self.folded_pairs = fold_batchnorms(fp, inplace=True)
        wbits = sorted({p[0] for ps in self.table.values() for p in ps}, reverse=True)
        abits = sorted({p[1] for ps in self.table.values() for p in ps}, reverse=True)
        self.model = quantize(fp, bits=wbits, act_bits=abits, full_precision=tuple(full_precision), variant="unshared",
                              switchable_bn=False, act_asymmetric=True, inplace=True)
        self.model.eval()
        self.model.to(memory_format=self.memory_format)
        self.layers = quantized_layers(self.model)
        if self.bias_correct:  # every layer needs a bias to take the correction
            for layer in self.layers.values():
                if layer.bias is None:
                    layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype))
        return wbits

    def _output_weight_ranges(self, stats: Mapping[str, tuple]) -> None:
        """Weight scales that minimise the layer *output* error on the sampled input rows."""
        for n, layer in self.layers.items():
            groups, _ = conv_geometry(layer)
            for b in layer.weight_quant.bits:
                layer.weight_quant.scales[str(b)].data.copy_(weight_scale_output_mse(layer.weight, stats[n][0], groups, b))

    def _find_groups(self) -> None:
        """Trace the model, find its quantizer groups, their candidates and MACs."""
        self.gm = trace(self.model)
        self.runner = GraphRunner(self.gm)
        self.groups: list[QuantizerGroup] = find_groups(self.model, self.gm)
        assign_candidates(self.groups, self.table)
        self.group_by_name = {g.name: g for g in self.groups}
        costs = {c.name: c for c in layer_costs(self.model, self.input_shape)}
        self.macs = {g.name: sum(costs[n].macs for n in g.layers) for g in self.groups}
        self.reference_bops = float(sum(m * REFERENCE[0] * REFERENCE[1] for m in self.macs.values()))

    def _correct_biases(self, stats: Mapping[str, tuple]) -> None:
        """Per (layer, bits): the bias that cancels the mean output shift of the rounded weights."""
        for n, layer in self.layers.items():
            _, mean, _ = stats[n]
            groups, _ = conv_geometry(layer)
            for b in layer.weight_quant.bits:
                wq = self.rounded.get((n, b))
                if wq is None:
                    wq = layer.weight_quant(self.fp_weights[n], b).detach()
                self.biases[(n, b)] = self.fp_biases[n] + bias_correction(self.fp_weights[n], wq, mean, groups)

    def _fingerprint(self, data: torch.Tensor) -> str:
        """Identifies the phase-1 cache: calibration data, weights, groups, rounding and biases."""
        return _digest([data, *(p for p in self.model.state_dict().values() if p.is_floating_point())]) + (
            f"|{sorted((g.name, tuple(g.candidates)) for g in self.groups)}|ada={sorted((k, _digest([v])) for k, v in self.rounded.items())}"
            f"|bc={sorted((k, _digest([v])) for k, v in self.biases.items())}")

    # -- range setting ---------------------------------------------------------------------------
    @torch.no_grad()
    def _set_ranges(self, sample_size: int, seed: int, rows_per_sample: int = 0) -> dict[str, tuple]:
        """MSE weight and activation ranges; with ``rows_per_sample`` also the AdaRound / bias
        correction input statistics, from the same FP32 calibration pass."""
        gen = torch.Generator().manual_seed(seed)
        res = {n: _Reservoir(sample_size, gen) for n in self.layers}
        stats = {n: InputStats(*conv_geometry(m)) for n, m in self.layers.items()} if rows_per_sample else {}

        def hook(m: nn.Module, a: tuple, n: str) -> None:
            res[n].add(a[0])
            if rows_per_sample:
                stats[n].add(sample_rows(m, a[0], rows_per_sample, gen))

        set_precision(self.model, None)
        hooks = [m.register_forward_pre_hook(lambda m_, a, n=n: hook(m_, a, n)) for n, m in self.layers.items()]
        try:
            for x in self.chunks:
                self.model(x)
        finally:
            for h in hooks:
                h.remove()
        for n, layer in self.layers.items():
            if res[n].count == 0:
                raise ValueError(f"layer {n!r} was never called on the calibration data")
            layer.weight_quant.init_scale(layer.weight, "mse")
            sample = res[n].sample()
            for b in layer.act_quant.bits:
                layer.act_quant.set_range(b, *act_range_mse(sample, b))
        return {n: s.finish() for n, s in stats.items()}

    # -- switching -------------------------------------------------------------------------------
    def _set_layer(self, name: str, pair: Pair | None) -> None:
        layer = self.layers[name]
        plain = pair is None or self._plain
        w = self.fp_weights[name] if plain else self.rounded.get((name, pair[0]), self.fp_weights[name])  # type: ignore[index]
        layer.weight.data = w
        if self.bias_correct:
            layer.bias.data = self.fp_biases[name] if plain else self.biases[(name, pair[0])]  # type: ignore[index]
        layer.w_bits, layer.a_bits = (None, None) if pair is None else pair

    @contextlib.contextmanager
    def nearest_rounding(self) -> Iterator[None]:
        """Within the block, :meth:`apply` uses plain nearest rounding (no AdaRound, no bias
        correction): the baseline the learned roundings are measured against."""
        self._plain = True
        try:
            yield
        finally:
            self._plain = False

    def set_group(self, group: QuantizerGroup, pair: Pair | None) -> None:
        for n in group.layers:
            self._set_layer(n, pair)

    def apply(self, group_config: Mapping[str, Pair] | None) -> dict[str, Pair]:
        """Put the model at a per-group configuration (``None``: FP32); returns the per-layer one."""
        layer_config: dict[str, Pair] = {}
        for g in self.groups:
            pair = None if group_config is None else group_config.get(g.name)
            if pair is not None and tuple(pair) not in g.candidates:
                raise ValueError(f"group {g.name!r} does not support {pair_key(pair)}; valid: {[pair_key(c) for c in g.candidates]}")
            self.set_group(g, None if pair is None else tuple(pair))
            if pair is not None:
                layer_config.update({n: tuple(pair) for n in g.layers})
        return layer_config

    def uniform(self, pair: Pair) -> dict[str, Pair]:
        """Every group at ``pair`` (must be supported by all groups)."""
        return {g.name: tuple(pair) for g in self.groups}

    def relative_bops(self, group_config: Mapping[str, Pair]) -> float:
        return group_bops(self.macs, group_config) / self.reference_bops

    # -- phase 1 -----------------------------------------------------------------------------------
    def sensitivity(self, cache_path: str | Path | None = None, include_highest: bool = False,
                    max_samples: int | None = None) -> dict[str, dict[Pair, float]]:
        """Phase 1 on the calibration set (or its first ``max_samples`` samples, a speed knob: ranges
        and AdaRound still use all of it)."""
        set_precision(self.model, None)
        chunks = self.chunks
        if max_samples is not None:
            if max_samples <= 0:
                raise ValueError(f"max_samples must be positive, got {max_samples}")
            data = torch.cat(self.chunks)[:max_samples]
            chunks = list(data.split(self.chunks[0].shape[0]))
        self.sqnr, t = phase1(self.runner, chunks, self.groups, self.set_group, include_highest, cache_path,
                              self.fingerprint + f"|top={include_highest}|n={max_samples}", self.progress)
        self.timings.update(t)
        return self.sqnr

    def sensitivity_list(self) -> list[dict[str, Any]]:
        if self.sqnr is None:
            raise ValueError("run sensitivity() first")
        rows = [{"group": g, "layers": self.group_by_name[g].layers, "candidate": pair_key(c), "sqnr_db": s}
                for g, d in self.sqnr.items() for c, s in d.items()]
        return sorted(rows, key=lambda r: -r["sqnr_db"])

    @torch.inference_mode()
    def output_sqnr(self, group_config: Mapping[str, Pair] | None = None, max_chunks: int | None = None) -> float:
        """Label-free metric: SQNR (dB) of the output at ``group_config`` vs FP32 on the calibration set."""
        sig = noise = 0.0
        for x in self.chunks[:max_chunks]:
            self.apply(None)
            ref = _output_tensor(self.model(x)).double()
            self.apply(group_config)
            q = _output_tensor(self.model(x)).double()
            sig += float(ref.pow(2).sum())
            noise += float((ref - q).pow(2).sum())
        return sqnr_db(sig, noise)

    # -- phase 2 -----------------------------------------------------------------------------------
    def search(
        self,
        budget: float | None = None,
        *,
        accuracy_target: float | None = None,
        eval_fn: Callable[[nn.Module], float] | None = None,
        pareto: bool = False,
        pareto_every: int = 1,
        priority: str = "sqnr",
        cache_path: str | Path | None = None,
    ) -> PTQResult:
        """Greedy Pareto flipping to a relative-BOPs ``budget`` and/or an ``accuracy_target`` of ``eval_fn``.

        ``eval_fn(model) -> float`` (higher is better) is the user metric; it is called on the model
        in each evaluated configuration. ``pareto=True`` evaluates every ``pareto_every``-th point of
        the full curve. With neither budget nor target, the full curve is returned and the start
        (highest) configuration is chosen.
        """
        if budget is not None and not (isinstance(budget, (int, float)) and budget > 0):
            raise ValueError(f"budget must be a positive relative BOPs value (all-W8A16 = 1), got {budget!r}")
        if accuracy_target is not None and eval_fn is None:
            raise ValueError("an accuracy_target needs an eval_fn(model) -> metric")
        if self.sqnr is None:
            self.sensitivity(cache_path)
        t0 = time.perf_counter()
        cands = {g.name: g.candidates for g in self.groups}
        start, flips = greedy_sequence(cands, self.sqnr, self.macs, REFERENCE, priority)  # type: ignore[arg-type]
        start_rel = self.relative_bops(start)
        metric = eval_fn if eval_fn is not None else (lambda _m: self.output_sqnr(self._current))
        cache: dict[int, float] = {}

        def evaluate(n: int) -> float:
            if n not in cache:
                self._current = config_at(start, flips, n)
                self.apply(self._current)
                cache[n] = float(metric(self.model))
                log.info("phase 2: %d flips, relative BOPs %.4f, metric %.4f", n, self._rel(start_rel, flips, n), cache[n])
            return cache[n]

        n = 0
        if budget is not None:
            n = steps_for_budget(start_rel, flips, budget)
        if accuracy_target is not None:
            if evaluate(n) < accuracy_target:
                raise ValueError(f"accuracy target {accuracy_target} is impossible: the configuration at the budget already scores {cache[n]:.4f}")
            lo, hi = n, len(flips)  # largest n with metric >= target, assuming the metric falls with flips
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if evaluate(mid) >= accuracy_target:
                    lo = mid
                else:
                    hi = mid - 1
            n = lo
        curve_points = []
        if pareto:
            steps = sorted(set(range(0, len(flips) + 1, max(1, pareto_every))) | {len(flips), n})
            try:
                from tqdm import tqdm
                it = tqdm(steps, desc="phase 2 (Pareto curve)", disable=not self.progress)
            except ImportError:  # pragma: no cover
                it = steps
            for s in it:
                evaluate(s)
        noise = {g: 0.0 for g in start}  # additive-noise prediction from phase 1 (top candidate: ~0)
        for s in range(len(flips) + 1):
            if s > 0:
                f = flips[s - 1]
                noise[f.group] = 10 ** (-self.sqnr[f.group][f.candidate] / 10)  # type: ignore[index]
            point = {"step": s, "relative_bops": self._rel(start_rel, flips, s),
                     "predicted_sqnr_db": -10 * math.log10(sum(noise.values())) if sum(noise.values()) > 0 else math.inf}
            if s > 0:
                point.update(group=flips[s - 1].group, candidate=pair_key(flips[s - 1].candidate))
            if s in cache:
                point["metric"] = cache[s]
            curve_points.append(point)
        chosen = config_at(start, flips, n)
        m = cache.get(n)
        if m is None and eval_fn is not None:
            m = evaluate(n)
        layer_config = self.apply(chosen)
        self.timings["phase2_s"] = time.perf_counter() - t0
        return PTQResult(chosen, layer_config, self.relative_bops(chosen), m, self.sensitivity_list(), curve_points, dict(self.timings))

    @staticmethod
    def _rel(start_rel: float, flips: Sequence[Flip], n: int) -> float:
        return start_rel if n == 0 else flips[n - 1].relative_bops


def prepare(model: nn.Module, calibration: Iterable[Any], candidates=DEFAULT_CANDIDATES, **kwargs: Any) -> PTQSession:
    """Fold BN, quantize (per-channel symmetric weights, asymmetric activations), set ranges, find groups."""
    return PTQSession(model, calibration, candidates, **kwargs)


def run_ptq(
    model: nn.Module,
    calibration: Iterable[Any],
    candidates=DEFAULT_CANDIDATES,
    budget: float | None = None,
    *,
    accuracy_target: float | None = None,
    eval_fn: Callable[[nn.Module], float] | None = None,
    pareto: bool = False,
    cache_path: str | Path | None = None,
    priority: str = "sqnr",
    **kwargs: Any,
) -> tuple[nn.Module, PTQResult]:
    """One call: prepare, phase 1, phase 2. Returns the quantized model (at the chosen config) and the result."""
    session = prepare(model, calibration, candidates, **kwargs)
    result = session.search(budget, accuracy_target=accuracy_target, eval_fn=eval_fn, pareto=pareto, priority=priority, cache_path=cache_path)
    return session.model, result
