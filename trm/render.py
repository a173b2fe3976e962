"""PNG drawings (matplotlib, Agg, no pyplot state): the per-step accuracy curves of an
evaluation and the strip of a puzzle's predictions after each supervision step.

Strip layout, fixed in pixels so tests can find cells: panels of PANEL_PX x (TITLE_PX +
PANEL_PX) at DPI, at most STRIP_COLUMNS per row: the input, the prediction after each step
(cells that changed since the panel before outlined in the kind's highlight colour; Sudoku
digits red where wrong), and the target when it is known.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from jaxtyping import Bool, Float, Int, Integer
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from data.augment import crop_canvas
from data.common import IGNORE_LABEL_ID, MAZE_CHARSET, atomic_file

Kind = Literal["sudoku", "maze", "arc"]
DPI = 100
PANEL_PX, TITLE_PX, PAD_PX = 200, 24, 8
STRIP_COLUMNS = 6
ARC_COLOURS = ("#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00", "#AAAAAA", "#F012BE",
               "#FF851B", "#7FDBFF", "#870C25")
MAZE_COLOURS = ("#202020", "#FFFFFF", "#2ECC40", "#FF4136", "#1F77B4")   # "# SGo"
PAD_COLOUR = "#DDDDDD"
HIGHLIGHT = {"sudoku": "#FF8C00", "maze": "#FF8C00", "arc": "#FFFFFF"}


def _rgb(hex_colour: str) -> tuple[float, float, float]:
    return tuple(int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5))  # type: ignore[return-value]


def cells(kind: Kind, tokens: Integer[np.ndarray, " s"]) -> Int[np.ndarray, "h w"]:
    """Grid values of a token row: Sudoku digits (0 blank), maze "# SGo" indices (-1 PAD),
    ARC colours of the grid cropped at EOS (may be 0 x 0). Ignored labels, and tokens outside
    the kind's alphabet, read as PAD."""
    t = np.where(np.asarray(tokens) == IGNORE_LABEL_ID, 0, np.asarray(tokens)).astype(np.int64)
    if kind == "arc":
        return crop_canvas(t).astype(np.int64)
    side = math.isqrt(t.size)
    grid = (t - 1).reshape(side, side)
    alphabet = len(MAZE_CHARSET) if kind == "maze" else 10  # Sudoku digits 0 (blank) .. 9
    return np.where(grid < alphabet, grid, -1)  # another kind's token (a mismatched model)


def _colours(kind: Kind, grid: np.ndarray, clues: np.ndarray | None) -> np.ndarray:
    if kind == "sudoku":
        rgb = np.ones((*grid.shape, 3))
        if clues is not None:
            rgb[clues > 0] = _rgb("#E8E8E8")
        return rgb
    table = np.array([_rgb(c) for c in (ARC_COLOURS if kind == "arc" else MAZE_COLOURS)]
                     + [_rgb(PAD_COLOUR)])
    return table[np.where(grid < 0, len(table) - 1, grid)]


@dataclasses.dataclass
class Panel:
    """One drawn grid."""

    title: str
    grid: np.ndarray
    changed: np.ndarray | None = None
    """Cells outlined as changed (same shape as grid)."""
    wrong: np.ndarray | None = None
    """Cells that differ from the target (same shape as grid)."""


def changed_cells(grid: np.ndarray, before: np.ndarray | None) -> Bool[np.ndarray, "h w"]:
    """Cells that differ from the previous panel's grid (none when the shape changed)."""
    if before is None or before.shape != grid.shape:
        return np.zeros(grid.shape, bool)
    return grid != before


def strip_panels(kind: Kind, inputs: Integer[np.ndarray, " s"],
                 step_preds: Integer[np.ndarray, "t s"], halt_margin: Float[np.ndarray, " t"],
                 labels: Integer[np.ndarray, " s"] | None = None) -> list[Panel]:
    """Input, each step's prediction (changes since the panel before; P(halt) =
    sigmoid(halt_margin), the margin of the model's halting rule), target if labelled."""
    shown_input = cells(kind, inputs)
    target = None
    if labels is not None and (np.asarray(labels) != IGNORE_LABEL_ID).any():
        target = cells(kind, labels)
    panels = [Panel("input", shown_input)]
    before = shown_input
    for k, (pred, margin) in enumerate(zip(step_preds, halt_margin), start=1):
        grid = cells(kind, pred)
        wrong = None if target is None or target.shape != grid.shape else grid != target
        mark = "" if target is None else (" ✓" if wrong is not None and not wrong.any() else " ✗")
        conf = 1.0 / (1.0 + math.exp(-float(margin)))
        panels.append(Panel(f"step {k}  P(halt) {conf:.2f}{mark}", grid,
                            changed_cells(grid, before), wrong))
        before = grid
    if target is not None:
        panels.append(Panel("target", target))
    return panels


