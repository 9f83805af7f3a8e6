"""The Pareto plot of a search sweep: each point's objective against its cost, uniform precisions marked.

A sweep prints a table; which mixed configurations beat which uniform precision, and by how much,
is a picture (``bitswitch search --sweep`` writes it next to ``pareto.json``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .ilp import SearchResult

def plot_sweep(front: Sequence[SearchResult], uniform: Sequence[SearchResult], path: str | Path, objective: str) -> Path:
    """PNG of ``front`` (the ILP's Pareto points) and ``uniform`` (one marker per uniform precision),
    objective against BOPs relative to all-W8A8."""
    import matplotlib.pyplot as plt

    fig = sweep_figure(front, uniform, objective)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def sweep_figure(front: Sequence[SearchResult], uniform: Sequence[SearchResult], objective: str) -> Any:
    """The matplotlib figure :func:`plot_sweep` saves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [r.summary["rel_bops_w8a8"] for r in front]
    ax.plot(xs, [r.objective for r in front], "o-", color="tab:blue", label="mixed precision (ILP)")
    for r in uniform:
        x = r.summary["rel_bops_w8a8"]
        ax.plot([x], [r.objective], "s", color="tab:red", markersize=8, label="uniform" if r is uniform[0] else None)
        ax.annotate(r.method.replace("uniform-", "W"), (x, r.objective), textcoords="offset points", xytext=(6, 4), fontsize=10)
    ax.set_xlabel("BOPs relative to all-W8A8", fontsize=11)
    ax.set_ylabel(f"objective '{objective}' (maximised: higher is better)", fontsize=11)  # noise and loss are negated sums
    ax.margins(0.08)  # room for the labels of the end points
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("search sweep: Pareto front")
    fig.tight_layout()
    return fig


__all__ = ["plot_sweep", "sweep_figure"]
