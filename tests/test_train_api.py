"""The public training API on a user's own model and loop: ``alrs_param_groups`` + ``joint_step``
(no TrainConfig), and Hugging Face ``Trainer`` through ``BitSwitchTrainer``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bitswitch
from bitswitch.train import alrs_param_groups, joint_step

BITS = (8, 4, 2)


def separable(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    return x, (x @ torch.randn(16, 4, generator=g)).argmax(1)


def user_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


def quantized() -> nn.Module:
    q = bitswitch.quantize(user_model(), BITS)  # first and last layers kept in FP32
    x, y = separable()
    bitswitch.calibrate(q, [(x, y)])
    return q


def ce(out, batch):
    return F.cross_entropy(out, batch[1])


def test_plain_loop_learns_every_bit_width():
    q = quantized()
    x, y = separable()
    opt = torch.optim.Adam(alrs_param_groups(q, 3e-3))
    history = [joint_step(q, (x[i : i + 64], y[i : i + 64]), ce, opt) for _ in range(5) for i in range(0, 256, 64)]
    assert all(list(h) == list(BITS) for h in history)  # every bit-width, highest first
    for b in BITS:  # mean loss over the first and the last epoch
        first, last = (sum(h[b] for h in epoch) / 4 for epoch in (history[:4], history[-4:]))
        assert last < 0.6 * first, (b, first, last)


@pytest.mark.parametrize("scope, mults", [("all", None), ("shared", None), ("all", (0.25, 0.5, 1.0))])
def test_alrs_rates_during_each_bit_step_and_restored_after(monkeypatch, scope, mults):
    """Adam sees the shared weight scales at eta_b * lr in the step of bit b (eta = 1, 1e-2, 1e-3 for
    8, 4, 2 bits), bit b's own scales at eta_b * lr too (scope "all") or at lr ("shared"), the
    weights at lr, every rate times bit b's ``lr_mults`` entry; the user's rates are back afterwards."""
    q = quantized()
    groups = alrs_param_groups(q, 1e-3, weight_decay=0.1, scale_weight_decay=0.01, alrs_scope=scope)
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(id(p) for p in q.parameters())
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"weights", "no_decay", "scale_shared", "scale_8", "scale_4", "scale_2"}
    assert by_name["weights"]["weight_decay"] == 0.1 and by_name["no_decay"]["weight_decay"] == 0.0
    assert all(g["weight_decay"] == 0.01 for n, g in by_name.items() if n.startswith("scale_"))
    opt = torch.optim.Adam(groups)
    seen: list[tuple[int, dict[str, float]]] = []
    real = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        bits = {w for w, _ in bitswitch.get_precision(q).values()}
        seen.append((bits.pop(), {g["name"]: g["lr"] for g in self.param_groups}))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    eta = {8: 1.0, 4: 1e-2, 2: 1e-3}
    joint_step(q, separable(), ce, opt, lr_mults=mults)
    assert [b for b, _ in seen] == list(BITS)
    mult = dict(zip(BITS, mults or (1.0,) * len(BITS)))
    for b, lrs in seen:
        assert lrs["weights"] == lrs["no_decay"] == 1e-3 * mult[b]
        assert lrs["scale_shared"] == pytest.approx(1e-3 * eta[b] * mult[b], rel=1e-12)
        assert lrs[f"scale_{b}"] == pytest.approx(1e-3 * (eta[b] if scope == "all" else 1.0) * mult[b], rel=1e-12)
    assert {g["name"]: g["lr"] for g in opt.param_groups}["scale_shared"] == 1e-3
    assert all(g["lr"] == 1e-3 for g in alrs_param_groups(q, 1e-3, alrs=False))


def test_distillation_replaces_the_task_loss_of_taught_bit_widths():
    """With distill_weight=1 a taught bit-width's loss is the KL term alone: a constant added to the
    task loss shows in the top bit-width's loss only."""
    q = quantized()
    opt = torch.optim.SGD(alrs_param_groups(q, 1e-3))
    losses = joint_step(q, separable(), lambda out, b: ce(out, b) + 100.0, opt, distill=True, distill_weight=1.0)
    assert losses[8] > 100 and losses[4] < 10 and losses[2] < 10
    plain = joint_step(q, separable(), lambda out, b: ce(out, b) + 100.0, opt, distill="inplace", distill_weight=0.0)
    assert all(v > 100 for v in plain.values())


def test_summed_without_step_is_the_summed_step():
    """``step=False`` (Hugging Face, gradient accumulation) leaves exactly the gradient the summed step uses."""
    a, b = quantized(), quantized()
    opt_a, opt_b = (torch.optim.Adam(alrs_param_groups(m, 1e-3)) for m in (a, b))
    batch = separable()
    joint_step(a, batch, ce, opt_a, summed=True)
    opt_b.zero_grad()
    joint_step(b, batch, ce, opt_b, summed=True, step=False)
    opt_b.step()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), n


