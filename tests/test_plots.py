"""Leaderboard plots (harness.plots): which figures a board yields, written by report --plots."""

from __future__ import annotations

import pandas as pd

from harness.plots import make_plots, write_plots
from harness.report import leaderboard


def board():
    rows = []
    for distiller, base in (("dm", 80.0), ("random", 60.0)):  # percent, as runs log them
        for ipc in (1, 10):
            for seed in (0, 1):
                acc = base + ipc + seed
                rows.append({"distiller": distiller, "variant": "", "dataset": "d", "base_dataset": "d", "arch": "a",
                             "budget": f"ipc={ipc}", "seed": seed, "status": "FINISHED", "recipes": "a/sgd,b/sgd",
                             "eval_epochs": "5", "eval_models": "2", "eval_test_size": "0", "init": "init default",
                             "acc_mean/a/sgd": acc, "acc_mean/b/sgd": acc - 5.0, "distill_seconds": 3.0 * ipc,
                             "per_model": {}})
    return leaderboard(pd.DataFrame(rows))


def test_a_board_with_budgets_times_and_other_archs_gets_all_three_plots(tmp_path):
    import matplotlib.pyplot as plt

    figures = make_plots(board())
    assert sorted(figures) == ["d-accuracy-vs-budget.png", "d-cost-frontier.png", "d-cross-arch.png"]
    lines = figures["d-accuracy-vs-budget.png"].axes[0].get_lines()
    assert sorted(line.get_label() for line in lines) == ["dm", "random"]  # one line per distiller
    axes = figures["d-accuracy-vs-budget.png"].axes[0]
    assert [t.get_text() for t in axes.get_xticklabels()] == ["1", "10"]  # the budgets run, labelled as such
    assert not axes.xaxis.get_minorticklocs().size
    for figure in figures.values():
        plt.close(figure)
    written = write_plots(board(), tmp_path, "exp")
    assert sorted(p.name for p in written) == sorted(figures) and all(p.stat().st_size > 1000 for p in written)


def test_no_cross_arch_plot_when_every_set_was_evaluated_on_its_own_arch():
    import matplotlib.pyplot as plt

    b = board()
    figures = make_plots(b[b["recipe"] == "a/sgd"])
    assert "d-cross-arch.png" not in figures
    for figure in figures.values():
        plt.close(figure)


def test_on_a_recipe_tie_plots_show_the_shared_dc_protocol():
    from harness.plots import _main_recipe

    rows = pd.DataFrame({"recipe": ["a/ld-protocol", "a/sgd", "a/ld-protocol", "a/sgd"]})
    assert _main_recipe(rows)[1] == "a/sgd"


def test_a_distiller_with_settings_per_budget_is_one_line_and_variants_sharing_a_budget_stay_apart():
    import matplotlib.pyplot as plt

    from harness.plots import _line_labels

    rows = pd.DataFrame({"distiller": ["dc", "dc", "sldd", "sldd", "sldd", "dm"],
                         "variant": ["iterations=20", "iterations=1", "init=fixed", "init=random", "init=random", ""],
                         "budget": ["ipc=1", "ipc=10", "ipc=1", "ipc=1", "ipc=10", "ipc=1"]})
    assert list(_line_labels(rows)) == ["dc (settings per budget)", "dc (settings per budget)", "sldd (init=fixed)",
                                        "sldd (init=random)", "sldd (init=random)", "dm"]
    b = board()
    b.loc[b["distiller"] == "dm", "variant"] = b.loc[b["distiller"] == "dm", "budget"].map(
        {"ipc=1": "iterations=20", "ipc=10": "iterations=1"})
    figure = make_plots(b)["d-accuracy-vs-budget.png"]
    lines = {line.get_label(): len(line.get_xdata()) for line in figure.axes[0].get_lines()}
    assert lines == {"dm (settings per budget)": 2, "random": 2}
    plt.close("all")


def test_the_legend_beside_the_axes_and_every_label_fit_inside_the_figure_at_fixed_margins():
    """Margins are fixed, not found by a layout engine (harness.plots): the legend, however long its
    labels, sits right of the axes, and titles and tick labels stay inside the figure."""
    import matplotlib.pyplot as plt

    b = board()
    b.loc[b["distiller"] == "dm", "variant"] = "iterations=2000 lr_img=0.1 init=real, a long variant"
    for name, figure in make_plots(b).items():
        if name.endswith("cross-arch.png"):
            continue
        renderer = figure.canvas.get_renderer()
        figure.draw(renderer)
        axes, box = figure.axes[0], figure.bbox
        legend = figure.legends[0].get_window_extent(renderer)
        assert legend.x0 > axes.get_window_extent(renderer).x1 and legend.x1 <= box.x1 + 1, name
        tight = axes.get_tightbbox(renderer)  # the axes with its tick labels, axis labels and title
        assert tight.x0 >= 0 and tight.y0 >= 0 and tight.y1 <= box.y1 + 1, name
    plt.close("all")
