"""Monotone greedy flipping: the one walk behind the greedy search baseline and post-training phase 2.

Every unit (a layer, or a quantizer group) starts at its first, most expensive candidate. Each step
flips one unit to a cheaper candidate, never back up: among the flips every unit offers, the one
with the lowest key (the least sensitivity lost, or lost per cost saved: the caller decides).
Because each step only depends on the keys, the whole sequence is computed once and any point of
it (a budget, an accuracy target, a Pareto curve) is a prefix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

#: ``moves(unit, current) -> [(cheaper candidate, key), ...]``: the flips a unit offers from ``current``.
Moves = Callable[[int, int], Iterable[tuple[int, float]]]


def monotone_greedy(n_units: int, moves: Moves, *, tol: float = 0.0) -> list[tuple[int, int]]:
    """Every step ``(unit, new candidate index)`` from all units at candidate 0 until no unit offers a flip.

    The lowest key wins; a later flip replaces the current best only when its key is lower by more
    than ``tol``, so ties go to the first flip offered (units in order ``0..n_units-1``).
    """
    pos = [0] * n_units
    steps: list[tuple[int, int]] = []
    while True:
        best: tuple[int, int] | None = None
        best_key = 0.0
        for unit in range(n_units):
            for cand, key in moves(unit, pos[unit]):
                if best is None or key < best_key - tol:
                    best, best_key = (unit, cand), key
        if best is None:
            return steps
        pos[best[0]] = best[1]
        steps.append(best)
