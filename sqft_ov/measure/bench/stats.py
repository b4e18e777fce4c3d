"""Statistics for noisy timings: medians with quartiles, and per-repeat paired ratios.

Run-to-run noise on a shared machine can reach 2x (see the README), so means and single runs mislead.
Variants run interleaved; repeat i of every model ran at nearly the same time, so the ratio of repeat i
to the baseline's repeat i cancels slow drifts that a ratio of two medians would keep.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def summarize(values: Sequence[float]) -> dict[str, float | int]:
    """Median, quartiles (linear interpolation), IQR, min, max and count of `values`."""
    if not len(values):
        raise ValueError("no values to summarize")
    x = np.asarray(values, dtype=float)
    q1, median, q3 = np.percentile(x, [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1),
            "min": float(x.min()), "max": float(x.max()), "n": int(x.size)}


def paired_ratios(values: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """values[i] / baseline[i] for each repeat i: both lists come from the same interleaved rounds."""
    if len(values) != len(baseline):
        raise ValueError(f"paired ratios need as many repeats as the baseline ({len(values)} vs {len(baseline)})")
    return [float(v) / float(b) for v, b in zip(values, baseline)]
