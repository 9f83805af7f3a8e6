"""Measured loss increases (the ILP's ``loss`` objective): definition, isolation, optimality, errors."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bitswitch
from bitswitch.cost import layer_costs
from bitswitch.search import SearchProblem, parse_budget, uniform
from bitswitch.search.evaluate import accuracy
from bitswitch.search.measured import (
    config_losses,
    loss_deltas,
    monotone_deltas,
    rerank,
)

pytestmark = pytest.mark.usefixtures("one_thread")

BITS = (4, 3, 2)


def tiny() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3))
    q = bitswitch.quantize(m, bits=BITS, full_precision=())
    x = torch.randn(64, 6)
    with torch.no_grad():
        y = m(x).argmax(1)  # the FP32 model's own labels: lowering precision then costs loss, whatever the random draw
    bitswitch.calibrate(q, [x])
    return q, [(x[:32], y[:32]), (x[32:], y[32:])]


def loss_at(model: nn.Module, config: dict[str, tuple[int, int]], batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    bitswitch.set_precision(model, config)
    model.eval()
    with torch.no_grad():
        n = sum(int(y.numel()) for _, y in batches)
        return sum(float(F.cross_entropy(model(x), y, reduction="sum")) for x, y in batches) / n


def test_deltas_are_one_layer_loss_increases_and_leave_the_model_unchanged() -> None:
    q, batches = tiny()
    names = list(bitswitch.quantized_layers(q))
    bitswitch.set_precision(q, 2)
    before = accuracy(q, batches)
    d = loss_deltas(q, batches, BITS, reference=3, monotone=False)
    assert accuracy(q, batches) == before  # precision and statistics of the caller's model untouched
    assert set(d) == set(names)
    ref = {n: (3, 3) for n in names}
    base = loss_at(q, ref, batches)
    for n in names:
        assert d[n][(3, 3)] == 0.0
        for b in (4, 2):
            assert d[n][(b, b)] == pytest.approx(loss_at(q, {**ref, n: (b, b)}, batches) - base, abs=1e-6)
    around = loss_deltas(q, batches, BITS, reference={n: 3 for n in names}, monotone=False)
    assert around == d  # a per-layer reference configuration (re-linearising around a solution)
    # default reference: the highest candidate; lowering a layer then costs loss on average
    top = loss_deltas(q, batches, [(4, 4), (2, 2)], monotone=False)
    assert all(v[(4, 4)] == 0.0 for v in top.values())
    assert sum(v[(2, 2)] for v in top.values()) > 0


def test_deltas_see_activation_bits_that_weight_objectives_ignore() -> None:
    q, batches = tiny()
    d = loss_deltas(q, batches, [(4, 4), (4, 2)], layers=["2"], monotone=False)
    assert list(d) == ["2"] and d["2"][(4, 2)] != 0.0  # same weights, only the activation grid differs


def test_monotone_projection_keeps_the_reference_and_orders_by_precision() -> None:
    raw = {(4, 4): 0.01, (3, 3): 0.0, (2, 2): -0.02, (4, 2): 0.03, (2, 4): -0.01}
    m = monotone_deltas(raw, (3, 3))
    assert m[(3, 3)] == 0.0 and m[(4, 4)] == 0.0  # more precise than the reference: never worse than it
    assert m[(2, 2)] >= max(m[(4, 2)], m[(2, 4)], 0.0)  # dominated by both: at least as bad as either
    assert m[(4, 2)] == 0.03  # incomparable with the reference: only ordered against what dominates it
    for p, v in m.items():
        for q, w in m.items():
            if p[0] >= q[0] and p[1] >= q[1]:
                assert v <= w
    already = {(4, 4): -0.5, (3, 3): 0.0, (2, 2): 0.7}
    assert monotone_deltas(already, (3, 3)) == already
    q, batches = tiny()
    d = loss_deltas(q, batches, BITS, reference=3)
    assert all(v[(4, 4)] <= 0.0 <= v[(2, 2)] for v in d.values())


def test_loss_objective_ilp_matches_brute_force_on_measured_deltas() -> None:
    q, batches = tiny()
    d = loss_deltas(q, batches, BITS, reference=3)
    costs = layer_costs(q, (6,))
    sens = {c.name: 1.0 for c in costs if c.quantized}
    problem = SearchProblem(costs, sens, BITS, objective="loss", loss_delta=d)
    u3 = uniform(problem, 3)
    assert u3.objective == pytest.approx(0.0)
    for budget in ("avg-bits=3", "avg-bits=2.5", "bops=0.14", "bops=0.1", "wavg-bits=3.2", "bytes=0.3"):
        ilp = problem.solve(budget)
        brute = problem.solve_exhaustive(budget)
        assert problem.fits(ilp.config, parse_budget(budget))
        assert ilp.objective == pytest.approx(brute.objective, abs=1e-9), budget
        # the objective is exactly minus the sum of the measured one-layer increases
        assert ilp.objective == pytest.approx(-sum(d[n][p] for n, p in ilp.config.items()))
    # at the cost of uniform 3-bit the search can only do as well or better on its own model
    assert problem.solve(f"bops={u3.summary['rel_bops_w8a8']}x").objective >= -1e-12


def test_recalibrated_deltas_and_errors() -> None:
    q, batches = tiny()
    with pytest.raises(ValueError, match="BatchNorm"):  # an MLP has nothing to re-estimate
        loss_deltas(q, batches, BITS, recal_batches=batches)
    with pytest.raises(ValueError, match="calibration data"):
        loss_deltas(q, [], BITS)
    with pytest.raises(ValueError, match="lacks"):
        loss_deltas(q, batches, BITS, reference={"0": 3})
    with pytest.raises(ValueError, match="not quantized"):
        loss_deltas(q, batches, BITS, layers=["nope"])
    with pytest.raises(ValueError, match="quantized"):
        loss_deltas(nn.Linear(2, 2), batches, BITS)
    costs = layer_costs(q, (6,))
    sens = {c.name: 1.0 for c in costs if c.quantized}
    with pytest.raises(ValueError, match="loss_deltas"):
        SearchProblem(costs, sens, BITS, objective="loss")
    partial = {n: {(4, 4): 0.0, (3, 3): 0.1} for n in sens}
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        SearchProblem(costs, sens, BITS, objective="loss", loss_delta=partial)


def test_recalibrated_deltas_on_a_batchnorm_model() -> None:
    from bitswitch.models import build

    torch.manual_seed(0)
    q = bitswitch.quantize(build("preact_resnet8", in_channels=1, width=4), bits=BITS)
    x = torch.randn(16, 1, 12, 12)
    y = torch.arange(16) % 10
    bitswitch.calibrate(q, [x])
    batches = [(x, y)]
    layers = list(bitswitch.quantized_layers(q))[:2]
    stats = {k: v.clone() for k, v in q.state_dict().items() if "running" in k}
    d = loss_deltas(q, batches, BITS, recal_batches=[x], layers=layers)
    assert set(d) == set(layers)
    values = list(itertools.chain.from_iterable(v.values() for v in d.values()))
    assert all(v[(4, 4)] == 0.0 for v in d.values()) and all(torch.isfinite(torch.tensor(values)))
    # statistics are re-estimated on copies: the supernet's own BatchNorms are untouched
    assert all(torch.equal(v, q.state_dict()[k]) for k, v in stats.items())


def test_rerank_picks_the_lowest_measured_whole_configuration_loss() -> None:
    q, batches = tiny()
    costs = layer_costs(q, (6,))
    sens = {c.name: 1.0 for c in costs if c.quantized}
    d = loss_deltas(q, batches[:1], BITS, reference=3)
    problem = SearchProblem(costs, sens, BITS, objective="loss", loss_delta=d)
    u3 = uniform(problem, 3)
    props = problem.solve_k_best(f"bops={u3.summary['rel_bops_w8a8']}x", 6)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    best, losses = rerank(q, props, batches[1:])
    assert len(losses) == len(props)
    for r, loss in zip(props, losses):  # each loss is that whole configuration's, measured on the given batches
        assert loss == pytest.approx(loss_at(copy_of(q), r.config, batches[1:]), rel=1e-6)
    assert best is props[min(range(len(losses)), key=losses.__getitem__)]
    assert all(losses[props.index(best)] <= v for v in losses)
    assert all(torch.equal(before[k], v) for k, v in q.state_dict().items())  # the model is left unchanged
    # plain mappings work too, and the first wins a tie
    cfg = dict(props[0].config)
    chosen, same = rerank(q, [cfg, dict(cfg)], batches)
    assert chosen is cfg and same[0] == same[1]
    with pytest.raises(ValueError, match="no proposals"):
        rerank(q, [], batches)
    with pytest.raises(ValueError, match="calibration data"):
        config_losses(q, [cfg], [])


def copy_of(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def test_paired_difference_counts_discordant_pairs():
    from bitswitch.search.evaluate import paired_difference

    base = torch.tensor([True, True, False, False, True, False, True, True])
    new = torch.tensor([True, False, True, True, True, False, True, True])  # gains 2, loses 1
    diff, se = paired_difference(new, base)
    assert diff == pytest.approx(100 * 1 / 8)
    assert se == pytest.approx(100 * (3 - 1 / 8) ** 0.5 / 8)
    assert paired_difference(base, base) == (0.0, 0.0)
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_difference(new[:3], base)
