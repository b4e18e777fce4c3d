"""Inference benchmark of deployed models: `bench(models, config)` and its report writers."""

from sqft_ov.stages.bench.runner import BenchConfig, BenchModel, bench

__all__ = ["BenchConfig", "BenchModel", "bench"]
