"""Phase 2: walk the greedy flip sequence to a BOPs budget and/or an accuracy target.

The sequence of configurations depends only on phase 1 (:func:`~bitswitch.ptq.pareto.greedy_sequence`),
so the metric is evaluated only where it is needed: once at a budget, about log2(#flips) times
(bisection) for an accuracy target, at every ``pareto_every``-th step for the full curve.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn
from tqdm import tqdm

from .pareto import config_at, greedy_sequence, steps_for_budget
from .sensitivity import pair_key

if TYPE_CHECKING:
    from .session import PTQSession

log = logging.getLogger(__name__)

Pair = tuple[int, int]


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


class FlipWalk:
    """The flip sequence of one session, with the metric of every step evaluated so far."""

    def __init__(self, session: PTQSession, priority: str, metric: Callable[[Mapping[str, Pair]], float]) -> None:
        assert session.sqnr is not None
        cands = {g.name: g.candidates for g in session.groups}
        self.sqnr = session.sqnr
        self.start, self.flips = greedy_sequence(cands, session.sqnr, session.macs, priority=priority)
        self.start_bops = session.relative_bops(self.start)
        self.metric = metric
        self.metrics: dict[int, float] = {}

    def config(self, n: int) -> dict[str, Pair]:
        return config_at(self.start, self.flips, n)

    def relative_bops(self, n: int) -> float:
        return self.start_bops if n == 0 else self.flips[n - 1].relative_bops

    def evaluate(self, n: int) -> float:
        """The metric after ``n`` flips (evaluated once)."""
        if n not in self.metrics:
            self.metrics[n] = float(self.metric(self.config(n)))
            log.info("phase 2: %d flips, relative BOPs %.4f, metric %.4f", n, self.relative_bops(n), self.metrics[n])
        return self.metrics[n]

    def last_meeting(self, target: float, lo: int) -> int:
        """Largest number of flips, from ``lo``, whose metric is >= ``target`` (bisection: assumes the
        metric falls with flips)."""
        if self.evaluate(lo) < target:
            raise ValueError(f"accuracy target {target} is impossible: the configuration at the budget already scores {self.metrics[lo]:.4f}")
        hi = len(self.flips)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.evaluate(mid) >= target:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def curve(self) -> list[dict[str, Any]]:
        """Every step with its relative BOPs, the SQNR predicted from phase 1 and any evaluated metric."""
        noise = {g: 0.0 for g in self.start}  # additive-noise prediction from phase 1 (top candidate: ~0)
        points = []
        for s in range(len(self.flips) + 1):
            if s > 0:
                f = self.flips[s - 1]
                noise[f.group] = 10 ** (-self.sqnr[f.group][f.candidate] / 10)
            point: dict[str, Any] = {"step": s, "relative_bops": self.relative_bops(s),
                                     "predicted_sqnr_db": -10 * math.log10(sum(noise.values())) if sum(noise.values()) > 0 else math.inf}
            if s > 0:
                point.update(group=self.flips[s - 1].group, candidate=pair_key(self.flips[s - 1].candidate))
            if s in self.metrics:
                point["metric"] = self.metrics[s]
            points.append(point)
        return points


def search(
    session: PTQSession,
    budget: float | None = None,
    *,
    accuracy_target: float | None = None,
    eval_fn: Callable[[nn.Module], float] | None = None,
    pareto: bool = False,
    pareto_every: int = 1,
    priority: str = "sqnr",
) -> PTQResult:
    """Greedy Pareto flipping to a relative-BOPs ``budget`` and/or an ``accuracy_target`` of ``eval_fn``.

    ``eval_fn(model) -> float`` (higher is better) is the user metric; it is called on the session's
    model in each evaluated configuration (default: the label-free output SQNR on the calibration
    set). ``pareto=True`` evaluates every ``pareto_every``-th point of the full curve. With neither
    budget nor target, the full curve is returned and the start (highest) configuration is chosen.
    The session's model is left at FP32.
    """
    if budget is not None and not (isinstance(budget, (int, float)) and budget > 0):
        raise ValueError(f"budget must be a positive relative BOPs value (all-W8A16 = 1), got {budget!r}")
    if accuracy_target is not None and eval_fn is None:
        raise ValueError("an accuracy_target needs an eval_fn(model) -> metric")
    if session.sqnr is None:
        raise ValueError("run session.sensitivity() (phase 1) first")
    t0 = time.perf_counter()

    def metric(config: Mapping[str, Pair]) -> float:
        if eval_fn is None:
            return session.output_sqnr(config)
        return eval_fn(session.apply(config))

    walk = FlipWalk(session, priority, metric)
    n = 0 if budget is None else steps_for_budget(walk.start_bops, walk.flips, budget)
    if accuracy_target is not None:
        n = walk.last_meeting(accuracy_target, n)
    if pareto:
        steps = sorted(set(range(0, len(walk.flips) + 1, max(1, pareto_every))) | {len(walk.flips), n})
        for s in tqdm(steps, desc="phase 2 (Pareto curve)", disable=not session.config.progress):
            walk.evaluate(s)
    curve = walk.curve()
    chosen = walk.config(n)
    m = walk.metrics.get(n)
    if m is None and eval_fn is not None:
        m = walk.evaluate(n)
    session.apply(None)
    session.timings["phase2_s"] = time.perf_counter() - t0
    return PTQResult(chosen, session.layer_config(chosen), session.relative_bops(chosen), m, session.sensitivity_list(), curve,
                     dict(session.timings))
