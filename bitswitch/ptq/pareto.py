"""Phase 2: greedy Pareto flipping.

Start with every group at its highest candidate; at each step flip one group down to a cheaper
candidate, never back up. Which flip: ``priority="sqnr"`` (the paper / AIMET rule) takes the
(group, lower candidate) whose phase-1 SQNR is highest, i.e. the least sensitive one;
``priority="noise_per_bops"`` treats the output noise of the groups as additive
(``N = 10^(-SQNR/10)``) and takes the flip adding the least noise per BOP saved. The sequence of
configurations depends only on phase 1, so the metric is evaluated only where it is needed: once at
a BOPs budget, about log2(#flips) times (bisection) for an accuracy target, at every step for the
full curve.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

Pair = tuple[int, int]
PRIORITIES = ("sqnr", "noise_per_bops")


@dataclass(frozen=True)
class Flip:
    step: int
    group: str
    candidate: Pair
    relative_bops: float


def group_bops(macs: Mapping[str, int], config: Mapping[str, Pair]) -> float:
    return float(sum(macs[g] * c[0] * c[1] for g, c in config.items()))


def greedy_sequence(
    candidates: Mapping[str, Sequence[Pair]],
    sqnr: Mapping[str, Mapping[Pair, float]],
    macs: Mapping[str, int],
    reference: Pair = (8, 16),
    priority: str = "sqnr",
) -> tuple[dict[str, Pair], list[Flip]]:
    """The start configuration and every monotone flip until no group can go lower.

    ``candidates[g]`` is sorted highest cost first; ``sqnr[g][c]`` is the phase-1 SQNR (dB) of
    group ``g`` alone at candidate ``c``; ``macs[g]`` the group's MACs per sample. Relative BOPs are
    against every group at ``reference`` (W8A16).
    """
    if priority not in PRIORITIES:
        raise ValueError(f"unknown priority {priority!r}; valid: {', '.join(PRIORITIES)}")
    ref = float(sum(m * reference[0] * reference[1] for m in macs.values()))
    if ref <= 0:
        raise ValueError("the quantized groups have no MACs; cannot compute relative BOPs")
    config = {g: tuple(c[0]) for g, c in candidates.items()}
    start = dict(config)
    flips: list[Flip] = []
    while True:
        best: tuple[float, str, Pair] | None = None
        for g, cands in candidates.items():
            cur = config[g]
            cur_cost = cur[0] * cur[1]
            for c in cands:
                if c[0] * c[1] >= cur_cost:
                    continue  # monotone: only strictly cheaper candidates
                s = sqnr[g][c]
                if priority == "sqnr":
                    score = -s
                else:
                    noise_cur = 10 ** (-sqnr[g][cur] / 10) if cur in sqnr[g] else 0.0
                    saved = macs[g] * (cur_cost - c[0] * c[1])
                    score = (10 ** (-s / 10) - noise_cur) / max(saved, 1e-9)
                if best is None or score < best[0] or (score == best[0] and g < best[1]):
                    best = (score, g, c)
                if priority == "sqnr":
                    break  # with SQNR ordering, the next lower candidate is always the one to consider
        if best is None:
            break
        _, g, c = best
        config[g] = c
        flips.append(Flip(len(flips) + 1, g, c, group_bops(macs, config) / ref))
    return start, flips


def config_at(start: Mapping[str, Pair], flips: Sequence[Flip], n: int) -> dict[str, Pair]:
    """Configuration after the first ``n`` flips."""
    config = dict(start)
    for f in flips[:n]:
        config[f.group] = f.candidate
    return config


def steps_for_budget(start_bops: float, flips: Sequence[Flip], budget: float) -> int:
    """Fewest flips whose relative BOPs is at or below ``budget``; ``ValueError`` if unreachable."""
    if start_bops <= budget:
        return 0
    for f in flips:
        if f.relative_bops <= budget + 1e-12:
            return f.step
    lowest = flips[-1].relative_bops if flips else start_bops
    raise ValueError(f"relative BOPs budget {budget} is impossible with these candidates: the cheapest configuration reaches {lowest:.4f}")
