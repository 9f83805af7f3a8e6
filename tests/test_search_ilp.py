"""ILP subnet search: optimal against brute force, budgets exact, FP layers outside, clear errors."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from torch import nn

import bitswitch
from bitswitch.cost import LayerCost, config_summary, layer_costs, relative_bops
from bitswitch.search import (
    SearchProblem,
    greedy,
    greedy_path,
    pareto_front,
    parse_budget,
    random_at_cost,
    uniform,
    weight_noise,
)


def fake_costs(n: int, seed: int, fp: bool = True) -> list[LayerCost]:
    rng = random.Random(seed)
    out = [LayerCost("stem", "conv", 432, 0, 400_000, False, None, None)] if fp else []
    for i in range(n):
        params = rng.choice([64, 256, 1000, 2304, 9216])
        out.append(LayerCost(f"l{i}", "conv", params, 0, params * rng.choice([1, 16, 64, 256]), True, 8, 8))
    if fp:
        out.append(LayerCost("fc", "linear", 640, 10, 640, False, None, None))
    return out


def fake_sens(costs: list[LayerCost], seed: int) -> dict[str, float]:
    rng = random.Random(seed + 100)
    return {c.name: rng.lognormvariate(-8, 1.5) for c in costs if c.quantized}


BUDGETS = ["avg-bits=3", "avg-bits=5.2", "wavg-bits=3.5", "bytes=0.4", "bops=0.3", "bops=0.1@w8a16", "bytes=2500"]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("objective", ["bits", "noise", "loss"])
def test_ilp_matches_brute_force(seed: int, objective: str) -> None:
    costs = fake_costs(5, seed)
    bits = (8, 6, 4, 2)
    noise = {c.name: {b: c.params * 4.0 ** (-b) * (1 + 0.3 * seed) for b in bits} for c in costs if c.quantized}
    rng = random.Random(seed + 7)  # measured deltas are noisy and may be negative or non-monotone
    deltas = {c.name: {(b, b): rng.gauss(0.05 * (8 - b), 0.05) for b in bits} for c in costs if c.quantized}
    problem = SearchProblem(costs, fake_sens(costs, seed), bits, objective=objective, noise=noise, loss_delta=deltas)
    for budget in BUDGETS:
        try:
            brute = problem.solve_exhaustive(budget)
        except ValueError:
            with pytest.raises(ValueError, match="smallest feasible"):
                problem.solve(budget)
            continue
        ilp = problem.solve(budget)
        assert ilp.objective == pytest.approx(brute.objective, rel=1e-6, abs=1e-12), budget
        assert problem.fits(ilp.config, parse_budget(budget))


def _brute_force_ranked(problem: SearchProblem, budgets: list[str]) -> list[float]:
    import numpy as np

    blist = [parse_budget(b) for b in budgets]
    groups = [list(np.flatnonzero(problem.var_layer == l)) for l in range(len(problem.names))]
    scores = []
    for combo in itertools.product(*groups):
        cfg = problem.config_of(combo)
        if all(problem.fits(cfg, b) for b in blist):
            scores.append(problem.objective_of(cfg))
    return sorted(scores, reverse=True)


@pytest.mark.parametrize("seed", range(3))
def test_k_best_are_distinct_within_budget_sorted_and_match_brute_force(seed: int) -> None:
    costs = fake_costs(4, seed)
    bits = (8, 6, 4, 2)
    rng = random.Random(seed + 11)
    deltas = {c.name: {(b, b): rng.gauss(0.05 * (8 - b), 0.05) for b in bits} for c in costs if c.quantized}
    problem = SearchProblem(costs, fake_sens(costs, seed), bits, objective="loss", loss_delta=deltas)
    for budgets in (["avg-bits=4"], ["bops=0.3"], ["bytes=0.4", "bops=0.5"]):
        k = 12
        best = problem.solve_k_best(budgets, k)
        ranked = _brute_force_ranked(problem, budgets)
        assert len(best) == min(k, len(ranked))
        assert len({tuple(sorted(r.config.items())) for r in best}) == len(best)  # distinct
        assert all(problem.fits(r.config, parse_budget(b)) for r in best for b in budgets)  # exact, in integers
        objs = [r.objective for r in best]
        assert objs == sorted(objs, reverse=True)
        assert objs == pytest.approx(ranked[: len(best)], abs=1e-12)  # the k best, not just k good ones
        assert best[0].objective == pytest.approx(problem.solve(budgets).objective, abs=1e-9)
        assert [r.method for r in best] and all(r.method.startswith("ilp-k") for r in best)


def test_k_best_returns_fewer_when_fewer_fit_and_rejects_bad_k() -> None:
    costs = fake_costs(3, 0)
    problem = SearchProblem(costs, fake_sens(costs, 0), (4, 3, 2))
    # avg-bits=2.34 over 3 layers: total bits <= 7, i.e. all at 2 or one layer at 3: 4 configurations
    best = problem.solve_k_best("avg-bits=2.34", 10)
    assert len(best) == 4 and len({tuple(sorted(r.config.items())) for r in best}) == 4
    assert len(problem.solve_k_best("avg-bits=2", 5)) == 1
    with pytest.raises(ValueError, match="k must be"):
        problem.solve_k_best("avg-bits=3", 0)
    with pytest.raises(ValueError, match="smallest feasible"):
        problem.solve_k_best("avg-bits=1", 3)


def test_multiple_budgets_and_activation_pairs_brute_force() -> None:
    costs = fake_costs(4, 7)
    problem = SearchProblem(costs, fake_sens(costs, 7), (8, 4, 2), act=[(8, 8), (4, 8), (4, 4), (2, 8), (2, 2)])
    for budgets in (["bops=0.3", "bytes=0.5"], ["avg-bits=3", "bops=0.4"]):
        ilp, brute = problem.solve(budgets), problem.solve_exhaustive(budgets)
        assert ilp.objective == pytest.approx(brute.objective, rel=1e-6)
        assert all(problem.fits(ilp.config, parse_budget(b)) for b in budgets)


def test_budget_respected_exactly_at_the_boundary() -> None:
    costs = fake_costs(8, 3)
    problem = SearchProblem(costs, fake_sens(costs, 3), (8, 6, 4, 2))
    q = [c for c in costs if c.quantized]
    # every achievable BOPs value used as an absolute budget: the solution never exceeds it by 1 BOP
    for cfg in itertools.islice(itertools.product((8, 4, 2), repeat=len(q)), 0, None, 97):
        limit = sum(c.macs * b * b for c, b in zip(q, cfg))
        r = problem.solve(f"bops={limit}")
        assert r.summary["bops"] <= limit
        assert sum(c.macs * w * a for c, (w, a) in zip(q, r.config.values())) <= limit


def test_full_precision_layers_are_outside_the_average() -> None:
    costs = fake_costs(4, 1)
    problem = SearchProblem(costs, fake_sens(costs, 1), (8, 4, 2))
    r = problem.solve("avg-bits=4")
    assert set(r.config) == {"l0", "l1", "l2", "l3"}
    assert sum(w for w, _ in r.config.values()) / 4 <= 4
    assert r.summary["avg_bits"] == pytest.approx(sum(w for w, _ in r.config.values()) / 4)
    # all at 4 bits is feasible, so a budget of exactly 4 must be reachable in the average
    assert problem.solve_exhaustive("avg-bits=4").objective == pytest.approx(r.objective)


def test_pin_fixes_exactly_the_named_layer() -> None:
    costs = fake_costs(6, 2)
    sens = fake_sens(costs, 2)
    for k, name in enumerate(["l0", "l3", "l5"]):
        pinned = {name: 2 if k % 2 else 8}
        r = SearchProblem(costs, sens, (8, 6, 4, 2), pinned=pinned).solve("avg-bits=5")
        assert r.config[name] == (pinned[name],) * 2
    with pytest.raises(ValueError, match="full precision"):
        SearchProblem(costs, sens, (8, 4), pinned={"stem": 4})
    with pytest.raises(ValueError, match="unknown quantized layer"):
        SearchProblem(costs, sens, (8, 4), pinned={"nope": 4})


def test_infeasible_names_the_smallest_feasible_budget_and_leaves_no_state() -> None:
    costs = fake_costs(5, 4)
    problem = SearchProblem(costs, fake_sens(costs, 4), (8, 6, 4, 2))
    before = problem.solve("bops=0.3")
    for bad, smallest in (("avg-bits=1.5", "avg-bits=2"), ("bops=0.01", "bops=0.0625x")):
        with pytest.raises(ValueError, match=f"infeasible.*smallest feasible budget is {smallest}"):
            problem.solve(bad)
    with pytest.raises(ValueError) as e:
        problem.solve("bytes=100")
    smallest = str(e.value).split("smallest feasible budget is ")[1].split(" ")[0]
    problem.solve(smallest)  # the number it names really is feasible
    after = problem.solve("bops=0.3")  # a failed solve left no constraint behind
    assert after.config == before.config


def test_missing_or_foreign_traces() -> None:
    costs = fake_costs(3, 0)
    sens = fake_sens(costs, 0)
    with pytest.raises(ValueError, match="no Hessian trace"):
        SearchProblem(costs, {k: v for k, v in sens.items() if k != "l1"}, (8, 4))
    with pytest.raises(ValueError, match="does not have"):
        SearchProblem(costs, {**sens, "ghost": 1.0}, (8, 4))
    with pytest.raises(ValueError, match="weight noise"):
        SearchProblem(costs, sens, (8, 4), objective="noise")


def test_baselines_share_costs_and_objective() -> None:
    costs = fake_costs(8, 5)
    problem = SearchProblem(costs, fake_sens(costs, 5), (8, 6, 4, 2))
    u4 = uniform(problem, 4)
    assert u4.summary["rel_bops_w8a8"] == pytest.approx(0.25)
    assert u4.summary["rel_bops_w8a16"] == pytest.approx(0.125)
    ilp = problem.solve("bops=0.25")
    assert ilp.objective >= u4.objective - 1e-12
    g = greedy(problem, "bops=0.25")
    assert problem.fits(g.config, parse_budget("bops=0.25")) and ilp.objective >= g.objective - 1e-12
    path = greedy_path(problem, "bops")
    assert len(path) == 1 + 3 * 8
    assert [r.summary["bops"] for r in path] == sorted((r.summary["bops"] for r in path), reverse=True)
    rs = random_at_cost(problem, "bops=0.25", 15, seed=1)
    assert len(rs) == 15
    for r in rs:
        assert 0.95 * 0.25 - 1e-9 <= r.summary["rel_bops_w8a8"] <= 0.25
        assert r.objective <= ilp.objective + 1e-12


def test_sweep_and_pareto_front() -> None:
    costs = fake_costs(6, 6)
    problem = SearchProblem(costs, fake_sens(costs, 6), (4, 3, 2))
    results = problem.sweep("bops", [0.01, 0.08, 0.12, 0.16, 0.2, 0.25])
    assert len(results) == 5  # 0.01 is below the all-2-bit cost and skipped
    front = pareto_front(results)
    assert [r.summary["rel_bops_w8a8"] for r in front] == sorted(r.summary["rel_bops_w8a8"] for r in front)
    assert all(a.objective < b.objective for a, b in itertools.pairwise(front))


def test_layer_costs_grouped_depthwise_and_relative_bops() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    )
    q = bitswitch.quantize(model, bits=(8, 4), full_precision=["0"])
    bitswitch.calibrate(q, [torch.randn(4, 3, 8, 8)])
    costs = {c.name: c for c in layer_costs(q, (3, 8, 8))}
    assert costs["1"].kind == "depthwise" and costs["1"].macs == 8 * 64 * 9 and costs["1"].params == 72
    assert costs["2"].kind == "conv" and costs["2"].macs == 16 * 16 * 4 * 9 and costs["2"].params == 16 * 4 * 9
    assert costs["4"].macs == 256 * 10
    assert not costs["0"].quantized
    allc = list(costs.values())
    cfg = {"1": (4, 4), "2": (8, 8), "4": (4, 8)}
    expect = costs["1"].macs * 16 + costs["2"].macs * 64 + costs["4"].macs * 32
    ref = (costs["1"].macs + costs["2"].macs + costs["4"].macs) * 64
    assert relative_bops(allc, cfg) == pytest.approx(expect / ref)
    assert relative_bops(allc, cfg, "w8a16") == pytest.approx(expect / (2 * ref))
    s = config_summary(allc, cfg)
    assert s["avg_bits"] == pytest.approx(16 / 3)
    assert s["quantized_bytes"] == pytest.approx((72 * 4 + 576 * 8 + 2560 * 4) / 8)
    assert s["model_bytes"] == pytest.approx(s["quantized_bytes"] + 3 * 8 * 9 * 4 + (8 + 8 + 16 + 10) * 4)


def test_weight_noise_grows_as_bits_drop_and_survives_integer_storage() -> None:
    q = bitswitch.quantize(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)), bits=(8, 4, 2))
    bitswitch.calibrate(q, [torch.randn(16, 8)])
    latent = weight_noise(q)
    assert list(latent) == ["2"]
    assert latent["2"][2] > latent["2"][4] > latent["2"][8] > 0
    # by hand: 8-bit codes of the latent weight, b-bit codes by a half-even division by 2^(8-b)
    w = q[2].weight.detach().double()
    s = q[2].weight_quant.scale.detach().double().reshape(-1, 1)
    codes8 = torch.clamp(torch.round(w / s), -128, 127)

    def effective(b: int) -> torch.Tensor:
        lo, hi = -(2 ** (b - 1)), 2 ** (b - 1) - 1
        return torch.clamp(torch.round(codes8 / 2 ** (8 - b)), lo, hi) * s * 2 ** (8 - b)

    for b in (8, 4, 2):
        assert latent["2"][b] == pytest.approx(float((effective(b) - w).pow(2).sum()), rel=1e-5)
    for layer in bitswitch.quantized_layers(q).values():
        layer.to_integer()
    integer = weight_noise(q)
    # without the FP32 weight: the top-bit error is modelled as step^2/12 per weight, the rest measured from codes
    top = float((s**2).sum() * w.shape[1] / 12)
    assert integer["2"][8] == pytest.approx(top, rel=1e-6)
    for b in (4, 2):
        assert integer["2"][b] == pytest.approx(top + float((effective(b) - effective(8)).pow(2).sum()), rel=1e-5)
