"""Property tests of the quantizer maths (Double Rounding, LSQ gradients, integer grids)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitswitch.quant.functional import DoubleRoundingFn, LsqActivationFn
from bitswitch.quant.grid import check_bit_list, int_range, requantize, requantize_int
from bitswitch.quant.weight import DoubleRoundingWeight

SETTINGS = settings(max_examples=40, deadline=None)


def _weights(seed: int, shape=(6, 3, 3, 3)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * torch.rand(shape[0], 1, 1, 1, generator=g) * 0.5


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), high=st.integers(2, 8), data=st.data())
def test_lower_codes_come_from_stored_codes_only(seed: int, high: int, data) -> None:
    low = data.draw(st.integers(2, high))
    w = _weights(seed)
    q = DoubleRoundingWeight(w.shape[0], bits=tuple(range(high, 1, -1)), storage_bits=high)
    q.init_scale(w, "std3")
    stored = q.codes(w)
    assert stored.dtype == torch.int8
    lo_h, hi_h = int_range(high, signed=True)
    assert lo_h <= int(stored.min()) and int(stored.max()) <= hi_h
    codes = requantize_int(stored, high, low)
    expected = torch.clamp(torch.round(stored.double() / 2 ** (high - low)), -(2 ** (low - 1)), 2 ** (low - 1) - 1)
    assert torch.equal(codes.double(), expected)
    lo, hi = int_range(low, signed=True)
    assert lo <= int(codes.min()) and int(codes.max()) <= hi
    # the integer path and the latent (training) path give the very same effective weight
    step = q.scale.detach().view(-1, 1, 1, 1) * 2 ** (high - low)
    assert torch.equal(codes.float() * step, q(w, low).detach())
    assert torch.equal(q.dequantize(stored, low), q(w, low).detach())


@SETTINGS
@given(codes=st.lists(st.integers(-128, 127), min_size=1, max_size=64), low=st.integers(2, 7))
def test_half_up_is_the_hardware_shift_and_floor_the_plain_shift(codes: list[int], low: int) -> None:
    c = torch.tensor(codes, dtype=torch.int32)
    d = 8 - low
    lo, hi = int_range(low, signed=True)
    shift_half_up = ((c + 2 ** (d - 1)) >> d).clamp(lo, hi)
    assert torch.equal(requantize(c, 8, low, "half_up").long(), shift_half_up.long())
    assert torch.equal(requantize(c, 8, low, "floor").long(), (c >> d).clamp(lo, hi).long())


def test_half_even_and_half_up_disagree_on_ties() -> None:
    c = torch.arange(-128, 128)
    even, up = requantize(c, 8, 6, "half_even"), requantize(c, 8, 6, "half_up")
    # c / 4 = k + 1/2 at c = 4k + 2: half-even rounds to k when k is even, half-up always to k + 1.
    # So they differ exactly at c = 8m + 2, by one code (except where both clip to 31).
    differ = (c % 8 == 2)
    assert torch.equal(even != up, differ)
    assert torch.equal(even[differ], (c[differ] - 2).float() / 4)
    assert torch.equal(up[differ], (c[differ] + 2).float() / 4)
    assert even[c == -126].item() == -32 and up[c == -126].item() == -31


def test_requantize_to_same_bits_is_identity_and_higher_is_refused() -> None:
    c = torch.arange(-8, 8)
    assert torch.equal(requantize(c, 4, 4), c.float())
    with pytest.raises(ValueError, match="higher precision"):
        requantize(c, 4, 6)


@pytest.mark.parametrize("bits", [[], [8, 8], [1], [17], [8, 4.0]])
def test_bad_bit_lists(bits) -> None:
    with pytest.raises(ValueError):
        check_bit_list(bits)


def test_bit_list_is_sorted_high_first() -> None:
    assert check_bit_list([2, 8, 4]) == (8, 4, 2)


def _lsq_reference(x: torch.Tensor, s: torch.Tensor, lo: int, hi: int, g: float) -> torch.Tensor:
    """Textbook LSQ with the gradient-scale and round-pass tricks, as autograd sees it."""
    s = (s - s * g).detach() + s * g
    v = torch.clamp(x / s, lo, hi)
    v = (v.round() - v).detach() + v
    return v * s


@pytest.mark.parametrize("low", [8, 6, 4, 2])
def test_double_rounding_gradients_are_per_channel_lsq(low: int) -> None:
    w = _weights(1, (5, 4, 3, 3)).requires_grad_()
    scale = (w.detach().abs().amax((1, 2, 3)) / 127).requires_grad_()
    grad = torch.randn_like(w)
    DoubleRoundingFn.apply(w, scale, 8, low, "half_even").backward(grad)

    w_ref = w.detach().clone().requires_grad_()
    step = (scale.detach() * 2 ** (8 - low)).clone().requires_grad_()
    lo, hi = int_range(low, signed=True)
    g = 1 / math.sqrt(w[0].numel() * hi)
    _lsq_reference(w_ref, step.view(-1, 1, 1, 1), lo, hi, g).backward(grad)
    assert torch.equal(w.grad == 0, w_ref.grad == 0)  # same clip mask
    torch.testing.assert_close(w.grad, w_ref.grad)
    torch.testing.assert_close(scale.grad, step.grad * 2 ** (8 - low), rtol=1e-4, atol=1e-6)
    # channels get their own gradient (the reference code copies one summed value to all)
    assert scale.grad.unique().numel() == scale.numel()


@pytest.mark.parametrize(("lo", "hi"), [(0, 15), (-8, 7), (0, 255)])
def test_activation_gradients_match_lsq(lo: int, hi: int) -> None:
    x = (torch.randn(4, 3, 5, 5) * 2).requires_grad_()
    s = torch.tensor(0.1, requires_grad=True)
    grad = torch.randn_like(x)
    LsqActivationFn.apply(x, s, lo, hi).backward(grad)
    x_ref, s_ref = x.detach().clone().requires_grad_(), s.detach().clone().requires_grad_()
    _lsq_reference(x_ref, s_ref, lo, hi, 1 / math.sqrt(x.numel() * hi)).backward(grad)
    assert torch.equal(x.grad == 0, x_ref.grad == 0)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(s.grad, s_ref.grad, rtol=1e-4, atol=1e-6)


def test_effective_weight_error_shrinks_with_bits() -> None:
    w = _weights(3, (16, 8, 3, 3))
    q = DoubleRoundingWeight(16, bits=(8, 6, 4, 2))
    q.init_scale(w, "mse")
    errs = [float((q(w, b).detach() - w).pow(2).mean()) for b in (8, 6, 4, 2)]
    assert errs == sorted(errs)
    # each bit-width's error is the uniform rounding noise of ITS step, s * 2^(8-b), squared over 12
    # (within [0.9, 1.4]: a few clipped weights and the second rounding add a little); a quantizer one
    # grid coarser than its name says would be 16x off
    for b, err in zip((8, 6, 4, 2), errs):
        noise = float((q.scale.detach() * 2 ** (8 - b)).pow(2).mean() / 12)
        assert 0.9 <= err / noise <= 1.4, (b, err / noise)


def test_codes_and_dequantize_agree_for_16_bit_storage() -> None:
    w = _weights(4)
    q = DoubleRoundingWeight(w.shape[0], bits=(12, 8), storage_bits=16)
    q.init_scale(w, "max")
    stored = q.codes(w)
    assert stored.dtype == torch.int16
    s = q.scale.detach().view(-1, 1, 1, 1)
    # independent arithmetic: 16-bit codes, then the 8-bit ones by a half-even division by 2^8
    codes16 = torch.clamp(torch.round(w.double() / s), -(2**15), 2**15 - 1)
    assert torch.equal(stored.double(), codes16)
    codes8 = torch.clamp(torch.round(codes16 / 256), -128, 127)
    assert torch.equal(q.dequantize(stored, 8).double(), (codes8 * 256 * s.double()).float().double())
    assert torch.equal(q.dequantize(stored, 12).double(), (torch.clamp(torch.round(codes16 / 16), -2048, 2047) * 16 * s.double()).float().double())


def test_compiled_activation_kernels_equal_eager(monkeypatch) -> None:
    """``compile_kernels`` (``use_compiled_kernels``) swaps in torch.compile'd kernels: the same codes
    and input gradient bit for bit; the scale gradient is a sum, fused in another order (within 1e-6
    of the sum of its terms' magnitudes)."""
    import torch._inductor.config as inductor_config

    from bitswitch.quant.functional import use_compiled_kernels

    monkeypatch.setattr(inductor_config, "compile_threads", 1)  # no compile worker pool: a few seconds less
    g = torch.Generator().manual_seed(0)
    s = 0.25  # a power of two: the ties below are exact
    x = torch.cat([torch.randn(200, generator=g) * 2, (torch.arange(-10, 10) + 0.5) * s, torch.tensor([-2.0, 1.75, -2.01, 1.76])])
    grad = torch.randn(x.shape, generator=g)

    def run() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xr, sr = x.clone().requires_grad_(), torch.tensor(s, requires_grad=True)
        y = LsqActivationFn.apply(xr, sr, -8, 7)
        y.backward(grad)
        return y.detach(), xr.grad, sr.grad

    eager = run()
    try:
        assert use_compiled_kernels(True)
        compiled = run()
    finally:
        use_compiled_kernels(False)
    assert torch.equal(compiled[0], eager[0]) and torch.equal(compiled[1], eager[1])
    assert (eager[1] == 0).sum() > 0 and len(eager[0].unique()) == 16  # clipped inputs and every code of the grid
    # each term of the scale gradient is at most |grad| * 8 (a clip distance) / sqrt(numel * 7)
    terms = float(grad.abs().sum()) * 8 / math.sqrt(x.numel() * 7)
    assert abs(float(compiled[2]) - float(eager[2])) <= 1e-6 * terms
    assert torch.equal(run()[0], eager[0])  # switched back
