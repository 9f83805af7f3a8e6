"""AdaRound and bias correction in post-training mixed precision: row sampling, reconstruction error,
caching of rounded weights per (layer, bits), their reuse in both phases, and budgets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bitswitch.ptq import PTQConfig, start_session
from bitswitch.ptq.adaround import (InputStats, adaround_weight, bias_correction, grouped_weight,
                                    reconstruction_error, sample_rows)
from bitswitch.quant.functional import channel_view, weight_codes


def _rows_match_conv(conv: nn.Conv2d, x: torch.Tensor) -> None:
    rows = sample_rows(conv, x, per_sample=10**6, gen=torch.Generator().manual_seed(0))  # every position
    out = torch.einsum("mgk,gok->mgo", rows, grouped_weight(conv, conv.weight.detach())).reshape(rows.shape[0], -1)
    ref = nn.functional.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    torch.testing.assert_close(out, ref.permute(0, 2, 3, 1).reshape(-1, ref.shape[1]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("groups,stride,padding,cl", [(1, 1, 1, False), (6, 2, 0, True), (3, 2, 2, False)])
def test_sampled_rows_reproduce_the_convolution(groups: int, stride: int, padding: int, cl: bool) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 12 if groups != 6 else 6, 3, stride, padding, groups=groups, bias=False)
    x = torch.randn(2, 6, 9, 8)
    _rows_match_conv(conv, x.contiguous(memory_format=torch.channels_last) if cl else x)


def _layer_problem(seed: int = 0) -> tuple[nn.Linear, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    lin = nn.Linear(32, 16, bias=False)
    x = torch.randn(512, 8) @ torch.randn(8, 32) + 0.3 * torch.randn(512, 32)  # correlated inputs: rounding errors interact
    stats = InputStats(1, 32)
    stats.add(sample_rows(lin, x, 1, torch.Generator()))
    gram, mean, _ = stats.finish()
    scale = lin.weight.detach().abs().amax(1) / 7
    return lin, x, gram, scale


def test_adaround_reduces_layer_reconstruction_error() -> None:
    lin, x, gram, scale = _layer_problem()
    w = lin.weight.detach()
    nearest = weight_codes(w, scale, 4) * channel_view(scale, 2)
    rounded = adaround_weight(w, scale, 4, gram, 1, iters=300)
    # on the 4-bit grid of the same scale, and each weight only rounded up or down
    codes = rounded / channel_view(scale, 2)
    torch.testing.assert_close(codes, codes.round())
    assert ((codes - torch.floor(w / channel_view(scale, 2))).abs() <= 1 + 1e-5).all()
    err_near = reconstruction_error(w, nearest, gram, 1)
    err_ada = reconstruction_error(w, rounded, gram, 1)
    assert err_ada < 0.7 * err_near
    # the Gram-form error is the mean squared output error over the rows
    direct = float(((x @ (nearest - w).T) ** 2).sum(1).mean())
    assert err_near == pytest.approx(direct, rel=1e-4)


def test_adaround_rows_and_gram_forms_agree() -> None:
    lin, x, gram, scale = _layer_problem(1)
    w = lin.weight.detach()
    a = adaround_weight(w, scale, 4, gram, 1, iters=50)
    b = adaround_weight(w, scale, 4, gram, 1, rows=x.reshape(-1, 1, 32), iters=50)
    assert (a != b).float().mean() < 0.05  # same loss, different float summation order


def test_bias_correction_removes_mean_shift() -> None:
    lin, x, gram, scale = _layer_problem(2)
    w = lin.weight.detach()
    x = x + 1.0  # non-zero input mean
    stats = InputStats(1, 32)
    stats.add(x.reshape(-1, 1, 32))
    _, mean, _ = stats.finish()
    wq = weight_codes(w, scale, 4) * channel_view(scale, 2)
    db = bias_correction(w, wq, mean, 1)
    shift = (x @ wq.T + db - x @ w.T).mean(0)
    assert shift.abs().max() < 1e-4


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


def test_session_adaround_cached_per_layer_and_reused_in_both_phases(monkeypatch) -> None:
    import bitswitch.ptq.adaround as ada

    calls: list[int] = []
    real = ada.adaround_weight
    monkeypatch.setattr(ada, "adaround_weight", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(16, 3, 8, 8)
    s = start_session(_net(), [x], PTQConfig([(8, 16), (8, 8), (4, 8)], adaround=True, adaround_iters=20, progress=False, chunk_size=8))
    assert sorted(s.rounded) == sorted((n, 4) for n in s.layers)  # one rounding per (layer, 4 bits)
    assert len(calls) == len(s.layers)
    s.sensitivity()
    res = s.search(0.3)
    assert len(calls) == len(s.layers)  # phases 1 and 2 reuse the cached roundings
    assert res.relative_bops <= 0.3 + 1e-9
    s.apply(res.group_config)
    for name, (w_bits, _) in res.layer_config.items():
        layer = s.layers[name]
        if w_bits == 4:
            assert torch.equal(layer.weight, s.rounded[(name, 4)])
            torch.testing.assert_close(layer.effective_weight(), s.rounded[(name, 4)])
        else:
            assert torch.equal(layer.weight, s.fp_weights[name])
    s.apply(None)
    assert all(torch.equal(s.layers[n].weight, s.fp_weights[n]) for n in s.layers)


def test_session_bias_correction_and_budgets() -> None:
    x = torch.randn(16, 3, 8, 8)
    s = start_session(_net(), [x], PTQConfig([(8, 16), (8, 8), (4, 8)], bias_correct=True, progress=False, chunk_size=8))
    assert sorted(s.biases) == sorted((n, b) for n in s.layers for b in (8, 4))
    s.sensitivity()
    for budget in (1.0, 0.5, 0.4, 0.25):
        res = s.search(budget)
        assert res.relative_bops <= budget + 1e-9
    s.apply(s.uniform((4, 8)))
    name = next(iter(s.layers))
    assert torch.equal(s.layers[name].bias, s.biases[(name, 4)])
    s.apply(None)
    assert torch.equal(s.layers[name].bias, s.fp_biases[name])


def test_bad_adaround_arguments() -> None:
    with pytest.raises(ValueError, match="adaround_iters"):
        PTQConfig(adaround=True, adaround_iters=0, progress=False)
    with pytest.raises(ValueError, match="at least one iteration"):
        adaround_weight(torch.randn(4, 4), torch.ones(4), 4, torch.eye(4).unsqueeze(0), 1, iters=0)
    with pytest.raises(ValueError, match="no input rows"):
        InputStats(1, 4).finish()


def test_output_aware_weight_range_minimises_the_measured_output_error() -> None:
    """Each channel's scale is the candidate (the max-abs scale shrunk by 40 factors in [0.2, 1]) with
    the smallest output error measured directly on the layer's inputs, not through the Gram matrix,
    and on correlated inputs that is not the weight-MSE choice."""
    from bitswitch.ptq.adaround import weight_scale_output_mse
    from bitswitch.quant.ranges import weight_scale_mse

    lin, x, gram, _ = _layer_problem(3)
    w = lin.weight.detach().double()
    x = x.double()
    s_out = weight_scale_output_mse(lin.weight.detach(), gram, 1, 4).double()

    def output_error(scale: torch.Tensor) -> torch.Tensor:  # per channel: mean over rows of (x·Δw)²
        dw = torch.clamp(torch.round(w / scale[:, None]), -8, 7) * scale[:, None] - w
        return (x @ dw.T).pow(2).mean(0)

    base = w.abs().amax(1) / 7
    errors = torch.stack([output_error(base * f) for f in torch.linspace(0.2, 1.0, 40, dtype=torch.float64)])
    best = errors.min(0).values
    torch.testing.assert_close(output_error(s_out), best, rtol=1e-4, atol=0)
    s_mse = weight_scale_mse(lin.weight.detach(), 4, (4,)).double()
    assert (s_mse != s_out).any() and float(output_error(s_out).sum()) < 0.95 * float(output_error(s_mse).sum())
    with pytest.raises(ValueError, match="weight_ranges"):
        PTQConfig(weight_ranges="minmax", progress=False)


def test_nearest_rounding_then_learned_roundings() -> None:
    x = torch.randn(16, 3, 8, 8)
    s = start_session(_net(), [x], PTQConfig([(8, 16), (8, 8), (4, 8)], adaround=True, bias_correct=True, adaround_iters=10,
                                             progress=False, chunk_size=8))
    name = next(iter(s.layers))
    s.apply(s.uniform((4, 8)), nearest=True)
    assert torch.equal(s.layers[name].weight, s.fp_weights[name]) and s.layers[name].w_bits == 4
    assert torch.equal(s.layers[name].bias, s.fp_biases[name])
    s.apply(s.uniform((4, 8)))
    assert torch.equal(s.layers[name].weight, s.rounded[(name, 4)])
