"""What a run shows and leaves behind besides checkpoints: per-epoch and summary tables,
``summary.json`` and the plot of the validation metric (``accuracy.png``, or ``loss.png`` for language models)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..export.checkpoint import atomic_write_bytes, atomic_write_json
from ..table import format_table
from .config import TrainConfig
from .data import Data, TextData

if TYPE_CHECKING:
    from .task import Metric, Task


def epoch_table(record: dict[str, Any], epochs: int, metric: Metric) -> str:
    """One epoch's line of the log: the validation metric per bit-width, mean training loss, time, best marker."""
    losses = record["train_loss"]
    row = {"epoch": f"{record['epoch']}/{epochs}", **{k.upper(): v for k, v in record[metric.val_key].items()},
           "loss": sum(losses.values()) / max(len(losses), 1), "time s": record["train_time_s"], "best": "*" if record["best"] else ""}
    return format_table(list(row), [row])


def summarize(cfg: TrainConfig, task: Task, data: Data | TextData, history: list[dict[str, Any]], best_epoch: int,
              test: dict[str, float]) -> dict[str, Any]:
    """The record of a finished run written to ``summary.json`` (``best_val_acc``/``test_acc`` for image
    runs, ``best_val_loss``/``test_loss``/``test_perplexity`` for language models)."""
    key = task.metric.key
    best_val = next((h[task.metric.val_key] for h in history if h["epoch"] == best_epoch), {})
    return {
        "mode": cfg.mode, "bits": None if cfg.mode == "fp32" else list(cfg.bits), "model": cfg.model, "dataset": data.key,
        "epochs": cfg.epochs, "best_epoch": best_epoch, f"best_val_{key}": best_val, f"test_{key}": test, **task.test_record(test),
        "mean_epoch_time_s": sum(h["train_time_s"] for h in history) / max(len(history), 1),
        **{f"{split}_{task.unit}": n for split, n in task.sizes(data).items()},
    }


def summary_table(summary: dict[str, Any], labels: list[str], metric: Metric) -> str:
    """Best validation and test metric per bit-width (and test perplexity for language models)."""
    best, test, ppl = summary[f"best_val_{metric.key}"], summary[f"test_{metric.key}"], summary.get("test_perplexity")
    nan = float("nan")
    rows = [[lab.upper(), best.get(lab, nan), test.get(lab, nan), *([ppl.get(lab, nan)] if ppl else [])] for lab in labels]
    return format_table(["precision", f"best val {metric.key}", f"test {metric.key}", *(["test perplexity"] if ppl else [])], rows)


def write_report(out: Path, summary: dict[str, Any], history: list[dict[str, Any]], labels: list[str], metric: Metric) -> None:
    """``summary.json`` and the plot (``accuracy.png`` or ``loss.png``) of a finished run."""
    atomic_write_json(out / "summary.json", summary)
    bits = "" if summary["bits"] is None else summary["bits"]
    plot_history(history, labels, out / f"{'accuracy' if metric.higher_is_better else 'loss'}.png", f"{summary['model']} {summary['mode']} {bits}", metric)


def plot_history(history: list[dict[str, Any]], labels: list[str], path: Path, title: str, metric: Metric) -> Path | None:
    """The validation metric per bit-width over epochs (matplotlib, Agg backend)."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    for lab in labels:
        ax.plot(epochs, [h[metric.val_key][lab] for h in history], marker="o", label=lab.upper())
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metric.title}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write_bytes(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path


__all__ = ["epoch_table", "plot_history", "summarize", "summary_table", "write_report"]
