"""Figures drawn straight onto matplotlib's Agg canvas.

No ``pyplot``: it keeps global state and picks a GUI backend from the environment, which a
headless training node, a test worker or a Ray job neither has nor needs. A figure made here has
a fixed size in inches at ``DPI``, so every PNG's pixel size is known in advance.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100


def new_figure(width_in: float, height_in: float) -> Figure:
    """A blank figure of ``width_in`` x ``height_in`` inches, laid out by constrained layout."""
    figure = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Figure, path: Path) -> Path:
    """Writes the figure at its own size (no tight bounding box, which would change it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, format="png")
    return path
