"""Plots of the sensitivity list and the Pareto curve (PNG via matplotlib, optional self-contained HTML)."""

from __future__ import annotations

import html as _html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def plot_sensitivity(rows: Sequence[Mapping[str, Any]], path: str | Path, top: int = 60) -> Path:
    """Horizontal bars of phase-1 SQNR per (group, candidate), most sensitive at the top (PNG)."""
    import matplotlib.pyplot as plt

    fig = sensitivity_figure(rows, top)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def sensitivity_figure(rows: Sequence[Mapping[str, Any]], top: int = 60) -> Any:
    """The matplotlib figure :func:`plot_sensitivity` saves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["sqnr_db"])[:top]  # lowest SQNR: most sensitive
    # ~0.3 inch per bar and 9-point labels: readable at the saved size without zooming
    fig, ax = plt.subplots(figsize=(10, max(3.0, 0.3 * len(rows) + 1.2)))
    ax.barh([f"{r['group']} {r['candidate']}" for r in rows], [r["sqnr_db"] for r in rows], color="tab:blue")
    ax.invert_yaxis()  # the first row, the most sensitive, at the top
    ax.set_xlabel("output SQNR with only this group quantized (dB; lower = more sensitive)", fontsize=10)
    ax.tick_params(axis="y", labelsize=9)
    ax.tick_params(axis="x", labelsize=9)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"Phase-1 sensitivity: the {len(rows)} most sensitive (group, candidate), most sensitive first", fontsize=11)
    fig.tight_layout()
    return fig


def plot_pareto(points: Sequence[Mapping[str, Any]], path: str | Path, html: str | Path | None = None,
                reference: Mapping[str, float] | None = None, metric_name: str = "top-1 (%)") -> Path:
    """Metric against relative BOPs along the greedy flip sequence (evaluated points only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [p for p in points if "metric" in p]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p["relative_bops"] for p in pts], [p["metric"] for p in pts], "o-", label="greedy mixed precision")
    for name, v in (reference or {}).items():
        ax.axhline(v, ls="--", lw=0.8, color="gray")
        ax.text(1.0, v, name, fontsize=7, va="bottom", ha="right")
    ax.set_xlabel("BOPs relative to W8A16")
    ax.set_ylabel(metric_name)
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    if html is not None:
        rows = "".join(f"<tr><td>{p['step']}</td><td>{p['relative_bops']:.4f}</td><td>{_html.escape(str(p.get('group', '')))}</td>"
                       f"<td>{p.get('candidate', '')}</td><td>{p['metric']:.3f}</td></tr>" for p in pts)
        w, h = 640, 360
        xs = [p["relative_bops"] for p in pts]
        ys = [p["metric"] for p in pts]
        if pts:
            x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
            sx = lambda v: 40 + (x1 - v) / max(x1 - x0, 1e-9) * (w - 60)  # noqa: E731
            sy = lambda v: h - 30 - (v - y0) / max(y1 - y0, 1e-9) * (h - 60)  # noqa: E731
            circles = "".join(f"<circle cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='4'><title>step {p['step']}: {x:.4f} BOPs, {y:.2f} "
                              f"{_html.escape(str(p.get('group', '')))} {p.get('candidate', '')}</title></circle>" for p, x, y in zip(pts, xs, ys))
            line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys))
        else:
            circles, line = "", ""
        doc = (f"<!doctype html><meta charset='utf-8'><title>Pareto curve</title><h3>Greedy Pareto curve (hover points)</h3>"
               f"<svg width='{w}' height='{h}' style='border:1px solid #ccc'><polyline fill='none' stroke='steelblue' points='{line}'/>"
               f"<g fill='steelblue'>{circles}</g></svg><table border=1><tr><th>step</th><th>rel. BOPs</th><th>flipped group</th>"
               f"<th>to</th><th>{metric_name}</th></tr>{rows}</table><script>const data={json.dumps(pts)};</script>")
        Path(html).write_text(doc)
    return Path(path)
