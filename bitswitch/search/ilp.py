"""Subnet search by integer linear programming (SciPy ``milp`` / HiGHS).

One binary variable ``x[l, k]`` per quantized layer ``l`` and candidate precision ``k`` (a
``(weight_bits, act_bits)`` pair), with ``Σ_k x[l, k] = 1``. Each budget is one linear row
``Σ cost[l, k]·x[l, k] <= limit`` over the *quantized* layers only: full-precision layers are
outside every budget (the reference code counted them in the average bit-width). Costs are exact
integers in scaled units (``Σ b`` for avg-bits, ``Σ n·b`` for wavg-bits/bytes, ``Σ MAC·b_w·b_a``
for BOPs) and every solution is re-checked in Python integers, so a returned configuration never
exceeds its budget, not even by a solver tolerance.

The objectives (what a configuration is worth) are in :mod:`bitswitch.search.objectives`.

Every solve builds its constraints afresh: a failed or infeasible solve leaves nothing behind
(the reference code kept a failed re-solve's constraint in place).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..cost import LayerCost, config_summary, pair_bops, reference_pair
from .budget import Budget, parse_budget
from .objectives import check_objective, objective_scores

log = logging.getLogger(__name__)

Pair = tuple[int, int]


@dataclass
class SearchResult:
    """One configuration with its objective and every cost (absolute and relative)."""

    config: dict[str, Pair]
    objective: float
    summary: dict[str, float]
    budgets: list[str] = field(default_factory=list)
    method: str = "ilp"
    solve_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method, "budgets": self.budgets, "objective": self.objective,
            "solve_seconds": self.solve_seconds, **self.summary,
            "layers": {k: list(v) for k, v in self.config.items()},
        }


def candidate_pairs(bits: Sequence[int], act: str | int | Sequence[Pair] = "tied") -> list[Pair]:
    """Candidate ``(w, a)`` pairs: ``"tied"`` (a = w, the default), a fixed activation bit-width,
    or an explicit list of pairs. Sorted from most to least expensive."""
    if isinstance(act, str):
        if act != "tied":
            raise ValueError(f"act must be 'tied', an activation bit-width or a list of (w, a) pairs, got {act!r}")
        pairs = [(int(b), int(b)) for b in bits]
    elif isinstance(act, int) and not isinstance(act, bool):
        pairs = [(int(b), int(act)) for b in bits]
    else:
        pairs = [(int(w), int(a)) for w, a in act]
    if not pairs:
        raise ValueError("no candidate precisions")
    return sorted(set(pairs), key=lambda p: (-p[0], -p[1]))


class SearchProblem:
    """Candidates, per-candidate costs and objective scores of every quantized layer.

    Built once per model and objective; :meth:`solve` can then be called for any number of budgets
    (a sweep), and the baselines in :mod:`bitswitch.search.baselines` score and cost their
    configurations with the same arrays, so all methods are compared on one objective.
    """

    def __init__(
        self,
        costs: Sequence[LayerCost],
        sensitivity: Mapping[str, float],
        bits: Sequence[int],
        *,
        act: str | int | Sequence[Pair] = "tied",
        objective: str = "bits",
        noise: Mapping[str, Mapping[int, float]] | None = None,
        pinned: Mapping[str, int | Pair] | None = None,
        loss_delta: Mapping[str, Mapping[Pair, float]] | None = None,
    ):
        check_objective(objective)
        self.all_costs = list(costs)
        self.layer_costs = [c for c in costs if c.quantized]
        if not self.layer_costs:
            raise ValueError("the model has no quantized layers to search over")
        self.names = [c.name for c in self.layer_costs]
        missing = [n for n in self.names if n not in sensitivity]
        if missing:
            raise ValueError(f"no Hessian trace for quantized layer(s) {missing[:5]} ({len(missing)} in all); was the trace file computed for this model?")
        fp = {c.name for c in costs if not c.quantized}
        unknown = [n for n in sensitivity if n not in self.names and n not in fp]
        if unknown:
            raise ValueError(f"Hessian traces name layers the model does not have: {unknown[:5]}; was the trace file computed for this model?")
        self.objective = objective
        self.sens = np.array([max(float(sensitivity[n]), 0.0) for n in self.names])
        if any(float(sensitivity[n]) < 0 for n in self.names):
            log.warning("negative Hessian trace(s) clamped to 0: %s", [n for n in self.names if float(sensitivity[n]) < 0])
        base = candidate_pairs(bits, act)
        self.candidates: list[list[Pair]] = [list(base) for _ in self.names]
        for name, value in (pinned or {}).items():
            if name not in self.names:
                hint = " (it is kept in full precision, outside the search)" if name in fp else ""
                raise ValueError(f"cannot pin unknown quantized layer {name!r}{hint}; layers: {', '.join(self.names[:8])}...")
            pair = (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))
            self.candidates[self.names.index(name)] = [pair]
        # flattened variables
        self.var_layer = np.array([l for l, cands in enumerate(self.candidates) for _ in cands])
        self.var_pair: list[Pair] = [p for cands in self.candidates for p in cands]
        self.score = objective_scores(objective, self.names, self.candidates, self.sens, noise=noise, loss_delta=loss_delta)

    # -- costs -------------------------------------------------------------------------------------
    def int_costs(self, kind: str) -> list[int]:
        """Exact integer cost of every variable in the scaled unit of ``kind`` (cached)."""
        cache = self.__dict__.setdefault("_cost_cache", {})
        if kind not in cache:
            cache[kind] = self._int_costs(kind)
        return cache[kind]

    def _int_costs(self, kind: str) -> list[int]:
        out = []
        for l, (w, a) in zip(self.var_layer, self.var_pair):
            c = self.layer_costs[l]
            out.append({"avg-bits": w, "wavg-bits": c.params * w, "bytes": c.params * w, "bops": pair_bops(c.macs, (w, a))}[kind])
        return out

    def scaled_limit(self, budget: Budget) -> float:
        """The budget's limit in the integer unit of :meth:`int_costs`."""
        if budget.kind == "avg-bits":
            return budget.value * len(self.names)
        if budget.kind == "wavg-bits":
            return budget.value * sum(c.params for c in self.layer_costs)
        if budget.kind == "bytes":
            ref = sum(c.params * 8 for c in self.layer_costs)  # all-8-bit size, in bits
            return budget.value * ref if budget.relative else budget.value * 8
        ref = sum(pair_bops(c.macs, reference_pair(budget.reference)) for c in self.layer_costs)
        return budget.value * ref if budget.relative else budget.value

    def unscale(self, budget: Budget, scaled: float) -> float:
        """Inverse of :meth:`scaled_limit`: a scaled cost expressed in the budget's own terms."""
        one = self.scaled_limit(Budget(budget.kind, 1.0, budget.relative, budget.reference))
        return scaled / one

    def config_of(self, chosen: Sequence[int]) -> dict[str, Pair]:
        return {self.names[self.var_layer[v]]: self.var_pair[v] for v in chosen}

    def indices_of(self, config: Mapping[str, Pair]) -> list[int]:
        idx = []
        for l, name in enumerate(self.names):
            pair = tuple(config[name])
            hits = [v for v in np.flatnonzero(self.var_layer == l) if self.var_pair[v] == pair]
            if not hits:
                raise ValueError(f"layer {name!r}: {pair} is not a candidate ({self.candidates[l]})")
            idx.append(int(hits[0]))
        return idx

    def objective_of(self, config: Mapping[str, Pair]) -> float:
        return float(sum(self.score[v] for v in self.indices_of(config)))

    def fits(self, config: Mapping[str, Pair], budget: Budget) -> bool:
        costs = self.int_costs(budget.kind)
        return sum(costs[v] for v in self.indices_of(config)) <= self._int_limit(budget)

    def _int_limit(self, budget: Budget) -> float:
        # costs are integers; a relative tolerance absorbs float noise in value*reference only
        return math.floor(self.scaled_limit(budget) * (1 + 1e-12) + 1e-9)

    def result(self, config: Mapping[str, Pair], method: str, budgets: Sequence[Budget] = (), seconds: float = 0.0) -> SearchResult:
        cfg = {n: tuple(config[n]) for n in self.names}
        return SearchResult(cfg, self.objective_of(cfg), config_summary(self.all_costs, cfg), [str(b) for b in budgets], method, seconds)  # type: ignore[arg-type]

    def smallest_feasible(self, budget: Budget) -> float:
        """The smallest value of ``budget`` any configuration meets (every layer at its cheapest)."""
        costs = self.int_costs(budget.kind)
        total = sum(min(costs[v] for v in np.flatnonzero(self.var_layer == l)) for l in range(len(self.names)))
        return self.unscale(budget, total)

    # -- solving -------------------------------------------------------------------------------
    def solve(self, budgets: Budget | str | Sequence[Budget | str], *, time_limit: float = 30.0) -> SearchResult:
        """Maximise the objective under every budget; raise ``ValueError`` when infeasible."""
        blist = self._budgets(budgets)
        t0 = time.perf_counter()
        chosen = self._solve_once(blist, [], time_limit=time_limit)
        if chosen is None:
            raise ValueError(f"no configuration satisfies all budgets together ({', '.join(map(str, blist))})")
        return self.result(self.config_of(chosen), "ilp", blist, time.perf_counter() - t0)

    def solve_k_best(self, budgets: Budget | str | Sequence[Budget | str], k: int, *, time_limit: float = 30.0) -> list[SearchResult]:
        """The ``k`` best *distinct* configurations under every budget, best first.

        Solved exactly (``mip_rel_gap=0``) ``k`` times; after each solve a no-good cut
        ``Σ_{v ∈ S} x_v <= #layers − 1`` excludes the configuration ``S`` just found, so solution
        ``i`` is the optimum over all configurations but the first ``i − 1``. Fewer than ``k``
        come back when fewer configurations fit. Why: the objectives are additive models of an
        effect that does not add up exactly; a short list of near-optimal proposals can be
        re-ranked by measuring each whole configuration (:func:`bitswitch.search.measured.rerank`).
        Results carry ``method="ilp-k{i}"`` (``i`` from 1).
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        blist = self._budgets(budgets)
        cuts: list[list[int]] = []
        out: list[SearchResult] = []
        for i in range(k):
            t0 = time.perf_counter()
            chosen = self._solve_once(blist, cuts, time_limit=time_limit, exact=True)
            if chosen is None:
                if not out:
                    raise ValueError(f"no configuration satisfies all budgets together ({', '.join(map(str, blist))})")
                break
            cuts.append(chosen)
            out.append(self.result(self.config_of(chosen), f"ilp-k{i + 1}", blist, time.perf_counter() - t0))
        # each solve is exact over a shrinking set, so this only orders exact ties (cheaper first, as solve does)
        return sorted(out, key=lambda r: -r.objective)

    def _budgets(self, budgets: Budget | str | Sequence[Budget | str]) -> list[Budget]:
        blist = [parse_budget(b) for b in ([budgets] if isinstance(budgets, (str, Budget)) else budgets)]
        if not blist:
            raise ValueError("give at least one budget (e.g. avg-bits=4)")
        for b in blist:
            if self._min_int(b) > self._int_limit(b):
                need = _ceil_sig(self.smallest_feasible(b))
                raise ValueError(
                    f"budget {b} is infeasible: the smallest feasible budget is {b.describe(need)} "
                    f"(every quantized layer at its lowest candidate precision)"
                )
        return blist

    def _solve_once(self, blist: Sequence[Budget], cuts: Sequence[Sequence[int]], *, time_limit: float, exact: bool = False) -> list[int] | None:
        """One MILP: the chosen variable indices, or ``None`` when nothing feasible is left."""
        from scipy.optimize import Bounds, LinearConstraint, milp

        n_var, n_layer = len(self.var_pair), len(self.names)
        one_hot = np.zeros((n_layer, n_var))
        one_hot[self.var_layer, np.arange(n_var)] = 1.0
        scale = max(float(np.abs(self.score).max()), 1e-30)
        c = -self.score / scale
        # tie-break towards the cheaper configuration (e.g. a layer with zero trace gets its lowest bits)
        for b in blist:
            costs = np.asarray(self.int_costs(b.kind), dtype=np.float64)
            c = c + 1e-9 * costs / max(self.scaled_limit(b), 1.0)
        options: dict[str, Any] = {"time_limit": time_limit}
        if exact:
            options["mip_rel_gap"] = 0.0
        margins = [0.0] * len(blist)
        for attempt in range(4):
            constraints = [LinearConstraint(one_hot, 1.0, 1.0)]  # built fresh on every attempt
            for b, margin in zip(blist, margins):
                costs = np.asarray(self.int_costs(b.kind), dtype=np.float64)
                limit = self._int_limit(b) - margin
                norm = max(limit, 1.0)
                constraints.append(LinearConstraint(costs[None, :] / norm, -np.inf, limit / norm))
            if cuts:  # no-good cuts: at least one layer differs from every excluded configuration
                rows = np.zeros((len(cuts), n_var))
                for i, s in enumerate(cuts):
                    rows[i, list(s)] = 1.0
                constraints.append(LinearConstraint(rows, -np.inf, n_layer - 0.5))
            res = milp(c, constraints=constraints, integrality=np.ones(n_var), bounds=Bounds(0, 1), options=options)
            if res.x is None:
                if cuts and res.status == 2:  # infeasible only because every fitting configuration is cut
                    return None
                raise ValueError(f"no configuration satisfies all budgets together ({', '.join(map(str, blist))}); solver: {res.message}")
            chosen = [int(v) for v in np.flatnonzero(res.x > 0.5)]
            over = [(i, sum(self.int_costs(b.kind)[v] for v in chosen) - self._int_limit(b)) for i, b in enumerate(blist)]
            over = [(i, d) for i, d in over if d > 0]
            repeated = any(set(chosen) == set(s) for s in cuts)
            if len(chosen) == n_layer and not over and not repeated:
                return chosen
            for i, d in over:  # a solver tolerance let it through: tighten by the excess and re-solve
                margins[i] += d
        raise ValueError(f"the solver kept returning configurations over budget or already excluded ({', '.join(map(str, blist))})")

    def _min_int(self, budget: Budget) -> int:
        costs = self.int_costs(budget.kind)
        return sum(min(costs[v] for v in np.flatnonzero(self.var_layer == l)) for l in range(len(self.names)))

    def solve_exhaustive(self, budgets: Budget | str | Sequence[Budget | str], *, limit: int = 2_000_000) -> SearchResult:
        """Brute force over every configuration (tests and tiny models only)."""
        blist = [parse_budget(b) for b in ([budgets] if isinstance(budgets, (str, Budget)) else budgets)]
        groups = [list(np.flatnonzero(self.var_layer == l)) for l in range(len(self.names))]
        if math.prod(len(g) for g in groups) > limit:
            raise ValueError(f"too many configurations for brute force (> {limit})")
        costs = {b.kind: self.int_costs(b.kind) for b in blist}
        best, best_score = None, -math.inf
        for combo in itertools.product(*groups):
            if all(sum(costs[b.kind][v] for v in combo) <= self._int_limit(b) for b in blist):
                s = float(sum(self.score[v] for v in combo))
                if s > best_score + 1e-12:
                    best, best_score = combo, s
        if best is None:
            raise ValueError(f"no configuration satisfies {', '.join(map(str, blist))}")
        return self.result(self.config_of(best), "exhaustive", blist)

    def sweep(self, kind: str, values: Sequence[float], *, relative: bool | None = None, reference: str = "w8a8") -> list[SearchResult]:
        """Solve for each budget value (each solve independent); infeasible values are skipped."""
        out = []
        for v in values:
            rel = (kind in ("bytes", "bops") and v <= 1.0) if relative is None else relative
            b = Budget(kind, float(v), rel, reference if kind == "bops" else "w8a8")
            try:
                out.append(self.solve(b))
            except ValueError as e:
                log.info("sweep: skipping %s (%s)", b, e)
        return out


def _ceil_sig(x: float, digits: int = 6) -> float:
    """Round ``x`` up to ``digits`` significant digits, so a printed minimum is itself feasible."""
    if x <= 0:
        return x
    q = 10 ** (math.floor(math.log10(x)) - digits + 1)
    return math.ceil(x / q - 1e-9) * q


def pareto_front(results: Sequence[SearchResult], cost: str = "rel_bops_w8a8") -> list[SearchResult]:
    """Results not dominated in (lower ``cost``, higher objective), sorted by cost."""
    ordered = sorted(results, key=lambda r: (r.summary[cost], -r.objective))
    front: list[SearchResult] = []
    for r in ordered:
        if not front or r.objective > front[-1].objective + 1e-12:
            if front and abs(front[-1].summary[cost] - r.summary[cost]) < 1e-15:
                front[-1] = r
            else:
                front.append(r)
    return front


__all__ = ["SearchProblem", "SearchResult", "candidate_pairs", "pareto_front"]
