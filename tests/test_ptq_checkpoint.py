"""PTQ results reopen: integer codes at the chosen bits (no FP32 copy), BN folding and added biases
redone by ``load`` from the metadata, and edited files refused naming the key."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import bitswitch
from bitswitch.export import container
from bitswitch.export.checkpoint import read_checkpoint
from bitswitch.export.schema import CheckpointError
from bitswitch.ptq import PTQConfig, run_ptq, start_session


class Net(nn.Module):
    """conv (no bias) -> BN -> ReLU -> maxpool, a second conv-BN, a classifier: folded BNs add biases."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def _net() -> nn.Module:
    torch.manual_seed(0)
    m = Net().eval()
    for bn in (m.bn1, m.bn2):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return m


@pytest.fixture(scope="module")
def ptq_file(tmp_path_factory) -> tuple[Path, torch.Tensor, torch.Tensor]:
    x = torch.randn(16, 3, 16, 16)
    s = start_session(_net(), [x], PTQConfig([(8, 16), (8, 8), (4, 8)], progress=False, bias_correct=True, chunk_size=16))
    q = s.apply(s.search(0.4).group_config)
    with torch.no_grad():
        ref = q(x)
    path = bitswitch.save(q, tmp_path_factory.mktemp("ptq") / "m.safetensors")
    return path, x, ref


def test_ptq_file_holds_codes_and_reloads_bit_identically(ptq_file) -> None:
    path, x, ref = ptq_file
    tensors, meta = read_checkpoint(path)
    assert meta["ptq"] == {"folded_bn": [["conv1", "bn1"], ["conv2", "bn2"]], "added_bias": ["conv1", "conv2", "fc"]}
    assert {tensors[f"{n}.weight_int"].dtype for n in ("conv1", "conv2", "fc")} == {torch.int8}
    assert not any(k.endswith(".weight") and not k.startswith("bn") for k in tensors)  # no FP32 copy of a quantized weight
    weights = sum(tensors[f"{n}.weight_int"].numel() for n in ("conv1", "conv2", "fc"))
    assert os.path.getsize(path) < 2 * weights + 4096  # ~ the int8 codes; FP32 weights would be 4x them
    model = bitswitch.load(path, model=_net())  # a custom architecture: the caller's own float model
    with torch.no_grad():
        assert torch.equal(model(x), ref)


def test_run_ptq_returns_the_model_as_load_rebuilds_it(tmp_path: Path) -> None:
    """The session runs channels-last; the returned model is contiguous, as its reloaded file is
    (with channels-last weights, oneDNN on some CPUs sums the convolutions in another order)."""
    x = torch.randn(16, 3, 16, 16)
    q, _ = run_ptq(_net(), [x], PTQConfig([(8, 16), (8, 8), (4, 8)], progress=False, chunk_size=16), budget=0.4)
    assert all(p.is_contiguous() for p in q.parameters())
    reloaded = bitswitch.load(bitswitch.save(q, tmp_path / "m.safetensors"), model=_net())
    with torch.no_grad():
        assert torch.equal(reloaded(x), q(x))


@pytest.mark.parametrize("edit, match", [
    (lambda p: p["folded_bn"].append(["conv1", "fc"]), r"metadata ptq.folded_bn: 'fc' is a Linear"),
    (lambda p: p["added_bias"].append("nope"), r"metadata ptq.added_bias: the model has no module 'nope'"),
    (lambda p: p["added_bias"].remove("fc"), r"tensor|fc.bias"),
    (lambda p: p.update(extra=1), r"metadata ptq: must be"),
])
def test_edited_ptq_metadata_is_refused(ptq_file, tmp_path: Path, edit, match) -> None:
    path, _, _ = ptq_file
    tensors, meta = container.read(path, CheckpointError)
    meta = dict(meta)
    doc = json.loads(meta["ptq"])
    edit(doc)
    meta["ptq"] = json.dumps(doc)
    bad = container.write(tmp_path / "bad.safetensors", tensors, meta)  # re-signed: only the checks can refuse it
    with pytest.raises(CheckpointError, match=match):
        bitswitch.load(bad, model=_net())


def test_codes_off_the_chosen_grid_are_refused(ptq_file, tmp_path: Path) -> None:
    path, _, _ = ptq_file
    tensors, meta = container.read(path, CheckpointError)
    w4 = [n for n, (w, _) in json.loads(meta["precision"]).items() if w == 4][0]
    tensors[f"{w4}.weight_int"].view(-1)[0] = 9  # fits int8 but not the 4-bit grid
    bad = container.write(tmp_path / "bad.safetensors", tensors, dict(meta))
    with pytest.raises(CheckpointError, match=rf"tensor {w4}.weight_int: codes outside the 4-bit range"):
        bitswitch.load(bad, model=_net())
