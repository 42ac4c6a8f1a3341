"""PNG figures (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def gate_heatmap_figure(matrix: Sequence[Sequence[float]], tasks: Sequence[str], title: str):
    """Average gate weight per (task row, expert column), values printed in the cells."""
    fig, ax = plt.subplots(figsize=(0.7 * len(matrix[0]) + 0.07 * max(len(t[:32]) for t in tasks) + 2.0,
                                    0.42 * len(tasks) + 1.4))
    image = ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=max(max(r) for r in matrix), aspect="auto")
    ax.set_xticks(range(len(matrix[0])), [f"E{e}" for e in range(len(matrix[0]))])
    ax.set_yticks(range(len(tasks)), [t[:32] for t in tasks])
    ax.set_xlabel("expert group")
    ax.set_title(title, fontsize=10)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value < 0.6 * max(max(r) for r in matrix) else "black")
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    return fig


def save_gate_heatmap(matrix: Sequence[Sequence[float]], tasks: Sequence[str], title: str, path: Path) -> Path:
    fig = gate_heatmap_figure(matrix, tasks, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def loss_curves(curves: dict[str, Sequence[float]], title: str, path: Path) -> Path:
    """Training loss per step for several runs on one plot."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (response-token NLL)")
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
