"""Every code block of the README and ``docs/*.md`` runs, as a reader would copy it.

* ``bash``: each line is a ``bitswitch ...`` (or ``python -m bitswitch.cli ...``) command, run
  in-process in a folder holding the files the docs name (``model.safetensors``, ``ckpt.safetensors``:
  a tiny Fashion-MNIST supernet; ``subnet.json``; ``lm.safetensors``: a tiny character language model), with ``$BITSWITCH_DATA`` pointing at the offline
  data. Long commands run on a tiny budget: the options in :data:`TINY` are appended (argparse keeps
  the last value), so the command itself is the one the doc shows.
* ``python``: executed with the names the prose around it takes as given (``model``, ``loader``,
  ``calibration_batches``...) bound to small stand-ins (:func:`given_names`).
* ``yaml``: a run config, read by ``TrainConfig`` (unknown keys and wrong types fail).
* ``text``: a diagram, not run.

A block that cannot run here says so in the doc, on the line right above it:
``<!-- example not run: REASON -->``. Nothing is skipped silently: a block without a language, or a
shell line that is not a bitswitch command, fails.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.S | re.M)
NOT_RUN = re.compile(r"<!-- example not run: (.+?) -->")
LANGUAGES = ("bash", "python", "yaml", "text")

#: appended to a documented command of that name so it runs in seconds (argparse keeps the last value)
TINY = {
    "hessian": ["--samples", "64", "--max-iter", "4"],
    "search": ["--samples", "128", "--rerank-samples", "128", "--recal-samples", "32"],
    "eval": ["--limit", "200"],
    "export": ["--verify-images", "64"],
}


@dataclass
class Block:
    doc: Path
    line: int
    lang: str
    code: str
    not_run: str | None

    @property
    def id(self) -> str:
        return f"{self.doc.name}:{self.line}"


def blocks() -> list[Block]:
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            above = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
            reason = NOT_RUN.fullmatch(above.strip())
            out.append(Block(doc, line, m.group(1).strip(), m.group(2), reason.group(1) if reason else None))
    return out


BLOCKS = blocks()
RUN = [b for b in BLOCKS if b.not_run is None and b.lang != "text"]


def test_every_block_has_a_language_and_each_one_not_run_says_why():
    assert len(RUN) >= 8
    for b in BLOCKS:
        assert b.lang in LANGUAGES, f"{b.id}: fenced block with language {b.lang!r}; use one of {LANGUAGES} (text: not code)"
        if b.not_run is not None:
            assert len(b.not_run.split()) >= 3, f"{b.id}: say why the example is not run"


def commands(code: str) -> list[list[str]]:
    """The command lines of a shell block (comments dropped, ``\\`` continuations joined)."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            out.append(argv)
    return out


def bitswitch_argv(argv: list[str]) -> list[str]:
    """The arguments after ``bitswitch`` / ``python -m bitswitch.cli`` (``VAR=value`` prefixes dropped)."""
    while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):
        argv = argv[1:]
    if argv[:1] == ["bitswitch"]:
        return argv[1:]
    if argv[:3] == ["python", "-m", "bitswitch.cli"]:
        return argv[3:]
    raise AssertionError(f"{' '.join(argv)!r} is not a bitswitch command: mark its block <!-- example not run: REASON -->")


@pytest.fixture(scope="module")
def workspace(shared_data: Path, tmp_path_factory) -> Path:
    """The files the docs' commands name: a tiny {8,4,3,2} Fashion-MNIST supernet as model.safetensors and
    ckpt.safetensors, a subnet.json for it, and my_run.yaml (training.md's config, on digits)."""
    import bitswitch
    from bitswitch.nn.precision_file import write_precision_file
    from bitswitch.train import TrainConfig, train

    ws = tmp_path_factory.mktemp("docs")
    cfg = TrainConfig(mode="joint", bits=[8, 4, 3, 2], model="small_cnn", dataset="fashion_mnist", data_root=str(shared_data / "fashion_mnist"),
                      train_subset=512, test_subset=500, epochs=1, batch_size=64, num_threads=1, progress=False, out_dir=str(ws / "run"))
    best = train(cfg).out_dir / "best.safetensors"
    for name in ("model.safetensors", "ckpt.safetensors"):
        (ws / name).write_bytes(best.read_bytes())
    layers = list(bitswitch.quantized_layers(bitswitch.load(best)))
    write_precision_file(ws / "subnet.json", {n: (4 if i % 2 else 8, 4 if i % 2 else 8) for i, n in enumerate(layers)})
    tiny_lm_checkpoint(shared_data, ws / "lm.safetensors")
    return ws


def tiny_lm_checkpoint(shared_data: Path, path: Path) -> None:
    """lm.safetensors: a one-layer character Llama, weight-only {8,4,2}, calibrated (untrained) on Shakespeare."""
    import bitswitch
    from bitswitch.data.text import load_shakespeare, random_windows
    from bitswitch.lm import lm_metadata
    from bitswitch.models import build

    text = load_shakespeare(shared_data / "shakespeare")
    model = build("char_llama", vocab_size=len(text.vocab), dim=32, layers=1, heads=2, hidden=64, context=16)
    q = bitswitch.quantize(model, (8, 4, 2), weight_only=["model.layers.*"])
    bitswitch.calibrate(q, [random_windows(text.train, 8, 16, torch.Generator().manual_seed(0))[0]])
    bitswitch.save(q, path, extra=lm_metadata(text.vocab, 16))


def given_names(code: str) -> dict[str, Any]:
    """What the prose around a Python example takes as given, as small stand-ins (FP32 CNN, 32x32 batches)."""
    from bitswitch.models import build

    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    names: dict[str, Any] = {
        "model": build("preact_resnet8"), "fp32_model": build("preact_resnet8"), "x": x, "calib_images": x,
        "calibration_batches": [x], "loader": [(x, y)] * 2, "train_loader": [(x, y)] * 2, "test_batches": [(x, y)], "total_steps": 2,
    }
    if "llama" in code:  # a randomly initialised one-layer Llama: the example's shape, none of its download
        from transformers import LlamaConfig, LlamaForCausalLM

        names["llama"] = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                      num_attention_heads=2, num_key_value_heads=2, use_cache=False)).eval()
        names["ids"] = torch.randint(0, 64, (2, 8))
    return names


@pytest.mark.parametrize("block", RUN, ids=[b.id for b in RUN])
def test_example_runs(block: Block, request, monkeypatch, shared_data: Path, tmp_path: Path, capsys):
    if block.lang == "yaml":
        from bitswitch.safe_yaml import load_yaml
        from bitswitch.train import TrainConfig

        TrainConfig.from_dict(load_yaml(block.code, block.id), where=block.id)
        return
    monkeypatch.setenv("BITSWITCH_DATA", str(shared_data))
    if block.lang == "bash":
        from bitswitch.cli import main

        monkeypatch.chdir(request.getfixturevalue("workspace"))
        for argv in commands(block.code):
            args = bitswitch_argv(argv)
            code = main(args + TINY.get(args[0], []))
            assert code == 0, f"{block.id}: `{shlex.join(argv)}` exited with {code}: {capsys.readouterr().err}"
        return
    # what a Python example saves stays out of the commands' workspace, unless it reads a file from there
    monkeypatch.chdir(request.getfixturevalue("workspace") if "lm.safetensors" in block.code else tmp_path)
    if "import timm" in block.code:
        request.getfixturevalue("timm")  # its torchvision stand-in
    torch.manual_seed(0)
    exec(compile(block.code, block.id, "exec"), given_names(block.code))
