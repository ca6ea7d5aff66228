"""The statistics every evaluation summary reports: a success rate's 95% interval and latency percentiles."""

from __future__ import annotations

import numpy as np


def wilson_interval(successes: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a success rate (sound at 0 or n successes, unlike the normal approximation)."""
    from scipy.stats import binomtest

    ci = binomtest(successes, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50, p95 and p99 of `values`, rounded to 0.01; None for each when there are none."""
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    p50, p95, p99 = np.percentile(np.asarray(values), [50, 95, 99])
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2), "p99": round(float(p99), 2)}
