"""The report's charts, drawn with matplotlib and embedded as inline SVG (text kept as text).

Scores are shown x100. Bar charts put the ranked rows (and published rows) first, then, below a
dashed line, the rows that are never ranked (smoke, partial, oracle), hatched, so a picture never
ranks them among the others. Axes are zoomed to the values' range (said on the axis), since
differences between generators are often a point or two.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "narrastream", "font.size": 9,
                     "axes.spines.top": False, "axes.spines.right": False})

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#bcbd22",
           "#7f7f7f"]
PUBLISHED_COLOUR = "#b0b0b0"


@dataclass
class ChartRow:
    """One bar per panel: a leaderboard row. ``values[column] = (value, low, high)`` (x100, NaN if none)."""

    label: str
    colour: str
    group: str  # "ranked" | "published" | "apart"
    values: Mapping[str, tuple[float, float, float]] = field(default_factory=dict)


def to_svg(fig: plt.Figure) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})  # layout fixed by hand: one draw, not three
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: inline in HTML


def _limits(values: Sequence[float]) -> tuple[float, float] | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    low, high = min(finite), max(finite)
    pad = max((high - low) * 0.15, 0.5)
    lo, hi = max(0.0, low - pad), min(100.0, high + pad)
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _label_inches(labels: Sequence[str], size: float = 8) -> float:
    """About how wide the longest label is, in inches (an estimate: no text measured, no extra draw)."""
    return 0.55 * size / 72 * max((len(label) for label in labels), default=0) + 0.15


def bar_panels(columns: Sequence[str], rows: Sequence[ChartRow], *, per_line: int = 4,
               titles: Mapping[str, str] | None = None) -> str:
    """One small horizontal bar chart per column, bars with interval whiskers; an SVG string.

    Every panel has the same rows in the same order, so their names are written once, left of each line.
    """
    if not rows or not columns:
        return ""
    order = [r for r in rows if r.group != "apart"] + [r for r in rows if r.group == "apart"]
    split = sum(1 for r in rows if r.group != "apart")
    cols = min(per_line, len(columns))
    lines = math.ceil(len(columns) / per_line)
    panel_w, panel_h = 2.4, 0.26 * len(rows) + 0.35
    label_w, gap_w, title_h, foot_h, gap_h = _label_inches([r.label for r in order]), 0.3, 0.3, 0.55, 0.35
    width = label_w + cols * panel_w + (cols - 1) * gap_w + 0.2
    height = title_h + lines * panel_h + (lines - 1) * (gap_h + 0.25) + foot_h
    fig, axes = plt.subplots(lines, cols, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(left=label_w / width, right=1 - 0.2 / width, top=1 - title_h / height, bottom=foot_h / height,
                        wspace=gap_w / panel_w, hspace=(gap_h + 0.25) / panel_h)
    ys = np.arange(len(order))[::-1]
    for index, (ax, column) in enumerate(zip(axes.flat, columns)):
        values = [r.values.get(column, (math.nan,) * 3) for r in order]
        limits = _limits([v for triple in values for v in triple])
        ax.set_title((titles or {}).get(column, column), fontsize=9)
        ax.set_ylim(-0.6, len(order) - 0.4)
        ax.set_yticks(ys, [r.label for r in order] if index % cols == 0 else [], fontsize=8)
        if limits is None:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes, color="#888")
            ax.set_xticks([])
            continue
        for y, row, (value, low, high) in zip(ys, order, values):
            if not math.isfinite(value):
                ax.text(limits[0], y, "  –", va="center", color="#888")
                continue
            apart = row.group == "apart"
            ax.barh(y, value - limits[0], left=limits[0], color=row.colour, height=0.7,
                    hatch="///" if apart else None, edgecolor="#444" if apart else "white", linewidth=0.5)
            if math.isfinite(low) and math.isfinite(high):
                ax.errorbar(value, y, xerr=[[max(0.0, value - low)], [max(0.0, high - value)]], fmt="none",
                            ecolor="black", elinewidth=1, capsize=2.5)
        if 0 < split < len(order):
            ax.axhline(ys[split - 1] - 0.5, color="#666", linestyle="--", linewidth=0.8)
        ax.set_xlim(*limits)
        ax.tick_params(axis="x", labelsize=7)
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    fig.text(0.5, 0.12 / height, "score x100 (axes zoomed to the values' range; whiskers: bootstrap interval; "
             "hatched below the dashed line: not ranked)", ha="center", fontsize=8)
    return to_svg(fig)


def heat_colour(value: float, scale: tuple[float, float]) -> tuple[str, str]:
    """Background (viridis over ``scale``) and a readable text colour for one heatmap cell.

    Heatmaps are HTML tables coloured by this (text stays text, and it costs nothing to draw).
    """
    if not math.isfinite(value):
        return "#e6e6e6", "#888888"
    low, high = scale
    shade = 0.5 if high <= low else min(1.0, max(0.0, (value - low) / (high - low)))
    red, green, blue, _ = matplotlib.colormaps["viridis"](shade)
    return (f"#{int(red * 255):02x}{int(green * 255):02x}{int(blue * 255):02x}",
            "#ffffff" if shade < 0.6 else "#000000")


def series_panels(panels: Sequence[tuple[str, Sequence[str], Sequence[tuple[str, str, np.ndarray, np.ndarray,
                                                                             np.ndarray]]]]) -> str:
    """Line charts, one per metric: ``(title, x labels, [(row label, colour, values, low, high)])`` x100,
    with the interval as a band."""
    if not panels:
        return ""
    cols = min(3, len(panels))
    lines = math.ceil(len(panels) / cols)
    labels = list(dict.fromkeys(label for _, _, curves in panels for label, *_ in curves))
    legend_h = 0.25 * math.ceil(len(labels) / 3) + 0.2
    panel_w, panel_h, left, gap_w, title_h, gap_h = 3.4, 1.9, 0.55, 0.55, 0.3, 0.6
    width = left + cols * panel_w + (cols - 1) * gap_w + 0.2
    height = title_h + lines * panel_h + (lines - 1) * gap_h + 0.35 + legend_h
    fig, axes = plt.subplots(lines, cols, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(left=left / width, right=1 - 0.2 / width, top=1 - title_h / height,
                        bottom=(0.35 + legend_h) / height, wspace=gap_w / panel_w, hspace=gap_h / panel_h)
    handles = {}
    for ax, (title, xlabels, curves) in zip(axes.flat, panels):
        x = np.arange(len(xlabels))
        for label, colour, values, low, high in curves:
            (line,) = ax.plot(x, values, marker="o", markersize=3, color=colour, label=label, linewidth=1.4)
            handles.setdefault(label, line)
            band = np.isfinite(low) & np.isfinite(high)
            if band.any():
                ax.fill_between(x, np.where(band, low, np.nan), np.where(band, high, np.nan), color=colour, alpha=0.15)
        ax.set_xticks(x, xlabels, fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(3, len(handles)), fontsize=8,
               frameon=False)
    return to_svg(fig)
