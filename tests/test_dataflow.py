"""Module data flow recorded by one forward pass (bitswitch.nn.dataflow)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bitswitch.nn.dataflow import record_dataflow, run_model


class BnFirst(nn.Module):
    """BatchNorm registered before the conv that feeds it; ``shared`` is called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(4)
        self.shared = nn.Conv2d(4, 4, 3, padding=1)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x))) * scale
        x = self.shared(self.shared(x))
        return self.head(x.mean((2, 3)))


def test_producers_follow_the_data_not_the_registration_order() -> None:
    flow = record_dataflow(BnFirst(), torch.randn(2, 3, 8, 8))
    assert flow.order == ["conv", "bn", "shared", "head"]
    assert flow.producer == {"conv": None, "bn": "conv", "shared": None, "head": None}  # relu/mul/mean are functional
    assert flow.calls == {"conv": 1, "bn": 1, "shared": 2, "head": 1}
    assert flow.consumers("conv") == ["bn"]


def test_containers_come_before_children_and_the_innermost_module_produces() -> None:
    model = nn.Sequential(nn.Sequential(nn.Linear(3, 4), nn.Identity()), nn.Linear(4, 2))
    flow = record_dataflow(model, torch.randn(2, 3))
    assert flow.order == ["0", "0.0", "0.1", "1"]
    assert flow.producer["1"] == "0.0"  # Identity passes the very same tensor on
    assert flow.input_id["0"] == flow.input_id["0.0"]


def test_inputs_as_tuple_or_keywords_and_the_mode_is_restored() -> None:
    model = BnFirst().train()
    x = torch.randn(2, 3, 8, 8)
    assert record_dataflow(model, (x, 2.0)).calls["shared"] == 2
    assert record_dataflow(model, {"x": x, "scale": 2.0}).order[0] == "conv"
    assert model.training and model.bn.num_batches_tracked == 0  # ran in eval mode, no statistics touched
    with pytest.raises(ValueError, match="example inputs must be a tensor"):
        run_model(model, 3)


def test_upstream_follows_functional_ops_and_source_walks_through_modules() -> None:
    class PreAct(nn.Module):  # pre-activation residual block: the BatchNorm reads a residual sum
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, padding=1)
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.act = nn.ReLU()
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            x = self.stem(x)
            x = x + self.conv(self.act(x))
            return self.bn(x).flatten(1)

    flow = record_dataflow(PreAct(), torch.randn(1, 3, 4, 4))
    assert flow.producer["bn"] is None and flow.upstream["bn"] == "stem"  # x + conv(...): the first input's origin
    assert flow.upstream["conv"] == "act" and flow.source("conv", lambda n: n.startswith(("stem", "conv"))) == "stem"
    assert flow.source("stem", lambda n: True) is None  # model input


def test_source_goes_through_a_block_whose_output_is_a_residual_sum() -> None:
    # the pre-activation ResNet's case: the next block's BatchNorm reads a block's ``out + identity``;
    # its source is the conv inside the block, not whatever fed the block (the FP32 stem)
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(torch.relu(x)) + x

    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Block(), nn.BatchNorm2d(4))
    flow = record_dataflow(model, torch.randn(1, 3, 4, 4))
    assert flow.upstream["2"] == "1" and flow.inner == {"1": "1.conv"}
    assert flow.source("2", lambda n: isinstance(model.get_submodule(n), nn.Conv2d)) == "1.conv"
