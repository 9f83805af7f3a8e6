"""Generation from the one integer file (issue 18 item 4): the reloaded checkpoint generates exactly
what the trained model does at every bit-width, switching without reloading; sampling is seeded;
the CLI prints a sample per precision and refuses bad input with one line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import bitswitch
from bitswitch.cli import main
from bitswitch.data.text import TextSplits, load_shakespeare, random_windows
from bitswitch.lm import NotALanguageModel, generate, generate_ids, lm_metadata, open_lm
from bitswitch.models import build
from bitswitch.nn.convert import add_bit_width
from bitswitch.nn.precision_file import write_precision_file
from bitswitch.train import alrs_param_groups, joint_step

CONTEXT = 16
BITS = (8, 4, 2)
TOKENS = 40  # more than CONTEXT: the window slides


@pytest.fixture(scope="module")
def text(shared_data: Path) -> TextSplits:
    return load_shakespeare(shared_data / "shakespeare")


def tiny_llama(vocab_size: int) -> torch.nn.Module:
    return build("char_llama", vocab_size=vocab_size, dim=32, layers=1, heads=2, hidden=64, context=CONTEXT)


def train_tiny(text: TextSplits, weight_only: bool) -> torch.nn.Module:
    """A few dozen joint steps: enough for greedy text that differs between bit-widths."""
    torch.manual_seed(0)
    q = bitswitch.quantize(tiny_llama(len(text.vocab)), BITS, weight_only=["model.layers.*"] if weight_only else ())
    g = torch.Generator().manual_seed(0)
    bitswitch.calibrate(q, [random_windows(text.train, 8, CONTEXT, g)[0] for _ in range(2)])
    opt = torch.optim.Adam(alrs_param_groups(q, 1e-2))
    loss_fn = lambda out, b: F.cross_entropy(out.logits.flatten(0, 1), b[1].flatten())  # noqa: E731
    for _ in range(60):
        joint_step(q, random_windows(text.train, 32, CONTEXT, g), loss_fn, opt)
    return q.eval()


@pytest.fixture(scope="module", params=["w+a", "weight-only"])
def trained(request, text: TextSplits, tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    model = train_tiny(text, request.param == "weight-only")
    path = bitswitch.save(model, tmp_path_factory.mktemp("lm") / "lm.safetensors", extra=lm_metadata(text.vocab, CONTEXT))
    return model, path


def test_the_reloaded_file_generates_token_for_token_what_the_trained_model_does_at_every_bit_width(trained, text) -> None:
    model, path = trained
    loaded, info = open_lm(path)  # one load; every precision below is a switch
    assert info.vocab == text.vocab and info.context == CONTEXT
    prompt = info.vocab.encode("ROMEO:")
    outputs = {}
    for b in BITS:
        want = generate_ids(model, prompt, TOKENS, context=CONTEXT, precision=b, greedy=True)
        got = generate_ids(loaded, prompt, TOKENS, context=CONTEXT, precision=b, greedy=True)
        assert torch.equal(got, want), f"{b} bits: {info.vocab.decode(got)!r} != {info.vocab.decode(want)!r}"
        outputs[b] = info.vocab.decode(got)
    assert max(len(set(o[6:])) for o in outputs.values()) > 2, outputs  # not only a repetition of one or two characters
    assert len(set(outputs.values())) > 1, outputs  # the precision really changed the computation


def test_switching_precision_between_calls_restores_the_model_and_repeats_exactly(trained) -> None:
    _, path = trained
    model, info = open_lm(path)
    bitswitch.set_precision(model, 4)  # neither of the two below
    before = bitswitch.get_precision(model)
    runs = [generate(model, info.vocab, "KING:", 20, context=CONTEXT, precision=b, greedy=True) for b in (8, 2, 8, 2)]
    assert runs[0] == runs[2] and runs[1] == runs[3]
    assert bitswitch.get_precision(model) == before
    bitswitch.set_precision(model, 2)  # precision=None: the model as it is
    assert generate(model, info.vocab, "KING:", 20, context=CONTEXT, greedy=True) == runs[1]


def test_seeded_sampling_is_reproducible_and_the_same_from_the_file(trained) -> None:
    model, path = trained
    loaded, info = open_lm(path)
    kw = dict(context=CONTEXT, precision=4, temperature=0.9, top_k=20)
    a = generate(loaded, info.vocab, "ROMEO:", TOKENS, seed=1, **kw)
    assert generate(loaded, info.vocab, "ROMEO:", TOKENS, seed=1, **kw) == a
    assert generate(model, info.vocab, "ROMEO:", TOKENS, seed=1, **kw) == a
    assert generate(loaded, info.vocab, "ROMEO:", TOKENS, seed=2, **kw) != a


def test_each_character_is_predicted_from_the_last_context_characters(trained) -> None:
    model, path = trained
    info = bitswitch.lm.read_lm_info(path)
    ids = generate_ids(model, info.vocab.encode("ROMEO:"), TOKENS, context=CONTEXT, precision=4, greedy=True)
    bitswitch.set_precision(model, 4)
    with torch.no_grad():
        for i in range(6, ids.numel()):
            assert int(model(ids[None, max(0, i - CONTEXT): i]).logits[0, -1].argmax()) == int(ids[i]), i


def test_top_k_one_is_greedy(trained) -> None:
    model, path = trained
    info = bitswitch.lm.read_lm_info(path)
    assert (generate(model, info.vocab, "ROMEO:", 20, context=CONTEXT, precision=4, top_k=1, seed=3)
            == generate(model, info.vocab, "ROMEO:", 20, context=CONTEXT, precision=4, greedy=True))


@pytest.mark.parametrize("call, match", [
    (dict(tokens=0), "tokens must be an integer >= 1, got 0"),
    (dict(tokens=11, window=False), "a prompt of 6 characters plus 11 tokens exceeds the model's context of 16: ask for at most 10"),
    (dict(temperature=0.0), "temperature must be a finite number > 0"),
    (dict(top_k=0), "top_k must be >= 1"),
    (dict(prompt=""), "the prompt must hold at least one character"),
    (dict(prompt="ROMÉO"), r"characters outside the model's vocabulary of \d+: 'É'"),
    (dict(precision=5), "weight bit-width 5 is not one this model was built for"),
])
def test_bad_generation_arguments_are_refused(trained, call: dict, match: str) -> None:
    model, path = trained
    info = bitswitch.lm.read_lm_info(path)
    kw = dict(prompt="ROMEO:", tokens=10, context=CONTEXT, precision=8) | call
    with pytest.raises(ValueError, match=match):
        generate(model, info.vocab, kw.pop("prompt"), kw.pop("tokens"), **kw)


def test_an_untrained_bit_width_is_a_slice_of_the_same_codes_with_a_rescaled_activation_range(trained) -> None:
    _, path = trained
    model, _ = open_lm(path)
    layer = model.model.layers[0].mlp.down_proj
    with pytest.raises(ValueError, match="not one this model was built for"):
        bitswitch.set_precision(model, 6)
    with pytest.raises(ValueError, match="above the storage precision h=8"):
        add_bit_width(model, 9)
    add_bit_width(model, 6)
    bitswitch.set_precision(model, 6)
    codes, step = layer.weight_qparams(6)
    assert -32 <= int(codes.min()) and int(codes.max()) <= 31  # the signed 6-bit grid
    torch.testing.assert_close(layer.effective_weight(), codes.float() * step[:, None], rtol=0, atol=0)
    if not layer.weight_only:  # the 8-bit range on the 6-bit grid: signed 127 steps -> 31 steps
        hi = 127 / 31 if layer.act_quant.signed else 255 / 63
        scales = {b: float(s.detach()) for b, s in layer.act_quant.scales.items()}
        assert scales["6"] == pytest.approx(scales["8"] * hi, rel=1e-6)


# --- the command line -------------------------------------------------------------------------------------


def test_cli_prints_one_sample_per_bit_width_from_one_load_with_the_window_noted_once(trained, capsys) -> None:
    model, path = trained
    info = bitswitch.lm.read_lm_info(path)
    assert main(["generate", str(path), "--bits", "8,4,2", "--prompt", "ROMEO:", "--tokens", str(TOKENS), "--seed", "5"]) == 0
    out, err = capsys.readouterr()
    assert err.count("sliding window") == 1
    weight_only = model.model.layers[0].mlp.down_proj.weight_only
    expected = "".join(f"=== W{b}{' (weight-only)' if weight_only else f'A{b}'} ===\n"
                       + generate(model, info.vocab, "ROMEO:", TOKENS, context=CONTEXT, precision=b, seed=5) + "\n" for b in BITS)
    assert out == expected


def test_cli_per_layer_config_matches_the_python_call(trained, tmp_path, capsys) -> None:
    model, path = trained
    info = bitswitch.lm.read_lm_info(path)
    layers = bitswitch.quantized_layers(model)
    spec = {n: (8 if "self_attn" in n else 2, None if m.weight_only else (8 if "self_attn" in n else 2)) for n, m in layers.items()}
    config = write_precision_file(tmp_path / "subnet.json", spec)
    assert main(["generate", str(path), "--config", str(config), "--prompt", "ROMEO:", "--tokens", "12", "--greedy"]) == 0
    out = capsys.readouterr().out
    assert out == "=== mixed (subnet.json) ===\n" + generate(model, info.vocab, "ROMEO:", 12, context=CONTEXT, precision=spec, greedy=True) + "\n"


def test_cli_untrained_bit_width_needs_the_flag(trained, tmp_path, capsys) -> None:
    model, path = trained
    assert main(["generate", str(path), "--bits", "6", "--tokens", "5", "--untrained-ok"]) == 0
    assert ", not trained ===" in capsys.readouterr().out
    spec = {n: (6, None if m.weight_only else 6) for n, m in bitswitch.quantized_layers(model).items()}
    config = str(write_precision_file(tmp_path / "six.json", spec))
    assert main(["generate", str(path), "--config", config, "--tokens", "5"]) == 2
    assert "bit-width 6 is not one this checkpoint was trained for" in capsys.readouterr().err
    assert main(["generate", str(path), "--config", config, "--tokens", "5", "--untrained-ok"]) == 0


@pytest.fixture(scope="module")
def other_checkpoints(text: TextSplits, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("other")
    fp32_lm = bitswitch.save(tiny_llama(len(text.vocab)), folder / "fp32_lm.safetensors", extra=lm_metadata(text.vocab, CONTEXT))
    mlp = bitswitch.quantize(build("mlp", in_features=16, hidden=8, num_classes=3), (8, 4), full_precision=())
    bitswitch.calibrate(mlp, [torch.randn(8, 16)])
    return {"fp32_lm": fp32_lm, "mlp": bitswitch.save(mlp, folder / "mlp.safetensors")}


def test_an_fp32_language_model_generates_without_bits(other_checkpoints, capsys) -> None:
    assert main(["generate", str(other_checkpoints["fp32_lm"]), "--tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("=== FP32 ===\n\n")


@pytest.mark.parametrize("args, match", [
    (["--prompt", "ROMÉO:"], r"--prompt: characters outside the model's vocabulary of \d+: 'É' \(U\+00C9\)"),
    (["--bits", "6"], r"bit-width 6 is not one this checkpoint was trained for \(trained: \[8, 4, 2\]\); pass --untrained-ok"),
    (["--bits", "9", "--untrained-ok"], "bit-width 9 is above the storage precision h=8"),
    (["--bits", "8,x"], "--bits must be comma-separated integers"),
    (["--tokens", "0"], "argument --tokens: must be an integer >= 1, got 0"),
    (["--tokens", "16", "--no-window"], "--tokens 16 after a prompt of 1 characters exceeds the model's context of 16 .*ask for at most 15"),
    (["--temperature", "0"], "argument --temperature: must be a finite number > 0"),
    (["--bits", "8", "--config", "x.json"], "--bits and --config are alternatives"),
])
def test_cli_bad_input_is_one_line(trained, capsys, args: list[str], match: str) -> None:
    _, path = trained
    assert exit_code(["generate", str(path), *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(match, err), err


def exit_code(argv: list[str]) -> int:
    """``main``'s return value, or the code argparse exits with."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code)


@pytest.mark.parametrize("which, args, match", [
    ("mlp", [], "is not a language-model checkpoint"),
    ("fp32_lm", ["--bits", "4"], "is an FP32 checkpoint: --bits and --config apply to quantized checkpoints only"),
])
def test_cli_refuses_checkpoints_it_cannot_sample(other_checkpoints, capsys, which: str, args: list[str], match: str) -> None:
    assert main(["generate", str(other_checkpoints[which]), *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and match in err, err
    if which == "mlp":
        with pytest.raises(NotALanguageModel):
            open_lm(other_checkpoints[which])
