"""Baselines for subnet search, scored and costed on the same :class:`SearchProblem` as the ILP.

* :func:`uniform`: every quantized layer at one precision;
* :func:`random_at_cost`: random per-layer configurations whose cost lies in a narrow band just
  under the budget ("equal cost"), the control that shows whether the search's choice matters;
* :func:`greedy_path` / :func:`greedy`: start at the highest precision and repeatedly lower the
  layer whose next lower candidate loses the least objective (optionally per unit of cost saved),
  as in the Qualcomm-style "flip the least sensitive" Pareto walk (:mod:`bitswitch.search.greedy`,
  also post-training phase 2).
"""

from __future__ import annotations

import random

import numpy as np

from .budget import Budget, parse_budget
from .greedy import monotone_greedy
from .ilp import Pair, SearchProblem, SearchResult, _ceil_sig


def uniform(problem: SearchProblem, w_bits: int) -> SearchResult:
    """Every layer at the candidate with ``w_bits`` weight bits (the most expensive such pair)."""
    config: dict[str, Pair] = {}
    for name, cands in zip(problem.names, problem.candidates):
        hits = [p for p in cands if p[0] == w_bits]
        if not hits:
            raise ValueError(f"layer {name!r} has no candidate with {w_bits} weight bits ({cands})")
        config[name] = hits[0]
    return problem.result(config, f"uniform-{w_bits}")


def greedy_path(problem: SearchProblem, kind: str = "bops", *, per_cost: bool = False) -> list[SearchResult]:
    """The full flip sequence from all-highest to all-lowest (a Pareto curve by itself).

    Each step lowers one layer to its next cheaper candidate: the one losing the least objective
    (``per_cost``: the least objective per unit of ``kind`` cost saved). Layers never go back up.
    """
    costs = problem.int_costs(kind)
    groups = [list(np.flatnonzero(problem.var_layer == l)) for l in range(len(problem.names))]

    def moves(l: int, pos: int) -> list[tuple[int, float]]:
        if pos + 1 >= len(groups[l]):
            return []
        cur, nxt = groups[l][pos], groups[l][pos + 1]  # candidates are sorted from most to least expensive
        loss = float(problem.score[cur] - problem.score[nxt])
        saved = costs[cur] - costs[nxt]
        return [(pos + 1, loss / saved if per_cost and saved > 0 else loss)]

    chosen = [g[0] for g in groups]
    path = [problem.result(problem.config_of(chosen), "greedy")]
    for l, pos in monotone_greedy(len(groups), moves, tol=1e-15):
        chosen[l] = groups[l][pos]
        path.append(problem.result(problem.config_of(chosen), "greedy"))
    return path


def greedy(problem: SearchProblem, budget: Budget | str, *, per_cost: bool = False) -> SearchResult:
    """The first configuration on :func:`greedy_path` that meets ``budget``."""
    b = parse_budget(budget)
    for r in greedy_path(problem, b.kind, per_cost=per_cost):
        if problem.fits(r.config, b):
            r.budgets = [str(b)]
            return r
    raise ValueError(f"budget {b} is infeasible: the smallest feasible budget is {b.describe(_ceil_sig(problem.smallest_feasible(b)))}")


def random_at_cost(
    problem: SearchProblem, budget: Budget | str, n: int, *, band: float = 0.05, seed: int = 0, max_tries: int = 200
) -> list[SearchResult]:
    """``n`` random configurations with cost in ``[(1 − band)·limit, limit]``.

    Each starts from uniformly random candidates and random-walks (lower a random layer while over
    budget, raise a random layer while below the band and the raise still fits) until it lands in
    the band; walks that cannot land are retried, at most ``max_tries`` per sample.
    """
    b = parse_budget(budget)
    rng = random.Random(seed)
    costs = problem.int_costs(b.kind)
    hi = problem._int_limit(b)
    lo = (1 - band) * problem.scaled_limit(b)
    groups = [list(np.flatnonzero(problem.var_layer == l)) for l in range(len(problem.names))]
    out: list[SearchResult] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > max_tries * n:
            raise ValueError(f"could not draw {n} random configurations within {band:.0%} below budget {b}")
        pos = [rng.randrange(len(g)) for g in groups]
        total = sum(costs[g[p]] for g, p in zip(groups, pos))
        for _ in range(20 * len(groups)):
            if total > hi:
                movable = [l for l, g in enumerate(groups) if pos[l] + 1 < len(g)]
                if not movable:
                    break
                l = rng.choice(movable)
                total += costs[groups[l][pos[l] + 1]] - costs[groups[l][pos[l]]]
                pos[l] += 1
            elif total < lo:
                movable = [l for l, g in enumerate(groups) if pos[l] > 0 and total + costs[g[pos[l] - 1]] - costs[g[pos[l]]] <= hi]
                if not movable:
                    break
                l = rng.choice(movable)
                total += costs[groups[l][pos[l] - 1]] - costs[groups[l][pos[l]]]
                pos[l] -= 1
            else:
                break
        if lo <= total <= hi:
            r = problem.result(problem.config_of([g[p] for g, p in zip(groups, pos)]), "random", [b])
            out.append(r)
    return out


__all__ = ["greedy", "greedy_path", "random_at_cost", "uniform"]
