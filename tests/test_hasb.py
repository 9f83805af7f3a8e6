"""HASB: roulette sampling, switch schedule, supernet step, transitional BN, BN re-estimation."""

from __future__ import annotations

import copy
import random
from collections import Counter

import pytest
import torch
from torch import nn

import bitswitch
from bitswitch.models import build

pytestmark = pytest.mark.usefixtures("one_thread")
from bitswitch.nn import (
    SwitchableBatchNorm,
    TransitionalBatchNorm,
    recalibrate_bn,
    to_transitional,
)
from bitswitch.nn.recalibrate import active_batchnorms
from bitswitch.train.hasb import (
    RouletteSampler,
    SwitchSchedule,
    supernet_plan,
    supernet_step,
)


def test_roulette_probabilities() -> None:
    s = RouletteSampler({"a": 1.0, "b": 2.0, "c": 6.0}, (8, 6, 4, 2))  # mean 3
    assert s.probs["a"] == s.probs["b"] == (0.25,) * 4
    assert s.probs["c"] == pytest.approx((8 / 20, 6 / 20, 4 / 20, 2 / 20))
    rng = random.Random(0)
    counts = Counter(s.draw("c", rng) for _ in range(20000))
    assert counts[8] / 20000 == pytest.approx(0.4, abs=0.02) and counts[2] / 20000 == pytest.approx(0.1, abs=0.01)
    with pytest.raises(ValueError, match="no Hessian trace"):
        RouletteSampler({"a": 1.0}, (4, 2), layers=["a", "z"])


def test_schedule_ramps_after_warmup() -> None:
    sch = SwitchSchedule(warmup_steps=10, ramp_steps=5, p_max=0.8)
    assert [sch(i) for i in (0, 9)] == [0.0, 0.0]
    assert sch(10) == pytest.approx(0.16) and sch(14) == pytest.approx(0.8) and sch(1000) == pytest.approx(0.8)
    with pytest.raises(ValueError):
        SwitchSchedule(ramp_steps=0)


def test_plan_is_deterministic_and_uniform_during_warmup() -> None:
    s = RouletteSampler({f"l{i}": float(i) for i in range(6)}, (4, 3, 2))
    warm = supernet_plan(s, SwitchSchedule(warmup_steps=5), 2, (4, 3, 2), seed=3)
    assert [set(c.values()) for c in warm] == [{(4, 4)}, {(3, 3)}, {(2, 2)}]
    a = supernet_plan(s, SwitchSchedule(), 7, (4, 3, 2), seed=3)
    assert a == supernet_plan(s, SwitchSchedule(), 7, (4, 3, 2), seed=3)  # same on every rank / on resume
    assert a != supernet_plan(s, SwitchSchedule(), 8, (4, 3, 2), seed=3)
    assert all(w == a_ for c in a for w, a_ in c.values())
    fixed = supernet_plan(s, SwitchSchedule(), 7, (4, 3, 2), seed=3, act_bits=8)
    assert all(a_ == 8 for c in fixed for _, a_ in c.values())


def small_supernet() -> nn.Module:
    torch.manual_seed(0)
    m = bitswitch.quantize(build("preact_resnet8", in_channels=1, width=4), bits=(4, 3, 2))
    bitswitch.calibrate(m, [torch.randn(16, 1, 8, 8)])
    return m


def test_supernet_step_trains_the_planned_configurations() -> None:
    model = small_supernet()
    names = list(bitswitch.quantized_layers(model))
    sampler = RouletteSampler({n: float(i) for i, n in enumerate(names)}, (4, 3, 2))
    plan = supernet_plan(sampler, SwitchSchedule(), 3, (4, 3, 2))
    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    losses = supernet_step(model, torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)), opt, plan)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert bitswitch.get_precision(model) == dict(plan[-1])
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_transitional_bn_selects_the_previous_and_current_pair() -> None:
    model = to_transitional(small_supernet())
    bns = {n: m for n, m in model.named_modules() if isinstance(m, TransitionalBatchNorm)}
    assert bns and not any(isinstance(m, SwitchableBatchNorm) for m in model.modules())
    names = list(bitswitch.quantized_layers(model))
    bn = next(m for m in bns.values() if m.previous is not None)
    i = names.index(bn.source)
    assert bn.previous == names[i - 1] and len(bn.bn) == 9
    bitswitch.set_precision(model, {bn.previous: 2, bn.source: 4})
    assert bn.active == "2_4"
    bitswitch.set_precision(model, 3)
    assert bn.active == "3_3"
    out = model(torch.randn(4, 1, 8, 8))
    assert out.shape == (4, 10)


def test_recalibrate_bn_estimates_the_active_statistics_only() -> None:
    model = small_supernet().eval()
    bitswitch.set_precision(model, 3)
    x = torch.randn(64, 1, 8, 8) * 2 + 1
    inactive = {k: v.clone() for k, v in model.state_dict().items() if ".bn.4." in k or ".bn.2." in k}
    seen = recalibrate_bn(model, [x[:32], (x[32:], None)])
    assert seen == 64 and not model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in inactive.items())
    # the first BatchNorm sees the stem's output: its mean is exactly that of all 64 inputs
    stem_out = model.conv1(x).detach()
    bn1 = model.layer1[0].bn1
    assert torch.allclose(bn1.running_mean, stem_out.mean((0, 2, 3)), atol=1e-5)
    per_batch_var = (stem_out[:32].var((0, 2, 3)) + stem_out[32:].var((0, 2, 3))) / 2  # cumulative average
    assert torch.allclose(bn1.running_var, per_batch_var, rtol=1e-4)
    bn = model.layer1[0].bn2
    assert isinstance(bn, SwitchableBatchNorm) and bn.active_bits == 3
    assert bn.bn["3"] in active_batchnorms(model) and bn.bn["4"] not in active_batchnorms(model)
    with pytest.raises(ValueError, match="no calibration images"):
        recalibrate_bn(model, [])


def test_latent_from_checkpoint_continues_with_identical_outputs(tmp_path) -> None:
    from bitswitch.train.hasb import latent_from_checkpoint

    model = small_supernet().eval()
    path = bitswitch.save(model, tmp_path / "joint.safetensors")
    latent = latent_from_checkpoint(path).eval()
    assert all(not l.is_integer and l.weight.requires_grad for l in bitswitch.quantized_layers(latent).values())
    x = torch.randn(4, 1, 8, 8)
    for b in (4, 3, 2):
        bitswitch.set_precision(model, b)
        bitswitch.set_precision(latent, b)
        with torch.no_grad():
            assert torch.equal(model(x), latent(x))
    assert bitswitch.save(latent, tmp_path / "again.safetensors").is_file()
