"""What a run learns: image classification or next-character language modelling.

The loop (:mod:`.loop`) is the same for both; a :class:`Task` holds what differs: the check that the
model fits the data, the training and calibration batches, the evaluation of every bit-width, which
direction of its metric is better (:class:`Metric`), and what a checkpoint and the summary record
about the data. :func:`task_of` picks the task from the config's dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..export.checkpoint import load
from ..lm import lm_metadata, perplexity
from ..nn.dataflow import output_logits
from ..models.factory import is_factory
from .config import TrainConfig
from .data import Data, TextData, WindowBatches, make_loader
from .evaluate import evaluate, evaluate_text
from .fit import check_model_fits_data
from .model import build_float_model
from .step import bit_labels


@dataclass(frozen=True)
class Metric:
    """The number a run is judged by, per precision: its name in records and which way is better."""

    key: str  # records: val_<key> per epoch, best_val_<key> and test_<key> in the summary
    title: str  # log and plot title
    higher_is_better: bool

    @property
    def val_key(self) -> str:
        return f"val_{self.key}"

    def better(self, a: float, b: float) -> bool:
        """Is ``a`` strictly better than ``b``?"""
        return a > b if self.higher_is_better else a < b

    def select(self, values: dict[str, float], how: str) -> float:
        """The number that picks the best epoch: the mean over bit-widths, or (``min``) the worst bit-width's."""
        vals = list(values.values())
        if how == "min":
            return min(vals) if self.higher_is_better else max(vals)
        return sum(vals) / len(vals)


ACCURACY = Metric("acc", "accuracy (%)", True)
LOSS = Metric("loss", "loss (nats/char)", False)


class Task:
    """The part of a run that depends on what is learned (one subclass per kind of data)."""

    metric: Metric
    unit: str  # what the data counts: images or characters

    def check_fits(self, model: nn.Module, data: Any, cfg: TrainConfig) -> None:
        raise NotImplementedError

    def train_batches(self, data: Any, cfg: TrainConfig, device: str) -> Any:
        """The training batches (``set_epoch``, ``len`` = steps per epoch, ``(x, y)`` pairs)."""
        raise NotImplementedError

    def calibration_batches(self, data: Any, cfg: TrainConfig) -> Any:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, data: Any, split: str, cfg: TrainConfig, device: str) -> dict[str, float]:
        """The metric at every precision of the run on ``split`` (``val`` or ``test``)."""
        raise NotImplementedError

    def checkpoint_record(self, data: Any, cfg: TrainConfig) -> dict[str, Any]:
        """What a checkpoint records about the data (``bitswitch eval`` reads it)."""
        raise NotImplementedError

    def test_record(self, test: dict[str, float]) -> dict[str, Any]:
        """Numbers the summary derives from the test metric (none by default)."""
        return {}

    @staticmethod
    def sizes(data: Any) -> dict[str, int]:
        return {"train": len(data.train), "val": len(data.val), "test": len(data.test)}


class ImageClassification(Task):
    metric, unit = ACCURACY, "images"

    def check_fits(self, model: nn.Module, data: Data, cfg: TrainConfig) -> None:
        check_model_fits_data(model, data.input_shape, data.num_classes, f"model {cfg.model!r} with model_kwargs {cfg.model_kwargs} on dataset {data.key!r}")

    def train_batches(self, data: Data, cfg: TrainConfig, device: str) -> Any:
        return make_loader(data, "train", cfg, device, train=True)

    def calibration_batches(self, data: Data, cfg: TrainConfig) -> Any:
        loader = make_loader(data, "train", cfg, "cpu")
        loader.shuffle, loader.augment = False, False
        return loader

    def evaluate(self, model: nn.Module, data: Data, split: str, cfg: TrainConfig, device: str) -> dict[str, float]:
        return evaluate(model, make_loader(data, split, cfg, device), None if cfg.mode == "fp32" else list(cfg.bits), bit_labels(cfg))

    def checkpoint_record(self, data: Data, cfg: TrainConfig) -> dict[str, Any]:
        return {"dataset": data.key, "input_shape": list(data.input_shape), "mean": list(data.mean), "std": list(data.std)}


class LanguageModeling(Task):
    """A causal language model on a text dataset: random windows, next-character loss, lower is better."""

    metric, unit = LOSS, "characters"

    @torch.no_grad()
    def check_fits(self, model: nn.Module, data: TextData, cfg: TrainConfig) -> None:
        what = f"model {cfg.model!r} with model_kwargs {cfg.model_kwargs} on dataset {data.key!r} (context {cfg.context})"
        was_training = model.training
        model.eval()
        try:
            logits = output_logits(model(torch.zeros(2, cfg.context, dtype=torch.long)))
        except Exception as e:  # shape and dtype errors surface deep inside torch
            raise ValueError(f"{what}: the model cannot run on token ids of shape [2, {cfg.context}] "
                             f"({type(e).__name__}: {' '.join(str(e).split())})") from None
        finally:
            model.train(was_training)
        want = (2, cfg.context, len(data.vocab))
        if tuple(logits.shape) != want:
            raise ValueError(f"{what}: the model gives logits of shape {list(logits.shape)}, a language model on this data gives {list(want)}")

    def train_batches(self, data: TextData, cfg: TrainConfig, device: str) -> WindowBatches:
        return WindowBatches(data.train, cfg.batch_size, cfg.context, cfg.steps_per_epoch, cfg.seed, device)

    def calibration_batches(self, data: TextData, cfg: TrainConfig) -> WindowBatches:
        return WindowBatches(data.train, cfg.batch_size, cfg.context, cfg.calib_batches, cfg.seed)

    def evaluate(self, model: nn.Module, data: TextData, split: str, cfg: TrainConfig, device: str) -> dict[str, float]:
        """Loss on the split: the validation split up to ``val_chars`` characters, the test split in full."""
        return evaluate_text(model, getattr(data, split), cfg.context, None if cfg.mode == "fp32" else list(cfg.bits), bit_labels(cfg),
                             batch_size=cfg.eval_batch_size, limit=cfg.val_chars if split == "val" else 0)

    def checkpoint_record(self, data: TextData, cfg: TrainConfig) -> dict[str, Any]:
        return {"dataset": data.key, **lm_metadata(data.vocab, cfg.context)}

    def test_record(self, test: dict[str, float]) -> dict[str, Any]:
        return {"test_perplexity": {k: perplexity(v) for k, v in test.items()}}


def task_of(cfg: TrainConfig) -> Task:
    """The task of a run: language modelling for a text dataset, image classification otherwise."""
    return LanguageModeling() if cfg.is_language_model else ImageClassification()


def evaluate_checkpoint(path: Path, data: Data | TextData, cfg: TrainConfig, device: str, split: str = "test") -> dict[str, float]:
    """The run's metric of a saved checkpoint, reloaded from its file (integer codes for QAT runs).

    A run of a ``package.module:factory`` model rebuilds it with the run's factory (already imported).
    """
    model = load(path, model=build_float_model(cfg, data) if is_factory(cfg.model) else None).to(device)
    return task_of(cfg).evaluate(model, data, split, cfg, device)


__all__ = ["ACCURACY", "LOSS", "ImageClassification", "LanguageModeling", "Metric", "Task", "evaluate_checkpoint", "task_of"]
