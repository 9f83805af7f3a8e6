"""Phase 2's flip sequence: greedy Pareto flipping.

Start with every group at its highest candidate; at each step flip one group down to a cheaper
candidate, never back up (the walk is :func:`bitswitch.search.greedy.monotone_greedy`). Which
flip: ``priority="sqnr"`` (the paper / AIMET rule) takes the (group, lower candidate) whose
phase-1 SQNR is highest, i.e. the least sensitive one;
``priority="noise_per_bops"`` treats the output noise of the groups as additive
(``N = 10^(-SQNR/10)``) and takes the flip adding the least noise per BOP saved. The sequence
depends only on phase 1; :mod:`bitswitch.ptq.phase2` walks it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..cost import pair_bops, relative_total_bops
from ..search.greedy import monotone_greedy

Pair = tuple[int, int]
PRIORITIES = ("sqnr", "noise_per_bops")
#: the precision relative BOPs are measured against (every group at W8A16 = 1)
REFERENCE = "w8a16"


@dataclass(frozen=True)
class Flip:
    step: int
    group: str
    candidate: Pair
    relative_bops: float


def greedy_sequence(
    candidates: Mapping[str, Sequence[Pair]],
    sqnr: Mapping[str, Mapping[Pair, float]],
    macs: Mapping[str, int],
    reference: str = REFERENCE,
    priority: str = "sqnr",
) -> tuple[dict[str, Pair], list[Flip]]:
    """The start configuration and every monotone flip until no group can go lower.

    ``candidates[g]`` is sorted highest cost first; ``sqnr[g][c]`` is the phase-1 SQNR (dB) of
    group ``g`` alone at candidate ``c``; ``macs[g]`` the group's MACs per sample. Relative BOPs are
    against every group at ``reference`` (a :data:`bitswitch.cost.REFERENCES` name). Exact ties go
    to the group whose name sorts first.
    """
    if priority not in PRIORITIES:
        raise ValueError(f"unknown priority {priority!r}; valid: {', '.join(PRIORITIES)}")
    names = sorted(candidates)
    cands = [[tuple(c) for c in candidates[g]] for g in names]

    def moves(unit: int, pos: int) -> list[tuple[int, float]]:
        g, cur = names[unit], cands[unit][pos]
        out = []
        for i, c in enumerate(cands[unit]):
            if pair_bops(1, c) >= pair_bops(1, cur):  # BOPs per MAC
                continue  # monotone: only strictly cheaper candidates
            if priority == "sqnr":
                return [(i, -sqnr[g][c])]  # the next lower candidate is always the least sensitive one
            noise_cur = 10 ** (-sqnr[g][cur] / 10) if cur in sqnr[g] else 0.0
            saved = pair_bops(macs[g], cur) - pair_bops(macs[g], c)
            out.append((i, (10 ** (-sqnr[g][c] / 10) - noise_cur) / max(saved, 1e-9)))
        return out

    start = {g: cands[u][0] for u, g in enumerate(names)}
    relative_total_bops(macs, start, reference)  # refuses groups without MACs before walking
    config = dict(start)
    flips: list[Flip] = []
    for unit, pos in monotone_greedy(len(names), moves):
        config[names[unit]] = cands[unit][pos]
        flips.append(Flip(len(flips) + 1, names[unit], cands[unit][pos], relative_total_bops(macs, config, reference)))
    return {g: start[g] for g in candidates}, flips


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
