"""One figure style for every notebook, and :func:`savefig` writing PNG + PDF under ``figures/``.

Colours are fixed per concept so figures read alike across notebooks: reverse vs forward KL,
vanilla vs MARA, reference vs target vs trained policy.
"""

from __future__ import annotations

from pathlib import Path


import matplotlib.pyplot as plt

from mdkl.runtime import figures_dir

__all__ = ["COLORS", "set_style", "savefig", "bar_policy"]

COLORS = {
    "reference": "#9e9e9e",
    "target": "#222222",
    "reverse": "#1f77b4",
    "forward": "#d62728",
    "vanilla": "#7f7f7f",
    "mara": "#2ca02c",
    "reward": "#ff7f0e",
    "policy": "#1f77b4",
}


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