def strip_size(n_panels: int) -> tuple[int, int]:
    """(width, height) in pixels of a strip of n panels."""
    cols = min(n_panels, STRIP_COLUMNS)
    rows = -(-n_panels // STRIP_COLUMNS)
    return cols * PANEL_PX, rows * (PANEL_PX + TITLE_PX)


def cell_box(panel: int, shape: tuple[int, int], i: int, j: int) -> tuple[float, float, float, float]:
    """Pixel box (x0, y0, x1, y1), origin top-left, of cell (i, j) of a square-celled grid of
    `shape` drawn in panel number `panel` (centred in its square)."""
    col, row = panel % STRIP_COLUMNS, panel // STRIP_COLUMNS
    side = PANEL_PX - 2 * PAD_PX
    cell = side / max(shape)
    x0 = col * PANEL_PX + PAD_PX + (side - cell * shape[1]) / 2
    y0 = row * (PANEL_PX + TITLE_PX) + TITLE_PX + PAD_PX + (side - cell * shape[0]) / 2
    return x0 + j * cell, y0 + i * cell, x0 + (j + 1) * cell, y0 + (i + 1) * cell


def _draw(ax: Any, kind: Kind, panel: Panel, clues: np.ndarray | None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(panel.title, fontsize=9)
    grid = panel.grid
    if grid.size == 0:
        ax.text(0.5, 0.5, "empty", ha="center", va="center", transform=ax.transAxes)
        return
    h, w = grid.shape
    ax.imshow(_colours(kind, grid, clues if kind == "sudoku" else None), extent=(0, w, h, 0),
              interpolation="nearest")
    _centre(ax, h, w)
    if kind == "sudoku":
        for k in range(h + 1):
            lw = 1.6 if k % 3 == 0 else 0.4
            ax.plot([0, w], [k, k], color="black", lw=lw)
            ax.plot([k, k], [0, h], color="black", lw=lw)
        for i, j in zip(*np.nonzero(grid > 0)):
            clue = clues is not None and clues[i, j] > 0
            bad = panel.wrong is not None and panel.wrong[i, j]
            ax.text(j + 0.5, i + 0.55, str(grid[i, j]), ha="center", va="center", fontsize=10,
                    color="black" if clue else ("#D62728" if bad else "#1F4FB4"))
    if panel.changed is not None:
        for i, j in zip(*np.nonzero(panel.changed)):
            ax.add_patch(Rectangle((j, i), 1, 1, fill=False, edgecolor=HIGHLIGHT[kind],
                                   linewidth=2.0, zorder=5))


def _centre(ax: Any, h: int, w: int) -> None:
    """Square view centred on an h x w grid (cells stay square)."""
    n = max(h, w)
    ax.set_xlim((w - n) / 2, (w + n) / 2)
    ax.set_ylim((h + n) / 2, (h - n) / 2)
    ax.set_axis_off()


def draw_strip(path: str | Path, kind: Kind, panels: Sequence[Panel],
               clues: np.ndarray | None = None) -> tuple[int, int]:
    """Write the strip PNG atomically; returns its (width, height) in pixels."""
    width, height = strip_size(len(panels))
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    side = PANEL_PX - 2 * PAD_PX
    for n, panel in enumerate(panels):
        col, row = n % STRIP_COLUMNS, n // STRIP_COLUMNS
        left = (col * PANEL_PX + PAD_PX) / width
        top = row * (PANEL_PX + TITLE_PX) + TITLE_PX + PAD_PX
        ax = fig.add_axes((left, 1 - (top + side) / height, side / width, side / height))
        _draw(ax, kind, panel, clues)
    _save(fig, path)
    return width, height


def plot_per_step(path: str | os.PathLike[str], curves: Mapping[str, Mapping[str, Any]],
                  title: str = "") -> None:
    """Exact accuracy if every puzzle stopped after step k, per set, with the adaptive
    policy (stop at the first q_halt > 0) as a star at (mean steps, accuracy)."""
    fig = Figure(figsize=(6.4, 4.0), dpi=DPI)
    ax = fig.add_subplot()
    scored = {name: c for name, c in curves.items() if c}  # {}: no known outputs
    if not scored:
        ax.text(0.5, 0.5, "no known outputs to score", ha="center", va="center",
                transform=ax.transAxes)
    for name, c in scored.items():
        acc = c["exact_accuracy_at_step"]
        line, = ax.plot(range(1, len(acc) + 1), acc, marker="o", ms=3, label=f"{name}: stop at k")
        ax.plot([c["adaptive_mean_steps"]], [c["adaptive_exact_accuracy"]], marker="*", ms=12,
                color=line.get_color(), linestyle="none",
                label=f"{name}: adaptive ({c['adaptive_exact_accuracy']:.3f} at "
                      f"{c['adaptive_mean_steps']:.2f} steps)")
    ax.set_xlabel("supervision steps")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_ylabel("exact accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if scored:
        ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def _save(fig: Figure, path: str | os.PathLike[str]) -> None:
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
