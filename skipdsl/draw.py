"""The grid picture of a network: nodes X[i,j] at (column, level), edges coloured by kind,
as in the UNet# paper's figure 1."""
from __future__ import annotations

from pathlib import Path

import networkx as nx

from .graph import INPUT

EDGE_STYLE = {
    "down": ("#222222", "encoder (down)"),
    "skip": ("#2ca02c", "skip"),
    "dense": ("#2ca02c", "dense skip"),
    "up": ("#1f77b4", "up"),
    "fullscale_up": ("#d62728", "full-scale up"),
    "fullscale_down": ("#9467bd", "full-scale down"),
    "deeper": ("#ff7f0e", "deeper"),
    "explicit": ("#7f7f7f", "explicit"),
}


def draw(dag: nx.DiGraph, path: str | Path, *, heads: list[str] | None = None,
         title: str | None = None) -> Path:
    """Write the grid picture of ``dag`` to ``path`` (.png, .svg or .pdf)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch

    path = Path(path)
    depth = dag.graph["depth"]
    pos = {n: (d["column"], -d["level"]) for n, d in dag.nodes(data=True) if n != INPUT}
    fig, ax = plt.subplots(figsize=(1.6 * depth + 1.5, 1.3 * depth + 1))
    used = {}
    for u, v, d in dag.edges(data=True):
        if u == INPUT:
            continue
        color, label = EDGE_STYLE.get(d["kind"], EDGE_STYLE["explicit"])
        used[label] = color
        (x0, y0), (x1, y1) = pos[u], pos[v]
        span = max(abs(x1 - x0), abs(y1 - y0))
        if y0 == y1 and span > 1:  # dense skips over other nodes: arc above the row
            rad = -0.25 * min(1.0, span / depth)
        elif y0 != y1 and span > 1:  # full-scale edges share a line with 'up': bend them
            rad = 0.12 + 0.05 * span
        else:
            rad = 0.0
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=10,
                                     color=color, lw=1.2, alpha=0.8, shrinkA=13, shrinkB=13,
                                     connectionstyle=f"arc3,rad={rad}"))
    heads = set(heads or [])
    for n, (x, y) in pos.items():
        d = dag.nodes[n]
        face = "#f2d7a6" if d["kind"] == "encoder" else "#cfe2f3"
        ax.scatter([x], [y], s=900, c=face, edgecolors="#d62728" if n in heads else "#333333",
                   linewidths=2.5 if n in heads else 1, zorder=3)
        ax.text(x, y + 0.04, f"X{d['level']},{d['column']}", ha="center", va="center",
                fontsize=8, zorder=4)
        ax.text(x, y - 0.08, str(d["width"]), ha="center", va="center", fontsize=6,
                color="#555555", zorder=4)
    handles = [Line2D([0], [0], color=c, lw=2, label=lab) for lab, c in used.items()]
    if heads:
        handles.append(Line2D([0], [0], marker="o", color="w", markeredgecolor="#d62728",
                              markersize=10, markeredgewidth=2, label="head"))
    ax.legend(handles=handles, loc="upper right", fontsize=7, frameon=False)
    ax.set_xlim(-0.6, depth - 0.4 + 1.2)
    ax.set_ylim(-depth + 0.4, 0.6)
    ax.set_xlabel("column j")
    ax.set_ylabel("level i")
    ax.set_yticks([-i for i in range(depth)], [str(i) for i in range(depth)])
    ax.set_xticks(range(depth))
    ax.set_title(title or dag.graph.get("name", ""))
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
