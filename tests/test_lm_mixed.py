"""Per-layer mixed precision on a language model: per-window losses, the paired loss difference,
measured and Hessian sensitivities of a Hugging Face Llama, and the ILP at a byte budget."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import bitswitch
import bitswitch.models
from bitswitch.cost import layer_costs
from bitswitch.data.text import eval_windows
from bitswitch.lm import lm_loss, window_losses
from bitswitch.search import SearchProblem, hessian_traces, loss_deltas, random_at_cost, sensitivity, uniform
from bitswitch.search.budget import Budget
from bitswitch.search.evaluate import paired_loss_difference
from bitswitch.search.measured import config_losses

pytestmark = pytest.mark.usefixtures("one_thread")

CONTEXT = 8
BITS = (8, 6, 4, 2)


@pytest.fixture(scope="module")
def tiny_lm() -> tuple[torch.nn.Module, torch.Tensor]:
    """A calibrated weight-only {8,6,4,2} char_llama (2 blocks of width 16) and 300 random character ids."""
    torch.manual_seed(0)
    model = bitswitch.models.build("char_llama", vocab_size=20, dim=16, layers=2, heads=2, hidden=24, context=CONTEXT)
    q = bitswitch.quantize(model, BITS, weight_only=["model.layers.*"])
    ids = torch.randint(0, 20, (300,))
    bitswitch.calibrate(q, [x for x, _ in eval_windows(ids, CONTEXT, 16)])
    return q, ids


def test_window_losses_are_each_windows_summed_cross_entropy_and_pool_to_lm_loss(tiny_lm) -> None:
    q, ids = tiny_lm
    bitswitch.set_precision(q, 4)
    sums, counts = window_losses(q, ids, CONTEXT, batch_size=5)
    assert sums.dtype == torch.float64 and counts.tolist() == [CONTEXT] * 37 + [3]  # 299 targets: 37 full windows + a tail of 3
    q.eval()
    with torch.no_grad():  # window by window, independently of how window_losses batches them
        direct = [float(F.cross_entropy(q(ids[None, s:min(s + CONTEXT, 299)]).logits[0], ids[s + 1:s + CONTEXT + 1], reduction="sum"))
                  for s in range(0, 298, CONTEXT)]
    assert sums.tolist() == pytest.approx(direct, rel=1e-5)
    assert lm_loss(q, ids, CONTEXT, batch_size=5) == float(sums.sum() / counts.sum())
    assert lm_loss(q, ids, CONTEXT, batch_size=64) == pytest.approx(sum(direct) / 299, rel=1e-6)


def test_paired_loss_difference_is_the_pooled_mean_difference_with_the_spread_of_unit_differences() -> None:
    a = torch.tensor([1.0, 2.0, 4.0, 3.0], dtype=torch.float64)
    b = torch.tensor([0.5, 2.5, 3.0, 3.0], dtype=torch.float64)
    d, se = paired_loss_difference(a, b)  # plain units: mean of (0.5, -0.5, 1, 0) and sd / sqrt(4)
    assert d == 0.25 and se == pytest.approx(torch.tensor([0.5, -0.5, 1.0, 0.0], dtype=torch.float64).std().item() / 2, rel=1e-12)
    counts = torch.tensor([8, 8, 8, 2])
    d, se = paired_loss_difference(a, b, counts)  # summed losses: per target, the difference of the pooled means
    assert d == pytest.approx(float(a.sum() / counts.sum() - b.sum() / counts.sum()), rel=1e-12)
    assert se == pytest.approx((4 * torch.tensor([0.5, -0.5, 1.0, 0.0], dtype=torch.float64).var().item()) ** 0.5 / 26, rel=1e-12)
    assert paired_loss_difference(a, a.clone(), counts) == (0.0, 0.0)
    with pytest.raises(ValueError, match="equal per-unit results"):
        paired_loss_difference(a, b[:3])
    with pytest.raises(ValueError, match="counts of the same length"):
        paired_loss_difference(a, b, counts[:2])


def test_measured_losses_of_a_language_model_are_per_character_as_lm_loss(tiny_lm) -> None:
    q, ids = tiny_lm
    batches = list(eval_windows(ids, CONTEXT, 16))
    config = {n: (2 if "mlp" in n else 8) for n in bitswitch.quantized_layers(q)}
    measured = config_losses(q, [config], batches)[0]  # the default loss reads HF outputs and counts every token
    bitswitch.set_precision(q, config)
    assert measured == pytest.approx(lm_loss(q, ids, CONTEXT), rel=1e-6)
    deltas = loss_deltas(q, batches, BITS, reference=4)
    assert set(deltas) == set(bitswitch.quantized_layers(q))
    for d in deltas.values():
        assert d[(4, 4)] == 0.0 and d[(2, 2)] >= 0.0 >= d[(6, 6)] >= d[(8, 8)]  # monotone around the reference
    assert max(d[(2, 2)] for d in deltas.values()) > 0  # 2-bit weights cost something somewhere


def test_hessian_traces_and_the_ilp_at_a_byte_budget_on_a_llama(tiny_lm) -> None:
    q, ids = tiny_lm
    batches = list(eval_windows(ids, CONTEXT, 16))[:2]
    traces = hessian_traces(q, batches, max_iter=3, min_iter=2)  # double backward through HF Llama attention, RMSNorm, SwiGLU
    names = list(bitswitch.quantized_layers(q))
    assert list(traces) == names and len(names) == 14
    assert all(torch.isfinite(torch.tensor(t.trace)) and t.iterations >= 2 for t in traces.values())
    costs = layer_costs(q, torch.zeros(1, CONTEXT, dtype=torch.long))
    quantized = sum(c.params for c in costs if c.quantized)
    assert quantized == 2 * (4 * 16 * 16 + 3 * 16 * 24)  # q/k/v/o and gate/up/down; embeddings and head stay float
    problem = SearchProblem(costs, sensitivity(traces), BITS, objective="loss", loss_delta=loss_deltas(q, batches, BITS, reference=4))
    budget = Budget("bytes", quantized * 3 / 8)  # the bytes of uniform 3-bit weights
    best = problem.solve(budget)
    assert best.summary["quantized_bytes"] <= quantized * 3 / 8
    assert best.objective >= uniform(problem, 2).objective
    for r in random_at_cost(problem, budget, 5):
        assert r.objective <= best.objective + 1e-12 and problem.fits(r.config, budget)


def test_cli_hessian_and_search_run_on_a_language_model_checkpoint(tmp_path, capsys) -> None:
    """`bitswitch hessian` reads windows of the checkpoint's text; `bitswitch search` counts costs on token
    ids and measures loss increases on text windows; a text with another vocabulary is refused."""
    import json

    from bitswitch.cli import main
    from bitswitch.data.text import load_shakespeare, random_windows
    from bitswitch.lm import lm_metadata

    plays = tmp_path / "text" / "plays"
    plays.mkdir(parents=True)
    (plays / "a.txt").write_text("ROMEO: to be or not to be, that is the question.\n" * 40)
    text = load_shakespeare(tmp_path / "text")
    torch.manual_seed(0)
    model = bitswitch.models.build("char_llama", vocab_size=len(text.vocab), dim=16, layers=1, heads=2, hidden=24, context=CONTEXT)
    q = bitswitch.quantize(model, BITS, weight_only=["model.layers.*"])
    bitswitch.calibrate(q, [random_windows(text.train, 8, CONTEXT, torch.Generator().manual_seed(0))])
    ckpt = tmp_path / "lm.safetensors"
    bitswitch.save(q, ckpt, extra=lm_metadata(text.vocab, CONTEXT))
    data = str(tmp_path / "text")
    assert main(["hessian", str(ckpt), "--data", data, "--samples", "16", "--batch-size", "8", "--max-iter", "2", "--threads", "1"]) == 0
    traces = json.loads((tmp_path / "lm.hessian.json").read_text())
    assert len(traces["layers"]) == 7 and traces["input_shape"] == [CONTEXT] and traces["samples"] == 16
    out = tmp_path / "subnet.json"
    assert main(["search", str(ckpt), "--budget", "wavg-bits=3", "--objective", "loss", "--samples", "16", "--data", data,
                 "--out", str(out)]) == 0
    layers = json.loads(out.read_text())["layers"]
    assert len(layers) == 7
    per_layer = [c.params for c in layer_costs(q, torch.zeros(1, CONTEXT, dtype=torch.long)) if c.quantized]
    assert sum(n * layers[name][0] for n, name in zip(per_layer, bitswitch.quantized_layers(q))) <= 3 * sum(per_layer)
    (plays / "a.txt").write_text("other text\n" * 50)
    capsys.readouterr()
    assert main(["hessian", str(ckpt), "--data", data, "--samples", "8"]) == 2
    assert "has another vocabulary (8 characters) than the checkpoint's (21)" in capsys.readouterr().err
