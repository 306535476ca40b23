"""The leaderboard's figures, as each bench draws and logs them (harness.plots): fixed margins with
only the legend measured (the harness) vs the same figures laid out by matplotlib's constrained
layout (what the harness used before), saved as PNG in one run, for the ratio.

Board: 4 distillers x 3 budgets x 2 seeds on one dataset and one architecture (two figures: accuracy
vs budget and the cost frontier; no cross-architecture matrix).
Run: `make perf` or `.venv/bin/python -m pytest benchmarks/perf/test_figures.py`.
"""

from __future__ import annotations

import io

import pytest


def board():
    import pandas as pd

    from harness.report import leaderboard

    rows = []
    for d, (distiller, base) in enumerate((("dm", 80.0), ("dc", 75.0), ("ld", 70.0), ("random", 60.0))):
        for ipc in (1, 10, 50):
            for seed in (0, 1):
                rows.append({"distiller": distiller, "variant": "", "dataset": "mnist", "base_dataset": "mnist",
                             "arch": "convnet", "budget": f"ipc={ipc}", "seed": seed, "status": "FINISHED",
                             "recipes": "convnet/sgd", "eval_epochs": "300", "eval_models": "5",
                             "eval_test_size": "0", "init": "init default", "acc_mean/convnet/sgd": base + ipc / 5 + seed,
                             "distill_seconds": (d + 1) * 30.0 * ipc, "per_model": {}})
    return leaderboard(pd.DataFrame(rows))


@pytest.mark.parametrize("layout", ["fixed", "constrained"])
def test_figures_of_a_leaderboard(benchmark, layout):
    import matplotlib.pyplot as plt

    from harness.plots import make_plots

    b = board()
    benchmark.group = "figures" if layout == "fixed" else "figures-constrained"

    def draw_and_save():
        figures = make_plots(b)
        for figure in figures.values():
            if layout == "constrained":
                figure.set_layout_engine("constrained")
            figure.savefig(io.BytesIO(), format="png")
            plt.close(figure)
        return len(figures)

    assert benchmark.pedantic(draw_and_save, rounds=8, iterations=1, warmup_rounds=1) == 2
