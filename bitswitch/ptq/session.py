"""A post-training session: a folded, quantized copy of a model with ranges set, its quantizer groups
and phase-1 sensitivities; every configuration is put on its model explicitly with :meth:`apply`.

    session = bitswitch.ptq.start_session(model, calib_batches, PTQConfig(candidates=[(8, 16), (8, 8), (4, 8)]))
    result = session.search(budget=0.375)               # relative BOPs (all-W8A16 = 1)
    result = session.search(accuracy_target=0.87, eval_fn=my_metric)
    model = session.chosen_model(result.group_config)   # the chosen configuration, as its saved file reloads
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..cost import layer_costs, relative_total_bops
from ..export.ptq_form import untie
from ..nn.convert import Reservoir, first_tensor, quantize, quantized_layers, set_precision
from ..quant.ranges import act_range_mse
from .adaround import InputStats, adaround_layers, bias_correction, conv_geometry, sample_rows, weight_scale_output_mse
from .config import PTQConfig
from ..nn.dataflow import output_tensor
from .graph import LAYER_TYPES, GraphRunner, capture_layers, fold_captured
from .groups import QuantizerGroup, assign_candidates, groups_of
from .pareto import REFERENCE
from .phase2 import PTQResult, search
from .sensitivity import pair_key, phase1, sqnr_db

log = logging.getLogger(__name__)

Pair = tuple[int, int]


def start_session(model: nn.Module, calibration: Iterable[Any], config: PTQConfig | None = None) -> PTQSession:
    """Fold BN, quantize (per-channel symmetric weights, asymmetric activations), set ranges, find groups."""
    return PTQSession(model, calibration, config or PTQConfig())


def _digest(tensors: Iterable[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().contiguous().cpu()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _calibration_tensor(calibration: Iterable[Any]) -> torch.Tensor:
    """All calibration inputs as one tensor (images, or token ids for a language model); refuses
    empty or non-finite data."""
    xs = [first_tensor(batch) for batch in calibration]
    if not xs:
        raise ValueError("calibration data is empty: pass at least one batch")
    data = torch.cat([x if not x.is_floating_point() else x.float() for x in xs])
    if data.is_floating_point() and not torch.isfinite(data).all():
        raise ValueError("calibration inputs contain NaN or Inf")
    return data


class PTQSession:
    """A folded, quantized copy of ``model`` with ranges set, quantizer groups and a phase-1 cache."""

    def __init__(self, model: nn.Module, calibration: Iterable[Any], config: PTQConfig) -> None:
        t0 = time.perf_counter()
        self.config = config
        self.timings: dict[str, float] = {}
        self.table = config.candidate_table()
        data = _calibration_tensor(calibration)
        image = data.dim() == 4 and data.is_floating_point()
        self.memory_format = torch.channels_last if config.channels_last and image else torch.contiguous_format
        self.chunks = [c.contiguous(memory_format=self.memory_format) for c in data.split(config.chunk_size)]
        self.input_shape = tuple(data.shape[1:])
        wbits = self._build_model(model)

        need_stats = config.adaround or config.bias_correct or config.weight_ranges == "output"
        stats = self._set_ranges(config.adaround_rows if need_stats else 0)
        if config.weight_ranges == "output":
            self._output_weight_ranges(stats)
        self.timings["ranges_s"] = time.perf_counter() - t0

        self._find_groups()
        self._round_weights(stats, wbits)
        del stats  # frees the Gram matrices
        self.fingerprint = self._fingerprint(data)
        self.sqnr: dict[str, dict[Pair, float]] | None = None
        set_precision(self.model, None)
        log.info("PTQ session: %d layers in %d quantizer groups, %d calibration samples, BN folded into %d layers",
                 len(self.layers), len(self.groups), data.shape[0], len(self.folded_pairs))

    # -- construction steps ----------------------------------------------------------------------
    def _build_model(self, model: nn.Module) -> list[int]:
        """A quantized copy (unshared weights, asymmetric activations), captured once, BN folded on
        the capture; returns its weight bits."""
        fp = copy.deepcopy(model).eval()
        wbits = sorted({p[0] for ps in self.table.values() for p in ps}, reverse=True)
        abits = sorted({p[1] for ps in self.table.values() for p in ps}, reverse=True)
        self.model = quantize(fp, bits=wbits, act_bits=abits, full_precision=self.config.full_precision, variant="unshared",
                              switchable_bn=False, act_asymmetric=True, inplace=True)
        untie(self.model, quantized_layers(self.model))  # rounding a tied head must leave its embedding float
        self.model.eval()
        self.model.to(memory_format=self.memory_format)
        set_precision(self.model, None)
        no_bias = [n for n, m in self.model.named_modules() if isinstance(m, LAYER_TYPES) and m.bias is None]
        self.capture = capture_layers(self.model, self.chunks[0])
        self.folded_pairs: list[tuple[str, str]] = fold_captured(self.model, self.capture) if self.config.fold_bn else []
        self.runners = {tuple(self.chunks[0].shape): GraphRunner(self.capture, self.model)}
        self.layers = quantized_layers(self.model)
        if self.config.bias_correct:  # every layer needs a bias to take the correction
            for layer in self.layers.values():
                if layer.bias is None:
                    layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype))
        # what a checkpoint of this model records, so that load can rebuild it (bitswitch.export.ptq_form)
        self.model.bitswitch_ptq = {"folded_bn": [list(p) for p in self.folded_pairs],
                                    "added_bias": [n for n in no_bias if self.model.get_submodule(n).bias is not None]}
        return wbits

    def runner(self, x: torch.Tensor) -> GraphRunner:
        """The graph runner for inputs of ``x``'s shape (a capture is specialised to its input shape)."""
        key = tuple(x.shape)
        if key not in self.runners:
            set_precision(self.model, None)
            self.runners[key] = GraphRunner(capture_layers(self.model, x), self.model)
        return self.runners[key]

    @torch.no_grad()
    def _set_ranges(self, rows_per_sample: int = 0) -> dict[str, tuple]:
        """MSE weight and activation ranges; with ``rows_per_sample`` also the AdaRound / bias
        correction input statistics, from the same FP32 calibration pass."""
        gen = torch.Generator().manual_seed(self.config.seed)
        res = {n: Reservoir(self.config.sample_size, gen) for n in self.layers}
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
            for bits in layer.act_quant.bits:
                layer.act_quant.set_range(bits, *act_range_mse(sample, bits))
        return {n: s.finish() for n, s in stats.items()}

    def _output_weight_ranges(self, stats: Mapping[str, tuple]) -> None:
        """Weight scales that minimise the layer *output* error on the sampled input rows."""
        for n, layer in self.layers.items():
            groups, _ = conv_geometry(layer)
            for bits in layer.weight_quant.bits:
                layer.weight_quant.scales[str(bits)].data.copy_(weight_scale_output_mse(layer.weight, stats[n][0], groups, bits))

    def _find_groups(self) -> None:
        """The quantizer groups of the capture, their candidates and MACs."""
        self.groups: list[QuantizerGroup] = groups_of(self.capture, self.model)
        assign_candidates(self.groups, self.table)
        self.group_by_name = {g.name: g for g in self.groups}
        self.costs = layer_costs(self.model, self.chunks[0])  # also the CLI's size and BOPs summary
        macs = {c.name: c.macs for c in self.costs}
        self.macs = {g.name: sum(macs[n] for n in g.layers) for g in self.groups}

    def _round_weights(self, stats: Mapping[str, tuple], wbits: list[int]) -> None:
        """Per-layer, per-bit effective weights: FP32 latent by default, AdaRound-ed where asked
        (computed once per (layer, bits) and reused by phase 1, phase 2 and the final model)."""
        config = self.config
        self.fp_weights = {n: l.weight.detach().clone() for n, l in self.layers.items()}
        self.fp_biases = {n: None if l.bias is None else l.bias.detach().clone() for n, l in self.layers.items()}
        self.rounded: dict[tuple[str, int], torch.Tensor] = {}
        self.biases: dict[tuple[str, int], torch.Tensor] = {}
        adaround_bits = config.adaround_bits if config.adaround_bits is not None else tuple(b for b in wbits if b < 8)
        if config.adaround:
            t1 = time.perf_counter()
            adaround_layers(self.layers, stats, adaround_bits, iters=config.adaround_iters, cache=self.rounded,
                            weights=self.fp_weights, progress=config.progress)
            self.timings["adaround_s"] = time.perf_counter() - t1
        if config.bias_correct:
            self._correct_biases(stats)
        for k, w in self.rounded.items():
            self.rounded[k] = w.contiguous(memory_format=self.memory_format) if w.dim() == 4 else w

    def _correct_biases(self, stats: Mapping[str, tuple]) -> None:
        """Per (layer, bits): the bias that cancels the mean output shift of the rounded weights."""
        for n, layer in self.layers.items():
            _, mean, _ = stats[n]
            groups, _ = conv_geometry(layer)
            for bits in layer.weight_quant.bits:
                wq = self.rounded.get((n, bits))
                if wq is None:
                    wq = layer.weight_quant(self.fp_weights[n], bits).detach()
                self.biases[(n, bits)] = self.fp_biases[n] + bias_correction(self.fp_weights[n], wq, mean, groups)

    def _fingerprint(self, data: torch.Tensor) -> str:
        """Identifies the phase-1 cache: calibration data, weights, groups, rounding and biases."""
        return _digest([data, *(p for p in self.model.state_dict().values() if p.is_floating_point())]) + (
            f"|{sorted((g.name, tuple(g.candidates)) for g in self.groups)}|ada={sorted((k, _digest([v])) for k, v in self.rounded.items())}"
            f"|bc={sorted((k, _digest([v])) for k, v in self.biases.items())}")

    # -- configurations ----------------------------------------------------------------------------
    def _set_layer(self, name: str, pair: Pair | None, nearest: bool = False) -> None:
        layer = self.layers[name]
        plain = pair is None or nearest
        w = self.fp_weights[name] if plain else self.rounded.get((name, pair[0]), self.fp_weights[name])  # type: ignore[index]
        layer.weight.data = w
        if self.config.bias_correct:
            layer.bias.data = self.fp_biases[name] if plain else self.biases[(name, pair[0])]  # type: ignore[index]
        layer.w_bits, layer.a_bits = (None, None) if pair is None else pair

    def set_group(self, group: QuantizerGroup, pair: Pair | None) -> None:
        """One group at ``pair`` (``None``: FP32), the others untouched: phase 1's perturbation."""
        for n in group.layers:
            self._set_layer(n, pair)

    def apply(self, group_config: Mapping[str, Pair] | None, *, nearest: bool = False) -> nn.Module:
        """The session's model with every group at ``group_config`` (``None``: FP32; a group left out: FP32).

        ``nearest=True`` uses plain nearest rounding (no AdaRound, no bias correction): the baseline
        the learned roundings are measured against. The model is shared: it stays in this
        configuration until the next call.
        """
        layers = self.layer_config(group_config)  # validates every pair; layers of groups left out are absent
        for g in self.groups:
            for n in g.layers:
                self._set_layer(n, layers.get(n), nearest)
        return self.model

    def chosen_model(self, group_config: Mapping[str, Pair] | None) -> nn.Module:
        """:meth:`apply`, then the model in the standard (contiguous) memory format, as :func:`bitswitch.load`
        rebuilds it: for saving or handing on. The session works channels-last for speed, and on some
        CPUs oneDNN sums a channels-last convolution in another order, so a channels-last model and its
        reloaded file would differ by float noise. The model is still the session's own.
        """
        return self.apply(group_config).to(memory_format=torch.contiguous_format)

    def layer_config(self, group_config: Mapping[str, Pair] | None) -> dict[str, Pair]:
        """The per-layer configuration of a per-group one (``ValueError`` for an unsupported pair)."""
        layer_config: dict[str, Pair] = {}
        for g in self.groups:
            pair = None if group_config is None else group_config.get(g.name)
            if pair is not None and tuple(pair) not in g.candidates:
                raise ValueError(f"group {g.name!r} does not support {pair_key(pair)}; valid: {[pair_key(c) for c in g.candidates]}")
            if pair is not None:
                layer_config.update({n: tuple(pair) for n in g.layers})  # type: ignore[misc]
        return layer_config

    def uniform(self, pair: Pair) -> dict[str, Pair]:
        """Every group at ``pair`` (must be supported by all groups)."""
        return {g.name: tuple(pair) for g in self.groups}  # type: ignore[misc]

    def relative_bops(self, group_config: Mapping[str, Pair]) -> float:
        """BOPs of ``group_config`` relative to every group at W8A16."""
        return relative_total_bops(self.macs, group_config, REFERENCE)

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
        runners = [self.runner(x) for x in chunks]
        self.sqnr, t = phase1(runners, chunks, self.groups, self.set_group, include_highest, cache_path,
                              self.fingerprint + f"|top={include_highest}|n={max_samples}", self.config.progress)
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
            ref = output_tensor(self.apply(None)(x)).double()
            q = output_tensor(self.apply(group_config)(x)).double()
            sig += float(ref.pow(2).sum())
            noise += float((ref - q).pow(2).sum())
        return sqnr_db(sig, noise)

    # -- phase 2 -----------------------------------------------------------------------------------
    def search(self, budget: float | None = None, *, accuracy_target: float | None = None,
               eval_fn: Callable[[nn.Module], float] | None = None, pareto: bool = False, pareto_every: int = 1,
               priority: str = "sqnr", cache_path: str | Path | None = None) -> PTQResult:
        """Phase 2 (runs phase 1 first if needed): see :func:`bitswitch.ptq.phase2.search`.

        Evaluations switch the session's model; afterwards it is at FP32. Use
        ``session.chosen_model(result.group_config)`` for the chosen model.
        """
        if self.sqnr is None:
            self.sensitivity(cache_path)
        return search(self, budget, accuracy_target=accuracy_target, eval_fn=eval_fn, pareto=pareto,
                      pareto_every=pareto_every, priority=priority)


def run_ptq(model: nn.Module, calibration: Iterable[Any], config: PTQConfig | None = None, budget: float | None = None, *,
            accuracy_target: float | None = None, eval_fn: Callable[[nn.Module], float] | None = None, pareto: bool = False,
            cache_path: str | Path | None = None, priority: str = "sqnr") -> tuple[nn.Module, PTQResult]:
    """One call: start a session, phase 1, phase 2. Returns the quantized model (at the chosen config,
    as :meth:`PTQSession.chosen_model` gives it) and the result."""
    session = start_session(model, calibration, config)
    result = session.search(budget, accuracy_target=accuracy_target, eval_fn=eval_fn, pareto=pareto, priority=priority,
                            cache_path=cache_path)
    return session.chosen_model(result.group_config), result
