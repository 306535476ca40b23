"""Paired comparisons over seeds x models (harness.significance), on synthetic accuracies with known
answers, and the leaderboard's ``vs best`` column built from them."""

from __future__ import annotations

import math

import pandas as pd

from harness.significance import MIN_PAIRS, paired_difference, versus_best


def pairs(values):
    return {(seed, k): v for (seed, k), v in zip([(s, k) for s in range(3) for k in range(4)], values)}


def test_a_constant_gap_is_significant_and_measured_exactly():
    better = pairs([80 + i % 3 for i in range(12)])
    worse = {p: a - 2.5 for p, a in better.items()}  # the same models, 2.5 points lower each
    diff, low, high, n = paired_difference(worse, better)
    assert (diff, low, high, n) == (-2.5, -2.5, -2.5, 12)


def test_noise_around_no_difference_is_not_significant():
    a = pairs([80, 81, 79, 80, 82, 78, 80, 81, 79, 80, 80, 80])
    b = {p: v + (1 if i % 2 else -1) for i, (p, v) in enumerate(a.items())}  # +-1 alternating: mean 0
    diff, low, high, _ = paired_difference(a, b)
    assert diff == 0 and low < 0 < high


def test_pairing_removes_init_noise_an_unpaired_view_would_keep():
    """Inits differ by up to 10 points, yet every model does 1 point better on set A: significant."""
    a = pairs([70 + 10 * (i % 2) + 1 for i in range(12)])
    b = pairs([70 + 10 * (i % 2) for i in range(12)])
    verdict = versus_best({"A": (sum(a.values()) / 12, a), "B": (sum(b.values()) / 12, b)})
    assert verdict["A"]["best"] and verdict["B"]["significant"] is True and math.isclose(verdict["B"]["diff"], -1.0)


def test_too_few_pairs_give_no_verdict():
    a, b = {(0, 0): 80.0, (0, 1): 81.0}, {(0, 0): 70.0, (0, 1): 71.0}
    assert MIN_PAIRS == 3 and paired_difference(a, b) is None
    assert versus_best({"A": (80.5, a), "B": (70.5, b)})["B"]["significant"] is None


def test_the_leaderboard_marks_the_best_and_what_is_not_significantly_worse():
    from harness.report import board_cells, leaderboard

    def run(distiller, seed, accs):
        return {"distiller": distiller, "variant": "", "dataset": "d", "base_dataset": "d", "arch": "a", "budget": "ipc=1",
                "seed": seed, "status": "FINISHED", "recipes": "a/sgd", "eval_epochs": "5", "eval_models": "4",
                "eval_test_size": "0", "init": "init default", "acc_mean/a/sgd": sum(accs) / len(accs),
                "per_model": {"a/sgd": accs}}

    base = [[80.0, 70.0, 75.0, 72.0], [78.0, 74.0, 71.0, 77.0]]  # percent, as runs log them
    rows = [run("good", s, accs) for s, accs in enumerate(base)]
    rows += [run("close", s, [a - (0.2 if k % 2 else -0.1) for k, a in enumerate(accs)]) for s, accs in enumerate(base)]
    rows += [run("worse", s, [a - 5.0 for a in accs]) for s, accs in enumerate(base)]
    board = leaderboard(pd.DataFrame(rows))
    verdict = {r["distiller"]: cells[10] for (_, r), cells in zip(board.iterrows(), board_cells(board))}
    assert verdict["good"] == "best"
    assert verdict["close"].endswith("n.s.")
    assert verdict["worse"] == "-5.00 [-5.00, -5.00]"
