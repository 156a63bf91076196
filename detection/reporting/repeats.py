"""What repeated runs say: a metric's mean, spread and 95% confidence interval over seeds (Student t), and the
paired difference of two configurations run on the same seeds (paired t-test). Plain numbers in, plain
numbers out: the sweep's parent run and the comparison command log them."""

import math
from typing import Sequence

CONFIDENCE = 0.95


def repeat_statistics(values: Sequence[float]) -> dict[str, float]:
    """n, mean, std (sample, ddof=1), min, max and the 95% t interval of the mean (ci_low, ci_high) of the
    finite `values`; std and the interval are nan with fewer than two."""
    import statistics

    from scipy import stats

    finite = [float(value) for value in values if math.isfinite(value)]
    n = len(finite)
    if not n:
        return {"n": 0, "mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan,
                "ci_low": math.nan, "ci_high": math.nan}
    mean = statistics.fmean(finite)
    std = statistics.stdev(finite) if n > 1 else math.nan
    low, high = stats.t.interval(CONFIDENCE, n - 1, loc=mean, scale=stats.sem(finite)) if n > 1 else (math.nan,) * 2
    return {"n": n, "mean": mean, "std": std, "min": min(finite), "max": max(finite),
            "ci_low": float(low), "ci_high": float(high)}


def paired_comparison(first: dict[int, float], second: dict[int, float]) -> dict[str, float]:
    """`first` - `second` over the seeds both have a finite value for ({seed: value} each): n, the mean
    difference, its 95% t interval (ci_low, ci_high) and the paired t-test's two-sided p-value."""
    from scipy import stats

    seeds = sorted(seed for seed in first.keys() & second.keys()
                   if math.isfinite(first[seed]) and math.isfinite(second[seed]))
    differences = [first[seed] - second[seed] for seed in seeds]
    spread = repeat_statistics(differences)
    p_value = float(stats.ttest_rel([first[s] for s in seeds], [second[s] for s in seeds]).pvalue) \
        if len(seeds) > 1 else math.nan
    return {"n": len(seeds), "mean": spread["mean"], "ci_low": spread["ci_low"], "ci_high": spread["ci_high"],
            "p_value": p_value, "seeds": seeds, "differences": differences}


def comparison_line(first: str, second: str, comparison: dict) -> str:
    """'fitted - default: +0.012 [-0.004, +0.028], p = 0.11 over 5 seeds'."""
    return (f"{first} - {second}: {comparison['mean']:+.4f} [{comparison['ci_low']:+.4f}, "
            f"{comparison['ci_high']:+.4f}], p = {comparison['p_value']:.3g} over {comparison['n']} seeds")
