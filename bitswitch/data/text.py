"""Character-level text for language models: the Shakespeare plays, their fixed split and vocabulary.

:func:`load_shakespeare` reads ``shakespeare/plays/*.txt`` and applies the split its README fixes
(per play, in sorted file order: the first 90 % of the characters train, the next 5 % validate, the
last 5 % test; the vocabulary is the sorted set of characters of all plays), so numbers are
comparable across runs and with other code. :class:`CharVocab` maps text to token ids and back
and is stored in checkpoints (``to_metadata``) so a model file alone can encode a prompt.

Batches are windows of ``context + 1`` characters: the model reads the first ``context`` and
predicts each next one. :func:`random_windows` draws training batches from a seeded generator;
:func:`eval_windows` covers a split with non-overlapping windows in order (every character after
the first is predicted once), so validation and test losses are exact and deterministic.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import DataError

__all__ = ["SPLIT_FRACTIONS", "CharVocab", "TextSplits", "eval_windows", "load_shakespeare", "random_windows", "shakespeare_root"]

#: train / validation / test share of every play (``shakespeare/README.md``)
SPLIT_FRACTIONS = (0.90, 0.05, 0.05)


@dataclass(frozen=True)
class CharVocab:
    """The characters a model knows, in token-id order."""

    chars: str

    def __post_init__(self) -> None:
        if not self.chars or len(set(self.chars)) != len(self.chars):
            raise ValueError(f"a vocabulary needs distinct characters, got {len(self.chars)} ({len(set(self.chars))} distinct)")

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> Tensor:
        """Token ids (int64) of ``text``; characters outside the vocabulary are a ``ValueError`` naming them."""
        codes = torch.from_numpy(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64))
        known = torch.tensor(sorted(ord(c) for c in self.chars), dtype=torch.long)
        pos = torch.searchsorted(known, codes).clamp_max(len(known) - 1)
        missing = known[pos] != codes
        if bool(missing.any()):
            unknown = sorted({chr(int(c)) for c in codes[missing].unique()})
            raise ValueError(f"characters outside the model's vocabulary of {len(self)}: {''.join(unknown)!r} "
                             f"({', '.join(f'U+{ord(c):04X}' for c in unknown)})")
        order = torch.tensor(sorted(range(len(self.chars)), key=lambda i: ord(self.chars[i])), dtype=torch.long)
        return order[pos]  # id of the character at each position (vocabularies need not be sorted)

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        bad = [i for i in ids if not 0 <= int(i) < len(self)]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the vocabulary of {len(self)} characters")
        return "".join(self.chars[int(i)] for i in ids)

    def to_metadata(self) -> dict[str, str]:
        return {"type": "chars", "chars": self.chars}

    @classmethod
    def from_metadata(cls, meta: object) -> CharVocab:
        if not isinstance(meta, dict) or meta.get("type") != "chars" or not isinstance(meta.get("chars"), str):
            raise ValueError(f"not a character vocabulary record: {str(meta)[:80]!r}")
        return cls(meta["chars"])


@dataclass
class TextSplits:
    """Token ids (int64, 1-D) of the three splits and their vocabulary."""

    train: Tensor
    val: Tensor
    test: Tensor
    vocab: CharVocab

    def split(self, name: str) -> Tensor:
        if name not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, got {name!r}")
        return getattr(self, name)


def shakespeare_root(root: str | Path | None) -> Path:
    """The folder holding ``plays/``: ``root`` itself or its ``shakespeare/`` sub-folder (default: ``$BITSWITCH_DATA``)."""
    from . import default_data_root  # the package imports this module

    base = Path(root).expanduser() if root is not None else default_data_root()
    if base is None:
        raise DataError("no data path given for 'shakespeare': pass data_root=<folder holding plays/> or set BITSWITCH_DATA")
    for path in (base, base / "shakespeare"):
        if (path / "plays").is_dir():
            return path
    raise DataError(f"shakespeare: no plays/ folder in {str(base)!r} or {str(base / 'shakespeare')!r} "
                    "(expected plays/<play>.txt, as in ../shared/data/shakespeare)")


def load_shakespeare(root: str | Path | None = None) -> TextSplits:
    """The plays with the README's fixed per-play 90/5/5 % split, encoded with the vocabulary of all plays."""
    folder = shakespeare_root(root) / "plays"
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise DataError(f"shakespeare: {str(folder)!r} holds no .txt files")
    texts = []
    for f in files:
        try:
            texts.append(f.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(f"shakespeare: {str(f)!r} is not UTF-8 text ({e})") from None
    if not any(texts):
        raise DataError(f"shakespeare: every file in {str(folder)!r} is empty")
    vocab = CharVocab("".join(sorted(set("".join(texts)))))
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for text in texts:
        n = len(text)
        a, b = int(n * SPLIT_FRACTIONS[0]), int(n * (SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1]))
        parts["train"].append(text[:a])
        parts["val"].append(text[a:b])
        parts["test"].append(text[b:])
    ids = {k: vocab.encode("".join(v)) for k, v in parts.items()}
    return TextSplits(ids["train"], ids["val"], ids["test"], vocab)


def random_windows(ids: Tensor, batch_size: int, context: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One training batch: ``batch_size`` windows at random offsets; ``(inputs, next characters)``, each ``(B, context)``."""
    if ids.numel() <= context:
        raise DataError(f"a text of {ids.numel()} characters has no window of context {context} + 1")
    start = torch.randint(0, ids.numel() - context, (batch_size,), generator=generator)
    rows = torch.stack([ids[s: s + context + 1] for s in start.tolist()])
    return rows[:, :-1], rows[:, 1:]


def eval_windows(ids: Tensor, context: int, batch_size: int, limit: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
    """Non-overlapping windows over the whole split (or its first ``limit`` characters), in order.

    Each window's inputs are ``context`` characters and its targets the next ones; the last,
    shorter window is kept, so every character after the first is a target exactly once.
    """
    if limit:
        ids = ids[:limit]
    if ids.numel() < 2:
        raise DataError(f"a text of {ids.numel()} characters has nothing to predict")
    starts = list(range(0, ids.numel() - 1, context))
    for i in range(0, len(starts), batch_size):
        group = starts[i: i + batch_size]
        full = [s for s in group if s + context + 1 <= ids.numel()]
        if full:
            rows = torch.stack([ids[s: s + context + 1] for s in full])
            yield rows[:, :-1], rows[:, 1:]
        for s in group[len(full):]:  # the tail window, shorter than context
            row = ids[s:]
            yield row[None, :-1], row[None, 1:]
