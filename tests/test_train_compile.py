"""Whole-model ``torch.compile`` of a quantized model: forward and backward equal eager at every bit-width.

Every quantized layer type (QuantConv2d, QuantLinear) is in the model, with switchable BatchNorm.
The test compiles with ``backend="aot_eager"`` and ``fullgraph=True``: Dynamo must capture each
bit-width's model as one graph (no graph break, no data-dependent Python in a quantizer) and
AOTAutograd must derive its backward; those are the steps that fail on unsupported code, and with
no code generation the results are bit-identical to eager. Inductor's generated kernels (used by
``compile: true`` in a run) only reorder float sums: benchmarks/train_compile.py checks them
against eager and measures the speed.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bitswitch
from bitswitch.nn.layers import QuantConv2d, QuantLinear
from bitswitch.train import TrainConfig, joint_step, train
from bitswitch.train.optim import alrs_param_groups

BITS = (8, 4, 2)


def model() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.BatchNorm2d(8),
                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    q = bitswitch.quantize(m, BITS, full_precision=[])
    bitswitch.calibrate(q, [torch.randn(8, 3, 8, 8)])
    return q


def test_compiled_joint_step_equals_eager_at_every_bit_width():
    """One joint step (per-bit forward, backward and Adam step at 8, 4 and 2 bits, distilled from the
    top one) through the compiled model: the same losses and, bit for bit, the same weights, scales
    and BatchNorm statistics afterwards, so every gradient was the same. ``joint_step`` switches
    the precision of the model inside the ``torch.compile`` wrapper."""
    torch._dynamo.reset()
    eager, other = model(), model()
    assert {type(m) for m in bitswitch.quantized_layers(eager).values()} == {QuantConv2d, QuantLinear}
    compiled = torch.compile(other, backend="aot_eager", fullgraph=True)
    batch = (torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,)))
    loss_fn = lambda out, b: nn.functional.cross_entropy(out, b[1])  # noqa: E731
    losses = [joint_step(m, batch, loss_fn, torch.optim.Adam(alrs_param_groups(ref, 1e-2)), distill=True)
              for m, ref in ((eager, eager), (compiled, other))]
    assert list(losses[0]) == list(BITS) and losses[0] == losses[1]
    changed = 0
    for (n, a), c, m in zip(eager.state_dict().items(), other.state_dict().values(), model().state_dict().values()):
        assert torch.equal(a, c), n
        changed += not torch.equal(a, m)
    assert changed > 20  # weights, scales of every bit-width, BatchNorm statistics of every bit-width


def test_compile_option_of_a_run_trains_the_same_model(tmp_path, monkeypatch):
    """``compile: true`` runs the steps through ``torch.compile`` (here its aot_eager backend, so
    the run must equal the eager one bit for bit); checkpoints and evaluation use the same model."""
    calls = []
    real = torch.compile

    def spy(model, **kwargs):
        calls.append(type(model).__name__)
        return real(model, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", spy)
    torch._dynamo.reset()
    common = dict(dataset="digits", model="mlp", bits=[8, 2], epochs=1, train_subset=300, batch_size=128, progress=False, num_threads=1)
    runs = [train(TrainConfig(out_dir=str(tmp_path / str(c)), compile=c, **common)) for c in (False, True)]
    assert len(calls) == 1  # the model, once
    assert runs[0].history[0]["train_loss"] == runs[1].history[0]["train_loss"]
    for (n, a), b in zip(runs[0].model.state_dict().items(), runs[1].model.state_dict().values()):
        assert torch.equal(a, b), n
    with pytest.raises(ValueError, match="compile"):
        TrainConfig(compile=True, compile_kernels=True)


def test_each_compiled_run_compiles_its_own_graphs(tmp_path, monkeypatch):
    """Runs in one process (a benchmark's stages) each get their graphs: dynamo's recompilation
    limit must not carry over the graphs of earlier runs, or a later run silently trains eagerly."""
    graphs = []
    real = torch.compile

    def counting_backend(gm, example_inputs):
        graphs.append(len(gm.graph.nodes))
        return gm.forward

    monkeypatch.setattr(torch, "compile", lambda model, **kw: real(model, backend=counting_backend))
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 2)
    common = dict(dataset="digits", model="mlp", bits=[8, 2], epochs=1, train_subset=300, batch_size=128, progress=False, num_threads=1,
                  compile=True)
    for i in range(2):
        before = len(graphs)
        train(TrainConfig(out_dir=str(tmp_path / str(i)), **common))
        assert len(graphs) - before >= 2, f"run {i} compiled {len(graphs) - before} graphs for 2 bit-widths"
