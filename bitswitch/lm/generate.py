"""Text generation from a language model at any precision, switching without reloading.

One loaded integer file serves every precision: :func:`generate` switches the model with
:func:`bitswitch.set_precision` for the call and restores the precision it found, so samples at
8, 4 and 2 bits (or a per-layer configuration) come from one :func:`open_lm`.

Decoding is the plain forward over the last ``context`` characters, one new character per step,
as nanoGPT does: generation longer than the context slides that window along (``window=False``
refuses instead). No KV cache: a cache is only valid while the window does not slide, and the
one-row-at-a-time products it implies do not round as the full forward does (on a 2-layer
``char_llama``, cached logits differed from the full forward's by up to 2e-7, FP32 and W8A8), so
the greedy output could stop being exactly the trained model's. The cost: one forward of ``context``
characters per generated one (``docs/lm.md`` gives a measurement).

Sampling draws from a ``torch.Generator`` seeded by ``seed``: the same call gives the same text.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..data.text import CharVocab
from ..nn.convert import PrecisionSpec, get_precision, set_precision
from ..nn.dataflow import output_logits
from . import LMInfo, read_lm_info

__all__ = ["generate", "generate_ids", "open_lm"]


def open_lm(path: str | os.PathLike, model: nn.Module | None = None) -> tuple[nn.Module, LMInfo]:
    """A language-model checkpoint's model (integer form, eval mode) and its :class:`LMInfo`.

    The language-model record is read first, so any other checkpoint is refused
    (:class:`~bitswitch.lm.NotALanguageModel`) before a model is built. ``model``: the FP32 model of
    a custom architecture, as :func:`bitswitch.load` takes it.
    """
    from ..export.checkpoint import load  # the checkpoint module imports the model zoo

    info = read_lm_info(path)
    return load(path, model=model), info


def generate_ids(model: nn.Module, prompt: Tensor, tokens: int, *, context: int, precision: PrecisionSpec | None = None,
                 temperature: float = 0.8, top_k: int | None = None, seed: int = 0, greedy: bool = False, window: bool = True) -> Tensor:
    """The prompt's ids followed by ``tokens`` generated ones (1-D int64, on the CPU).

    * ``context``: how many of the last characters the model reads (its training context;
      :class:`~bitswitch.lm.LMInfo` of the checkpoint has it).
    * ``precision``: what :func:`bitswitch.set_precision` takes (a bit-width, a ``(w, a)`` pair, a
      per-layer mapping), for this call only; ``None`` runs the model as it is (an FP32 model, or a
      quantized one at its current precision).
    * ``greedy``: the likeliest character every step; otherwise a draw at ``temperature`` among the
      ``top_k`` likeliest (``None``: all), from a generator seeded with ``seed``.
    * ``window=False`` refuses a prompt plus ``tokens`` longer than ``context`` instead of sliding.
    """
    ids = prompt.reshape(-1).long()
    if ids.numel() == 0:
        raise ValueError("the prompt must hold at least one character")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise ValueError(f"tokens must be an integer >= 1, got {tokens!r}")
    if context < 1:
        raise ValueError(f"context must be >= 1, got {context}")
    if not window and ids.numel() + tokens > context:
        raise ValueError(f"a prompt of {ids.numel()} characters plus {tokens} tokens exceeds the model's context of {context}: "
                         f"ask for at most {max(context - ids.numel(), 0)} tokens, or let the window slide")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (or None: every character), got {top_k}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    generator = torch.Generator(device=device).manual_seed(seed)
    ids = ids.to(device)
    with _switched(model, precision), torch.no_grad():
        was_training = model.training
        model.eval()
        try:
            for _ in range(tokens):
                logits = output_logits(model(ids[None, -context:]))[0, -1]
                ids = torch.cat([ids, _pick(logits, greedy, temperature, top_k, generator)])
        finally:
            model.train(was_training)
    return ids.cpu()


def generate(model: nn.Module, vocab: CharVocab, prompt: str, tokens: int, *, context: int, precision: PrecisionSpec | None = None,
             temperature: float = 0.8, top_k: int | None = None, seed: int = 0, greedy: bool = False, window: bool = True) -> str:
    """``prompt`` followed by ``tokens`` generated characters.

    Example (one file, three precisions, no reload)::

        model, info = bitswitch.lm.open_lm("lm.safetensors")
        for b in (8, 4, 2):
            print(bitswitch.lm.generate(model, info.vocab, "ROMEO:", 200, context=info.context, precision=b))

    A character outside ``vocab`` is a ``ValueError`` naming it; the rest is as :func:`generate_ids`.
    """
    ids = generate_ids(model, vocab.encode(prompt), tokens, context=context, precision=precision, temperature=temperature,
                       top_k=top_k, seed=seed, greedy=greedy, window=window)
    return vocab.decode(ids)


def _pick(logits: Tensor, greedy: bool, temperature: float, top_k: int | None, generator: torch.Generator) -> Tensor:
    """The next id (shape ``(1,)``) from the last position's ``logits`` (shape ``(vocab,)``)."""
    if greedy:
        return logits.argmax().reshape(1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, -math.inf)
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)


@contextmanager
def _switched(model: nn.Module, precision: PrecisionSpec | None) -> Iterator[None]:
    """``model`` at ``precision`` inside the block, then back at the precision it had (``None``: as it is)."""
    if precision is None:
        yield
        return
    before = get_precision(model)
    set_precision(model, precision)
    try:
        yield
    finally:
        set_precision(model, before)
