"""One figure style for every notebook, and :func:`savefig` writing PNG + PDF under ``figures/``.

Colours are fixed per concept so figures read alike across notebooks: reverse vs forward KL,
vanilla vs MARA and its successors (Differential Smoothing, inverse-probability scaling at alpha = 1
and 1/2, UCPO, FlowRL), reference vs target vs trained policy (:data:`COLORS`); categories that are no
such concept (variants of one method, settings of a sweep) take :data:`EXTRA` in order. Legends sit
outside the axes (:func:`legend_right`, :func:`legend_below`), never over data.
"""

from __future__ import annotations

from pathlib import Path


import matplotlib.pyplot as plt

from mdkl.runtime import figures_dir

__all__ = ["COLORS", "EXTRA", "set_style", "savefig", "bar_policy", "legend_right", "legend_below"]

COLORS = {
    "reference": "#9e9e9e",
    "target": "#222222",
    "reverse": "#1f77b4",
    "forward": "#d62728",
    "vanilla": "#7f7f7f",
    "mara": "#2ca02c",
    "reward": "#ff7f0e",
    "policy": "#1f77b4",
    # the successor methods beside MARA (mdkl.successors; notebooks 05 and 08)
    "ds": "#9467bd",
    "ips": "#8c564b",
    "ips_half": "#e377c2",
    "ucpo": "#17becf",
    "ucpo_raw": "#0b6e7a",
    "flowrl": "#bcbd22",
}

#: colours for categories without a fixed concept in :data:`COLORS`, used in this order
EXTRA = ("#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def set_style() -> None:
    """Apply the project's matplotlib style (call once at the top of a notebook)."""
    plt.rcParams.update({
        "figure.dpi": 110,
        "savefig.dpi": 150,
        "savefig.bbox": "tight",
        "font.size": 10,
        "axes.titlesize": 10,
        "axes.labelsize": 10,
        "legend.fontsize": 8,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "pdf.fonttype": 42,
    })


def savefig(fig, name: str, profile: str | None = None) -> list[Path]:
    """Save ``fig`` as ``<figures dir>/<name>.png`` and ``.pdf``; return both paths.

    ``name`` follows the paper (``fig3_three_actions``...). The default profile writes to
    ``figures/`` (committed), other profiles to ``figures/<profile>/``.
    """
    d = figures_dir(profile)
    paths = [d / f"{name}.png", d / f"{name}.pdf"]
    for p in paths:
        # no creation date in the PDF: re-running a notebook leaves unchanged figures byte-identical
        fig.savefig(p, metadata={"CreationDate": None} if p.suffix == ".pdf" else None)
    return paths


def bar_policy(ax, probs, *, label=None, color=None, offset=0.0, width=0.8, alpha=0.8):
    """Bar plot of a categorical policy over its action indices (x: action, y: probability)."""
    import numpy as np

    x = np.arange(len(probs)) + offset
    ax.bar(x, probs, width=width, label=label, color=color, alpha=alpha)
    ax.set_xlabel("action")
    ax.set_ylabel("probability")
    return ax


def legend_right(ax, **kwargs):
    """Legend of ``ax`` just outside its right edge, top-aligned (never over the data)."""
    kw = dict(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)
    kw.update(kwargs)
    return ax.legend(**kw)


def legend_below(fig_or_ax, axes=None, ncol: int | None = None, **kwargs):
    """A legend centred below a figure or below one axes (never over the data).

    Given a figure: one legend collecting the labelled artists of ``axes`` (default: every axes of
    the figure) in order, keeping the first artist of each label, so panels that repeat a curve add
    it once; call after ``fig.tight_layout()``. Given an axes: that axes' own legend, under its
    x label. :func:`savefig` and the inline display both keep it (tight bounding box).
    """
    if not hasattr(fig_or_ax, "axes") or hasattr(fig_or_ax, "get_legend_handles_labels"):
        ax = fig_or_ax
        n = len(ax.get_legend_handles_labels()[1])
        kw = dict(loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False,
                  ncol=ncol if ncol is not None else min(n, 2))
        kw.update(kwargs)
        return ax.legend(**kw)
    fig = fig_or_ax
    handles, labels = [], []
    for ax in fig.axes if axes is None else axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    kw = dict(loc="upper center", bbox_to_anchor=(0.5, 0.0), frameon=False,
              ncol=ncol if ncol is not None else min(len(labels), 4))
    kw.update(kwargs)
    return fig.legend(handles, labels, **kw)
