"""What a run shows and leaves behind besides checkpoints: per-epoch and summary tables,
``summary.json`` and the accuracy plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..export.checkpoint import atomic_write_bytes, atomic_write_json
from ..table import format_table
from .config import TrainConfig
from .data import Data


def epoch_table(record: dict[str, Any], epochs: int) -> str:
    """One epoch's line of the log: validation accuracy per bit-width, mean loss, time, best marker."""
    losses = record["train_loss"]
    row = {"epoch": f"{record['epoch']}/{epochs}", **{k.upper(): v for k, v in record["val_acc"].items()},
           "loss": sum(losses.values()) / max(len(losses), 1), "time s": record["train_time_s"], "best": "*" if record["best"] else ""}
    return format_table(list(row), [row])


def summarize(cfg: TrainConfig, data: Data, history: list[dict[str, Any]], best_epoch: int, test_acc: dict[str, float]) -> dict[str, Any]:
    """The record of a finished run written to ``summary.json``."""
    best_val = next((h["val_acc"] for h in history if h["epoch"] == best_epoch), {})
    return {
        "mode": cfg.mode, "bits": None if cfg.mode == "fp32" else list(cfg.bits), "model": cfg.model, "dataset": data.key,
        "epochs": cfg.epochs, "best_epoch": best_epoch, "best_val_acc": best_val, "test_acc": test_acc,
        "mean_epoch_time_s": sum(h["train_time_s"] for h in history) / max(len(history), 1),
        "train_images": len(data.train), "val_images": len(data.val), "test_images": len(data.test),
    }


def summary_table(summary: dict[str, Any], labels: list[str]) -> str:
    """Best validation and test accuracy per bit-width."""
    rows = [[lab.upper(), summary["best_val_acc"].get(lab, float("nan")), summary["test_acc"].get(lab, float("nan"))] for lab in labels]
    return format_table(["precision", "best val", "test"], rows)


def write_report(out: Path, summary: dict[str, Any], history: list[dict[str, Any]], labels: list[str]) -> None:
    """``summary.json`` and ``accuracy.png`` of a finished run."""
    atomic_write_json(out / "summary.json", summary)
    bits = "" if summary["bits"] is None else summary["bits"]
    plot_history(history, labels, out / "accuracy.png", f"{summary['model']} {summary['mode']} {bits}")


def plot_history(history: list[dict[str, Any]], labels: list[str], path: Path, title: str) -> Path | None:
    """Validation accuracy per bit-width over epochs (matplotlib, Agg backend)."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    for lab in labels:
        ax.plot(epochs, [h["val_acc"][lab] for h in history], marker="o", label=lab.upper())
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write_bytes(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path


__all__ = ["epoch_table", "plot_history", "summarize", "summary_table", "write_report"]
