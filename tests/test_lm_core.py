"""The language-model core: Shakespeare's fixed split, the character vocabulary, windows and the nats/char loss."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import bitswitch
from bitswitch.data import DataError
from bitswitch.data.text import CharVocab, eval_windows, load_shakespeare, random_windows
from bitswitch.lm import NotALanguageModel, lm_loss, lm_metadata, read_lm_info
from bitswitch.models import build
from bitswitch.train.evaluate import evaluate_text


@pytest.fixture(scope="module")
def text(shared_data: Path):
    return load_shakespeare(shared_data / "shakespeare")


def test_split_follows_the_readme(text, shared_data: Path) -> None:
    plays = [f.read_text(encoding="utf-8") for f in sorted((shared_data / "shakespeare" / "plays").glob("*.txt"))]
    assert len(plays) == 38 and len(text.vocab) == 82
    assert text.vocab.chars == "".join(sorted(set("".join(plays))))
    first = plays[0]
    a, b = int(len(first) * 0.9), int(len(first) * 0.95)
    assert text.vocab.decode(text.train[:a]) == first[:a]  # the train split starts with play 1's first 90 %
    assert text.vocab.decode(text.val[: b - a]) == first[a:b]
    assert text.vocab.decode(text.test[: len(first) - b]) == first[b:]
    assert text.train.numel() + text.val.numel() + text.test.numel() == sum(map(len, plays))


def test_vocab_round_trip_and_unknown_characters() -> None:
    v = CharVocab("ba c")  # any order: ids follow the string
    assert v.encode("abc a").tolist() == [1, 0, 3, 2, 1]
    assert v.decode(v.encode("cab ")) == "cab "
    with pytest.raises(ValueError, match=r"'xé' \(U\+0078, U\+00E9\)"):
        v.encode("abxé")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        v.decode([4])
    with pytest.raises(ValueError, match="distinct"):
        CharVocab("aa")
    assert CharVocab.from_metadata(v.to_metadata()) == v


def test_eval_windows_predict_every_character_once() -> None:
    ids = torch.arange(23)
    targets = torch.cat([y.reshape(-1) for _, y in eval_windows(ids, 5, 2)])
    assert targets.tolist() == list(range(1, 23))
    for x, y in eval_windows(ids, 5, 2):
        assert torch.equal(x + 1, y)  # inputs and targets are the same window shifted by one
    assert sum(y.numel() for _, y in eval_windows(ids, 5, 2, limit=11)) == 10
    with pytest.raises(DataError):
        next(eval_windows(ids[:1], 5, 2))


def test_random_windows_are_seeded() -> None:
    ids = torch.arange(100)
    x1, y1 = random_windows(ids, 4, 8, torch.Generator().manual_seed(3))
    x2, _ = random_windows(ids, 4, 8, torch.Generator().manual_seed(3))
    assert torch.equal(x1, x2) and x1.shape == (4, 8) and torch.equal(x1 + 1, y1)
    with pytest.raises(DataError):
        random_windows(ids[:8], 1, 8, torch.Generator())


def test_missing_data_folder_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no plays/ folder"):
        load_shakespeare(tmp_path)


def tiny_lm() -> torch.nn.Module:
    return build("char_llama", vocab_size=11, dim=16, layers=1, heads=2, hidden=32, context=8)


def test_lm_loss_is_the_mean_next_character_cross_entropy() -> None:
    model = tiny_lm().eval()
    ids = torch.randint(0, 11, (30,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        nll = [F.cross_entropy(model(x).logits.flatten(0, 1), y.flatten(), reduction="sum") for x, y in eval_windows(ids, 8, 64)]
    assert lm_loss(model, ids, 8) == pytest.approx(float(sum(nll)) / 29, rel=1e-6)
    assert lm_loss(model, ids, 8) < math.log(11) + 0.5  # a random init is near uniform


def test_lm_record_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    vocab = CharVocab("abcdefghijk")
    q = bitswitch.quantize(tiny_lm(), (8, 4))
    bitswitch.calibrate(q, [torch.randint(0, 11, (4, 8))])
    path = bitswitch.save(q, tmp_path / "lm.safetensors", extra=lm_metadata(vocab, 8))
    info = read_lm_info(path)
    assert info.vocab == vocab and info.context == 8
    ids = torch.randint(0, 11, (40,))
    assert evaluate_text(bitswitch.load(path), ids, 8, [8, 4]) == evaluate_text(q, ids, 8, [8, 4])  # integer file: exact
    plain = bitswitch.save(q, tmp_path / "plain.safetensors")
    with pytest.raises(NotALanguageModel, match="not a language-model checkpoint"):
        read_lm_info(plain)
