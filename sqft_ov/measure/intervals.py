"""Intervals for accuracies that vary with both the training seed and the test problems: a hierarchical bootstrap.

A row trained with several seeds has two sources of noise: which seed (training) and which problems (the test
set). Resampling problems alone treats the seeds' mean as exact; resampling seed means alone treats the test set
as the whole population. The hierarchical bootstrap resamples both, in the order the data were made: seeds with
replacement, then problems with replacement (Davison & Hinkley 1997, section 3.8; Card et al. 2020 for NLP
test sets). With one seed only the problems are resampled, and the interval says nothing about training noise.

Rows are compared on the *same* problem draws (one generator for every row: the test set's noise cancels in a
difference), each with its own seed draws (seeds of two methods are not pairs: seed 42 of LoRA and seed 42 of
QA-SparsePEFT share nothing but a number).
"""

from __future__ import annotations

import zlib

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


def problem_draws(problems: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """resamples x problems indices: the same for every row of a table, so that rows can be subtracted."""
    return np.random.default_rng(seed).integers(0, problems, size=(resamples, problems))


def hierarchical_means(correct: np.ndarray, draws: np.ndarray, label: str = "") -> np.ndarray:
    """One mean accuracy per resample: seeds drawn with replacement (a generator keyed by `label`, so a table is
    reproducible and rows draw independently), then `draws`' problems, averaged over both.

    `correct`: seeds x problems (1 correct, 0 not).
    """
    correct = np.asarray(correct, dtype=np.float64)
    if correct.ndim != 2 or correct.shape[1] != draws.shape[1]:
        raise ValueError(f"correct must be seeds x {draws.shape[1]} problems, got shape {correct.shape}")
    per_seed = correct[:, draws].mean(axis=2)  # seeds x resamples: each seed on each problem resample
    seeds, resamples = per_seed.shape
    picks = np.random.default_rng(zlib.crc32(label.encode())).integers(0, seeds, size=(resamples, seeds))
    return per_seed[picks, np.arange(resamples)[:, None]].mean(axis=1)


def interval(values: np.ndarray, level: float = LEVEL) -> list[float]:
    """The central percentile interval of bootstrap values."""
    tail = 100 * (1 - level) / 2
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def ratio_interval(row: np.ndarray, reference: np.ndarray, level: float = LEVEL) -> list[float] | None:
    """Interval of row / reference over paired resamples (None when a reference resample is 0)."""
    if np.any(reference == 0):
        return None
    return interval(row / reference, level)
