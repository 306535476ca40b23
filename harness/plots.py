"""Plots of a leaderboard (:func:`harness.report.leaderboard`): accuracy vs budget, the cost frontier
and the cross-architecture matrix. ``harness report --plots`` writes them under ``results/`` and each
``harness bench`` logs them to its parent run. (The soft labels of every distilled set are drawn per
trial as its ``labels.png`` artifact, by :mod:`harness.artifacts`.) Accuracy in percent everywhere."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

IPC = re.compile(r"^ipc=(\d+)$")
FIGSIZE = (9.0, 4.0)  # inches: the line and scatter plots
# Their margins in inches, fixed: the tick labels (accuracy in percent, log-scale x) and titles take the
# same room on every board, so only the legend's width is measured. A layout engine (constrained
# layout) found the same margins by drawing each figure twice more: half of a bench's plotting time.
MARGIN_LEFT, MARGIN_BOTTOM, MARGIN_TOP, LEGEND_GAP = 0.7, 0.55, 0.35, 0.15


def make_plots(board: Any) -> dict[str, Any]:
    """{file name: matplotlib Figure} for what the board has data for; the caller closes them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = board[board["seeds"] > 0]
    figures = {}
    for dataset, rows in done.groupby("dataset"):
        figure = _vs_budget(plt, dataset, rows)
        if figure is not None:
            figures[f"{dataset}-accuracy-vs-budget.png"] = figure
        figure = _cost_frontier(plt, dataset, rows)
        if figure is not None:
            figures[f"{dataset}-cost-frontier.png"] = figure
        figure = _cross_arch(plt, dataset, rows)
        if figure is not None:
            figures[f"{dataset}-cross-arch.png"] = figure
    return figures


def write_plots(board: Any, out_dir: str | Path, experiment: str) -> list[Path]:
    import matplotlib.pyplot as plt

    out = Path(out_dir) / f"{experiment}-plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, figure in make_plots(board).items():
        figure.savefig(out / name, dpi=90)
        plt.close(figure)
        written.append(out / name)
    return written


def _label(row: Any) -> str:
    variant = row.get("variant", "")
    return f"{row['distiller']} ({variant})" if isinstance(variant, str) and variant else str(row["distiller"])


def _line_labels(rows: Any) -> Any:
    """One label per row, naming the line it belongs to: a distiller whose budgets each ran with one
    configuration is one line, also when the grid set other settings per budget (say, fewer
    iterations at the larger budget: "dc (settings per budget)"); configurations that share a budget
    stay apart, each named by its variant."""
    labels = rows.apply(_label, axis=1)
    if "variant" not in rows:
        return labels
    for distiller, group in rows.assign(variant=rows["variant"].fillna("")).groupby("distiller"):
        if group["variant"].nunique() > 1 and group.groupby("budget")["variant"].nunique().max() == 1:
            labels[group.index] = f"{distiller} (settings per budget)"
    return labels


def _main_recipe(rows: Any) -> Any:
    """The rows of the most common recipe (a plot compares like with like); on a tie the shared DC
    protocol (``/sgd``) before the others, then by name."""
    counts = rows["recipe"].value_counts()
    tied = sorted(counts[counts == counts.max()].index, key=lambda r: ("/sgd" not in r, r))
    recipe = tied[0]
    return rows[rows["recipe"] == recipe], recipe


def _vs_budget(plt: Any, dataset: str, rows: Any) -> Any:
    """One line per distiller over images per class, the seed spread (± std) as a band."""
    rows = rows[rows["budget"].astype(str).str.match(IPC)]
    if rows.empty:
        return None
    rows, recipe = _main_recipe(rows)
    fig, ax = plt.subplots(figsize=FIGSIZE)
    rows = rows.assign(label=_line_labels(rows), ipc=rows["budget"].str.extract(IPC, expand=False).astype(int))
    for _, group in rows.groupby("label"):
        group = group.sort_values("ipc")
        std = group["acc_std"].fillna(0.0)
        ax.plot(group["ipc"], group["acc_mean"], marker="o", label=group["label"].iloc[0])
        ax.fill_between(group["ipc"], group["acc_mean"] - std, group["acc_mean"] + std, alpha=0.2)
    fig = _finish(fig, ax, "images per class", f"{dataset}: accuracy vs budget ({recipe})")
    budgets = sorted(rows["ipc"].unique())  # ticks at the budgets run, not at powers of ten (also 30% faster to draw)
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.minorticks_off()
    return fig


def _cost_frontier(plt: Any, dataset: str, rows: Any) -> Any:
    """Accuracy against distillation time, one marker per (distiller, budget)."""
    rows = rows[rows["distill_s"].notna() & (rows["distiller"] != "full")]
    if rows.empty:
        return None
    rows, recipe = _main_recipe(rows)
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for _, group in rows.assign(label=_line_labels(rows)).groupby("label"):
        ax.scatter(group["distill_s"].clip(lower=0.01), group["acc_mean"], label=group["label"].iloc[0])
        for _, r in group.iterrows():
            ax.annotate(str(r["budget"]), (max(r["distill_s"], 0.01), r["acc_mean"]), fontsize=7)
    return _finish(fig, ax, "distillation time per trial (s)", f"{dataset}: cost frontier ({recipe})")


def _finish(fig: Any, ax: Any, xlabel: str, title: str) -> Any:
    """Log-scale x, accuracy on y, title and legend: the frame both line/scatter plots share."""
    from matplotlib.ticker import LogFormatter

    ax.set_xscale("log")
    # Plain numbers (0.1, 1, 10), not mathtext powers of ten, which took a third of a figure's drawing
    ax.xaxis.set_major_formatter(LogFormatter())
    ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, y=1.0)  # placed, not found: finding it measured the axes again (a fifth of a draw)
    right = LEGEND_GAP
    if ax.get_legend_handles_labels()[0]:  # beside the axes: inside, it hides the points it names
        legend = fig.legend(fontsize=7, loc="upper right")
        right += legend.get_window_extent(fig.canvas.get_renderer()).width / fig.dpi
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=MARGIN_LEFT / width, right=1 - right / width, bottom=MARGIN_BOTTOM / height,
                        top=1 - MARGIN_TOP / height)
    return fig


def _cross_arch(plt: Any, dataset: str, rows: Any) -> Any:
    """Distilled with (rows) x evaluated with (columns), per distiller and budget: drawn when some
    set was evaluated on an architecture other than its own."""
    rows = rows.assign(eval_arch=rows["recipe"].str.split("/").str[0], label=rows.apply(_label, axis=1))
    rows = rows[rows["distiller"] != "full"]
    if rows.empty or not (rows["eval_arch"] != rows["arch"]).any():
        return None
    cells = rows.assign(row=rows["label"] + " " + rows["budget"].astype(str) + " / " + rows["arch"])
    matrix = cells.pivot_table(index="row", columns="eval_arch", values="acc_mean", aggfunc="mean")
    fig, ax = plt.subplots(figsize=(1.2 * len(matrix.columns) + 3, 0.35 * len(matrix) + 1.5))
    image = ax.imshow(matrix.values, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(matrix.columns)), matrix.columns)
    ax.set_yticks(range(len(matrix.index)), matrix.index, fontsize=7)
    import numpy as np

    for (i, j), value in np.ndenumerate(matrix.values):
        if value == value:
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7, color="w")
    ax.set_xlabel("evaluated with")
    ax.set_title(f"{dataset}: cross-architecture accuracy (%)")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig
