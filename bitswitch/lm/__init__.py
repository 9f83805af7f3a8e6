"""Language models: what a checkpoint records about its text, and the loss in nats per character.

A language-model checkpoint carries ``extra["lm"] = {"vocab": ..., "context": N}``
(:func:`lm_metadata`), so the file alone can encode a prompt and knows its context length;
:func:`read_lm_info` refuses a checkpoint without that record with one clear line.
:func:`lm_loss` is the one evaluation of every language-model workflow (training, baselines,
mixed-precision search, benchmarks): mean next-character cross-entropy over a split covered by
non-overlapping windows (:func:`bitswitch.data.text.eval_windows`), so it is exact and
deterministic; perplexity is ``exp(loss)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.text import CharVocab, eval_windows
from ..nn.dataflow import output_logits

__all__ = ["LMInfo", "NotALanguageModel", "generate", "generate_ids", "lm_loss", "lm_metadata", "open_lm", "perplexity", "read_lm_info",
           "window_losses"]


class NotALanguageModel(ValueError):
    """A checkpoint (or model) that has no language-model record."""


@dataclass(frozen=True)
class LMInfo:
    """What a language-model checkpoint knows about its text: the vocabulary and the context length."""

    vocab: CharVocab
    context: int


def lm_metadata(vocab: CharVocab, context: int) -> dict[str, Any]:
    """The ``extra={"lm": ...}`` record of a language-model checkpoint (``bitswitch.save(model, path, extra=...)``)."""
    if int(context) < 1:
        raise ValueError(f"context must be >= 1, got {context}")
    return {"lm": {"vocab": vocab.to_metadata(), "context": int(context)}}


def read_lm_info(source: str | Path | Mapping[str, Any]) -> LMInfo:
    """The :class:`LMInfo` of a checkpoint file (or of its decoded ``extra`` mapping)."""
    if isinstance(source, Mapping):
        extra, where = source, "the checkpoint"
    else:
        from ..export.checkpoint import read_metadata  # the checkpoint module imports the model zoo

        extra, where = read_metadata(source).get("extra") or {}, str(source)
    record = extra.get("lm") if isinstance(extra, Mapping) else None
    if not isinstance(record, Mapping):
        raise NotALanguageModel(f"{where} is not a language-model checkpoint (it has no vocabulary record: train one with dataset 'shakespeare')")
    try:
        return LMInfo(CharVocab.from_metadata(record.get("vocab")), int(record["context"]))
    except (KeyError, TypeError, ValueError) as e:
        raise NotALanguageModel(f"{where}: its language-model record is damaged ({e})") from None


@torch.no_grad()
def window_losses(model: nn.Module, ids: Tensor, context: int, *, batch_size: int = 64, limit: int = 0) -> tuple[Tensor, Tensor]:
    """Summed next-character cross-entropy (nats) and target count of every evaluation window, in order.

    The windows are :func:`bitswitch.data.text.eval_windows`'s, so ``sums.sum() / counts.sum()`` is
    :func:`lm_loss`; per window, two precisions of one model form paired samples
    (:func:`bitswitch.search.evaluate.paired_loss_difference`). Sums are float64, counts int64.
    """
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    sums, counts = [], []
    try:
        for x, y in eval_windows(ids, context, batch_size, limit):
            logits = output_logits(model(x.to(device))).float()
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.to(device).reshape(-1), reduction="none")
            sums.append(nll.view(y.shape).double().sum(1).cpu())
            counts.append(torch.full((y.shape[0],), y.shape[1], dtype=torch.int64))
    finally:
        model.train(was_training)
    return torch.cat(sums), torch.cat(counts)


def lm_loss(model: nn.Module, ids: Tensor, context: int, *, batch_size: int = 64, limit: int = 0) -> float:
    """Mean next-character cross-entropy (nats per character) of ``model`` on ``ids`` at its current precision."""
    sums, counts = window_losses(model, ids, context, batch_size=batch_size, limit=limit)
    return float(sums.sum() / counts.sum())


def perplexity(loss: float) -> float:
    return math.exp(loss)


from .generate import generate, generate_ids, open_lm  # noqa: E402  (generate.py uses the names above)
