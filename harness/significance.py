"""Is the best method of a setting better than each other one by more than seed and init noise?

The evaluation is paired: in one setting (dataset, arch, budget, recipe, protocol), model ``k`` of
seed ``s`` starts from the same initialisation and sees the same batch order whichever method's set
it trains on. So each method is compared with the setting's best on the accuracy differences of
those pairs (seed, model): a percentile bootstrap of their mean (resampling pairs, a fixed
generator, so a report is reproducible) gives a 95% confidence interval; the difference is
significant when the interval excludes 0. With fewer than ``MIN_PAIRS`` pairs there is no verdict.
"""

from __future__ import annotations

from typing import Mapping

RESAMPLES = 2000
MIN_PAIRS = 3
LEVEL = 0.95


def paired_difference(a: Mapping[tuple, float], b: Mapping[tuple, float], resamples: int = RESAMPLES,
                      seed: int = 0) -> tuple[float, float, float, int] | None:
    """Mean of ``a[p] - b[p]`` over the pairs ``p`` both have, with its bootstrap CI: (mean, low,
    high, pairs); None with fewer than :data:`MIN_PAIRS` pairs."""
    import numpy as np

    common = sorted(set(a) & set(b))
    if len(common) < MIN_PAIRS:
        return None
    diffs = np.array([a[p] - b[p] for p in common], dtype=float)
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(resamples, len(diffs)))].mean(axis=1)
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(diffs.mean()), float(low), float(high), len(common)


def versus_best(methods: Mapping[str, tuple[float, Mapping[tuple, float]]]) -> dict[str, dict]:
    """``methods``: name -> (mean accuracy, {pair: accuracy}). For each method: ``best`` (the highest
    mean), and for the others the difference to the best (this - best) with its CI and whether it is
    significant (None when there are too few pairs)."""
    if not methods:
        return {}
    best = max(methods, key=lambda m: methods[m][0])
    out = {best: {"best": True, "diff": 0.0, "low": float("nan"), "high": float("nan"), "significant": None}}
    for name, (_, accs) in methods.items():
        if name == best:
            continue
        cmp = paired_difference(accs, methods[best][1])
        if cmp is None:
            out[name] = {"best": False, "diff": methods[name][0] - methods[best][0], "low": float("nan"),
                         "high": float("nan"), "significant": None}
        else:
            diff, low, high, _ = cmp
            out[name] = {"best": False, "diff": diff, "low": low, "high": high, "significant": not low <= 0 <= high}
    return out