@pytest.mark.parametrize("make", [lambda g: torch.optim.Adam(g), lambda g: torch.optim.SGD(g, momentum=0.9)])
def test_per_bit_state_equals_one_optimizer_per_bit_width(make):
    """``per_bit_state=True``: each bit-width steps with its own Adam moments / SGD momentum, exactly as
    if every bit-width had an optimizer of its own; the shared state (the default) is another model."""
    batches = [(x[i : i + 64], y[i : i + 64]) for x, y in [separable()] for i in range(0, 192, 64)]
    own, ref, shared = quantized(), quantized(), quantized()
    opt_own, opt_shared = (make(alrs_param_groups(m, 1e-2)) for m in (own, shared))
    opt_ref = {b: make(alrs_param_groups(ref, 1e-2)) for b in BITS}
    for batch in batches:
        joint_step(own, batch, ce, opt_own, per_bit_state=True)
        joint_step(shared, batch, ce, opt_shared)
        for b in BITS:
            joint_step(ref, batch, ce, opt_ref[b], bits=[b])
    for (n, p_own), p_ref in zip(own.named_parameters(), ref.parameters()):
        assert torch.equal(p_own, p_ref), n
    assert not all(torch.equal(a, b) for a, b in zip(own.parameters(), shared.parameters()))
    # between steps the last bit-width's entries sit under the plain keys, the others' as "<key>@<b>"
    key = "exp_avg" if isinstance(opt_own, torch.optim.Adam) else "momentum_buffer"
    weight_state = opt_own.state[own[2].weight]
    assert weight_state["bitswitch_bits"] == 2 and torch.equal(weight_state[key], opt_ref[2].state[ref[2].weight][key])
    for b in BITS[:-1]:
        assert torch.equal(weight_state[f"{key}@{b}"], opt_ref[b].state[ref[2].weight][key])
    # state_dict() carries every bit-width's state: a fresh optimizer loaded from it continues exactly
    reloaded = make(alrs_param_groups(own, 1e-2))
    reloaded.load_state_dict(opt_own.state_dict())
    joint_step(own, batches[0], ce, reloaded, per_bit_state=True)
    for b in BITS:
        joint_step(ref, batches[0], ce, opt_ref[b], bits=[b])
    for (n, p_own), p_ref in zip(own.named_parameters(), ref.parameters()):
        assert torch.equal(p_own, p_ref), n


def test_bad_arguments_are_named():
    q = quantized()
    opt = torch.optim.Adam(alrs_param_groups(q, 1e-3))
    with pytest.raises(ValueError, match="highest first"):
        joint_step(q, separable(), ce, opt, bits=[2, 8])
    with pytest.raises(ValueError, match="step=False"):
        joint_step(q, separable(), ce, opt, step=False)
    with pytest.raises(ValueError, match="loss_fn"):
        joint_step(q, separable(), None, opt)
    with pytest.raises(ValueError, match="lr must be > 0"):
        alrs_param_groups(q, 0.0)
    with pytest.raises(ValueError, match="alrs_scope must be 'all' or 'shared'"):
        alrs_param_groups(q, 1e-3, alrs_scope="activations")
    with pytest.raises(ValueError, match="distill must be one of"):
        joint_step(q, separable(), ce, opt, distill="teacher")
    with pytest.raises(ValueError, match="one multiplier > 0 per bit-width"):
        joint_step(q, separable(), ce, opt, lr_mults=(1.0, 0.5))
    with pytest.raises(ValueError, match="one multiplier > 0 per bit-width"):
        joint_step(q, separable(), ce, opt, lr_mults=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="summed=True takes one step"):
        joint_step(q, separable(), ce, opt, lr_mults=(1.0, 0.5, 1.0), summed=True)
    with pytest.raises(ValueError, match="per_bit_state .*summed=True takes one step"):
        joint_step(q, separable(), ce, opt, per_bit_state=True, summed=True)


def tiny_llama():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=False)
    torch.manual_seed(0)
    return transformers, transformers.LlamaForCausalLM(cfg)


class TokenData(torch.utils.data.Dataset):
    """16 sequences of a repeating pattern: learnable in a few steps."""

    def __init__(self):
        base = torch.arange(16) % 8 + 3
        self.ids = torch.stack([base.roll(i) for i in range(16)])

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


@pytest.mark.parametrize("distill, scope", [(False, "all"), (True, "shared")])
def test_hf_trainer_trains_every_bit_width_of_a_tiny_llama(tmp_path, distill, scope):
    transformers, model = tiny_llama()
    from bitswitch.integrations.hf import BitSwitchTrainer

    q = bitswitch.quantize(model, BITS)
    data = TokenData()
    bitswitch.calibrate(q, [data.ids[:8]])
    before = {n: p.detach().clone() for n, p in q.named_parameters()}
    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=8, learning_rate=1e-2,
                                          logging_steps=4, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
    trainer = BitSwitchTrainer(model=q, args=args, train_dataset=data, distill=distill, alrs_scope=scope)
    trainer.train()
    by_name = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert {"weights", "no_decay", "scale_shared", "scale_8", "scale_4", "scale_2"} <= set(by_name)
    assert by_name["scale_2"]["lr_factor"] == pytest.approx(1e-3 if scope == "all" else 1.0)
    logs = [h for h in trainer.state.log_history if "loss_w8" in h]
    assert len(logs) == 2
    for b in BITS:
        assert all(math.isfinite(h[f"loss_w{b}"]) for h in logs)
        assert logs[-1][f"loss_w{b}"] < 0.8 * logs[0][f"loss_w{b}"], (b, logs)
    assert {w for w, _ in bitswitch.get_precision(q).values()} == {8}  # back at the top bit-width
    changed = [n for n, p in q.named_parameters() if not torch.equal(p, before[n])]
    assert any(".scale" in n for n in changed) and any(n.endswith("weight") for n in changed)
    assert not any(tmp_path.iterdir())  # nothing saved
