"""BatchNorm folding (:mod:`bitswitch.nn.fold`), shared by post-training quantization and ONNX export."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bitswitch.nn.fold import fold_bn, fold_conv_bn


def _bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels).double().eval()
    with torch.no_grad():  # every statistic and affine parameter non-trivial, some scales negative
        bn.weight.uniform_(-2, 2)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    return bn


@pytest.mark.parametrize("bias", [True, False])
def test_folded_conv_equals_conv_then_batchnorm(bias: bool) -> None:
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 6, 3, bias=bias).double(), _bn(6)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        ref = bn(conv(x))
        fold_conv_bn(conv, bn)
        torch.testing.assert_close(conv(x), ref, rtol=1e-12, atol=1e-12)  # float64: exact up to rounding


def test_folded_linear_equals_linear_then_batchnorm() -> None:
    torch.manual_seed(1)
    lin, bn = nn.Linear(5, 6).double(), nn.BatchNorm1d(6).double().eval()
    with torch.no_grad():
        bn.weight.uniform_(-2, 2), bn.bias.normal_(), bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2)
        x = torch.randn(7, 5, dtype=torch.float64)
        ref = bn(lin(x))
        factor, bias = fold_bn(bn, lin.bias, torch.float64)
        torch.testing.assert_close(x @ (lin.weight * factor[:, None]).T + bias, ref, rtol=1e-12, atol=1e-12)


def test_fold_refuses_batch_statistics_and_channel_mismatch() -> None:
    with pytest.raises(ValueError, match="running statistics"):
        fold_bn(nn.BatchNorm2d(4, track_running_stats=False), None)
    with pytest.raises(ValueError, match="does not match"):
        fold_conv_bn(nn.Conv2d(3, 6, 1), nn.BatchNorm2d(4).eval())
