"""Inference benchmark of deployed models: `bench(models, config)` and its report writers."""

from sqft_ov.bench.bench import BenchConfig, BenchModel, bench

__all__ = ["BenchConfig", "BenchModel", "bench"]
