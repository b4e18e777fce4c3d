"""Inference benchmark of deployed models: `bench(models, config)` -> `BenchResult`, and its report writers."""

from sqft_ov.measure.bench.runner import BenchConfig, BenchModel, BenchResult, bench

__all__ = ["BenchConfig", "BenchModel", "BenchResult", "bench"]
