"""Phase 1: SQNR of the network output with one quantizer group quantized, the rest in FP32.

``SQNR = 10·log10( Σ F(x)² / Σ (F(x) - Q(F(x)))² )`` summed over the whole calibration set (labels
are never used). Speed: per calibration chunk the FP32 forward runs once with every intermediate
value of the captured graph (:mod:`bitswitch.ptq.graph`) kept; each (group, candidate) then re-runs
only the graph suffix that starts at the group's first layer, reading everything before it from the
FP32 values. Results are
accumulated per chunk into a JSON cache (written atomically after each chunk), so an interrupted
run resumes at the next chunk; a cache made for another model, data or candidate set is ignored.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .cache import read_cache, write_cache
from ..nn.dataflow import output_tensor
from .graph import GraphRunner

log = logging.getLogger(__name__)

Pair = tuple[int, int]


def sqnr_db(signal_power: float, noise_power: float) -> float:
    """``10·log10(signal / noise)``; ``inf`` for a noiseless output."""
    if noise_power <= 0:
        return math.inf
    if signal_power <= 0:
        return -math.inf
    return 10.0 * math.log10(signal_power / noise_power)


def sqnr(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """SQNR in dB of ``approx`` against ``reference`` (all elements together)."""
    ref = reference.detach().double()
    return sqnr_db(float(ref.pow(2).sum()), float((ref - approx.detach().double()).pow(2).sum()))


def pair_key(p: Pair) -> str:
    return f"W{p[0]}A{p[1]}"


def phase1(
    runners: Sequence[GraphRunner],
    chunks: Sequence[torch.Tensor],
    groups: Sequence[Any],
    set_group: Callable[[Any, Pair | None], None],
    include_highest: bool = False,
    cache_path: str | Path | None = None,
    fingerprint: str = "",
    progress: bool = True,
) -> tuple[dict[str, dict[Pair, float]], dict[str, float]]:
    """SQNR (dB) per group and candidate; returns ``(sqnr, timings)``.

    ``runners[i]`` runs the captured graph for ``chunks[i]`` (one per input shape).
    ``set_group(group, pair)`` switches one group (``None`` = back to FP32). With
    ``include_highest=False`` the highest candidate of each group is skipped: phase 2 never flips to
    it, so it is not needed to decide anything.
    """
    work = [(g, c) for g in groups for c in (g.candidates if include_highest else g.candidates[1:])]
    state: dict[str, Any] = {"fingerprint": fingerprint, "chunks_done": 0, "signal": 0.0, "noise": {}}
    if cache_path is not None and Path(cache_path).is_file():
        keys: dict[str, list[str]] = {}
        for g, c in work:
            keys.setdefault(g.name, []).append(pair_key(c))
        cached = read_cache(cache_path, fingerprint, len(chunks), keys)
        if cached is not None:
            state = cached
            log.info("phase 1: resuming from %s (%d of %d chunks done)", cache_path, state["chunks_done"], len(chunks))
        else:
            log.info("phase 1: cache %s is for another model/data/candidates; starting over", cache_path)
    t0 = time.perf_counter()
    total = (len(chunks) - state["chunks_done"]) * len(work)
    bar = tqdm(total=total, desc="phase 1 (SQNR)", disable=not progress, unit="eval")
    with torch.inference_mode():
        for ci in range(state["chunks_done"], len(chunks)):
            runner = runners[ci]
            env, out = runner.run_all(chunks[ci])
            ref = output_tensor(out).double()
            state["signal"] += float(ref.pow(2).sum())
            for g, c in work:
                set_group(g, c)
                try:
                    q = output_tensor(runner.run_from(min(runner.layer_index[n] for n in g.layers), env)).double()
                finally:
                    set_group(g, None)
                key = state["noise"].setdefault(g.name, {})
                key[pair_key(c)] = key.get(pair_key(c), 0.0) + float((ref - q).pow(2).sum())
                bar.update(1)
            del env
            state["chunks_done"] = ci + 1
            if cache_path is not None:
                write_cache(cache_path, state)
    bar.close()
    result: dict[str, dict[Pair, float]] = {}
    for g, c in work:
        result.setdefault(g.name, {})[c] = sqnr_db(state["signal"], state["noise"][g.name][pair_key(c)])
    return result, {"phase1_s": time.perf_counter() - t0}
